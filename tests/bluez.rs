//! The real bluer code against BlueZ's D-Bus API served by python-dbusmock (see tests/common/bluez.rs and
//! tests/bluez/monitors.py). Frames are made here with the real model keys.

mod common;

use battery_hawk::devices::{self, Measurement, Model, parse_hex, to_hex};
use common::bluez::FakeBluez;
use common::{Gateway, Mosquitto, Subscriber, TempDir};
use serde_json::{Value, json};
use std::process::Output;
use std::time::Duration;

const BM6_MAC: &str = "38:3B:26:B5:30:AB";
const BM2_MAC: &str = "50:54:7B:22:2F:20";
const BM7_MAC: &str = "11:22:33:44:55:77";
/// SPEC §5.6 vectors.
const BM6_REQUEST: &str = "697ea0b5d54cf024e794772355554114";
const BM7_REQUEST: &str = "586d7b2377c6924dcd750acb29f5bf8d";
const BM6_READING: &str = "71543b749f6f614dd6333f21546f681d"; // 12.70 V, 25 °C, 80 %
const BM6_ECHO: &str = "8ae0358523fe154976de18fc102eb1d4";
const BM6_ADVERT: &str = "ee6e22884c11f151c1760465b2fe9003"; // 12.53 V, 85 %
const BM2_ADVERT: &str = "e18911ed76d18e5ba793d5574f205b61"; // 12.83 V, 93 %

fn model(name: &str) -> Model {
    Model::by_name(name).unwrap()
}

/// A GATT frame of `model` for `volts`, encrypted with its key.
fn gatt(name: &str, volts: f64, soc: f64) -> String {
    let m = model(name);
    let plain = m.encode_gatt(&Measurement {
        voltage: Some(volts),
        temperature: Some(21.0),
        state_of_charge: Some(soc),
        state: Some("not_charging".into()),
        ..Measurement::default()
    });
    to_hex(&devices::encrypt_frame(m, &plain))
}

/// BlueZ's manufacturer data for an encrypted advert: company id = first two bytes, little-endian.
fn manufacturer(advert: &str) -> Value {
    let f = parse_hex(advert).unwrap();
    let cid = u16::from_le_bytes([f[0], f[1]]);
    json!({ cid.to_string(): to_hex(&f[2..]) })
}

fn bm6(connect: &str, replies: &[&str]) -> Value {
    json!({"address": BM6_MAC, "name": "BM6", "rssi": -61, "manufacturer": manufacturer(BM6_ADVERT),
           "connect": connect, "request": BM6_REQUEST, "replies": replies})
}

fn scenario(devices: Vec<Value>) -> Value {
    json!({"adapter": "hci0", "devices": devices})
}

/// Run a one-shot command against the mock with a small config (short timeouts).
fn cli(bluez: &FakeBluez, args: &[&str]) -> Output {
    bluez.command(
        "[bluetooth]\nconnection_timeout = 2\ndata_wait_timeout = 1\n",
        args,
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_out(o: &Output) -> Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", o.stdout))
}

#[test]
fn scan_finds_and_classifies_each_model_and_ignores_other_devices() {
    let bluez = FakeBluez::start(&scenario(vec![
        json!({"address": BM6_MAC, "name": "Battery Monitor", "rssi": -61,
               "manufacturer": manufacturer(BM6_ADVERT)}),
        json!({"address": BM2_MAC, "name": "ZX-1689", "rssi": -72, "manufacturer": manufacturer(BM2_ADVERT)}),
        json!({"address": BM7_MAC, "name": "BM7", "rssi": -80}),
        json!({"address": "AA:AA:AA:AA:AA:AA", "name": "Mi Band", "rssi": -50, "gatt": false,
               "manufacturer": {"343": "0102030405"}}),
    ]));
    let found = json_out(&cli(&bluez, &["scan", "--json", "--duration", "1"]));
    let found = found.as_array().unwrap();
    let by_addr = |a: &str| found.iter().find(|d| d["address"] == a).cloned();
    assert_eq!(found.len(), 3, "{found:?}");
    // The advertised name says BM2, but the advert decrypts with the BM6 key to this very address.
    let d = by_addr(BM6_MAC).unwrap();
    assert_eq!(
        (
            d["model"].clone(),
            d["voltage"].clone(),
            d["state_of_charge"].clone()
        ),
        (json!("BM6"), json!(12.53), json!(85.0))
    );
    assert_eq!(d["rssi"], -61);
    let d = by_addr(BM2_MAC).unwrap();
    assert_eq!(
        (d["model"].clone(), d["voltage"].clone()),
        (json!("BM2"), json!(12.83))
    );
    let d = by_addr(BM7_MAC).unwrap();
    assert_eq!(
        (d["model"].clone(), d["voltage"].clone()),
        (json!("BM7"), Value::Null)
    );
    assert!(by_addr("AA:AA:AA:AA:AA:AA").is_none());

    let table = cli(&bluez, &["scan", "--duration", "1"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(BM6_MAC) && text.contains("12.53 V") && text.contains("85%"),
        "{text}"
    );
}

#[test]
fn a_bm6_poll_writes_the_encrypted_request_skips_the_echo_and_reads_exactly() {
    let bluez = FakeBluez::start(&scenario(vec![bm6("ok", &[BM6_ECHO, BM6_READING])]));
    let v = json_out(&cli(&bluez, &["read", BM6_MAC, "--type", "bm6", "--json"]));
    assert_eq!(v["voltage"], 12.7);
    assert_eq!(v["temperature"], 25.0);
    assert_eq!(v["state_of_charge"], 80.0);
    assert_eq!(v["extra"]["state"], "not_charging");
    assert_eq!(v["extra"]["source"], "gatt");
    assert_eq!(v["extra"]["raw_data"], "d155070019005004f600000000000000");
    // Without --type the model comes from the advertisement.
    let o = cli(&bluez, &["read", BM6_MAC]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("BM6") && text.contains("12.70 V"),
        "{text} {}",
        stderr(&o)
    );
}

#[test]
fn a_bm7_answers_its_own_request_and_a_bm2_streams_unasked() {
    let bm7 = json!({"address": BM7_MAC, "name": "BM7", "request": BM7_REQUEST,
                     "replies": [gatt("BM7", 13.05, 90.0)]});
    let bm2 = json!({"address": BM2_MAC, "name": "ZX-1689", "manufacturer": manufacturer(BM2_ADVERT),
                     "replies": [gatt("BM2", 12.41, 60.0)], "stream_ms": 100});
    let bluez = FakeBluez::start(&scenario(vec![bm7, bm2]));
    let v = json_out(&cli(&bluez, &["read", BM7_MAC, "--type", "bm7", "--json"]));
    assert_eq!(
        (v["voltage"].clone(), v["device_type"].clone()),
        (json!(13.05), json!("BM7"))
    );
    let v = json_out(&cli(&bluez, &["read", BM2_MAC, "--json"]));
    assert_eq!(
        (v["voltage"].clone(), v["temperature"].clone()),
        (json!(12.41), Value::Null)
    );
    assert_eq!(v["device_type"], "BM2");
}

#[test]
fn failures_map_to_their_error_codes() {
    let silent = bm6("ok", &[]);
    let echo_only = bm6("ok", &[BM6_ECHO]);
    let mut failed = bm6("Failed", &[BM6_READING]);
    failed["address"] = json!("38:3B:26:B5:30:01");
    let mut busy = bm6("InProgress", &[BM6_READING]);
    busy["address"] = json!("38:3B:26:B5:30:02");
    let mut hangs = bm6("hang", &[BM6_READING]);
    hangs["address"] = json!("38:3B:26:B5:30:03");
    hangs["hang_s"] = json!(3);
    let cases = [
        (silent, BM6_MAC, "error 1004"),
        (echo_only, BM6_MAC, "error 1004"),
        (failed, "38:3B:26:B5:30:01", "error 1002"),
        (busy, "38:3B:26:B5:30:02", "error 1007"),
        (hangs, "38:3B:26:B5:30:03", "error 1001"),
    ];
    for (device, mac, expected) in cases {
        let bluez = FakeBluez::start(&scenario(vec![device]));
        let o = cli(&bluez, &["read", mac, "--type", "bm6"]);
        assert_eq!(o.status.code(), Some(1), "{mac}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(expected),
            "{mac}: expected {expected}: {}",
            stderr(&o)
        );
        assert!(
            o.stdout.is_empty(),
            "a failed poll must not print a reading"
        );
    }
    let bluez = FakeBluez::start(&scenario(vec![]));
    let o = cli(&bluez, &["read", "01:02:03:04:05:06", "--type", "bm6"]);
    assert!(stderr(&o).contains("error 1003"), "{}", stderr(&o));
}

#[test]
fn a_missing_adapter_is_a_clear_error() {
    let bluez = FakeBluez::start(&scenario(vec![]));
    let o = cli(&bluez, &["scan", "--duration", "1", "--adapter", "hci7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("hci7"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn the_gateway_polls_listens_passively_and_survives_the_adapter_going_away() {
    let mut bluez = FakeBluez::start(&scenario(vec![
        bm6("ok", &[BM6_READING]),
        json!({"address": BM2_MAC, "name": "ZX-1689", "manufacturer": manufacturer(BM2_ADVERT),
               "adverts": [BM2_ADVERT], "advert_ms": 200}),
    ]));
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    let state = TempDir::new("state");
    let config = format!(
        "[gateway]\nid = \"bluez-gw\"\nstate_dir = \"{}\"\n[logging]\nlevel = \"debug\"\ntarget = \"stderr\"\n\
         [mqtt]\nbroker = \"127.0.0.1\"\nport = {}\nstatus_interval = 1\n\
         [bluetooth]\nbackend = \"bluez\"\nconnection_timeout = 2\ndata_wait_timeout = 1\n\
         [discovery]\nscan_duration = 1\n\
         [[device]]\nmac = \"{BM6_MAC}\"\ntype = \"BM6\"\npoll_interval = 1\n\
         [[device]]\nmac = \"{BM2_MAC}\"\ntype = \"BM2\"\nmode = \"passive\"\npoll_interval = 1\n",
        state.path().display(),
        broker.port
    );
    let mut gw = Gateway::start_env(&config, &[("DBUS_SYSTEM_BUS_ADDRESS", &bluez.address)]);
    let t = Duration::from_secs(20);
    let r = sub.wait_for(t, "BM6 reading", |r| {
        r.topic.ends_with(&format!("{BM6_MAC}/reading"))
    });
    assert_eq!(
        (
            r.json()["voltage"].clone(),
            r.json()["extra"]["source"].clone()
        ),
        (json!(12.7), json!("gatt"))
    );
    let r = sub.wait_for(t, "BM2 advert reading", |r| {
        r.topic.ends_with(&format!("{BM2_MAC}/reading"))
    });
    let v = r.json();
    assert_eq!(
        (v["voltage"].clone(), v["state_of_charge"].clone()),
        (json!(12.83), json!(93.0))
    );
    assert_eq!(v["extra"]["source"], "advertisement");
    sub.wait_for(t, "bluetooth active", |r| {
        r.topic.ends_with("/system/status") && r.json()["components"]["bluetooth"] == "active"
    });
    sub.wait_for(t, "discovery", |r| r.topic.ends_with("/discovery/found"));

    // The adapter goes away: devices report 1006, the system status says unavailable.
    bluez.mock_call("RemoveAdapterWithDevices", &["string:hci0"]);
    sub.wait_for(t, "1006 status", |r| {
        r.topic.ends_with(&format!("{BM6_MAC}/status")) && r.json()["error_code"] == 1006
    });
    sub.wait_for(t, "bluetooth unavailable", |r| {
        r.topic.ends_with("/system/status") && r.json()["components"]["bluetooth"] == "unavailable"
    });
    // It comes back: readings resume without a restart.
    bluez.mock_call("RestoreAdapter", &[]);
    sub.seen.clear();
    sub.wait_for(Duration::from_secs(40), "bluetooth active again", |r| {
        r.topic.ends_with("/system/status") && r.json()["components"]["bluetooth"] == "active"
    });
    sub.wait_for(t, "BM6 reading after recovery", |r| {
        r.topic.ends_with(&format!("{BM6_MAC}/reading"))
    });

    // bluetoothd itself restarts.
    bluez.stop_bluez();
    sub.wait_for(t, "unavailable when bluetoothd stops", |r| {
        r.topic.ends_with("/system/status") && r.json()["components"]["bluetooth"] == "unavailable"
    });
    bluez.restart_bluez();
    sub.seen.clear();
    sub.wait_for(
        Duration::from_secs(40),
        "reading after bluetoothd restart",
        |r| r.topic.ends_with(&format!("{BM6_MAC}/reading")),
    );
    gw.signal("TERM");
    assert_eq!(gw.wait(Duration::from_secs(15)), Some(0), "{}", gw.log());
    assert!(!gw.log().contains("panicked"));
}

#[test]
fn stream_mode_stays_connected_and_publishes_at_most_one_reading_per_interval() {
    let bluez = FakeBluez::start(&scenario(vec![
        json!({"address": BM2_MAC, "name": "ZX-1689", "manufacturer": manufacturer(BM2_ADVERT),
               "replies": [gatt("BM2", 12.41, 60.0), gatt("BM2", 12.42, 61.0)], "stream_ms": 100}),
        json!({"address": BM6_MAC, "name": "BM6", "request": BM6_REQUEST, "replies": [BM6_READING]}),
    ]));
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/device/+/reading");
    let state = TempDir::new("state");
    let config = format!(
        "[gateway]\nstate_dir = \"{}\"\n[logging]\ntarget = \"stderr\"\nlevel = \"debug\"\n\
         [mqtt]\nbroker = \"127.0.0.1\"\nport = {}\n[bluetooth]\nconnection_timeout = 2\nmax_concurrent_connections = 2\n\
         [discovery]\ninitial_scan = false\n[defaults]\nmode = \"stream\"\npoll_interval = 1\n\
         [[device]]\nmac = \"{BM2_MAC}\"\ntype = \"BM2\"\n[[device]]\nmac = \"{BM6_MAC}\"\ntype = \"BM6\"\n",
        state.path().display(),
        broker.port
    );
    let mut gw = Gateway::start_env(&config, &[("DBUS_SYSTEM_BUS_ADDRESS", &bluez.address)]);
    let t = Duration::from_secs(15);
    sub.wait_for(t, "BM2 stream reading", |r| r.topic.contains(BM2_MAC));
    sub.wait_for(t, "BM6 stream reading", |r| r.topic.contains(BM6_MAC));
    sub.seen.clear();
    sub.drain_for(Duration::from_millis(3500));
    let bm2 = sub
        .seen
        .iter()
        .filter(|r| r.topic.contains(BM2_MAC))
        .count();
    let bm6 = sub
        .seen
        .iter()
        .filter(|r| r.topic.contains(BM6_MAC))
        .count();
    // ~35 BM2 notifications arrived in that time; one reading per second is published.
    assert!((2..=5).contains(&bm2), "{bm2} BM2 readings in 3.5 s");
    assert!(
        (2..=5).contains(&bm6),
        "{bm6} BM6 readings in 3.5 s (one request per interval)"
    );
    assert_eq!(
        bluez.device_calls(BM2_MAC, "Connect"),
        1,
        "stream mode reconnected"
    );
    assert_eq!(
        bluez.device_calls(BM6_MAC, "Connect"),
        1,
        "stream mode reconnected"
    );
    gw.signal("TERM");
    assert_eq!(gw.wait(Duration::from_secs(15)), Some(0), "{}", gw.log());
}
