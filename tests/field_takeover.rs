//! Two gateways with one client id (SPEC §3 "another client with our client id"): the broker closes
//! each one's connection when the other connects. They must settle into a growing backoff rather than
//! a reconnect every second, say why in an error naming the client id, leave the retained availability
//! `online`, and a third gateway started on a state_dir already in use must refuse to start.

mod common;

use common::{Gateway, Mosquitto, TempDir, retained, sim_config};
use std::time::{Duration, Instant};

const DEVICES: &str = "[simulation]\ninterval_ms = 500\n\
    [[device]]\nmac = \"AA:00:00:00:00:01\"\ntype = \"BM6\"\n";

/// How long the two gateways run side by side: one minute, for the reconnects-per-minute figure.
const SIDE_BY_SIDE: Duration = Duration::from_secs(60);

#[test]
fn two_gateways_with_one_client_id_back_off_and_say_why() {
    let broker = Mosquitto::start();
    let (state_a, state_b) = (TempDir::new("state-a"), TempDir::new("state-b"));
    let started = Instant::now();
    let a = Gateway::start(&sim_config(broker.port, state_a.path(), DEVICES));
    let b = Gateway::start(&sim_config(broker.port, state_b.path(), DEVICES));
    let error = "another client is probably connected with our client id 'battery-hawk-test-gw'";
    let deadline = started + SIDE_BY_SIDE;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let total = a.connects() + b.connects();
    eprintln!(
        "FIGURE: two gateways with one client id: {total} connections in {:.0} s \
         (a: {}, b: {}); delays a {:?}, b {:?}",
        started.elapsed().as_secs_f64(),
        a.connects(),
        b.connects(),
        a.delays(),
        b.delays()
    );
    assert!(
        a.log().contains(error) || b.log().contains(error),
        "the take-over error names the client id; logs:\n{}\n---\n{}",
        a.log(),
        b.log()
    );
    for gw in [&a, &b] {
        let d = gw.delays();
        let longest = d.iter().copied().fold(0.0, f64::max);
        assert!(
            longest >= 7.0,
            "the backoff grows (at least 8 s ±10 % within a minute): {d:?}"
        );
    }
    assert!(
        total < 30,
        "{total} connections in a minute: the two instances still ping-pong"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = retained(
            broker.port,
            "battery_hawk/system/availability",
            Duration::from_millis(300),
        );
        if now.values().next().is_some_and(|p| p == b"online") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retained availability stayed {now:?}"
        );
    }

    let shared = TempDir::new("gw-shared");
    let mut c = Gateway::start_in(
        shared,
        &sim_config(broker.port, state_a.path(), DEVICES),
        &[],
    );
    let code = c.wait(Duration::from_secs(30));
    assert_ne!(
        code,
        Some(0),
        "a second gateway on one state_dir must not run"
    );
    let log = c.log();
    assert!(
        log.contains("another battery-hawk process") && log.contains("gateway.state_dir"),
        "the error says why: {log}"
    );
}
