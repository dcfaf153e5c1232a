//! End to end: the real binary with simulated monitors, a real mosquitto, a real subscriber.
//! Asserts topic, QoS, retain flag and payload of every message type of SPEC §1–§2 and the delivery
//! rules of §3.

mod common;

use common::{Gateway, Mosquitto, Subscriber, TempDir, sim_config};
use serde_json::Value;
use std::time::Duration;

const SECS: fn(u64) -> Duration = Duration::from_secs;

const FLEET: &str = r#"
[mqtt]
status_interval = 1
[simulation]
interval_ms = 200
failure_rate = 0.2
[[simulation.monitor]]
mac = "AA:BB:CC:00:00:0F"
connectable = false
[[vehicle]]
id = "camper"
name = "Camper Van"
[[device]]
mac = "38:3b:26:b5:30:ab"
type = "BM6"
name = "Starter"
vehicle = "camper"
capacity_ah = 70
[[device]]
mac = "50-54-7B-22-2F-20"
type = "BM2"
mode = "passive"
poll_interval = 1
[[device]]
mac = "AA:BB:CC:00:00:0F"
type = "BM6"
name = "Unreachable"
"#;

/// FLEET's [mqtt] keys merged into the base config's section (TOML forbids a table twice).
fn fleet_config(port: u16, state: &std::path::Path) -> String {
    let base = sim_config(port, state, "");
    let extra = FLEET.replacen("[mqtt]\nstatus_interval = 1\n", "", 1);
    base.replacen("timeout = 5\n", "timeout = 5\nstatus_interval = 1\n", 1) + &extra
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_message_type_has_the_spec_topic_qos_retain_and_payload() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    let state = TempDir::new("state");
    let mut gw = Gateway::start(&fleet_config(broker.port, state.path()));
    let bm6 = "battery_hawk/device/38:3B:26:B5:30:AB";
    let bm2 = "battery_hawk/device/50:54:7B:22:2F:20";

    let online = sub.wait_for(SECS(15), "availability online", |r| {
        r.topic == "battery_hawk/system/availability"
    });
    assert_eq!((online.text().as_str(), online.qos), ("online", 1));

    let r = sub.wait_for(SECS(10), "BM6 reading", |r| {
        r.topic == format!("{bm6}/reading")
    });
    assert_eq!((r.qos, r.retain), (1, false));
    let v = r.json();
    assert_eq!(
        keys(&v),
        [
            "device_id",
            "timestamp",
            "voltage",
            "current",
            "temperature",
            "state_of_charge",
            "capacity",
            "cycles",
            "power",
            "vehicle_id",
            "device_type",
            "gateway_id",
            "extra"
        ]
    );
    assert_eq!(v["device_id"], "38:3B:26:B5:30:AB");
    assert_eq!(v["device_type"], "BM6");
    assert_eq!(v["vehicle_id"], "camper");
    assert_eq!(v["gateway_id"], "test-gw");
    assert_eq!(v["capacity"], 70.0);
    assert_eq!(
        (v["current"].clone(), v["power"].clone()),
        (Value::Null, Value::Null)
    );
    assert!(v["voltage"].as_f64().unwrap() > 11.0 && v["temperature"].is_number());
    assert_eq!(v["extra"]["source"], "gatt");
    assert_eq!(v["extra"]["raw_data"].as_str().unwrap().len(), 32);
    assert!(
        v["extra"]["raw_data"]
            .as_str()
            .unwrap()
            .starts_with("d15507")
    );
    let ts = v["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");

    let r = sub.wait_for(SECS(10), "BM2 advert reading", |r| {
        r.topic == format!("{bm2}/reading")
    });
    let v = r.json();
    assert_eq!(v["extra"]["source"], "advertisement");
    assert_eq!(v["temperature"], Value::Null);
    assert_eq!(v["vehicle_id"], Value::Null);

    let s = sub.wait_for(SECS(10), "device status", |r| {
        r.topic == format!("{bm6}/status")
    });
    assert_eq!(s.qos, 1);
    let v = s.json();
    for k in [
        "connected",
        "error_code",
        "error_message",
        "last_reading_at",
        "protocol_version",
    ] {
        assert!(v.get(k).is_some(), "status lacks {k}");
    }
    assert_eq!(v["extra"]["mode"], "poll");
    let failed = sub.wait_for(SECS(30), "a timeout status", |r| {
        r.topic == "battery_hawk/device/AA:BB:CC:00:00:0F/status" && r.json()["error_code"] == 1001
    });
    let v = failed.json();
    assert_eq!(v["connected"], false);
    assert_eq!(v["error_message"], "Connection timeout");
    assert!(v["extra"]["consecutive_failures"].as_u64().unwrap() >= 1);

    let sum = sub.wait_for(SECS(10), "vehicle summary", |r| {
        r.topic == "battery_hawk/vehicle/camper/summary" && r.json()["connected_devices"] == 1
    });
    assert_eq!(sum.qos, 1);
    let v = sum.json();
    assert_eq!(v["name"], "Camper Van");
    assert_eq!(v["total_devices"], 1);
    assert_eq!(v["total_capacity"], 70.0);
    assert!(v["health_score"].as_f64().unwrap() > 0.0);
    assert_eq!(v["devices"][0]["id"], "38:3B:26:B5:30:AB");
    assert_eq!(v["devices"][0]["name"], "Starter");

    let a = sub.wait_for(SECS(5), "association", |r| {
        r.topic == "battery_hawk/vehicle/camper/device_associated"
    });
    assert_eq!((a.qos, a.retain), (1, false));
    assert_eq!(a.json()["device_id"], "38:3B:26:B5:30:AB");
    assert_eq!(a.json()["new_vehicle"], true);

    let d = sub.wait_for(SECS(5), "discovery", |r| {
        r.topic == "battery_hawk/discovery/found"
    });
    assert_eq!(d.qos, 1);
    assert!(d.json()["advertisement"]["service_uuids"].is_array());

    let st = sub.wait_for(SECS(10), "system status", |r| {
        r.topic == "battery_hawk/system/status"
    });
    assert_eq!(st.qos, 2);
    let v = st.json();
    assert_eq!(v["core"]["running"], true);
    assert_eq!(v["components"]["bluetooth"], "simulated");
    assert_eq!(v["devices"]["total"], 3);
    assert!(v["storage"]["disk_usage_percent"].is_number());

    // Retained vs not: a subscriber arriving now gets retained state only.
    let mut late = Subscriber::connect(broker.port, "battery_hawk/#");
    late.drain_for(Duration::from_millis(700));
    let retained: Vec<&str> = late
        .seen
        .iter()
        .filter(|r| r.retain)
        .map(|r| r.topic.as_str())
        .collect();
    for t in [
        format!("{bm6}/status"),
        "battery_hawk/vehicle/camper/summary".into(),
        "battery_hawk/system/status".into(),
        "battery_hawk/system/availability".into(),
    ] {
        assert!(
            retained.contains(&t.as_str()),
            "{t} not retained: {retained:?}"
        );
    }
    for r in late.seen.iter().filter(|r| r.retain) {
        assert!(
            !r.topic.ends_with("/reading")
                && !r.topic.ends_with("/device_associated")
                && !r.topic.ends_with("/found")
                && !r.topic.ends_with("/shutdown"),
            "{} must not be retained",
            r.topic
        );
    }

    // Clean shutdown: final status (running:false), shutdown (QoS 2), availability offline — in order.
    gw.signal("TERM");
    let bye = sub.wait_for(SECS(10), "shutdown event", |r| {
        r.topic == "battery_hawk/system/shutdown"
    });
    assert_eq!((bye.qos, bye.retain), (2, false));
    assert_eq!(bye.json()["reason"], "SIGTERM");
    assert_eq!(bye.json()["gateway_id"], "test-gw");
    let off = sub.wait_for(SECS(10), "offline", |r| {
        r.topic == "battery_hawk/system/availability" && r.text() == "offline"
    });
    assert_eq!(gw.wait(SECS(10)), Some(0), "log:\n{}", gw.log());
    let last_status = sub
        .seen
        .iter()
        .rfind(|r| r.topic == "battery_hawk/system/status")
        .unwrap();
    assert_eq!(last_status.json()["core"]["running"], false);
    assert!(last_status.at <= bye.at && bye.at <= off.at);
}

#[test]
fn last_will_marks_a_killed_gateway_offline() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/system/availability");
    let state = TempDir::new("state");
    let mut gw = Gateway::start(&sim_config(broker.port, state.path(), ""));
    sub.wait_for(SECS(15), "online", |r| r.text() == "online");
    gw.child.kill().unwrap();
    let off = sub.wait_for(SECS(10), "last will", |r| r.text() == "offline");
    assert_eq!(off.qos, 1);
    let mut late = Subscriber::connect(broker.port, "battery_hawk/system/availability");
    let r = late.wait_for(SECS(5), "retained will", |r| r.retain);
    assert_eq!(r.text(), "offline");
}

#[test]
fn readings_made_while_the_broker_is_down_arrive_in_order_with_their_timestamps() {
    let port = common::free_port();
    let state = TempDir::new("state");
    let devices: String = (1..=8)
        .map(|n| format!("[[device]]\nmac = \"AA:BB:CC:00:00:0{n}\"\ntype = \"BM6\"\n"))
        .collect();
    let config = sim_config(port, state.path(), &devices).replace(
        "connection_timeout = 2\n",
        "connection_timeout = 2\nmax_concurrent_connections = 8\n",
    );
    let mut gw = Gateway::start(&config);
    std::thread::sleep(SECS(5));
    let broker_up = chrono::Utc::now();
    let broker = Mosquitto::start_on(port);
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    sub.wait_for(SECS(15), "online", |r| r.text() == "online");
    sub.drain_for(SECS(1));
    let last = gw.stop_and_last_status(&mut sub);
    let produced = last["counters"]["readings"].as_u64().unwrap();
    let mut stamps: Vec<String> = Vec::new();
    for n in 1..=8 {
        let topic = format!("battery_hawk/device/AA:BB:CC:00:00:0{n}/reading");
        let mine: Vec<String> = sub
            .on(&topic)
            .iter()
            .map(|r| r.json()["timestamp"].as_str().unwrap().to_string())
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{topic} in order");
        stamps.extend(mine);
    }
    assert_eq!(
        stamps.len() as u64,
        produced,
        "every reading produced arrives, once"
    );
    let early = stamps
        .iter()
        .filter(|t| **t < broker_up.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .count();
    assert!(
        early >= 16,
        "only {early} readings predate the broker: {stamps:?}"
    );
}

#[test]
fn a_restart_on_the_same_state_dir_does_not_repeat_discovery_or_association() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    let state = TempDir::new("state");
    let config = sim_config(
        broker.port,
        state.path(),
        "[simulation]\ninterval_ms = 100\n[[vehicle]]\nid = \"van\"\n\
         [[device]]\nmac = \"AA:BB:CC:00:00:02\"\ntype = \"BM2\"\nvehicle = \"van\"\n",
    );
    let mut gw = Gateway::start(&config);
    sub.wait_for(SECS(15), "discovery", |r| {
        r.topic.ends_with("/discovery/found")
    });
    sub.wait_for(SECS(5), "association", |r| {
        r.topic.ends_with("/device_associated")
    });
    sub.wait_for(SECS(5), "reading", |r| r.topic.ends_with("/reading"));
    gw.signal("TERM");
    assert_eq!(gw.wait(SECS(10)), Some(0));
    sub.drain_for(Duration::from_millis(300));
    sub.seen.clear();

    let mut gw = Gateway::start(&config);
    sub.wait_for(SECS(15), "a reading after restart", |r| {
        r.topic.ends_with("/reading")
    });
    sub.drain_for(SECS(1));
    let again: Vec<&str> = sub
        .seen
        .iter()
        .map(|r| r.topic.as_str())
        .filter(|t| t.ends_with("/discovery/found") || t.ends_with("/device_associated"))
        .collect();
    assert!(again.is_empty(), "repeated after restart: {again:?}");
    gw.signal("TERM");
    assert_eq!(gw.wait(SECS(10)), Some(0));
}

#[test]
fn sighup_reloads_devices_without_losing_state() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    let state = TempDir::new("state");
    let base = sim_config(
        broker.port,
        state.path(),
        "[simulation]\ninterval_ms = 100\n[[device]]\nmac = \"AA:BB:CC:00:00:03\"\ntype = \"BM6\"\n",
    );
    let gw = Gateway::start(&base);
    sub.wait_for(SECS(15), "first device", |r| {
        r.topic.ends_with("00:00:03/reading")
    });
    let with_second = format!("{base}[[device]]\nmac = \"AA:BB:CC:00:00:04\"\ntype = \"BM7\"\n");
    gw.rewrite_config(&with_second);
    gw.signal("HUP");
    let r = sub.wait_for(SECS(10), "second device", |r| {
        r.topic.ends_with("00:00:04/reading")
    });
    assert_eq!(r.json()["device_type"], "BM7");
    // A broken file on reload keeps the running configuration.
    gw.rewrite_config("this is not toml");
    gw.signal("HUP");
    sub.drain_for(Duration::from_millis(500));
    let after_bad_reload = std::time::Instant::now();
    sub.wait_for(SECS(5), "readings continue", |r| {
        r.topic.ends_with("00:00:04/reading") && r.at > after_bad_reload
    });
    let mut gw = gw;
    let last = gw.stop_and_last_status(&mut sub);
    let readings = last["counters"]["readings"].as_u64().unwrap();
    let published = sub
        .seen
        .iter()
        .filter(|r| r.topic.ends_with("/reading"))
        .count() as u64;
    assert_eq!(
        readings, published,
        "the reading counter survived the reloads"
    );
    assert!(gw.log().contains("keeping the running configuration"));
}

#[test]
fn topic_prefix_from_the_environment() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "home/bh/#");
    let state = TempDir::new("state");
    let config = sim_config(
        broker.port,
        state.path(),
        "[simulation]\ninterval_ms = 100\n[[device]]\nmac = \"AA:BB:CC:00:00:05\"\n",
    );
    let _gw = Gateway::start_env(&config, &[("BATTERYHAWK_MQTT_TOPIC_PREFIX", "home/bh")]);
    let r = sub.wait_for(SECS(15), "reading under the env prefix", |r| {
        r.topic == "home/bh/device/AA:BB:CC:00:00:05/reading"
    });
    assert_eq!(r.json()["device_type"], "BM6");
}
