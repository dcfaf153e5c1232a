//! A damaged spool (SPEC §3 "Damaged files"): readings spooled during an outage, then a page of the
//! segment zero-filled and its last record truncated, as after a power cut on an SD card. The next start
//! must deliver every intact reading, move the damaged file aside and say so in one error line.

mod common;

use chrono::{DateTime, Utc};
use common::{Gateway, Mosquitto, Subscriber, TempDir, free_port, sim_config};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

const FLEET: &str = "[simulation]\ninterval_ms = 250\n\
    [[device]]\nmac = \"AA:00:00:00:00:01\"\ntype = \"BM6\"\n\
    [[device]]\nmac = \"AA:00:00:00:00:02\"\ntype = \"BM6\"\n";

fn segments(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_damaged_spool_costs_only_the_damaged_records() {
    let state = TempDir::new("state");
    let spool = state.path().join("spool");
    // An outage from the start: every reading goes to the spool.
    let mut gw = Gateway::start(&sim_config(free_port(), state.path(), FLEET));
    let deadline = Instant::now() + T;
    while segments(&spool, "seg")
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum::<u64>()
        < 12 * 1024
    {
        assert!(Instant::now() < deadline, "nothing spooled: {}", gw.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    gw.signal("TERM");
    assert_eq!(gw.wait(T), Some(0), "{}", gw.log());
    let segs = segments(&spool, "seg");
    assert_eq!(segs.len(), 1, "one segment: {segs:?}");
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let size = bytes.len();
    bytes[4096..8192].fill(0);
    bytes.truncate(size - 10);
    std::fs::write(&segs[0], &bytes).unwrap();

    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/device/+/reading");
    let restarted = Utc::now();
    let gw = Gateway::start(&sim_config(broker.port, state.path(), FLEET));
    let deadline = Instant::now() + T;
    let line = loop {
        if let Some(l) = gw.log().lines().find(|l| l.contains("is damaged")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no error line: {}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(line.contains("ERROR"), "{line}");
    let recovered: usize = line
        .split(" reading(s) recovered")
        .next()
        .and_then(|p| p.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!(recovered > 0, "{line}");
    let is_old = |r: &common::Received| {
        r.json()["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
            .is_some_and(|t| t < restarted)
    };
    let count_old = |sub: &Subscriber| {
        sub.seen
            .iter()
            .filter(|r| is_old(r))
            .map(|r| r.text())
            .collect::<HashSet<_>>()
            .len()
    };
    let deadline = Instant::now() + T;
    while count_old(&sub) < recovered {
        assert!(
            Instant::now() < deadline,
            "only {} of {recovered} delivered",
            count_old(&sub)
        );
        sub.drain_for(Duration::from_millis(200));
    }
    sub.drain_for(Duration::from_secs(1));
    assert_eq!(count_old(&sub), recovered, "exactly the intact readings");
    assert_eq!(gw.log().matches("is damaged").count(), 1, "one error line");
    assert_eq!(
        segments(&spool, "damaged").len(),
        1,
        "the damaged file is kept aside"
    );
    eprintln!("FIGURE: damaged spool: {line}");
}
