//! Scheduler tests with a fake clock: every input carries an instant the test chooses.

use super::*;
use crate::devices::{SERVICE_UUID, Source, encrypt_frame};
use crate::messages::RawFrame;
use std::path::Path;

pub(super) const A: &str = "AA:BB:CC:00:00:01";
const B: &str = "AA:BB:CC:00:00:02";

pub(super) fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

pub(super) fn config(text: &str) -> Arc<Config> {
    Arc::new(Config::from_toml(text, Path::new("t.toml"), std::iter::empty()).unwrap())
}

fn two_polled() -> Arc<Config> {
    config(&format!(
        "[discovery]\ninitial_scan = false\n[[device]]\nmac = \"{A}\"\ntype = \"BM6\"\npoll_interval = 60\n\
         [[device]]\nmac = \"{B}\"\ntype = \"BM6\"\npoll_interval = 60\n"
    ))
}

pub(super) fn heard(m: &str) -> Heard {
    Heard {
        mac: mac(m),
        at: chrono::Utc::now(),
        name: Some("BM6".into()),
        service_uuids: vec![SERVICE_UUID.into()],
        rssi: Some(-60),
        manufacturer: Vec::new(),
        fresh: false,
    }
}

/// A BM6 advertisement for `m` at `volts`, as BlueZ reports it (company id + 14 bytes).
fn bm6_advert(m: &str, volts: f64) -> (u16, Vec<u8>) {
    let model = Model::by_name("BM6").unwrap();
    let meas = crate::devices::Measurement {
        voltage: Some(volts),
        state_of_charge: Some(80.0),
        ..Default::default()
    };
    let plain = model.encode_advert(&meas, mac(m)).unwrap();
    let f = encrypt_frame(model, &plain);
    (u16::from_le_bytes([f[0], f[1]]), f[2..].to_vec())
}

pub(super) fn ok(m: &str) -> PollOutcome {
    PollOutcome {
        frames: vec![RawFrame {
            mac: mac(m),
            model: Model::by_name("BM6").unwrap(),
            source: Source::Gatt,
            data: vec![0; 16],
            rssi: None,
            received_at: chrono::Utc::now(),
        }],
        result: Ok(()),
        model: None,
        history: None,
    }
}

fn failed(e: LinkError) -> PollOutcome {
    PollOutcome::failed(None, e)
}

fn polls(actions: &[Action]) -> Vec<Mac> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Poll { mac, .. } => Some(*mac),
            _ => None,
        })
        .collect()
}

fn failures(actions: &[Action]) -> Vec<(Mac, u16)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(BleEvent::Notice(Notice::PollFailed { mac, error, .. })) => {
                Some((*mac, error.code()))
            }
            _ => None,
        })
        .collect()
}

fn frames(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Emit(BleEvent::Frame(_))))
        .count()
}

pub(super) fn started(config: Arc<Config>, t0: Instant) -> Scheduler {
    let mut s = Scheduler::new(config, Memory::default(), t0);
    s.adapter_available(BluetoothState::Active, t0);
    s
}

#[test]
fn a_due_device_not_heard_lately_is_found_first_then_polled() {
    let t0 = Instant::now();
    let mut s = started(two_polled(), t0);
    let a = s.take_actions();
    assert!(matches!(a.last(), Some(Action::StartScan)), "{a:?}");
    assert!(
        polls(&a).is_empty(),
        "BlueZ may have forgotten them: find first"
    );
    s.heard(heard(A), t0 + Duration::from_millis(300));
    assert_eq!(polls(&s.take_actions()), vec![mac(A)]);
    s.heard(heard(B), t0 + Duration::from_millis(400));
    let a = s.take_actions();
    assert!(polls(&a).is_empty(), "one connection slot, held by A");
    assert!(
        matches!(a.last(), Some(Action::StopScan)),
        "both found: no more scanning"
    );
    s.poll_done(mac(A), ok(A), t0 + Duration::from_secs(2));
    let a = s.take_actions();
    assert_eq!(polls(&a), vec![mac(B)]);
    assert_eq!(frames(&a), 1);
    s.poll_done(mac(B), ok(B), t0 + Duration::from_secs(3));
    assert_eq!(frames(&s.take_actions()), 1);
    assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(60)));
}

#[test]
fn a_device_not_heard_within_the_connection_timeout_is_1003_without_holding_a_slot() {
    let t0 = Instant::now();
    let mut s = started(two_polled(), t0);
    s.take_actions();
    s.heard(heard(B), t0 + Duration::from_secs(1));
    assert_eq!(polls(&s.take_actions()), vec![mac(B)]);
    s.poll_done(mac(B), ok(B), t0 + Duration::from_secs(2));
    s.take_actions();
    s.tick(t0 + Duration::from_secs(30));
    assert_eq!(failures(&s.take_actions()), vec![(mac(A), 1003)]);
    assert_eq!(s.connections(), 0);
}

#[test]
fn retries_back_off_and_the_cycle_ends_in_one_report() {
    let t0 = Instant::now();
    let mut s = started(two_polled(), t0);
    s.heard(heard(A), t0);
    s.heard(heard(B), t0);
    s.take_actions();
    let mut now = t0;
    let mut reports = Vec::new();
    for attempt in 1..=ATTEMPTS {
        now += Duration::from_secs(1);
        s.poll_done(mac(A), failed(LinkError::Timeout), now);
        let a = s.take_actions();
        reports.extend(failures(&a));
        if attempt == 1 {
            assert_eq!(polls(&a), vec![mac(B)], "B gets the slot while A waits");
            s.poll_done(mac(B), ok(B), now);
            s.take_actions();
        }
        if attempt < ATTEMPTS {
            let retry = s.next_deadline().unwrap();
            assert!(retry > now);
            now = retry;
            s.heard(heard(A), now);
            s.tick(now);
            assert_eq!(polls(&s.take_actions()), vec![mac(A)]);
        }
    }
    assert_eq!(reports, vec![(mac(A), 1001)]);
}

#[test]
fn periodic_interval_zero_means_no_periodic_scans() {
    let t0 = Instant::now();
    let c = config("[discovery]\nperiodic_interval = 0\nscan_duration = 5\n");
    let mut s = started(c, t0);
    assert!(matches!(s.take_actions().last(), Some(Action::StartScan)));
    let end = s.next_deadline().unwrap();
    assert_eq!(end, t0 + Duration::from_secs(5));
    s.tick(end);
    assert!(matches!(s.take_actions().last(), Some(Action::StopScan)));
    assert_eq!(s.next_deadline(), None, "idle: nothing left to wait for");
}

#[test]
fn passive_readings_come_from_the_newest_advert_only_at_most_once_per_interval() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[[device]]\nmac = \"{A}\"\ntype = \"BM6\"\nmode = \"passive\"\npoll_interval = 10\n"
    ));
    let mut s = started(c, t0);
    s.take_actions();
    // BlueZ's cache holds old adverts: never a reading.
    let mut cached = heard(A);
    cached.manufacturer = vec![bm6_advert(A, 13.51), bm6_advert(A, 13.40)];
    s.heard(cached.clone(), t0);
    assert_eq!(frames(&s.take_actions()), 0);
    // A change carries the merged map: only the new entry counts.
    let mut change = cached.clone();
    change.fresh = true;
    change.manufacturer.push(bm6_advert(A, 12.90));
    s.heard(change.clone(), t0 + Duration::from_secs(1));
    let a = s.take_actions();
    let data: Vec<Vec<u8>> = a
        .iter()
        .filter_map(|x| match x {
            Action::Emit(BleEvent::Frame(f)) => Some(f.data.clone()),
            _ => None,
        })
        .collect();
    let (cid, v) = bm6_advert(A, 12.90);
    let mut expected = cid.to_le_bytes().to_vec();
    expected.extend(v);
    assert_eq!(data, vec![expected]);
    change.manufacturer = vec![bm6_advert(A, 12.80)];
    s.heard(change.clone(), t0 + Duration::from_secs(5));
    assert_eq!(
        frames(&s.take_actions()),
        0,
        "throttled to one per interval"
    );
    s.heard(change, t0 + Duration::from_secs(12));
    assert_eq!(frames(&s.take_actions()), 1);
}

#[test]
fn a_passive_device_that_broadcasts_no_reading_says_so() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[[device]]\nmac = \"{A}\"\ntype = \"BM6\"\nmode = \"passive\"\npoll_interval = 10\n"
    ));
    let mut s = started(c, t0);
    s.take_actions();
    let mut h = heard(A);
    h.fresh = true;
    s.heard(h.clone(), t0 + Duration::from_secs(29));
    s.tick(t0 + Duration::from_secs(30));
    assert_eq!(failures(&s.take_actions()), vec![(mac(A), 1004)]);
}

#[test]
fn only_confirmed_new_monitors_are_adopted_and_removed_ones_never_again() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[[device]]\nmac = \"{A}\"\ntype = \"BM6\"\n[discovery]\nmax_auto_devices = 5\n"
    ));
    let mut s = started(c, t0);
    s.take_actions();
    let adopted = |a: &[Action]| {
        a.iter()
            .filter(|x| matches!(x, Action::Emit(BleEvent::Notice(Notice::Adopted { .. }))))
            .count()
    };
    // A name (even with fff0) is not enough.
    let phantom = heard("11:22:33:44:55:66");
    s.heard(phantom, t0);
    assert_eq!(adopted(&s.take_actions()), 0);
    // A BM6 whose advert carries its own address is confirmed: adopted, passive by default.
    let mut real = heard(B);
    real.manufacturer = vec![bm6_advert(B, 12.7)];
    s.heard(real.clone(), t0);
    assert_eq!(adopted(&s.take_actions()), 1);
    assert!(
        s.targets()
            .any(|(m, mode)| m == mac(B) && mode == Mode::Passive)
    );
    // A reload removes A: never adopted again, however it is heard.
    s.reconfigure(config(""), t0 + Duration::from_secs(1));
    s.take_actions();
    let mut a_again = heard(A);
    a_again.manufacturer = vec![bm6_advert(A, 12.7)];
    s.heard(a_again, t0 + Duration::from_secs(100));
    assert_eq!(adopted(&s.take_actions()), 0);
    assert!(!s.is_target(mac(A)));
}

#[test]
fn foreign_devices_are_classified_once() {
    let t0 = Instant::now();
    let mut s = started(config(""), t0);
    let phone = mac("06:F0:00:00:00:01");
    assert!(s.wants_details(phone, t0));
    s.heard(
        Heard {
            manufacturer: vec![(76, vec![0x10, 5, 1])],
            ..Heard::new(phone, chrono::Utc::now())
        },
        t0,
    );
    assert!(!s.wants_details(phone, t0 + Duration::from_secs(1)));
}

#[test]
fn auto_configured_monitors_are_forgotten_after_forget_after() {
    let t0 = Instant::now();
    let c = config("[discovery]\nforget_after = 600\n");
    let memory = Memory {
        auto: vec![(mac(B), Model::by_name("BM6"))],
        known: HashSet::from([mac(B)]),
        ..Memory::default()
    };
    let mut s = Scheduler::new(c, memory, t0);
    s.adapter_available(BluetoothState::Active, t0);
    s.take_actions();
    s.tick(t0 + Duration::from_secs(600));
    let a = s.take_actions();
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Emit(BleEvent::Notice(Notice::Forgotten { .. }))))
    );
    assert!(!s.is_target(mac(B)));
}

#[test]
fn a_reload_reopens_only_streams_whose_settings_changed() {
    let t0 = Instant::now();
    let text = |interval: u64| {
        format!(
            "[discovery]\ninitial_scan = false\n[bluetooth]\nmax_concurrent_connections = 2\n\
             [[device]]\nmac = \"{A}\"\ntype = \"BM2\"\nmode = \"stream\"\npoll_interval = 5\n\
             [[device]]\nmac = \"{B}\"\ntype = \"BM2\"\nmode = \"stream\"\npoll_interval = {interval}\n"
        )
    };
    let mut s = started(config(&text(5)), t0);
    s.heard(heard(A), t0);
    s.heard(heard(B), t0);
    let opened = s
        .take_actions()
        .iter()
        .filter(|a| matches!(a, Action::OpenStream { .. }))
        .count();
    assert_eq!(opened, 2);
    s.reconfigure(config(&text(5)), t0 + Duration::from_secs(1));
    let a = s.take_actions();
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::CloseStream { .. } | Action::OpenStream { .. })),
        "nothing changed: {a:?}"
    );
    s.reconfigure(config(&text(9)), t0 + Duration::from_secs(2));
    let links: Vec<(bool, Mac)> = s
        .take_actions()
        .iter()
        .filter_map(|x| match x {
            Action::CloseStream { mac } => Some((false, *mac)),
            Action::OpenStream { mac, interval, .. } => {
                assert_eq!(*interval, Duration::from_secs(9));
                Some((true, *mac))
            }
            _ => None,
        })
        .collect();
    assert_eq!(links, vec![(false, mac(B)), (true, mac(B))]);
    s.stop();
    let closed = s
        .take_actions()
        .iter()
        .filter(|x| matches!(x, Action::CloseStream { .. }))
        .count();
    assert_eq!(closed, 2, "stop closes every open link");
}

#[test]
fn a_dropped_stream_is_reported_and_reopened_with_backoff() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[discovery]\ninitial_scan = false\n[[device]]\nmac = \"{A}\"\ntype = \"BM2\"\nmode = \"stream\"\n"
    ));
    let mut s = started(c, t0);
    s.heard(heard(A), t0);
    s.take_actions();
    s.stream_ended(
        mac(A),
        LinkError::Failed("lost".into()),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(failures(&s.take_actions()), vec![(mac(A), 1002)]);
    assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(2)));
}

#[test]
fn a_passive_device_without_an_encrypted_broadcast_is_read_from_its_ibeacon() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[[device]]\nmac = \"{A}\"\ntype = \"BM2\"\nmode = \"passive\"\npoll_interval = 5\n\
         [[device]]\nmac = \"{B}\"\ntype = \"BM6\"\nmode = \"passive\"\npoll_interval = 5\n"
    ));
    let mut s = started(c, t0);
    s.take_actions();
    let beacon = |model: &str, soc: u8| {
        let m = Model::by_name(model).unwrap();
        (
            crate::devices::APPLE,
            crate::devices::ibeacon_payload(m, soc).unwrap(),
        )
    };
    let sources = |a: &[Action]| -> Vec<(Mac, Source)> {
        a.iter()
            .filter_map(|x| match x {
                Action::Emit(BleEvent::Frame(f)) => Some((f.mac, f.source)),
                _ => None,
            })
            .collect()
    };
    let mut out = Vec::new();
    for second in 0..12u64 {
        let now = t0 + Duration::from_secs(second);
        let mut a = heard(A);
        a.fresh = true;
        a.manufacturer = vec![beacon("BM2", 60 + second as u8)];
        s.heard(a, now);
        // B alternates its encrypted frame and its iBeacon, as real monitors do.
        let mut b = heard(B);
        b.fresh = true;
        b.manufacturer = if second % 2 == 0 {
            vec![bm6_advert(B, 12.5 + second as f64 / 100.0)]
        } else {
            vec![beacon("BM6", 70)]
        };
        s.heard(b, now);
        out.extend(sources(&s.take_actions()));
    }
    let a_sources: Vec<Source> = out
        .iter()
        .filter(|(m, _)| *m == mac(A))
        .map(|x| x.1)
        .collect();
    let b_sources: Vec<Source> = out
        .iter()
        .filter(|(m, _)| *m == mac(B))
        .map(|x| x.1)
        .collect();
    assert_eq!(
        a_sources,
        vec![Source::Ibeacon, Source::Ibeacon],
        "after one interval, then per interval"
    );
    assert!(
        b_sources.iter().all(|s| *s == Source::Advertisement),
        "{b_sources:?}"
    );
    assert_eq!(
        b_sources.len(),
        2,
        "at 0 s and 6 s: its adverts come every 2 s"
    );
}

#[test]
fn a_silent_passive_device_is_reported_every_three_intervals_and_a_heard_one_never() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[[device]]\nmac = \"{A}\"\ntype = \"BM6\"\nmode = \"passive\"\npoll_interval = 10\n\
         [[device]]\nmac = \"{B}\"\ntype = \"BM6\"\nmode = \"passive\"\npoll_interval = 10\n"
    ));
    let mut s = started(c, t0);
    s.take_actions();
    let mut reports = Vec::new();
    for second in 1..=65u64 {
        let now = t0 + Duration::from_secs(second);
        // B broadcasts a new frame every second; A is silent (out of range).
        let mut b = heard(B);
        b.fresh = true;
        b.manufacturer = vec![bm6_advert(B, 12.0 + second as f64 / 100.0)];
        s.heard(b, now);
        s.tick(now);
        reports.extend(
            failures(&s.take_actions())
                .into_iter()
                .map(|(m, code)| (m, code, second)),
        );
    }
    assert_eq!(
        reports,
        vec![(mac(A), 1003, 30), (mac(A), 1003, 60)],
        "A after 3 intervals, then every 3; B never"
    );
    // The adapter comes and goes: a passive device's silence counts anew, no report at once.
    let later = t0 + Duration::from_secs(66);
    s.adapter_lost(later);
    s.take_actions();
    s.adapter_available(BluetoothState::Active, later + Duration::from_secs(1));
    assert!(failures(&s.take_actions()).is_empty());
}

#[test]
fn a_refused_scan_is_tried_again_not_believed() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[[device]]\nmac = \"{A}\"\ntype = \"BM2\"\nmode = \"passive\"\npoll_interval = 5\n"
    ));
    let mut s = started(c, t0);
    assert!(matches!(s.take_actions().last(), Some(Action::StartScan)));
    s.scan_failed(t0);
    let retry = s.next_deadline().unwrap();
    assert_eq!(retry, t0 + SCAN_RETRY);
    s.tick(retry);
    assert!(
        matches!(s.take_actions().last(), Some(Action::StartScan)),
        "asked again"
    );
}

#[test]
fn a_monitor_whose_log_cannot_be_read_is_not_asked_again_in_the_run() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[discovery]\ninitial_scan = false\n[[device]]\nmac = \"{A}\"\ntype = \"BM6\"\npoll_interval = 60\n"
    ));
    let mut s = started(c, t0);
    s.heard(heard(A), t0);
    let first = s.take_actions();
    assert!(first.iter().any(|a| matches!(
        a,
        Action::Poll {
            history: Some(_),
            ..
        }
    )));
    let mut outcome = ok(A);
    outcome.history = Some(crate::devices::history::History {
        model: "BM6",
        requested_at: chrono::Utc::now(),
        records: Vec::new(),
        log_end: false,
        shifts: 0,
        pages: Vec::new(),
    });
    s.poll_done(mac(A), outcome, t0 + Duration::from_secs(16));
    s.take_actions();
    // Hours later: polls go on, without the download.
    let later = t0 + Duration::from_secs(7200);
    s.heard(heard(A), later);
    s.tick(later);
    let polls: Vec<bool> = s
        .take_actions()
        .iter()
        .filter_map(|a| match a {
            Action::Poll { history, .. } => Some(history.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(polls, vec![false]);
}

#[path = "proptests.rs"]
mod proptests;

#[path = "cluster_tests.rs"]
mod cluster;
