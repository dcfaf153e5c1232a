//! Home Assistant discovery against a real mosquitto: configs, the JSON paths their templates read,
//! configs published before the state they read, re-announcing on `homeassistant/status online`,
//! removal after a reload (empty config before the state is cleared), and turning it off.
//! (tests/ha-real/run.sh runs a real Home Assistant against the gateway.)

mod common;

use common::{Gateway, Mosquitto, Received, Subscriber, TempDir, sim_config};
use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);
const BM6: &str = "aabbcc000011";
const BM2: &str = "aabbcc000012";

fn devices(with_bm2: bool) -> String {
    let mut s = "[simulation]\ninterval_ms = 200\n[[vehicle]]\nid = \"van\"\nname = \"Van\"\n\
                 [[device]]\nmac = \"AA:BB:CC:00:00:11\"\ntype = \"BM6\"\nname = \"Starter\"\nvehicle = \"van\"\n"
        .to_string();
    if with_bm2 {
        s += "[[device]]\nmac = \"AA:BB:CC:00:00:12\"\ntype = \"BM2\"\nmode = \"passive\"\npoll_interval = 10\n";
    }
    s
}

fn config_topic(object: &str) -> String {
    format!("homeassistant/device/{object}/config")
}

/// `{{ value_json.a.b }}` or `{{ value_json.a.b if … }}` → ["a", "b"].
fn template_path(template: &str) -> Option<Vec<String>> {
    let inner = template
        .trim()
        .strip_prefix("{{")?
        .strip_suffix("}}")?
        .trim();
    let path = inner.strip_prefix("value_json.")?.split(' ').next()?;
    Some(path.split('.').map(str::to_string).collect())
}

/// Index of the first message on `topic` (with a non-empty payload if `full`).
fn first_on(seen: &[Received], topic: &str, full: bool) -> usize {
    seen.iter()
        .position(|r| r.topic == topic && (!full || !r.payload.is_empty()))
        .unwrap_or_else(|| panic!("nothing on {topic}"))
}

/// Home Assistant announces itself: `online` on its status topic.
fn announce_home_assistant(port: u16) {
    let ok = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "homeassistant/status",
            "-m",
            "online",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub failed");
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

#[test]
fn discovery_configs_match_the_payloads_they_read() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "#");
    let state = TempDir::new("state");
    let _gw = Gateway::start(&sim_config(broker.port, state.path(), &devices(true)));
    let bm6 = sub.wait_for(T, "BM6 config", |r| {
        r.topic == config_topic(&format!("battery_hawk_{BM6}"))
    });
    let bm2 = sub.wait_for(T, "BM2 config", |r| {
        r.topic == config_topic(&format!("battery_hawk_{BM2}"))
    });
    let van = sub.wait_for(T, "vehicle config", |r| {
        r.topic == config_topic("battery_hawk_vehicle_van")
    });
    let gw = sub.wait_for(T, "gateway config", |r| {
        r.topic == config_topic("battery_hawk_gateway_test-gw")
    });
    for c in [&bm6, &bm2, &van, &gw] {
        assert_eq!(c.qos, 1, "{}", c.topic);
    }
    let mut late = Subscriber::connect(broker.port, "homeassistant/#");
    late.drain_for(Duration::from_millis(500));
    assert_eq!(
        late.seen.iter().filter(|r| r.retain).count(),
        4,
        "the four configs are retained"
    );
    let v = bm6.json();
    assert_eq!(v["dev"]["name"], "Starter");
    assert_eq!(v["dev"]["mdl"], "BM6");
    assert_eq!(v["dev"]["via_device"], "battery_hawk_gateway_test-gw");
    assert_eq!(v["o"]["name"], "Battery Hawk");
    assert_eq!(v["cmps"]["voltage"]["device_class"], "voltage");
    assert_eq!(v["cmps"]["voltage"]["unit_of_measurement"], "V");
    assert_eq!(v["cmps"]["voltage"]["state_class"], "measurement");
    assert_eq!(v["cmps"]["soc"]["device_class"], "battery");
    assert_eq!(v["cmps"]["temperature"]["unit_of_measurement"], "°C");
    assert!(
        v["cmps"]["state"].get("device_class").is_none(),
        "free text: unknown_<n> cannot be listed as enum options"
    );
    assert_eq!(
        v["cmps"]["voltage"]["state_topic"], "battery_hawk/device/AA:BB:CC:00:00:11/status",
        "measurements read the retained status"
    );
    assert_eq!(v["cmps"]["rssi"]["entity_category"], "diagnostic");
    assert_eq!(v["cmps"]["last_reading"]["device_class"], "timestamp");
    assert_eq!(v["availability_mode"], "all");
    assert_eq!(
        v["availability"][0]["topic"],
        "battery_hawk/system/availability"
    );
    assert_eq!(
        v["availability"][1]["topic"],
        "battery_hawk/device/AA:BB:CC:00:00:11/status"
    );
    let b = bm2.json();
    assert!(
        b["cmps"].get("temperature").is_none() && b["cmps"].get("state").is_none(),
        "the passive BM2 measures no temperature or state"
    );
    let g = gw.json();
    for (key, c) in g["cmps"].as_object().unwrap() {
        assert_eq!(c["entity_category"], "diagnostic", "{key}");
        if key != "connectivity" {
            assert_eq!(
                c["availability"][0]["topic"], "battery_hawk/system/availability",
                "{key}"
            );
        }
    }
    let h = van.json();
    assert_eq!(
        h["cmps"]["health"]["options"],
        serde_json::json!(["excellent", "good", "fair", "poor"])
    );
    assert_eq!(
        b["cmps"]["voltage"]["expire_after"], 30,
        "3 × its poll interval"
    );

    // Every template reads a path that exists in a real payload on its state topic.
    sub.wait_for(T, "summary with a reading", |r| {
        r.topic == "battery_hawk/vehicle/van/summary" && r.json()["connected_devices"] == 1
    });
    sub.wait_for(T, "BM2 reading", |r| {
        r.topic == "battery_hawk/device/AA:BB:CC:00:00:12/reading"
    });
    sub.wait_for(T, "BM2 status", |r| {
        r.topic == "battery_hawk/device/AA:BB:CC:00:00:12/status"
    });
    sub.wait_for(T, "system status", |r| {
        r.topic == "battery_hawk/system/status"
    });
    // Every config went out before the state its entities read.
    for (config, state) in [
        (&bm6, "battery_hawk/device/AA:BB:CC:00:00:11/status"),
        (&bm2, "battery_hawk/device/AA:BB:CC:00:00:12/status"),
        (&van, "battery_hawk/vehicle/van/summary"),
    ] {
        assert!(
            first_on(&sub.seen, &config.topic, true) < first_on(&sub.seen, state, false),
            "{} after {state}",
            config.topic
        );
    }
    // The status carries the device's latest reading (SPEC §2.2).
    let reading = sub
        .seen
        .iter()
        .rev()
        .find(|r| r.topic == "battery_hawk/device/AA:BB:CC:00:00:12/reading")
        .unwrap()
        .json();
    let status = sub
        .wait_for(T, "BM2 status after that reading", |r| {
            r.topic == "battery_hawk/device/AA:BB:CC:00:00:12/status"
                && r.json()["reading"]["timestamp"] == reading["timestamp"]
        })
        .json();
    for k in ["voltage", "state_of_charge", "temperature", "device_type"] {
        assert_eq!(status["reading"][k], reading[k], "{k}");
    }
    assert!(status["reading"]["extra"].get("raw_data").is_none());
    let latest: HashMap<&str, &Received> = sub.seen.iter().map(|r| (r.topic.as_str(), r)).collect();
    let mut checked = 0;
    for config in [&bm6, &bm2, &van, &gw] {
        let v = config.json();
        for (key, c) in v["cmps"].as_object().unwrap() {
            let unique = c["unique_id"].as_str().unwrap();
            assert!(
                unique
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'),
                "{unique}"
            );
            let Some(template) = c["value_template"].as_str() else {
                continue;
            };
            let path = template_path(template).unwrap_or_else(|| panic!("{key}: {template}"));
            let topic = c["state_topic"].as_str().unwrap();
            let payload = latest
                .get(topic)
                .unwrap_or_else(|| panic!("nothing seen on {topic}"))
                .json();
            assert!(
                lookup(&payload, &path).is_some(),
                "{key}: {template} not in {payload}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} templates checked");
}

#[test]
fn configs_are_re_sent_when_home_assistant_comes_online() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "homeassistant/device/#");
    let state = TempDir::new("state");
    let _gw = Gateway::start(&sim_config(broker.port, state.path(), &devices(false)));
    sub.wait_for(T, "first config", |r| r.topic.contains(BM6));
    sub.drain_for(Duration::from_millis(500));
    sub.seen.clear();
    let sent = Instant::now();
    announce_home_assistant(broker.port);
    let again = sub.wait_for(T, "re-announced config", |r| r.topic.contains(BM6));
    let after = again.at.duration_since(sent);
    assert!(
        after >= Duration::from_millis(1500),
        "re-sent after {after:?}: too soon for HA"
    );
    sub.wait_for(T, "vehicle re-announced", |r| {
        r.topic.contains("vehicle_van")
    });
    sub.wait_for(T, "gateway re-announced", |r| r.topic.contains("gateway"));
}

#[test]
fn a_device_removed_by_reload_loses_its_entities() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "#");
    let state = TempDir::new("state");
    let gw = Gateway::start(&sim_config(broker.port, state.path(), &devices(true)));
    let topic = config_topic(&format!("battery_hawk_{BM2}"));
    sub.wait_for(T, "BM2 config", |r| {
        r.topic == topic && !r.payload.is_empty()
    });
    sub.wait_for(T, "BM2 status", |r| {
        r.topic == "battery_hawk/device/AA:BB:CC:00:00:12/status"
    });
    gw.rewrite_config(&sim_config(broker.port, state.path(), &devices(false)));
    gw.signal("HUP");
    sub.wait_for(T, "empty BM2 config", |r| {
        r.topic == topic && r.payload.is_empty()
    });
    sub.wait_for(T, "cleared BM2 status", |r| {
        r.topic == "battery_hawk/device/AA:BB:CC:00:00:12/status" && r.payload.is_empty()
    });
    let position = |topic: &str| {
        sub.seen
            .iter()
            .rposition(|r| r.topic == topic && r.payload.is_empty())
            .unwrap()
    };
    assert!(
        position(&topic) < position("battery_hawk/device/AA:BB:CC:00:00:12/status"),
        "the empty config goes out before the state is cleared"
    );
    // Nothing retained is left for it: a newcomer sees no ghost.
    let mut late = Subscriber::connect(broker.port, "#");
    late.drain_for(Duration::from_millis(700));
    assert!(
        late.seen
            .iter()
            .all(|r| !r.topic.contains(BM2) && !r.topic.contains("00:00:12"))
    );
    assert!(late.seen.iter().any(|r| r.topic.contains(BM6)));
}

#[test]
fn discovery_can_be_turned_off() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "#");
    let state = TempDir::new("state");
    let extra = format!("[homeassistant]\nenabled = false\n{}", devices(false));
    let _gw = Gateway::start(&sim_config(broker.port, state.path(), &extra));
    sub.wait_for(T, "a reading", |r| r.topic.ends_with("/reading"));
    sub.drain_for(Duration::from_secs(1));
    assert!(
        sub.seen
            .iter()
            .all(|r| !r.topic.starts_with("homeassistant/"))
    );
}

/// Home Assistant comes back after a long pause (SPEC §2.2, issue 13): a client that (re)subscribes gets
/// every monitor's current value at once from the retained status, and the birth message re-announces
/// the configs without publishing any reading again.
#[test]
fn after_a_long_pause_home_assistant_finds_every_value_in_the_retained_status() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/device/+/reading");
    let state = TempDir::new("state");
    // One reading per device, then a long pause (poll_interval 600 s).
    let text = devices(false).replace(
        "vehicle = \"van\"\n",
        "vehicle = \"van\"\npoll_interval = 600\n",
    );
    let _gw = Gateway::start(&sim_config(broker.port, state.path(), &text));
    let reading = sub.wait_for(T, "the one reading", |r| r.topic.contains("00:00:11"));
    let voltage = reading.json()["voltage"].clone();
    // Home Assistant restarts: it subscribes anew and announces itself.
    let mut ha = Subscriber::connect(broker.port, "battery_hawk/#");
    announce_home_assistant(broker.port);
    let status = ha.wait_for(
        Duration::from_secs(5),
        "the retained status with the reading",
        |r| r.topic == "battery_hawk/device/AA:BB:CC:00:00:11/status" && r.retain,
    );
    assert_eq!(status.json()["reading"]["voltage"], voltage);
    ha.drain_for(Duration::from_secs(4));
    sub.drain_for(Duration::from_millis(100));
    let readings = sub
        .seen
        .iter()
        .filter(|r| r.topic.contains("00:00:11"))
        .count();
    assert_eq!(readings, 1, "the birth published no reading again");
    assert!(
        !ha.seen.iter().any(|r| r.topic.ends_with("/reading")),
        "readings are not retained and not re-sent"
    );
}
