//! The monitors' own log end to end on the simulated air (SPEC §5.7, §7): the real gateway and scheduler,
//! a simulated BM6 holding 3 days of log (`history_days`), a real mosquitto. The records published on
//! `P/device/{mac}/history` are compared with the simulated monitor's log, rebuilt here from the library
//! (`SimLog`, same seed): exactly the missing records, each once, oldest first, at most a day per
//! message, every timestamp within ±2 min of when the monitor logged it — in `poll` mode across a
//! restart (the second run publishes only what was logged since), and on a `stream` link.

mod common;

use battery_hawk::devices::history::simulate::{SimLog, seed};
use battery_hawk::devices::history::{Protocol, decode_record};
use battery_hawk::mac::Mac;
use chrono::{DateTime, Utc};
use common::{Gateway, Mosquitto, Subscriber, TempDir, sim_config};
use serde_json::Value;
use std::time::{Duration, Instant};

const MAC: &str = "AA:BB:CC:00:00:16";
/// 3 days of records, one every 2 minutes (±1 for where the 2-minute grid falls).
const THREE_DAYS: std::ops::RangeInclusive<usize> = 2160..=2161;
const WAIT: Duration = Duration::from_secs(60);

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

fn config(port: u16, state: &TempDir, mode: &str) -> String {
    sim_config(
        port,
        state.path(),
        &format!(
            "[[device]]\nmac = \"{MAC}\"\ntype = \"BM6\"\nmode = \"{mode}\"\npoll_interval = 2\n\
             [[simulation.monitor]]\nmac = \"{MAC}\"\nhistory_days = 3\n"
        ),
    )
}

/// The history messages seen so far.
fn batches(sub: &Subscriber) -> Vec<Value> {
    sub.seen
        .iter()
        .filter(|r| r.topic == format!("battery_hawk/device/{MAC}/history"))
        .map(|r| r.json())
        .collect()
}

fn records(batches: &[Value]) -> Vec<Value> {
    batches
        .iter()
        .flat_map(|b| b["records"].as_array().unwrap().clone())
        .collect()
}

/// Collect messages until `n` history records in all arrived (within [`WAIT`]).
fn wait_records(sub: &mut Subscriber, n: usize) {
    let deadline = Instant::now() + WAIT;
    while records(&batches(sub)).len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} history records published",
            records(&batches(sub)).len()
        );
        sub.drain_for(Duration::from_millis(200));
    }
}

/// Collect messages until `n` more readings arrived: the gateway went on after its download.
fn wait_readings(sub: &mut Subscriber, n: usize) {
    let topic = format!("battery_hawk/device/{MAC}/reading");
    let before = sub.seen.iter().filter(|r| r.topic == topic).count();
    let deadline = Instant::now() + WAIT;
    while sub.seen.iter().filter(|r| r.topic == topic).count() < before + n {
        assert!(Instant::now() < deadline, "no more readings");
        sub.drain_for(Duration::from_millis(200));
    }
}

/// Each message spans less than a day, and they come oldest first, for this device.
fn assert_batches(batches: &[Value]) {
    let mut previous: Option<DateTime<Utc>> = None;
    for b in batches {
        let (from, to) = (time(&b["from"]), time(&b["to"]));
        assert!(to - from < chrono::Duration::days(1), "{from} .. {to}");
        assert!(previous.is_none_or(|p| from > p), "batches oldest first");
        previous = Some(to);
        assert_eq!(b["device_id"], MAC);
    }
}

/// The slots of the monitor's log that `records` (oldest first) are: consecutive, every value equal to
/// the log's, every timestamp within ±2 min of when the slot was logged. A record's timestamp is
/// reconstructed from the moment the read was asked for, so it lies in its own slot, or — when a record
/// was logged between that moment and the reply — in the slot before; the whole read shares one offset.
/// Own slot first: a read of one or two records may look the same one slot off (neighbours can log
/// equal values).
fn slots(log: &SimLog, records: &[Value]) -> Vec<i64> {
    let stamped: Vec<i64> = records
        .iter()
        .map(|r| log.slot(time(&r["timestamp"])))
        .collect();
    for pair in stamped.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "consecutive 2-minute records");
    }
    let same = |r: &Value, slot: i64| {
        let s = decode_record(Protocol::Indexed, log.record(slot)).unwrap();
        let close = |v: &Value, want: Option<f64>| {
            v.as_f64()
                .zip(want)
                .is_some_and(|(a, b)| (a - b).abs() < 0.001)
        };
        close(&r["voltage"], Some(s.voltage))
            && close(&r["state_of_charge"], s.state_of_charge)
            && close(&r["temperature"], s.temperature)
    };
    let offset = [0, 1]
        .into_iter()
        .find(|d| records.iter().zip(&stamped).all(|(r, s)| same(r, s + d)))
        .expect("the records are the monitor's log, in order");
    let slots: Vec<i64> = stamped.iter().map(|s| s + offset).collect();
    for (r, s) in records.iter().zip(&slots) {
        let off = time(&r["timestamp"]) - log.logged_at(*s);
        assert!(
            off.num_seconds().abs() <= 120,
            "timestamp {off} off the time the record was logged"
        );
    }
    slots
}

fn stop(gw: &mut Gateway) {
    gw.signal("TERM");
    assert_eq!(gw.wait(Duration::from_secs(15)), Some(0), "{}", gw.log());
}

#[test]
fn a_polled_bm6_with_a_three_day_log_publishes_it_once_and_after_a_restart_only_the_new_records() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/device/#");
    let state = TempDir::new("state");
    let log = SimLog::new(seed(MAC.parse::<Mac>().unwrap()), Utc::now());
    let mut gw = Gateway::start(&config(broker.port, &state, "poll"));
    wait_records(&mut sub, *THREE_DAYS.start());
    // Two more polls: readings, and the log not again (the next download is 5 minutes away).
    wait_readings(&mut sub, 2);
    stop(&mut gw);
    let first = batches(&sub);
    let got = records(&first);
    assert!(THREE_DAYS.contains(&got.len()), "{} records", got.len());
    assert!((3..=4).contains(&first.len()), "{} messages", first.len());
    assert_batches(&first);
    let first_slots = slots(&log, &got);
    let newest = time(&got.last().unwrap()["timestamp"]);

    // The monitor logs on while the gateway is off: one record every 2 minutes. Start again once one
    // has certainly been logged; the registry remembers where the first download ended.
    let logged = newest + chrono::Duration::seconds(125);
    while Utc::now() < logged {
        std::thread::sleep(Duration::from_millis(500));
    }
    sub.seen.clear();
    let mut gw = Gateway::start(&config(broker.port, &state, "poll"));
    wait_records(&mut sub, 1);
    wait_readings(&mut sub, 2);
    stop(&mut gw);
    let second = batches(&sub);
    assert_eq!(second.len(), 1, "one message: {second:?}");
    let new = records(&second);
    assert!((1..=2).contains(&new.len()), "{} new records", new.len());
    let new_slots = slots(&log, &new);
    assert_eq!(
        new_slots[0],
        first_slots.last().unwrap() + 1,
        "the second download continues the first, no record twice, none missing"
    );
}

#[test]
fn a_streamed_bm6_downloads_its_log_on_the_open_link_and_keeps_streaming() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/device/#");
    let state = TempDir::new("state");
    let log = SimLog::new(seed(MAC.parse::<Mac>().unwrap()), Utc::now());
    let mut gw = Gateway::start(&config(broker.port, &state, "stream"));
    wait_records(&mut sub, *THREE_DAYS.start());
    // The link goes on streaming readings; the log is not downloaded again.
    wait_readings(&mut sub, 3);
    let got = records(&batches(&sub));
    assert!(THREE_DAYS.contains(&got.len()), "{} records", got.len());
    assert_batches(&batches(&sub));
    slots(&log, &got);
    let errors: Vec<Value> = sub
        .seen
        .iter()
        .filter(|r| r.topic.ends_with(&format!("{MAC}/status")))
        .map(|r| r.json())
        .filter(|s| !s["error_code"].is_null())
        .collect();
    assert!(errors.is_empty(), "the stream link failed: {errors:?}");
    stop(&mut gw);
}
