//! The BLE stage (scheduler + BlueZ radio) against the mocked BlueZ of tests/bluez/monitors.py, which
//! forgets devices after discovery stops as bluetoothd does: no spin with a silent monitor, ghosts never
//! come back after a reload, links are closed at stop, foreign devices cost nothing, forgotten devices are
//! found again before each poll; and what real monitors do (SPEC §5.3/§5.4): a `BM300 Pro` is a BM7, a
//! phantom "Battery Monitor" is no monitor, only the newest advert counts, an iBeacon-only BM2 is read.

mod common;

use battery_hawk::devices::{self, Measurement, Model, to_hex};
use common::bluez::FakeBluez;
use common::{Gateway, Mosquitto, Subscriber, TempDir, cpu_seconds};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const A: &str = "38:3B:26:B5:30:AB";
const B: &str = "38:3B:26:B5:30:AC";
const BM2: &str = "50:54:7B:22:2F:20";
const BM6_REQUEST: &str = "697ea0b5d54cf024e794772355554114";
const BM6_READING: &str = "71543b749f6f614dd6333f21546f681d"; // 12.70 V
const T: Duration = Duration::from_secs(30);

fn model(name: &str) -> Model {
    Model::by_name(name).unwrap()
}

fn measurement(volts: f64, soc: f64) -> Measurement {
    Measurement {
        voltage: Some(volts),
        state_of_charge: Some(soc),
        ..Measurement::default()
    }
}

/// `mac`'s encrypted advert for `volts`, as BlueZ's manufacturer map `{company id: rest}`.
fn advert(name: &str, mac: &str, volts: f64) -> (u16, String) {
    let m = model(name);
    let plain = m
        .encode_advert(&measurement(volts, 80.0), mac.parse().unwrap())
        .unwrap();
    let f = devices::encrypt_frame(m, &plain);
    (u16::from_le_bytes([f[0], f[1]]), to_hex(&f[2..]))
}

fn advert_hex(name: &str, mac: &str, volts: f64) -> String {
    let m = model(name);
    let plain = m
        .encode_advert(&measurement(volts, 80.0), mac.parse().unwrap())
        .unwrap();
    to_hex(&devices::encrypt_frame(m, &plain))
}

fn polled_bm6(mac: &str, connect: &str) -> Value {
    let (cid, v) = advert("BM6", mac, 12.6);
    json!({"address": mac, "name": "BM6", "rssi": -60, "manufacturer": {cid.to_string(): v},
           "connect": connect, "hang_s": 4, "request": BM6_REQUEST, "replies": [BM6_READING]})
}

fn gateway_config(state: &TempDir, port: u16, extra: &str) -> String {
    format!(
        "[gateway]\nid = \"ble-gw\"\nstate_dir = \"{}\"\n[logging]\nlevel = \"debug\"\ntarget = \"stderr\"\n\
         [mqtt]\nbroker = \"127.0.0.1\"\nport = {port}\nstatus_interval = 1\n\
         [bluetooth]\nbackend = \"bluez\"\nconnection_timeout = 2\ndata_wait_timeout = 1\n{extra}",
        state.path().display()
    )
}

/// A broker, a subscriber to `filter` on it, and a state directory for the gateway.
fn site(filter: &str) -> (Mosquitto, Subscriber, TempDir) {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, filter);
    (broker, sub, TempDir::new("state"))
}

fn start(bluez: &FakeBluez, config: &str) -> Gateway {
    Gateway::start_env(config, &[("DBUS_SYSTEM_BUS_ADDRESS", &bluez.address)])
}

fn stop(mut gw: Gateway) -> String {
    gw.signal("TERM");
    assert_eq!(gw.wait(Duration::from_secs(20)), Some(0), "{}", gw.log());
    let log = gw.log();
    assert!(!log.contains("panicked"), "{log}");
    log
}

#[test]
fn a_silent_monitor_neither_spins_nor_starves_the_answering_one() {
    let bluez = FakeBluez::start(&json!({"devices": [polled_bm6(A, "ok"), polled_bm6(B, "hang")]}));
    let (broker, mut sub, state) = site("battery_hawk/device/#");
    let gw = start(
        &bluez,
        &gateway_config(
            &state,
            broker.port,
            &format!(
                "[discovery]\nscan_duration = 1\n\
                 [[device]]\nmac = \"{A}\"\ntype = \"BM6\"\npoll_interval = 3\n\
                 [[device]]\nmac = \"{B}\"\ntype = \"BM6\"\npoll_interval = 3\n"
            ),
        ),
    );
    sub.wait_for(T, "a first reading of A", |r| {
        r.topic.ends_with(&format!("{A}/reading"))
    });
    let before = cpu_seconds(gw.child.id());
    let t0 = Instant::now();
    sub.drain_for(Duration::from_secs(15));
    let used = cpu_seconds(gw.child.id()) - before;
    let share = used / t0.elapsed().as_secs_f64();
    eprintln!(
        "silent monitor: {used:.2} s CPU in 15 s ({:.1} % of a core)",
        share * 100.0
    );
    assert!(
        share < 0.05,
        "{:.1} % of a core with a silent monitor",
        share * 100.0
    );
    let reads: Vec<Instant> = sub
        .seen
        .iter()
        .filter(|r| r.topic.ends_with(&format!("{A}/reading")))
        .map(|r| r.at)
        .collect();
    // Every interval (3 s), plus at most one connection attempt of B (2 s) in the way, plus slack.
    assert!(reads.len() >= 3, "A read {} times in 15 s", reads.len());
    for w in reads.windows(2) {
        assert!(
            w[1] - w[0] < Duration::from_secs(8),
            "{:?} between readings of A",
            w[1] - w[0]
        );
    }
    sub.wait_for(T, "B times out", |r| {
        r.topic.ends_with(&format!("{B}/status")) && r.json()["error_code"] == 1001
    });
    stop(gw);
}

#[test]
fn a_forgotten_monitor_is_found_again_before_each_poll() {
    let bluez = FakeBluez::start(&json!({"forget_s": 1, "devices": [polled_bm6(A, "ok")]}));
    let (broker, mut sub, state) = site("battery_hawk/device/#");
    let gw = start(
        &bluez,
        &gateway_config(
            &state,
            broker.port,
            &format!(
                "[discovery]\nscan_duration = 1\n[[device]]\nmac = \"{A}\"\ntype = \"BM6\"\npoll_interval = 4\n"
            ),
        ),
    );
    for n in 1..=3 {
        sub.wait_for(T, &format!("reading {n}"), |r| {
            r.topic.ends_with(&format!("{A}/reading"))
        });
        assert!(
            !sub.seen
                .iter()
                .any(|r| r.topic.ends_with("/status") && r.json()["error_code"] == 1003),
            "1003 although the monitor advertises"
        );
        sub.seen.clear();
    }
    assert!(
        bluez.adapter_calls("StartDiscovery") >= 3,
        "each poll after BlueZ forgot the device needs a scan; mock log:\n{}\ngateway log:\n{}",
        bluez.mock_log(),
        gw.log()
    );
    assert!(
        !sub.seen
            .iter()
            .any(|r| r.topic.ends_with("/status") && r.json()["error_code"] == 1003)
    );
    stop(gw);
}

#[test]
fn a_device_removed_by_a_reload_is_never_polled_published_or_adopted_again() {
    let bluez = FakeBluez::start(&json!({"devices": [polled_bm6(A, "ok"), polled_bm6(B, "ok")]}));
    let (broker, mut sub, state) = site("#");
    let both = format!(
        "[discovery]\nscan_duration = 1\nperiodic_interval = 2\n\
         [[device]]\nmac = \"{A}\"\ntype = \"BM6\"\npoll_interval = 1\n\
         [[device]]\nmac = \"{B}\"\ntype = \"BM6\"\npoll_interval = 1\n"
    );
    let gw = start(&bluez, &gateway_config(&state, broker.port, &both));
    sub.wait_for(T, "B read", |r| r.topic.ends_with(&format!("{B}/reading")));
    let only_a = format!(
        "[discovery]\nscan_duration = 1\nperiodic_interval = 2\n\
         [[device]]\nmac = \"{A}\"\ntype = \"BM6\"\npoll_interval = 1\n"
    );
    std::fs::write(&gw.config, gateway_config(&state, broker.port, &only_a)).unwrap();
    gw.signal("HUP");
    sub.wait_for(T, "B's retained status cleared", |r| {
        r.topic.ends_with(&format!("{B}/status")) && r.payload.is_empty()
    });
    let hex = B.replace(':', "").to_lowercase();
    sub.wait_for(T, "B's Home Assistant configs cleared", |r| {
        r.topic.starts_with("homeassistant/") && r.topic.contains(&hex) && r.payload.is_empty()
    });
    let connects = bluez.device_calls(B, "Connect");
    sub.seen.clear();
    // Several periodic scans hear B again (a confirmed monitor, auto_configure on by default).
    sub.drain_for(Duration::from_secs(7));
    // Its topics carry the address as is (device topics) or as lower-case hex (Home Assistant's).
    let ghost: Vec<&str> = sub
        .seen
        .iter()
        .filter(|r| (r.topic.contains(B) || r.topic.contains(&hex)) && !r.payload.is_empty())
        .map(|r| r.topic.as_str())
        .collect();
    assert!(ghost.is_empty(), "B came back: {ghost:?}");
    assert!(
        sub.seen
            .iter()
            .any(|r| r.topic.ends_with(&format!("{A}/reading"))),
        "A is still read"
    );
    assert_eq!(
        bluez.device_calls(B, "Connect"),
        connects,
        "B was polled again"
    );
    stop(gw);
}

#[test]
fn stop_closes_every_link() {
    let bluez = FakeBluez::start(&json!({"devices": [
        {"address": BM2, "name": "ZX-1689", "manufacturer": {},
         "replies": [to_hex(&devices::encrypt_frame(model("BM2"), &model("BM2").encode_gatt(&measurement(12.41, 60.0))))],
         "stream_ms": 100}]}));
    let (broker, mut sub, state) = site("battery_hawk/device/#");
    let gw = start(
        &bluez,
        &gateway_config(
            &state,
            broker.port,
            &format!(
                "[discovery]\ninitial_scan = false\n[[device]]\nmac = \"{BM2}\"\ntype = \"BM2\"\nmode = \"stream\"\npoll_interval = 1\n"
            ),
        ),
    );
    sub.wait_for(T, "stream reading", |r| r.topic.ends_with("/reading"));
    assert_eq!(bluez.device_calls(BM2, "Disconnect"), 0);
    stop(gw);
    assert!(
        bluez.device_calls(BM2, "Disconnect") >= 1,
        "the stream link stayed open"
    );
}

#[test]
fn a_busy_neighbourhood_costs_one_look_per_foreign_device() {
    let phone = "06:F0:00:00:00:01";
    let phone_adverts: Vec<String> = (0..20u8)
        .map(|i| format!("4c00{:02x}{}", i, "00".repeat(13)))
        .collect();
    let bluez = FakeBluez::start(&json!({"devices": [
        {"address": phone, "name": "", "gatt": false, "manufacturer": {"76": "1005011800"},
         "adverts": phone_adverts, "advert_ms": 50},
        {"address": BM2, "name": "ZX-1689", "manufacturer": {},
         "adverts": [advert_hex("BM2", BM2, 12.83)], "advert_ms": 200}]}));
    let (broker, mut sub, state) = site("battery_hawk/#");
    let gw = start(
        &bluez,
        &gateway_config(
            &state,
            broker.port,
            &format!(
                "[[device]]\nmac = \"{BM2}\"\ntype = \"BM2\"\nmode = \"passive\"\npoll_interval = 1\n"
            ),
        ),
    );
    sub.wait_for(T, "passive reading", |r| r.topic.ends_with("/reading"));
    sub.drain_for(Duration::from_secs(4));
    let reads = bluez.property_reads(phone);
    eprintln!("foreign device: {reads} property reads in ~5 s of 20 adverts/s");
    assert!(reads <= 8, "{reads} property reads of a phone");
    assert_eq!(bluez.device_calls(phone, "Connect"), 0);
    assert!(!sub.seen.iter().any(|r| r.topic.contains("06:F0")));
    stop(gw);
}

#[test]
fn real_monitor_behaviours_identification_newest_advert_and_ibeacon() {
    let bm300 = "11:22:33:44:55:77";
    let phantom = "11:22:33:44:55:88";
    let ibeacon_bm2 = "50:54:7B:22:2F:21";
    let beacon = to_hex(&devices::ibeacon_payload(model("BM2"), 68).unwrap());
    // BlueZ's cache holds three old adverts of the passive BM6 before the gateway listens.
    let old: serde_json::Map<String, Value> = [13.51, 13.40, 13.30]
        .iter()
        .map(|v| {
            let (cid, hex) = advert("BM6", A, *v);
            (cid.to_string(), json!(hex))
        })
        .collect();
    let bluez = FakeBluez::start(&json!({"devices": [
        {"address": bm300, "name": "BM300 Pro", "manufacturer": {}},
        {"address": phantom, "name": "Battery Monitor", "gatt": false, "manufacturer": {}},
        {"address": A, "name": "BM6", "manufacturer": old,
         "adverts": [advert_hex("BM6", A, 12.90)], "advert_ms": 300},
        {"address": ibeacon_bm2, "name": "ZX-1689", "manufacturer": {"76": beacon},
         "adverts": [format!("76:{beacon}")], "advert_ms": 300}]}));
    // scan: the BM300 Pro is an (unconfirmed) BM7; the phantom is no monitor.
    let out = bluez.command("", &["scan", "--duration", "2", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |mac: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["address"] == mac)
            .cloned()
    };
    let bm7 = row(bm300).expect("BM300 Pro listed");
    assert_eq!(
        (bm7["model"].clone(), bm7["confirmed"].clone()),
        (json!("BM7"), json!(false))
    );
    assert!(row(phantom).is_none(), "the phantom is listed: {list}");

    let (broker, mut sub, state) = site("battery_hawk/#");
    let gw = start(
        &bluez,
        &gateway_config(
            &state,
            broker.port,
            &format!(
                "[discovery]\nscan_duration = 2\n\
                 [[device]]\nmac = \"{A}\"\ntype = \"BM6\"\nmode = \"passive\"\npoll_interval = 1\n\
                 [[device]]\nmac = \"{ibeacon_bm2}\"\ntype = \"BM2\"\nmode = \"passive\"\npoll_interval = 1\n"
            ),
        ),
    );
    let r = sub.wait_for(T, "BM6 passive reading", |r| {
        r.topic.ends_with(&format!("{A}/reading"))
    });
    assert_eq!(
        r.json()["voltage"],
        json!(12.9),
        "only the newest advert counts"
    );
    let r = sub.wait_for(T, "the iBeacon-only BM2's reading", |r| {
        r.topic.ends_with(&format!("{ibeacon_bm2}/reading"))
    });
    let v = r.json();
    assert_eq!(
        (
            v["voltage"].clone(),
            v["state_of_charge"].clone(),
            v["extra"]["source"].clone()
        ),
        (Value::Null, json!(68.0), json!("ibeacon"))
    );
    stop(gw);
    // Neither the BM300 Pro (name only) nor the phantom was adopted or announced.
    let adopted: Vec<&str> = sub
        .seen
        .iter()
        .filter(|r| r.topic.contains(bm300) || r.topic.contains(phantom))
        .map(|r| r.topic.as_str())
        .collect();
    assert!(adopted.is_empty(), "{adopted:?}");
}
