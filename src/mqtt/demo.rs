//! The `demo` command's MQTT side: an in-process broker (rumqttd) and a subscriber that prints every
//! message exactly as a consumer receives it (topic, QoS, retain flag, payload).
//!
//! Only for `demo`: the gateway itself always talks to an external broker. The broker thread runs until the
//! process exits (rumqttd has no stop); the printer stops when asked.

use super::topics::Topics;
use crossbeam_channel::{Receiver, TryRecvError};
use rumqttc::{Client, Event, MqttOptions, Packet};
use std::io::Write;
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

/// Start an MQTT broker on `127.0.0.1:port`.
pub fn start_broker(port: u16) -> Result<(), String> {
    TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        format!("cannot listen on 127.0.0.1:{port} ({e}); choose another with --port")
    })?;
    let config = format!(
        r#"
        id = 0
        [router]
        id = 0
        max_connections = 100
        max_outgoing_packet_count = 200
        max_segment_size = 1048576
        max_segment_count = 10
        [v4.1]
        name = "demo"
        listen = "127.0.0.1:{port}"
        next_connection_delay_ms = 1
        [v4.1.connections]
        connection_timeout_ms = 60000
        max_payload_size = 262144
        max_inflight_count = 100
        dynamic_filters = true
        "#
    );
    let config: rumqttd::Config =
        toml::from_str(&config).map_err(|e| format!("demo broker config: {e}"))?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = rumqttd::Broker::new(config).start() {
                log::error!("demo broker stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the demo broker: {e}"))?;
    let ready = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > ready {
            return Err(format!(
                "the demo broker did not start listening on port {port}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Subscribe to everything under `prefix` (data topics at `data_qos`) on `127.0.0.1:port` and print each message to stdout until
/// `stop` fires (or closes). Returns once subscribed (or after 5 s), so nothing published later is missed.
pub fn print_messages(
    port: u16,
    prefix: &str,
    data_qos: u8,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    let mut options = MqttOptions::new("battery-hawk-demo-viewer", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(super::connection::MAX_PACKET, super::connection::MAX_PACKET);
    let (client, mut connection) = Client::new(options, 10);
    // rumqttd delivers at the subscription's QoS (not min(publish, subscription) as mosquitto does), so
    // subscribe to each topic family at the QoS it is published with.
    let filters = Topics::new(prefix).subscriptions(data_qos);
    let (subscribed_tx, subscribed) = crossbeam_channel::bounded(1);
    let viewer = std::thread::Builder::new()
        .name("demo-viewer".into())
        .spawn(move || {
            let mut out = std::io::stdout().lock();
            loop {
                if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                    return;
                }
                match connection.recv_timeout(Duration::from_millis(200)) {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        for (filter, level) in &filters {
                            let _ = client
                                .try_subscribe(filter.clone(), super::connection::qos(*level));
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let qos = p.qos as u8;
                        let _ = writeln!(
                            out,
                            "{}  qos={qos} retain={}\n    {}",
                            p.topic,
                            p.retain,
                            String::from_utf8_lossy(&p.payload)
                        );
                        let _ = out.flush();
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })?;
    let _ = subscribed.recv_timeout(Duration::from_secs(5));
    Ok(viewer)
}
