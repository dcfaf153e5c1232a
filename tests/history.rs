//! `battery-hawk history` end to end: the real bluer code against the mocked BlueZ (tests/common/bluez.rs,
//! tests/bluez/monitors.py) playing a BM6 whose stored log is computed here with the real key, answering
//! exactly the history commands HISTORY-NOTES §5.7.2 describes.

mod common;

use battery_hawk::devices::history::{page_request, simulate};
use battery_hawk::devices::{self, Model, to_hex};
use chrono::{DateTime, Utc};
use common::TempDir;
use common::bluez::FakeBluez;
use serde_json::{Value, json};
use std::process::Output;

const MAC: &str = "38:3B:26:B5:30:AB";

fn bm6() -> Model {
    Model::by_name("BM6").unwrap()
}

fn enc(plain: &[u8]) -> String {
    let mut block = [0u8; 16];
    block[..plain.len()].copy_from_slice(plain);
    to_hex(&devices::encrypt_frame(bm6(), &block))
}

/// A log of `n` records, newest first: voltage wandering between 12.00 and 13.19 V, SoC and temperature
/// varying, and one all-zero slot (index 100) as real logs have.
fn log(n: u32) -> Vec<[u8; 4]> {
    (0..n)
        .map(|k| {
            if k == 100 {
                return [0; 4];
            }
            let cv = 1200 + (k * 7) % 120;
            let soc = 40 + k % 60;
            let temp = 10 + k % 15;
            ((cv << 20) | (soc << 12) | (temp << 4)).to_be_bytes()
        })
        .collect()
}

/// The notifications a BM6 sends for `[start, end)` of `log` (the library's simulated monitor): ack,
/// 160-byte data notifications (40 records, the last zero-padded), terminator with `LL = 4n + 9`.
fn reply(log: &[[u8; 4]], start: u32, end: u32) -> Vec<String> {
    simulate::answer(bm6(), log, &page_request(start, end))
        .unwrap()
        .iter()
        .map(|n| to_hex(n))
        .collect()
}

fn request(start: u32, end: u32) -> String {
    to_hex(&devices::encrypt_frame(bm6(), &page_request(start, end)))
}

fn monitor(mtu: u16, answers: Value) -> Value {
    paced(mtu, answers, 10)
}

/// A monitor sending one notification every `notify_ms`.
fn paced(mtu: u16, answers: Value, notify_ms: u64) -> Value {
    json!({"adapter": "hci0", "devices": [{
        "address": MAC, "name": "BM6", "rssi": -60, "mtu": mtu, "answers": answers,
        "notify_ms": notify_ms
    }]})
}

fn history(bluez: &FakeBluez, args: &[&str]) -> Output {
    let mut all = vec!["history", MAC, "--type", "bm6"];
    all.extend_from_slice(args);
    bluez.command(
        "[bluetooth]\nconnection_timeout = 5\ndata_wait_timeout = 2\n",
        &all,
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(o: &Output) -> Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(o)))
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// Every slot of the report equals `log[..n]` (oldest first), with its time within ±2 min of when the
/// record was really logged, given that the read happened between `before` and `after`.
fn assert_records(v: &Value, log: &[[u8; 4]], before: DateTime<Utc>, after: DateTime<Utc>) {
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), log.len(), "slot count");
    for (i, r) in records.iter().enumerate() {
        let k = log.len() - 1 - i;
        assert_eq!(r["index"], k, "oldest first");
        assert_eq!(r["raw_data"], to_hex(&log[k]), "record {k}");
        let back = chrono::Duration::seconds(120 * k as i64);
        let two_min = chrono::Duration::seconds(120);
        let t = time(&r["timestamp"]);
        assert!(
            t >= before - back - two_min && t <= after - back + two_min,
            "record {k} at {t}, read between {before} and {after}"
        );
    }
    let zero = &records[log.len() - 1 - 100];
    assert_eq!(
        (zero["skipped"].as_str(), &zero["voltage"]),
        (Some("zero record"), &Value::Null)
    );
}

#[test]
fn a_three_day_log_comes_back_exactly_and_the_link_is_released() {
    let log = log(3 * 720);
    // The default first sync reaches back 7 days: [0, 5040); the log ends after 2160.
    let answers = json!({ request(0, 5040): [reply(&log, 0, 5040)] });
    let bluez = FakeBluez::start(&monitor(247, answers));
    let before = Utc::now();
    let o = history(&bluez, &["--json"]);
    let after = Utc::now();
    let v = report(&o);
    assert_records(&v, &log, before, after);
    assert_eq!(v["readings"], 2159);
    assert_eq!(
        (v["log_end"].clone(), v["complete"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(v["mtu"], 247);
    let page = &v["pages"][0];
    assert_eq!(page["request"], "d155050000000013b000000000000000");
    assert_eq!(
        (page["ack_count"].clone(), page["terminator_length"].clone()),
        (json!(2160), json!(8649))
    );
    assert_eq!(page["notification_sizes"].as_array().unwrap().len(), 56);
    assert_eq!(page["blocks"].as_array().unwrap().len(), 2 + 54 * 10);
    assert_eq!(bluez.device_calls(MAC, "Connect"), 1);
    assert!(bluez.device_calls(MAC, "Disconnect") >= 1, "link released");
}

#[test]
fn svg_and_csv_of_a_log() {
    let log = log(3 * 720);
    let answers = json!({ request(0, 2160): [reply(&log, 0, 2160)] });
    let bluez = FakeBluez::start(&monitor(247, answers));
    let dir = TempDir::new("history-svg");
    let file = dir.path().join("log.svg");
    let o = history(
        &bluez,
        &["--days", "3", "--csv", "--svg", file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = String::from_utf8_lossy(&o.stdout);
    assert_eq!(csv.lines().count(), 1 + 2160);
    assert!(csv.lines().last().unwrap().starts_with("0,"), "newest last");
    let svg = std::fs::read_to_string(&file).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(
        svg.matches("<polyline").count() >= 2,
        "voltage and SoC curves"
    );
    assert!(svg.contains("BM6 38:3B:26:B5:30:AB"));
}

#[test]
fn spurious_empty_reply_paging_and_a_record_logged_mid_read() {
    let old = log(12 * 720);
    // After page 1 the monitor logs a new record: page 2 and later see every index shifted by one.
    let mut new = old.clone();
    new.insert(0, (1250u32 << 20 | 90 << 12 | 20 << 4).to_be_bytes());
    let spurious = vec![enc(&[0xff, 0xfe, 0xfe, 0, 0, 9])];
    let answers = json!({
        request(0, 8000): [spurious, reply(&old, 0, 8000)],
        request(7999, 8640): [reply(&new, 7999, 8640)],
        request(8639, 8641): [reply(&new, 8639, 8641)],
    });
    let bluez = FakeBluez::start(&monitor(247, answers));
    let before = Utc::now();
    let o = history(&bluez, &["--days", "12", "--json"]);
    let after = Utc::now();
    let v = report(&o);
    assert_records(&v, &old, before, after);
    assert_eq!(v["seam_shifts"], 1);
    let pages = v["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 4, "{pages:?}");
    assert_eq!(
        pages[0]["error"],
        "empty reply although the log is not empty"
    );
    assert_eq!(pages[1]["attempt"], 2);
}

#[test]
fn a_link_below_mtu_163_is_refused_and_released() {
    let log = log(100);
    let answers = json!({ request(0, 5040): [reply(&log, 0, 5040)] });
    let bluez = FakeBluez::start(&monitor(23, answers));
    let o = history(&bluez, &["--json"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("ATT MTU 23 is below the 163"),
        "{}",
        stderr(&o)
    );
    assert!(bluez.device_calls(MAC, "Disconnect") >= 1);
}

/// The figures for the closing note: a 7-day first sync through the real bluer code, the mock
/// pacing notifications 27 ms apart as a real BM6 streams them (≈ 1500 records/s, HISTORY-NOTES
/// §5.7.2), so the link-hold time is the monitor's pace plus the gateway's own cost (connect, MTU,
/// subscribe, disconnect). Printed, not asserted (speed belongs in bench/).
#[test]
fn a_seven_day_first_sync() {
    let log = log(7 * 720);
    let answers = json!({ request(0, 5040): [reply(&log, 0, 5040)] });
    let bluez = FakeBluez::start(&paced(247, answers, 27));
    let before = Utc::now();
    let v = report(&history(&bluez, &["--json"]));
    assert_records(&v, &log, before, Utc::now());
    assert_eq!(v["log_end"], false, "5040 of 5040 asked: the log may go on");
    eprintln!(
        "7-day sync against the mock: {} records, read {} s ({} records/s), link held {} s",
        v["slots"], v["read_seconds"], v["records_per_second"], v["link_held_seconds"]
    );
}

/// Records in the 3-day log of [`LoggedBm6`]: 2160 slots, one of them empty.
const LOGGED: usize = 2159;

/// A BM6 with a 3-day log on the mocked BlueZ, a broker with a subscriber to its device topics, and the
/// gateway (`run`) reading it with the device settings `device` (mode, interval).
struct LoggedBm6 {
    bluez: FakeBluez,
    broker: common::Mosquitto,
    sub: common::Subscriber,
    state: TempDir,
    gw: common::Gateway,
}

impl LoggedBm6 {
    fn start(device: &str) -> LoggedBm6 {
        const REQUEST: &str = "697ea0b5d54cf024e794772355554114";
        const READING: &str = "71543b749f6f614dd6333f21546f681d";
        let log = log(3 * 720);
        let scenario = json!({"adapter": "hci0", "devices": [{
            "address": MAC, "name": "BM6", "rssi": -60, "mtu": 247, "notify_ms": 2,
            "request": REQUEST, "replies": [READING],
            "answers": { request(0, 5040): [reply(&log, 0, 5040)] }
        }]});
        let bluez = FakeBluez::start(&scenario);
        let broker = common::Mosquitto::start();
        let sub = common::Subscriber::connect(broker.port, "battery_hawk/device/#");
        let state = TempDir::new("state");
        let config = format!(
            "[gateway]\nid = \"hist-gw\"\nstate_dir = \"{}\"\n[logging]\nlevel = \"debug\"\ntarget = \"stderr\"\n\
             [mqtt]\nbroker = \"127.0.0.1\"\nport = {}\n\
             [bluetooth]\nconnection_timeout = 5\ndata_wait_timeout = 2\n[discovery]\nscan_duration = 1\n\
             [[device]]\nmac = \"{MAC}\"\ntype = \"BM6\"\n{device}",
            state.path().display(),
            broker.port
        );
        let gw =
            common::Gateway::start_env(&config, &[("DBUS_SYSTEM_BUS_ADDRESS", &bluez.address)]);
        LoggedBm6 {
            bluez,
            broker,
            sub,
            state,
            gw,
        }
    }
}

/// Records published on the history topic so far.
fn history_records(sub: &common::Subscriber) -> usize {
    sub.seen
        .iter()
        .filter(|r| r.topic.ends_with("/history"))
        .map(|r| r.json()["records"].as_array().unwrap().len())
        .sum()
}

/// Wait (at most `t`) until every record of the log was published.
fn wait_records(sub: &mut common::Subscriber, gw: &common::Gateway, t: std::time::Duration) {
    let deadline = std::time::Instant::now() + t;
    while history_records(sub) < LOGGED {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} records published\n{}",
            history_records(sub),
            gw.log()
        );
        sub.drain_for(std::time::Duration::from_millis(200));
    }
}

/// The gateway itself (`run`, poll mode): after the live reading, in the same connection, it downloads
/// the log and publishes every record once on `P/device/{mac}/history`, oldest first, at most a day per
/// message, then disconnects; the next polls do not download again (5 minutes apart at the least), and
/// the registry remembers where the read ended.
#[test]
fn the_gateway_publishes_a_polled_monitors_log_once_with_the_reading() {
    let before = Utc::now();
    let LoggedBm6 {
        bluez,
        broker: _broker,
        mut sub,
        state,
        mut gw,
    } = LoggedBm6::start("poll_interval = 2\n");
    let t = std::time::Duration::from_secs(30);
    sub.wait_for(t, "the live reading", |r| r.topic.ends_with("/reading"));
    wait_records(&mut sub, &gw, t);
    // Two more polls: the reading again, the log not again.
    for _ in 0..2 {
        sub.seen.retain(|r| !r.topic.ends_with("/reading"));
        sub.wait_for(t, "a later reading", |r| r.topic.ends_with("/reading"));
    }
    let after = Utc::now();
    let batches: Vec<Value> = sub
        .seen
        .iter()
        .filter(|r| r.topic.ends_with("/history"))
        .map(|r| r.json())
        .collect();
    assert_eq!(history_records(&sub), LOGGED, "every record once");
    assert!(
        batches.len() >= 3 && batches.len() <= 4,
        "{} batches for 3 days",
        batches.len()
    );
    let mut previous: Option<DateTime<Utc>> = None;
    for b in &batches {
        let (from, to) = (time(&b["from"]), time(&b["to"]));
        assert!(
            to - from < chrono::Duration::days(1),
            "a batch spans less than a day"
        );
        assert!(previous.is_none_or(|p| from > p), "batches oldest first");
        previous = Some(to);
        assert_eq!(b["device_id"], MAC);
    }
    // The newest record was logged within 2 minutes before the read.
    let newest = time(&batches.last().unwrap()["to"]);
    assert!(newest >= before - chrono::Duration::seconds(240) && newest <= after);
    assert_eq!(
        bluez.device_calls(MAC, "Connect"),
        bluez.device_calls(MAC, "Disconnect")
    );
    gw.signal("TERM");
    assert_eq!(
        gw.wait(std::time::Duration::from_secs(15)),
        Some(0),
        "{}",
        gw.log()
    );
    let registry = std::fs::read_to_string(state.path().join("registry.json")).unwrap();
    assert!(
        registry.contains("\"history\""),
        "where the read ended is remembered: {registry}"
    );
}

/// The gateway in `stream` mode: after the first live reading on the open link, it downloads the log on
/// that same link (no second connection), publishes every record once, and the link goes on streaming.
#[test]
fn the_gateway_downloads_a_streamed_monitors_log_on_its_open_link() {
    let LoggedBm6 {
        bluez,
        broker: _broker,
        mut sub,
        state: _state,
        mut gw,
    } = LoggedBm6::start("mode = \"stream\"\npoll_interval = 1\n");
    let t = std::time::Duration::from_secs(30);
    sub.wait_for(t, "the first streamed reading", |r| {
        r.topic.ends_with("/reading")
    });
    wait_records(&mut sub, &gw, t);
    // The link streams on after the download.
    for _ in 0..2 {
        sub.seen.retain(|r| !r.topic.ends_with("/reading"));
        sub.wait_for(t, "a later streamed reading", |r| {
            r.topic.ends_with("/reading")
        });
    }
    assert_eq!(history_records(&sub), LOGGED, "every record once");
    assert_eq!(bluez.device_calls(MAC, "Connect"), 1, "one link for all");
    assert_eq!(
        bluez.device_calls(MAC, "Disconnect"),
        0,
        "the link stayed up"
    );
    gw.signal("TERM");
    assert_eq!(
        gw.wait(std::time::Duration::from_secs(15)),
        Some(0),
        "{}",
        gw.log()
    );
}
