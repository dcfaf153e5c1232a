//! The cluster rule and hand-over with a fake clock (SPEC §6).

use super::*;
use crate::ble::scheduler::cluster::{EARLY_REPORT_GAP, FIRST_REPORT, SETTLE};
use crate::messages::ClusterFact;

/// Gateway `me` of a cluster reporting every 10 s, with two polled BM6 (B pinned to `pin_b` if given).
fn cluster_config(me: &str, pin_b: Option<&str>) -> Arc<Config> {
    let pin = pin_b.map_or(String::new(), |g| format!("gateway = \"{g}\"\n"));
    config(&format!(
        "[gateway]\nid = \"{me}\"\n[cluster]\nenabled = true\nreport_interval = 10\n\
         [discovery]\ninitial_scan = false\n\
         [[device]]\nmac = \"{A}\"\ntype = \"BM6\"\npoll_interval = 60\n\
         [[device]]\nmac = \"{B}\"\ntype = \"BM6\"\npoll_interval = 60\n{pin}"
    ))
}

fn heard_at(m: &str, rssi: i16) -> Heard {
    Heard {
        rssi: Some(rssi),
        ..heard(m)
    }
}

fn hears(gateway: &str, monitors: &[(&str, i16)]) -> ClusterFact {
    ClusterFact::Hears {
        gateway: gateway.into(),
        monitors: monitors.iter().map(|(m, r)| (mac(m), *r)).collect(),
    }
}

fn online(gateway: &str, online: bool) -> ClusterFact {
    ClusterFact::Availability {
        gateway: gateway.into(),
        online,
    }
}

fn owner(m: &str, gateway: Option<&str>) -> ClusterFact {
    ClusterFact::Owner {
        mac: mac(m),
        gateway: gateway.map(str::to_string),
    }
}

/// Owner notices in `actions`: (mac, held).
fn owner_notices(actions: &[Action]) -> Vec<(Mac, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(BleEvent::Notice(Notice::Owner { mac, held, .. })) => Some((*mac, *held)),
            _ => None,
        })
        .collect()
}

fn reports(actions: &[Action]) -> Vec<Vec<(Mac, i16)>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(BleEvent::Notice(Notice::Hears(h))) => {
                Some(h.iter().map(|m| (m.mac, m.rssi)).collect())
            }
            _ => None,
        })
        .collect()
}

/// A gateway `me` that is connected to the broker, hears A and B at `rssi` and has sent its first report.
fn settled(me: &str, pin_b: Option<&str>, rssi: i16, t0: Instant) -> (Scheduler, Instant) {
    let mut s = started(cluster_config(me, pin_b), t0);
    s.cluster_fact(ClusterFact::Broker { connected: true }, t0);
    for m in [A, B] {
        s.heard(heard_at(m, rssi), t0 + Duration::from_millis(100));
    }
    let t = t0 + FIRST_REPORT;
    s.tick(t);
    (s, t)
}

#[test]
fn without_other_gateways_a_member_takes_every_monitor_it_hears_then_polls_them() {
    let t0 = Instant::now();
    let mut s = started(cluster_config("b", None), t0);
    assert!(polls(&s.take_actions()).is_empty());
    s.cluster_fact(ClusterFact::Broker { connected: true }, t0);
    s.heard(heard_at(A, -60), t0 + Duration::from_millis(100));
    let a = s.take_actions();
    assert!(
        polls(&a).is_empty() && owner_notices(&a).is_empty(),
        "nothing is read or taken before it is reported: {a:?}"
    );
    s.tick(t0 + FIRST_REPORT);
    let a = s.take_actions();
    assert_eq!(reports(&a), vec![vec![(mac(A), -60)]]);
    assert_eq!(owner_notices(&a), vec![(mac(A), true)]);
    assert_eq!(polls(&a), vec![mac(A)], "taken, due at once: {a:?}");
    assert_eq!(s.held(), [mac(A)].into());
}

/// Gateway "b" connected, knowing that gateway "a" is online and hears A at `a_rssi` and B at `b_rssi`,
/// and itself hearing both at -70.
fn beside_a(a_rssi: i16, b_rssi: i16, t0: Instant) -> Scheduler {
    let mut s = started(cluster_config("b", None), t0);
    s.cluster_fact(ClusterFact::Broker { connected: true }, t0);
    s.cluster_fact(online("a", true), t0);
    s.cluster_fact(hears("a", &[(A, a_rssi), (B, b_rssi)]), t0);
    for m in [A, B] {
        s.heard(heard_at(m, -70), t0 + Duration::from_millis(100));
    }
    s.tick(t0 + FIRST_REPORT);
    s
}

#[test]
fn the_best_rssi_wins_and_a_tie_goes_to_the_lowest_gateway_id() {
    let t0 = Instant::now();
    // "a" hears A better, B equally well: "a" < "b" takes the tie.
    let mut s = beside_a(-60, -70, t0);
    assert!(owner_notices(&s.take_actions()).is_empty());
    assert!(s.held().is_empty());
    // "a" hears B worse: "b" takes B only.
    let mut s = beside_a(-60, -80, t0);
    assert_eq!(owner_notices(&s.take_actions()), vec![(mac(B), true)]);
}

#[test]
fn a_pin_wins_while_its_gateway_is_online_and_the_rule_decides_when_it_is_not() {
    let t0 = Instant::now();
    let mut s = started(cluster_config("b", Some("a")), t0);
    s.cluster_fact(ClusterFact::Broker { connected: true }, t0);
    s.cluster_fact(online("a", true), t0);
    s.cluster_fact(hears("a", &[]), t0);
    for m in [A, B] {
        s.heard(heard_at(m, -50), t0 + Duration::from_millis(100));
    }
    let t = t0 + FIRST_REPORT;
    s.tick(t);
    assert_eq!(
        owner_notices(&s.take_actions()),
        vec![(mac(A), true)],
        "B is pinned to the online gateway a, which does not even report it"
    );
    s.cluster_fact(online("a", false), t + Duration::from_secs(1));
    assert_eq!(owner_notices(&s.take_actions()), vec![(mac(B), true)]);
}

#[test]
fn a_better_challenger_takes_over_only_after_two_reports_six_db_better() {
    let t0 = Instant::now();
    let (mut s, t) = settled("b", None, -70, t0);
    s.take_actions();
    assert_eq!(s.held(), [mac(A), mac(B)].into());
    s.cluster_fact(online("a", true), t);
    // B waits for the connection slot A's poll holds. One report 20 dB better: not yet.
    s.cluster_fact(hears("a", &[(B, -50)]), t + Duration::from_secs(1));
    assert!(owner_notices(&s.take_actions()).is_empty());
    // A second one only 5 dB better: still not.
    s.cluster_fact(hears("a", &[(B, -65)]), t + Duration::from_secs(2));
    assert!(owner_notices(&s.take_actions()).is_empty());
    // 6 dB better, after one only 5 dB better: still not.
    s.cluster_fact(hears("a", &[(B, -64)]), t + Duration::from_secs(3));
    assert!(owner_notices(&s.take_actions()).is_empty());
    // Two in a row at least 6 dB better: "b" lets B go (no link to it: released at once).
    s.cluster_fact(hears("a", &[(B, -64)]), t + Duration::from_secs(4));
    assert_eq!(owner_notices(&s.take_actions()), vec![(mac(B), false)]);
    assert_eq!(s.held(), [mac(A)].into());
}

#[test]
fn a_monitor_announced_by_another_online_gateway_is_taken_only_after_its_release_or_last_will() {
    let t0 = Instant::now();
    let mut s = started(cluster_config("b", None), t0);
    s.cluster_fact(ClusterFact::Broker { connected: true }, t0);
    s.cluster_fact(online("a", true), t0);
    s.cluster_fact(owner(A, Some("a")), t0);
    s.heard(heard_at(A, -50), t0 + Duration::from_millis(100));
    let t = t0 + FIRST_REPORT;
    s.tick(t);
    // "a" no longer hears A (its report lacks it): the rule names "b", but "a" still holds it.
    s.cluster_fact(hears("a", &[]), t);
    let a = s.take_actions();
    assert!(
        owner_notices(&a).is_empty() && polls(&a).is_empty(),
        "{a:?}"
    );
    s.cluster_fact(owner(A, None), t + Duration::from_secs(1));
    let a = s.take_actions();
    assert_eq!(owner_notices(&a), vec![(mac(A), true)]);
    assert_eq!(polls(&a), vec![mac(A)]);

    // The same, ended by the holder's last will instead of a release.
    let mut s = started(cluster_config("b", None), t0);
    s.cluster_fact(ClusterFact::Broker { connected: true }, t0);
    s.cluster_fact(online("a", true), t0);
    s.cluster_fact(owner(A, Some("a")), t0);
    s.cluster_fact(hears("a", &[(A, -90)]), t0);
    s.heard(heard_at(A, -50), t0 + Duration::from_millis(100));
    s.tick(t);
    assert!(owner_notices(&s.take_actions()).is_empty());
    s.cluster_fact(online("a", false), t + Duration::from_secs(1));
    assert_eq!(owner_notices(&s.take_actions()), vec![(mac(A), true)]);
}

#[test]
fn nothing_is_taken_until_the_retained_facts_had_time_to_arrive() {
    let t0 = Instant::now();
    let mut s = started(cluster_config("b", None), t0);
    s.heard(heard_at(A, -50), t0 + Duration::from_millis(100));
    s.tick(t0 + FIRST_REPORT);
    assert!(owner_notices(&s.take_actions()).is_empty(), "no broker yet");
    let t = t0 + FIRST_REPORT + Duration::from_secs(1);
    s.cluster_fact(ClusterFact::Broker { connected: true }, t);
    assert!(owner_notices(&s.take_actions()).is_empty(), "settling");
    let deadline = s.next_deadline().unwrap();
    assert!(deadline > t && deadline <= t + SETTLE, "{deadline:?}");
    s.tick(t + SETTLE);
    assert_eq!(owner_notices(&s.take_actions()), vec![(mac(A), true)]);
}

#[test]
fn a_poll_in_flight_ends_before_the_release_is_announced() {
    let t0 = Instant::now();
    let (mut s, t) = settled("b", None, -70, t0);
    let a = s.take_actions();
    let first = polls(&a)[0];
    // Gateway "a" comes online, pinned... no: hears `first` far better twice.
    s.cluster_fact(online("a", true), t);
    s.cluster_fact(hears("a", &[(A, -40), (B, -40)]), t);
    s.cluster_fact(
        hears("a", &[(A, -40), (B, -40)]),
        t + Duration::from_secs(1),
    );
    let a = s.take_actions();
    let released: Vec<Mac> = owner_notices(&a).iter().map(|(m, _)| *m).collect();
    assert!(!released.contains(&first), "still being polled: {a:?}");
    assert!(polls(&a).is_empty());
    s.poll_done(first, ok(&first.to_string()), t + Duration::from_secs(2));
    let a = s.take_actions();
    let frame_at = a
        .iter()
        .position(|x| matches!(x, Action::Emit(BleEvent::Frame(_))))
        .expect("the reading of the poll is handed on");
    let release_at = a
        .iter()
        .position(|x| {
            matches!(
                x,
                Action::Emit(BleEvent::Notice(Notice::Owner { held: false, .. }))
            )
        })
        .expect("then the release");
    assert!(frame_at < release_at);
    assert!(s.held().is_empty());
}

#[test]
fn losing_the_broker_lets_go_of_everything_without_clearing_the_owner_topic_and_takes_it_back() {
    let t0 = Instant::now();
    let (mut s, t) = settled("b", None, -70, t0);
    let first = polls(&s.take_actions())[0];
    s.cluster_fact(ClusterFact::Broker { connected: false }, t);
    let a = s.take_actions();
    let other = if first == mac(A) { mac(B) } else { mac(A) };
    assert_eq!(owner_notices(&a), vec![(other, false)], "{a:?}");
    assert!(s.held().is_empty());
    s.poll_done(first, ok(&first.to_string()), t + Duration::from_secs(1));
    let b = s.take_actions();
    assert_eq!(
        owner_notices(&b),
        vec![(first, false)],
        "after its poll: {b:?}"
    );
    assert!(polls(&b).is_empty());
    let clears = a.iter().chain(&b).any(|x| {
        matches!(
            x,
            Action::Emit(BleEvent::Notice(Notice::Owner { clear: true, .. }))
        )
    });
    assert!(
        !clears,
        "the owner topic is never cleared while the broker is away"
    );
    // Back, with the owner topic still naming "b": taken again after settling.
    s.cluster_fact(owner(A, Some("b")), t + Duration::from_secs(5));
    s.cluster_fact(
        ClusterFact::Broker { connected: true },
        t + Duration::from_secs(5),
    );
    s.tick(t + Duration::from_secs(5) + SETTLE);
    assert_eq!(s.held(), [mac(A), mac(B)].into());
}

#[test]
fn reports_go_out_every_interval_and_early_for_a_newly_heard_monitor() {
    let t0 = Instant::now();
    let mut s = started(cluster_config("b", None), t0);
    s.cluster_fact(ClusterFact::Broker { connected: true }, t0);
    s.heard(heard_at(A, -60), t0 + Duration::from_millis(100));
    s.heard(heard_at(A, -80), t0 + Duration::from_millis(200));
    s.tick(t0 + FIRST_REPORT);
    assert_eq!(
        reports(&s.take_actions()),
        vec![vec![(mac(A), -65)]],
        "smoothed: -60 then a quarter of the way to -80"
    );
    // B heard: reported early, but not before the gap since the last report.
    let t = t0 + FIRST_REPORT + Duration::from_secs(1);
    s.heard(heard_at(B, -70), t);
    assert!(reports(&s.take_actions()).is_empty());
    let next = s.next_deadline().unwrap();
    assert_eq!(next, t0 + FIRST_REPORT + EARLY_REPORT_GAP);
    s.tick(next);
    assert_eq!(
        reports(&s.take_actions()),
        vec![vec![(mac(A), -65), (mac(B), -70)]]
    );
    // Not heard for three intervals, and no link open: left out.
    s.poll_done(mac(A), ok(A), next);
    s.poll_done(mac(B), ok(B), next);
    let late = next + Duration::from_secs(31);
    s.tick(late);
    assert_eq!(reports(&s.take_actions()), vec![vec![]]);
}

#[test]
fn a_held_monitor_whose_owner_topic_was_cleared_under_it_is_announced_again() {
    let t0 = Instant::now();
    let (mut s, t) = settled("b", None, -70, t0);
    s.take_actions();
    s.cluster_fact(owner(A, None), t + Duration::from_secs(1));
    assert_eq!(owner_notices(&s.take_actions()), vec![(mac(A), true)]);
    assert_eq!(s.held(), [mac(A), mac(B)].into());
}
