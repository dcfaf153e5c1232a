//! Hostile and limited brokers (SPEC §3): mosquitto set up as AWS IoT / Azure IoT Hub behave (`max_qos 1`,
//! `retain_available false`), with a small `max_packet_size`, and with a huge retained message on Home
//! Assistant's status topic. With the options that cope everything flows; without them the log says which
//! option copes, the backoff grows, and a refused message is given up rather than re-sent for ever.

mod common;

use common::{Gateway, Mosquitto, Subscriber, TempDir, free_port, retained, sim_config};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

const FLEET: &str = "[simulation]\ninterval_ms = 500\n\
    [[vehicle]]\nid = \"van\"\nname = \"Van\"\n\
    [[device]]\nmac = \"AA:00:00:00:00:01\"\ntype = \"BM6\"\nvehicle = \"van\"\n\
    [[device]]\nmac = \"AA:00:00:00:00:02\"\ntype = \"BM6\"\nvehicle = \"van\"\n";

/// The config with `mqtt_keys` added to its `[mqtt]` section.
fn config(port: u16, state: &TempDir, mqtt_keys: &str) -> String {
    sim_config(port, state.path(), FLEET)
        .replace("timeout = 5\n", &format!("timeout = 5\n{mqtt_keys}"))
}

fn wait_for_log(gw: &Gateway, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !gw.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what:?} in the gateway's log"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_backoff_grows(gw: &Gateway) {
    let d = gw.delays();
    assert!(
        d.len() >= 3 && d.windows(2).all(|w| w[1] > w[0]),
        "the backoff grows: {d:?}"
    );
}

/// Readings from both monitors, and a system status, reach a subscriber.
fn everything_flows(sub: &mut Subscriber) {
    for mac in ["AA:00:00:00:00:01", "AA:00:00:00:00:02"] {
        let topic = format!("battery_hawk/device/{mac}/reading");
        sub.wait_for(T, &topic, |r| r.topic == topic);
        let topic = format!("battery_hawk/device/{mac}/status");
        sub.wait_for(T, &topic, |r| r.topic == topic);
    }
    sub.wait_for(T, "a system status", |r| {
        r.topic == "battery_hawk/system/status"
    });
    sub.wait_for(T, "a summary", |r| {
        r.topic == "battery_hawk/vehicle/van/summary"
    });
}

#[test]
fn a_broker_without_qos_2_works_with_max_qos_1() {
    let broker = Mosquitto::start_with("max_qos 1\n");
    let state = TempDir::new("state");
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    let gw = Gateway::start(&config(broker.port, &state, "max_qos = 1\n"));
    everything_flows(&mut sub);
    sub.drain_for(Duration::from_secs(3));
    assert_eq!(gw.connects(), 1, "one connection, never dropped");
    assert!(sub.seen.iter().all(|r| r.qos <= 1));
    assert!(!gw.log().contains("giving up"), "{}", gw.log());
}

#[test]
fn a_broker_without_qos_2_is_diagnosed_and_readings_still_flow() {
    let broker = Mosquitto::start_with("max_qos 1\n");
    let state = TempDir::new("state");
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    let gw = Gateway::start(&config(broker.port, &state, ""));
    wait_for_log(&gw, "set mqtt.max_qos = 1", T);
    assert_eq!(
        gw.log().matches("set mqtt.max_qos = 1").count(),
        1,
        "one diagnosis line"
    );
    assert_backoff_grows(&gw);
    // The QoS 2 system status is given up after `retries`, not re-created per connection; the
    // readings behind it flow.
    wait_for_log(
        &gw,
        "giving up on a message for battery_hawk/system/status",
        T,
    );
    sub.wait_for(T, "a reading", |r| r.topic.ends_with("/reading"));
    let n = gw.connects();
    sub.drain_for(Duration::from_secs(5));
    assert_eq!(gw.connects(), n, "no more reconnects once it was given up");
}

#[test]
fn a_broker_without_retain_works_with_retain_false() {
    let broker = Mosquitto::start_with("retain_available false\n");
    let state = TempDir::new("state");
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    let gw = Gateway::start(&config(
        broker.port,
        &state,
        "retain = false\nstatus_interval = 2\n",
    ));
    everything_flows(&mut sub);
    // The current state is published again every status_interval, without the retain flag.
    let first = sub
        .wait_for(T, "a summary", |r| r.topic.ends_with("/summary"))
        .at;
    sub.wait_for(T, "the summary again", |r| {
        r.topic.ends_with("/summary") && r.at > first + Duration::from_secs(1)
    });
    sub.drain_for(Duration::from_secs(1));
    assert_eq!(gw.connects(), 1, "one connection, never dropped");
    assert!(
        retained(broker.port, "#", Duration::from_millis(500)).is_empty(),
        "nothing retained"
    );
}

#[test]
fn a_broker_without_retain_is_diagnosed() {
    let broker = Mosquitto::start_with("retain_available false\n");
    let state = TempDir::new("state");
    let gw = Gateway::start(&config(broker.port, &state, ""));
    wait_for_log(&gw, "set mqtt.retain = false", T);
    assert_eq!(gw.log().matches("set mqtt.retain = false").count(), 1);
    assert_backoff_grows(&gw);
}

#[test]
fn a_message_over_the_brokers_packet_limit_is_given_up_once_and_the_rest_flows() {
    // The monitors' discovery configs (~2.3 kB) are over the limit; everything else is under it.
    let broker = Mosquitto::start_with("max_packet_size 2000\n");
    let state = TempDir::new("state");
    let mut sub = Subscriber::connect(broker.port, "#");
    // One attempt each, so the two refused configs are found within a short backoff.
    let gw = Gateway::start(&config(broker.port, &state, "retries = 1\n"));
    wait_for_log(
        &gw,
        "giving up on a message for homeassistant/device/battery_hawk_aa0000000002",
        T,
    );
    wait_for_log(
        &gw,
        "giving up on a message for homeassistant/device/battery_hawk_aa0000000001",
        T,
    );
    everything_flows(&mut sub);
    let n = gw.connects();
    sub.drain_for(Duration::from_secs(5));
    assert_eq!(
        gw.connects(),
        n,
        "given up once, never re-created per connection"
    );
    assert_eq!(
        gw.log().matches("giving up on a message").count(),
        2,
        "{}",
        gw.log()
    );
    sub.wait_for(T, "the vehicle's config", |r| {
        r.topic == "homeassistant/device/battery_hawk_vehicle_van/config"
    });
}

/// Publish a retained message of `size` bytes on `topic` and wait for the broker's ack.
fn publish_retained(port: u16, topic: &str, size: usize) {
    let mut o = MqttOptions::new(format!("big-{}", free_port()), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, true, vec![b'x'; size])
        .unwrap();
    for event in connection.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
            return;
        }
        event.unwrap();
    }
}

#[test]
fn a_huge_retained_message_on_home_assistants_status_is_dropped_without_a_reconnect() {
    let broker = Mosquitto::start();
    publish_retained(broker.port, "homeassistant/status", 300 * 1024);
    let state = TempDir::new("state");
    let mut sub = Subscriber::connect(broker.port, "battery_hawk/#");
    let gw = Gateway::start(&config(broker.port, &state, ""));
    wait_for_log(
        &gw,
        "ignoring a 307200-byte message on homeassistant/status",
        T,
    );
    everything_flows(&mut sub);
    sub.drain_for(Duration::from_secs(2));
    assert_eq!(gw.connects(), 1, "no reconnect: {}", gw.log());
    assert_eq!(gw.log().matches("ignoring a").count(), 1, "one warning");
}
