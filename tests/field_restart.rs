//! A broker restarted without persistence (SPEC §3 "the broker may have forgotten everything"): after
//! reconnecting, the gateway publishes every retained topic it owns again — availability, system
//! status, each device status, each vehicle summary and each Home Assistant discovery config — even the
//! ones whose content did not change.

mod common;

use common::{Gateway, Mosquitto, Subscriber, TempDir, retained, sim_config};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Three monitors on two vehicles, read every second.
const FLEET: &str = "[simulation]\ninterval_ms = 500\n\
    [[vehicle]]\nid = \"van\"\nname = \"Van\"\n[[vehicle]]\nid = \"boat\"\nname = \"Boat\"\n\
    [[device]]\nmac = \"AA:00:00:00:00:01\"\ntype = \"BM6\"\nvehicle = \"van\"\n\
    [[device]]\nmac = \"AA:00:00:00:00:02\"\ntype = \"BM6\"\nvehicle = \"van\"\n\
    [[device]]\nmac = \"AA:00:00:00:00:03\"\ntype = \"BM7\"\nvehicle = \"boat\"\n";

#[test]
fn every_retained_topic_is_back_soon_after_a_broker_restart_without_persistence() {
    let mut broker = Mosquitto::start();
    let state = TempDir::new("state");
    let mut sub = Subscriber::connect(broker.port, "#");
    let _gw = Gateway::start(&sim_config(broker.port, state.path(), FLEET));
    for topic in [
        "battery_hawk/vehicle/van/summary",
        "battery_hawk/vehicle/boat/summary",
        "battery_hawk/device/AA:00:00:00:00:03/status",
        "battery_hawk/system/status",
    ] {
        sub.wait_for(T, topic, |r| r.topic == topic);
    }
    sub.drain_for(Duration::from_secs(2));
    let before: BTreeSet<String> = retained(broker.port, "#", Duration::from_secs(1))
        .into_keys()
        .collect();
    for expected in [
        "battery_hawk/system/availability",
        "battery_hawk/system/status",
        "battery_hawk/device/AA:00:00:00:00:01/status",
        "battery_hawk/device/AA:00:00:00:00:02/status",
        "battery_hawk/device/AA:00:00:00:00:03/status",
        "battery_hawk/vehicle/van/summary",
        "battery_hawk/vehicle/boat/summary",
        "homeassistant/device/battery_hawk_vehicle_van/config",
    ] {
        assert!(
            before.contains(expected),
            "{expected} retained before: {before:?}"
        );
    }

    broker.kill();
    broker.restart();
    let restarted = std::time::Instant::now();
    let mut after = Subscriber::connect(broker.port, "#");
    let first = after
        .wait_for(T, "the gateway back", |r| {
            r.topic.starts_with("battery_hawk/")
        })
        .at;
    // `wait_for` shows each message to the predicate once, in order: collect until the set is whole.
    let back = RefCell::new(BTreeSet::new());
    let last = after
        .wait_for(T, "every retained topic again", |r| {
            back.borrow_mut().insert(r.topic.clone());
            before.is_subset(&back.borrow())
        })
        .at;
    let took = last.saturating_duration_since(first);
    eprintln!(
        "FIGURE: {} retained topics back {:.3} s after the gateway's first publish on the restarted \
         broker, {:.2} s after the restart (reconnect backoff included)",
        before.len(),
        took.as_secs_f64(),
        last.saturating_duration_since(restarted).as_secs_f64()
    );
    assert!(
        took <= Duration::from_secs(5),
        "retained state took {took:?} to come back"
    );
    let now = retained(broker.port, "#", Duration::from_secs(1));
    let missing: Vec<&String> = before.iter().filter(|t| !now.contains_key(*t)).collect();
    assert!(
        missing.is_empty(),
        "not retained after the restart: {missing:?}"
    );
}
