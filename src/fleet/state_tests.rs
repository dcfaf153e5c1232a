//! Unit tests of the fleet state machine.

use super::*;
use crate::config::Config;
use crate::devices::{Measurement, Source};
use chrono::Duration;
use std::path::Path;

const BM6: &str = "AA:BB:CC:DD:EE:01";

fn config(text: &str) -> Arc<Config> {
    Arc::new(Config::from_toml(text, Path::new("t.toml"), Vec::new()).unwrap())
}

fn fleet(text: &str) -> Fleet {
    Fleet::new(config(text), Registry::default(), BluetoothState::Simulated)
}

fn bm6() -> Model {
    Model::by_name("BM6").unwrap()
}

fn reading(mac: &str, voltage: f64, soc: f64, source: Source) -> FleetEvent {
    FleetEvent::Reading(DecodedReading {
        mac: mac.parse().unwrap(),
        model: bm6(),
        source,
        measurement: Measurement {
            voltage: Some(voltage),
            temperature: Some(20.0),
            state_of_charge: Some(soc),
            ..Measurement::default()
        },
        plain: vec![0; 16],
        rssi: Some(-60),
        received_at: Utc::now(),
    })
}

fn seen(mac: &str) -> FleetEvent {
    FleetEvent::Notice(Notice::Seen(Sighting {
        mac: mac.parse().unwrap(),
        name: Some("BM6".into()),
        model: Some(bm6()),
        confirmed: true,
        rssi: Some(-70),
        service_uuids: vec![],
        manufacturer_data: vec![],
        at: Utc::now(),
    }))
}

fn kinds(out: &[Outbound]) -> Vec<&'static str> {
    out.iter()
        .map(|o| match o {
            Outbound::Reading(_) => "reading",
            Outbound::DeviceStatus(_) => "status",
            Outbound::Summary(_) => "summary",
            Outbound::Associated(_) => "associated",
            Outbound::Discovered(_) => "discovered",
            Outbound::System(_) => "system",
            Outbound::Removed(_) => "removed",
            Outbound::History(_) => "history",
            Outbound::Hears(_) => "hears",
            Outbound::Owner(_) => "owner",
            Outbound::Shutdown { .. } => "shutdown",
        })
        .collect()
}

const ONE_VAN: &str = "[[vehicle]]\nid = \"van\"\nname = \"Van\"\n\
                       [[device]]\nmac = \"AA:BB:CC:DD:EE:01\"\ntype = \"BM6\"\nvehicle = \"van\"\ncapacity_ah = 50\n";

#[test]
fn start_associates_config_devices_once() {
    let mut f = fleet(ONE_VAN);
    let out = f.start(Utc::now());
    assert_eq!(kinds(&out), ["associated", "summary", "system"]);
    let Outbound::Associated(a) = &out[0] else {
        unreachable!()
    };
    assert!(a.new_vehicle);
    assert!(f.take_dirty_registry());
    let registry = f.registry().clone();
    let mut again = Fleet::new(config(ONE_VAN), registry, BluetoothState::Simulated);
    assert_eq!(kinds(&again.start(Utc::now())), ["summary", "system"]);
}

#[test]
fn a_reading_publishes_discovery_once_then_reading_status_summary() {
    let mut f = fleet(ONE_VAN);
    f.start(Utc::now());
    let out = f.handle(reading(BM6, 12.6, 85.0, Source::Gatt), Utc::now());
    assert_eq!(kinds(&out), ["discovered", "reading", "status", "summary"]);
    let Outbound::Reading(r) = &out[1] else {
        unreachable!()
    };
    assert_eq!(
        (r.vehicle_id.as_deref(), r.capacity_ah),
        (Some("van"), Some(50.0))
    );
    let Outbound::Summary(s) = &out[3] else {
        unreachable!()
    };
    assert_eq!(
        (s.connected_devices, s.health_score, s.total_capacity),
        (1, Some(0.85), 50.0)
    );
    let Outbound::DeviceStatus(st) = &out[2] else {
        unreachable!()
    };
    let latest = st.reading.as_ref().expect("the status carries the reading");
    assert_eq!(
        (
            latest.measurement.voltage,
            latest.capacity_ah,
            latest.source
        ),
        (Some(12.6), Some(50.0), Source::Gatt)
    );
    // Same values again: the summary is cached.
    let out = f.handle(reading(BM6, 12.6, 85.0, Source::Gatt), Utc::now());
    assert_eq!(kinds(&out), ["reading", "status"]);
    let out = f.handle(reading(BM6, 12.5, 80.0, Source::Gatt), Utc::now());
    assert_eq!(kinds(&out), ["reading", "status", "summary"]);
}

#[test]
fn failures_set_error_codes_and_count() {
    let mut f = fleet(ONE_VAN);
    f.start(Utc::now());
    f.handle(reading(BM6, 12.6, 85.0, Source::Gatt), Utc::now());
    let fail = FleetEvent::Notice(Notice::PollFailed {
        mac: BM6.parse().unwrap(),
        model: Some(bm6()),
        error: LinkError::Timeout,
    });
    f.handle(fail.clone(), Utc::now());
    let out = f.handle(fail, Utc::now());
    let Outbound::DeviceStatus(s) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(!s.reachable);
    assert_eq!(s.error.as_ref().unwrap().0, 1001);
    assert_eq!(s.consecutive_failures, 2);
    assert!(s.last_reading_at.is_some());
    let rejected = FleetEvent::Rejected {
        mac: BM6.parse().unwrap(),
        model: bm6(),
        reason: crate::devices::DecodeError::NotMine,
    };
    let out = f.handle(rejected, Utc::now());
    let Outbound::DeviceStatus(s) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(s.error.as_ref().unwrap().0, 1005);
    let snap = f.snapshot(Utc::now(), true);
    assert_eq!(
        (snap.readings, snap.connection_failures, snap.decode_errors),
        (1, 2, 1)
    );
    assert_eq!((snap.devices_total, snap.devices_connected), (1, 0));
    let out = f.handle(reading(BM6, 12.6, 85.0, Source::Gatt), Utc::now());
    let Outbound::DeviceStatus(s) = &out[1] else {
        panic!("{out:?}")
    };
    assert!(s.reachable && s.error.is_none() && s.consecutive_failures == 0);
}

fn adopted(mac: &str) -> FleetEvent {
    FleetEvent::Notice(Notice::Adopted {
        mac: mac.parse().unwrap(),
        model: bm6(),
        mode: crate::config::Mode::Passive,
    })
}

#[test]
fn adopted_monitors_get_vehicles_that_never_collide_and_are_forgotten_cleanly() {
    let mut f = Fleet::new(
        config("[[vehicle]]\nid = \"vehicle_1\"\n"),
        Registry::default(),
        BluetoothState::Active,
    );
    f.start(Utc::now());
    assert_eq!(
        kinds(&f.handle(seen("AA:BB:CC:DD:EE:02"), Utc::now())),
        ["discovered"]
    );
    let out = f.handle(adopted("AA:BB:CC:DD:EE:02"), Utc::now());
    assert_eq!(kinds(&out), ["associated", "summary", "system"]);
    let Outbound::Associated(a) = &out[0] else {
        unreachable!()
    };
    assert_eq!((a.vehicle_id.as_str(), a.new_vehicle), ("vehicle_2", true));
    let Outbound::Summary(s) = &out[1] else {
        unreachable!()
    };
    assert_eq!(s.name, "Vehicle 2");
    // Seen again: nothing new.
    assert!(kinds(&f.handle(seen("AA:BB:CC:DD:EE:02"), Utc::now())).is_empty());
    assert_eq!(f.snapshot(Utc::now(), true).devices_total, 1);
    let out = f.handle(
        FleetEvent::Notice(Notice::Forgotten {
            mac: "AA:BB:CC:DD:EE:02".parse().unwrap(),
        }),
        Utc::now(),
    );
    assert_eq!(kinds(&out), ["removed", "removed", "system"]);
    assert_eq!(f.snapshot(Utc::now(), true).devices_total, 0);
    assert!(f.registry().devices.is_empty());
}

#[test]
fn a_name_only_sighting_is_not_announced_or_remembered() {
    let mut f = fleet("");
    let mut s = seen("AA:BB:CC:DD:EE:03");
    if let FleetEvent::Notice(Notice::Seen(s)) = &mut s {
        s.confirmed = false;
    }
    assert!(kinds(&f.handle(s, Utc::now())).is_empty());
    assert!(f.registry().devices.is_empty());
}

#[test]
fn config_wins_and_moving_a_device_updates_both_vehicles() {
    let mut f = fleet(ONE_VAN);
    f.start(Utc::now());
    f.handle(reading(BM6, 12.6, 85.0, Source::Gatt), Utc::now());
    let moved = "[[vehicle]]\nid = \"van\"\n[[vehicle]]\nid = \"boat\"\n\
                 [[device]]\nmac = \"AA:BB:CC:DD:EE:01\"\nvehicle = \"boat\"\n";
    let out = f.handle(
        FleetEvent::Notice(Notice::Reconfigure(config(moved))),
        Utc::now(),
    );
    let k = kinds(&out);
    assert_eq!(&k[..3], ["associated", "summary", "summary"], "{k:?}");
    let summaries: Vec<(&str, usize)> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Summary(s) => Some((s.vehicle_id.as_str(), s.total_devices)),
            _ => None,
        })
        .collect();
    assert!(summaries.contains(&("van", 0)) && summaries.contains(&("boat", 1)));
    // Dropping the device and the boat: the device's and the boat's retained state are cleared.
    let gone = "[[vehicle]]\nid = \"van\"\n";
    let out = f.handle(
        FleetEvent::Notice(Notice::Reconfigure(config(gone))),
        Utc::now(),
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Outbound::Removed(Removed::Device(_))))
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Outbound::Removed(Removed::Vehicle(v)) if v == "boat"))
    );
    assert_eq!(k.last(), Some(&"system"));
}

#[test]
fn stopping_sends_a_final_snapshot_then_shutdown() {
    let mut f = Fleet::new(config(""), Registry::default(), BluetoothState::Simulated);
    let out = f.handle(
        FleetEvent::Notice(Notice::Stopping {
            reason: "SIGTERM".into(),
        }),
        Utc::now(),
    );
    assert_eq!(kinds(&out), ["system", "shutdown"]);
    let Outbound::System(s) = &out[0] else {
        unreachable!()
    };
    assert!(!s.running);
}

const TWO_IN_VAN: &str = "[[vehicle]]\nid = \"van\"\n\
                          [[device]]\nmac = \"AA:BB:CC:DD:EE:01\"\ntype = \"BM6\"\nvehicle = \"van\"\n\
                          [[device]]\nmac = \"AA:BB:CC:DD:EE:02\"\ntype = \"BM6\"\nvehicle = \"van\"\n";

fn summaries(out: &[Outbound]) -> Vec<(Option<&'static str>, Option<f64>)> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Summary(s) => Some((s.overall_health, s.health_score)),
            _ => None,
        })
        .collect()
}

#[test]
fn no_health_verdict_until_every_device_was_tried() {
    let mut f = fleet(TWO_IN_VAN);
    assert_eq!(summaries(&f.start(Utc::now())), [(None, None)]);
    // One good reading, the other device not tried yet: still no verdict (no false `poor`).
    let out = f.handle(reading(BM6, 12.6, 90.0, Source::Gatt), Utc::now());
    assert_eq!(summaries(&out), [(None, None)]);
    let out = f.handle(
        FleetEvent::Notice(Notice::PollFailed {
            mac: "AA:BB:CC:DD:EE:02".parse().unwrap(),
            model: Some(bm6()),
            error: LinkError::Timeout,
        }),
        Utc::now(),
    );
    assert_eq!(summaries(&out), [(Some("fair"), Some(0.45))]);
}

#[test]
fn a_status_before_the_first_reading_has_none() {
    let mut f = fleet(ONE_VAN);
    f.start(Utc::now());
    let out = f.handle(
        FleetEvent::Notice(Notice::PollFailed {
            mac: BM6.parse().unwrap(),
            model: Some(bm6()),
            error: LinkError::Timeout,
        }),
        Utc::now(),
    );
    let Some(Outbound::DeviceStatus(st)) = out.first() else {
        panic!("{:?}", kinds(&out))
    };
    assert!(st.reading.is_none());
}

/// The BLE scheduler reports a passive device that broadcast nothing usable for three intervals (on the
/// monotonic clock); the fleet then counts it as tried: no longer pending, scored 0.
#[test]
fn a_silent_passive_device_stops_being_pending_when_the_scheduler_reports_it() {
    let mut f = fleet(
        "[[vehicle]]\nid = \"van\"\n\
         [[device]]\nmac = \"AA:BB:CC:DD:EE:01\"\ntype = \"BM6\"\nvehicle = \"van\"\n\
         mode = \"passive\"\npoll_interval = 60\n",
    );
    let t0 = Utc::now();
    let start = f.start(t0);
    assert_eq!(summaries(&start), [(None, None)], "pending: no verdict yet");
    let silent = FleetEvent::Notice(Notice::PollFailed {
        mac: "AA:BB:CC:DD:EE:01".parse().unwrap(),
        model: Some(bm6()),
        error: LinkError::NotFound,
    });
    let out = f.handle(silent, t0 + Duration::seconds(180));
    assert_eq!(kinds(&out), ["status", "summary"]);
    assert_eq!(summaries(&out), [(Some("poor"), Some(0.0))]);
    let Outbound::DeviceStatus(st) = &out[0] else {
        unreachable!()
    };
    assert_eq!(st.error.as_ref().map(|e| e.0), Some(1003));
}

#[test]
fn an_unnamed_device_is_named_by_model_and_mac_tail() {
    let mut f = fleet(
        "[[device]]\nmac = \"AA:BB:CC:DD:EE:01\"\ntype = \"BM6\"\nname = \" \"\n\
         [[device]]\nmac = \"AA:BB:CC:DD:EE:02\"\n",
    );
    f.start(Utc::now());
    let name = |f: &mut Fleet, mac: &str| {
        let out = f.handle(
            FleetEvent::Notice(Notice::PollFailed {
                mac: mac.parse().unwrap(),
                model: None,
                error: LinkError::Timeout,
            }),
            Utc::now(),
        );
        match &out[0] {
            Outbound::DeviceStatus(s) => s.name.clone(),
            _ => panic!("{:?}", kinds(&out)),
        }
    };
    assert_eq!(name(&mut f, "AA:BB:CC:DD:EE:01"), "BM6 DD:EE:01");
    assert_eq!(name(&mut f, "AA:BB:CC:DD:EE:02"), "Monitor DD:EE:02");
}

fn owner(mac: &str, held: bool) -> FleetEvent {
    FleetEvent::Notice(Notice::Owner {
        mac: mac.parse().unwrap(),
        held,
        rssi: Some(-60),
        clear: true,
    })
}

#[test]
fn in_a_cluster_only_held_monitors_and_the_lowest_macs_vehicle_are_published() {
    let mut f = fleet(&format!("[cluster]\nenabled = true\n{TWO_IN_VAN}"));
    let out = f.start(Utc::now());
    assert_eq!(
        kinds(&out),
        ["associated", "associated", "system"],
        "no summary: nothing held"
    );
    let second = "AA:BB:CC:DD:EE:02";
    // Holding the second device only: its status, but the van's summary belongs to the first's owner.
    let out = f.handle(owner(second, true), Utc::now());
    assert_eq!(kinds(&out), ["owner"]);
    let out = f.handle(reading(second, 12.6, 90.0, Source::Gatt), Utc::now());
    assert_eq!(kinds(&out), ["discovered", "reading", "status"]);
    // A failure of a device not held (a poll that ended after the release) publishes nothing.
    let failed = FleetEvent::Notice(Notice::PollFailed {
        mac: BM6.parse().unwrap(),
        model: None,
        error: LinkError::Timeout,
    });
    assert!(kinds(&f.handle(failed, Utc::now())).is_empty());
    // Taking the lowest MAC makes this gateway the van's summary publisher.
    let out = f.handle(owner(BM6, true), Utc::now());
    assert_eq!(kinds(&out), ["owner", "summary"]);
    let out = f.handle(owner(BM6, false), Utc::now());
    assert_eq!(kinds(&out), ["owner"]);
    let Outbound::Owner(o) = &out[0] else {
        unreachable!()
    };
    assert!(
        o.claim.is_none() && o.clear,
        "a release clears the owner topic"
    );
}

#[test]
fn in_a_cluster_the_summary_lists_devices_other_gateways_serve_from_their_statuses() {
    let mut f = fleet(&format!("[cluster]\nenabled = true\n{TWO_IN_VAN}"));
    f.start(Utc::now());
    f.handle(owner(BM6, true), Utc::now());
    let second: Mac = "AA:BB:CC:DD:EE:02".parse().unwrap();
    let remote = RemoteStatus {
        mac: second,
        cleared: false,
        connected: true,
        voltage: Some(12.5),
        state_of_charge: Some(80.0),
        temperature: Some(18.0),
        last_reading: Some(Utc::now()),
    };
    let out = f.handle(FleetEvent::Remote(remote.clone()), Utc::now());
    let Some(Outbound::Summary(s)) = out.last() else {
        panic!("{:?}", kinds(&out))
    };
    let d = s.devices.iter().find(|d| d.mac == second).unwrap();
    assert!(d.connected && !d.pending);
    assert_eq!(d.voltage, Some(12.5));
    // Our own status echoed back is ignored.
    let echo = RemoteStatus {
        mac: BM6.parse().unwrap(),
        ..remote
    };
    assert!(kinds(&f.handle(FleetEvent::Remote(echo), Utc::now())).is_empty());
}

#[test]
fn a_first_sighting_gives_an_untyped_device_its_model_and_name() {
    // Configured without `type`: the model comes from what the registry learns at the first sighting,
    // and only that device's view is recomputed (its status and name show it).
    let mut f = fleet(&format!("[[device]]\nmac = \"{BM6}\"\n"));
    f.start(Utc::now());
    let status = |out: &[Outbound]| {
        out.iter()
            .find_map(|o| match o {
                Outbound::DeviceStatus(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap()
    };
    let before = status(&f.handle(
        FleetEvent::Notice(Notice::PollFailed {
            mac: BM6.parse().unwrap(),
            model: None,
            error: LinkError::Timeout,
        }),
        Utc::now(),
    ));
    assert_eq!(
        (before.model, before.name.as_str()),
        (None, "Monitor DD:EE:01")
    );
    let after = status(&f.handle(reading(BM6, 12.6, 80.0, Source::Gatt), Utc::now()));
    assert_eq!(
        (after.model, after.name.as_str()),
        (Some(bm6()), "BM6 DD:EE:01")
    );
}
