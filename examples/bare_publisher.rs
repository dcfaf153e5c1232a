//! The single-connection ceiling for `bench/compare.sh`: a bare rumqttc publisher of the benchmark's
//! message stream (QoS 1, inflight 100), nothing else. Prints messages/s once the broker acknowledged all.
//! Usage: cargo run --release --example bare_publisher -- PORT COUNT READING_FILE STATUS_FILE

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, count, reading, status] = args.as_slice() else {
        anyhow::bail!("usage: bare_publisher PORT COUNT READING_FILE STATUS_FILE");
    };
    let (port, count): (u16, usize) = (port.parse()?, count.parse()?);
    let reading = std::fs::read(reading)?;
    let status = std::fs::read(status)?;
    let mut options = MqttOptions::new("bench-bare-rumqttc", "127.0.0.1", port);
    options
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(options, 100);
    let start = Instant::now();
    let publisher = std::thread::spawn(move || {
        for i in 0..count {
            let (topic, payload, retain) = if i % 2 == 0 {
                (
                    format!("bench/device/AA:00:00:00:00:{:02X}/reading", i % 250),
                    reading.clone(),
                    false,
                )
            } else {
                (
                    format!("bench/device/AA:00:00:00:00:{:02X}/status", i % 250),
                    status.clone(),
                    true,
                )
            };
            if client
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    for event in connection.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
            acked += 1;
            if acked == count {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = publisher.join();
    println!("{:.0}", count as f64 / secs);
    Ok(())
}
