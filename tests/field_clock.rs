//! A board without RTC (SPEC §3 "Clocks"): the gateway starts with its wall clock in 1970 (libfaketime),
//! then NTP steps it to now. Nothing stamped 1970 may reach the broker: readings are held meanwhile
//! and stamped from the monotonic clock once the time is set.

mod common;

use chrono::{DateTime, Utc};
use common::{Gateway, Mosquitto, Subscriber, TempDir, sim_config};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

const FLEET: &str = "[simulation]\ninterval_ms = 500\n\
    [[vehicle]]\nid = \"van\"\nname = \"Van\"\n\
    [[device]]\nmac = \"AA:00:00:00:00:01\"\ntype = \"BM6\"\nvehicle = \"van\"\n\
    [[device]]\nmac = \"AA:00:00:00:00:02\"\ntype = \"BM7\"\nvehicle = \"van\"\n";

fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is not installed: run scripts/test.sh, which installs it")
}

#[test]
fn a_clock_starting_in_1970_never_reaches_a_payload_and_readings_are_stamped_right() {
    let broker = Mosquitto::start();
    let state = TempDir::new("state");
    let clock = TempDir::new("faketime");
    let offset = clock.path().join("offset");
    // 56 years back: early 1970.
    std::fs::write(&offset, "-1766000000\n").unwrap();
    let mut sub = Subscriber::connect(broker.port, "#");
    let started = Utc::now();
    let lib = libfaketime();
    let gw = Gateway::start_env(
        &sim_config(broker.port, state.path(), FLEET),
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let deadline = std::time::Instant::now() + T;
    while !gw.log().contains("holding messages until it is set") {
        assert!(
            std::time::Instant::now() < deadline,
            "no hold: {}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gw.log().contains("1970-"), "the fake clock is in effect");
    // Readings are produced meanwhile (every ~0.5 s); none may go out with the 1970 clock.
    sub.drain_for(Duration::from_secs(3));
    let early: Vec<&String> = sub
        .seen
        .iter()
        .filter(|r| r.topic.ends_with("/reading"))
        .map(|r| &r.topic)
        .collect();
    assert!(
        early.is_empty(),
        "readings published before the clock was set: {early:?}"
    );

    // NTP steps the clock to now.
    let stepped = Utc::now();
    std::fs::write(&offset, "+0\n").unwrap();
    for mac in ["AA:00:00:00:00:01", "AA:00:00:00:00:02"] {
        let topic = format!("battery_hawk/device/{mac}/reading");
        sub.wait_for(T, &topic, |r| {
            r.topic == topic
                && r.json()["timestamp"]
                    .as_str()
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                    .is_some_and(|t| t > stepped)
        });
    }
    sub.drain_for(Duration::from_secs(1));
    let mut retroactive = 0;
    for r in &sub.seen {
        let text = r.text();
        assert!(!text.contains("1970-"), "{}: {text}", r.topic);
        if r.topic.ends_with("/reading") {
            let t: DateTime<Utc> = r.json()["timestamp"].as_str().unwrap().parse().unwrap();
            assert!(
                t >= started - chrono::Duration::seconds(2) && t <= Utc::now(),
                "reading stamped {t}, the gateway ran from {started}"
            );
            if t < stepped - chrono::Duration::milliseconds(500) {
                retroactive += 1;
            }
        }
    }
    eprintln!("FIGURE: {retroactive} reading(s) held in 1970 and stamped retroactively");
    assert!(
        retroactive > 0,
        "the held readings carry their true, earlier times"
    );
    assert!(gw.log().contains("stamped from the monotonic clock"));
    // The registry (written within a second of a change) never keeps a 1970 first sighting.
    let registry = state.path().join("registry.json");
    let deadline = std::time::Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(&registry).unwrap_or_default();
        assert!(!text.contains("1970-"), "registry: {text}");
        if text.matches("\"first_seen\": \"20").count() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "first sightings not recorded with the right time: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_clock_never_set_gives_flagged_readings_after_the_wait_and_still_no_1970() {
    let broker = Mosquitto::start();
    let state = TempDir::new("state");
    let clock = TempDir::new("faketime");
    let offset = clock.path().join("offset");
    std::fs::write(&offset, "-1766000000\n").unwrap();
    let mut sub = Subscriber::connect(broker.port, "#");
    let lib = libfaketime();
    let config = sim_config(broker.port, state.path(), FLEET)
        .replace("state_dir", "clock_wait = 2\nstate_dir");
    let _gw = Gateway::start_env(
        &config,
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let r = sub.wait_for(T, "a reading after the wait", |r| {
        r.topic.ends_with("/reading")
    });
    assert_eq!(r.json()["extra"]["clock_valid"], false, "{}", r.text());
    sub.drain_for(Duration::from_secs(2));
    for r in &sub.seen {
        assert!(!r.text().contains("1970-"), "{}: {}", r.topic, r.text());
    }
}
