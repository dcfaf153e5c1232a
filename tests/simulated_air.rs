//! The real scheduler on the simulated air (SPEC §7): a monitor out of range is 1003 after the find bound
//! without holding the connection slot, a busy one is 1007 after its retries, a silent one 1004, and the
//! one that answers keeps being read every poll interval meanwhile.

mod common;

use common::{Gateway, Mosquitto, Subscriber, TempDir, sim_config};
use std::time::{Duration, Instant};

const OK: &str = "AA:BB:CC:00:00:01";
const FAR: &str = "AA:BB:CC:00:00:02";
const BUSY: &str = "AA:BB:CC:00:00:03";
const SILENT: &str = "AA:BB:CC:00:00:04";

#[test]
fn out_of_range_busy_and_silent_monitors_get_their_codes_and_do_not_starve_the_others() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/device/#");
    let state = TempDir::new("state");
    let mut devices = String::new();
    for mac in [OK, FAR, BUSY, SILENT] {
        devices += &format!("[[device]]\nmac = \"{mac}\"\ntype = \"BM6\"\npoll_interval = 2\n");
    }
    let config = sim_config(broker.port, state.path(), "")
        + "[simulation]\ninterval_ms = 200\n"
        + &format!("[[simulation.monitor]]\nmac = \"{FAR}\"\nrssi = -127\n")
        + &format!("[[simulation.monitor]]\nmac = \"{BUSY}\"\nbusy = true\n")
        + &format!("[[simulation.monitor]]\nmac = \"{SILENT}\"\nanswers = false\n")
        + &devices;
    let started = Instant::now();
    let mut gw = Gateway::start(&config);
    let t = Duration::from_secs(30);
    let code = |mac: &'static str, code: u64| {
        move |r: &common::Received| {
            r.topic.ends_with(&format!("{mac}/status")) && r.json()["error_code"] == code
        }
    };
    let far = sub.wait_for(t, "1003 for the monitor out of range", code(FAR, 1003));
    // Found for connection_timeout (2 s) before giving up: never at once.
    assert!(far.at - started >= Duration::from_secs(2));
    assert_eq!(far.json()["error_message"], "Device not found");
    let busy = sub.wait_for(t, "1007 for the busy monitor", code(BUSY, 1007));
    // Three attempts, 1 s and 2 s apart.
    assert!(busy.at - started >= Duration::from_secs(3));
    sub.wait_for(t, "1004 for the silent monitor", code(SILENT, 1004));
    sub.seen.clear();
    sub.drain_for(Duration::from_secs(8));
    let ok = sub
        .seen
        .iter()
        .filter(|r| r.topic.ends_with(&format!("{OK}/reading")))
        .count();
    assert!(ok >= 2, "the answering monitor was read {ok} times in 8 s");
    assert!(
        !sub.seen
            .iter()
            .any(|r| r.topic.ends_with(&format!("{FAR}/reading"))),
        "a reading from a monitor out of range"
    );
    let last = gw.stop_and_last_status(&mut Subscriber::connect(broker.port, "battery_hawk/#"));
    assert_eq!(last["core"]["running"], false);
}
