//! Micro-benchmarks of the per-reading work of each stage, timed with `std::time::Instant` (no framework:
//! the figures only need a median and a spread). Run: `cargo bench --bench micro`.
//!
//! - decode: decrypt + decode + validate one GATT frame (BM2, BM6, BM7) and the BM2 advertisement vector;
//! - fleet: one reading through the fleet state machine for a vehicle of 4 monitors whose values change
//!   every time, so the vehicle summary is rebuilt and compared for every reading (its worst case);
//! - summary: `summarize` alone for 4 monitors;
//! - render: topic + JSON of the reading and of the device status one reading causes.
//!
//! Each case runs `ROUNDS` rounds of `ITERS` iterations; printed: median ns per operation and the
//! fastest–slowest round.

use battery_hawk::config::Config;
use battery_hawk::devices::{
    Decoded, Measurement, Model, Source, decode_frame, encrypt_frame, parse_hex,
};
use battery_hawk::fleet::registry::Registry;
use battery_hawk::fleet::state::Fleet;
use battery_hawk::fleet::summary::summarize;
use battery_hawk::mac::Mac;
use battery_hawk::messages::{BluetoothState, DecodedReading, FleetEvent, Outbound, SummaryDevice};
use battery_hawk::mqtt::payload::{LocalStatus, Renderer};
use chrono::Utc;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const ROUNDS: usize = 9;
const ITERS: usize = 20_000;

/// Median and range of ns per operation of `op` over the rounds.
fn measure(name: &str, mut op: impl FnMut(usize)) {
    let mut per_op: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let start = Instant::now();
            for i in 0..ITERS {
                op(round * ITERS + i);
            }
            start.elapsed().as_nanos() as f64 / ITERS as f64
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    println!(
        "{name:<52} {:>10.0} {:>10.0}–{:.0}",
        per_op[ROUNDS / 2],
        per_op[0],
        per_op[ROUNDS - 1]
    );
}

fn frame(hex: &str) -> Vec<u8> {
    parse_hex(hex).expect("a spec vector")
}

fn main() {
    println!(
        "{:<52} {:>10} {:>16}",
        "operation", "median ns", "range (9 rounds)"
    );
    let mac: Mac = "AA:BB:CC:DD:EE:01".parse().expect("a MAC");
    // GATT frames as each model sends them (spec plaintexts, encrypted with the model's key), and the
    // BM2 advertisement vector.
    for (model, plain) in [
        ("BM2", "f550375d000000000000000000000000"),
        ("BM6", "d155070019005004f600000000000000"),
        ("BM7", "d155070019005004f600000000000000"),
    ] {
        let model = Model::by_name(model).expect("a model");
        let plain: [u8; 16] = frame(plain).try_into().expect("16 bytes");
        let bytes = encrypt_frame(model, &plain);
        decode_frame(model, Source::Gatt, mac, &bytes).expect("a valid frame");
        measure(&format!("decode one {} GATT frame", model.name()), |_| {
            black_box(decode_frame(model, Source::Gatt, mac, black_box(&bytes)).ok());
        });
    }
    let bm2 = Model::by_name("BM2").expect("BM2");
    let advert_mac: Mac = "50:54:7B:22:2F:20".parse().expect("a MAC");
    let advert = frame("e18911ed76d18e5ba793d5574f205b61");
    decode_frame(bm2, Source::Advertisement, advert_mac, &advert).expect("the spec vector");
    measure("decode one BM2 advertisement", |_| {
        black_box(decode_frame(bm2, Source::Advertisement, advert_mac, black_box(&advert)).ok());
    });

    let bm6 = Model::by_name("BM6").expect("BM6");
    let (plain, decoded) = decode_frame(
        bm6,
        Source::Gatt,
        mac,
        &frame("71543b749f6f614dd6333f21546f681d"),
    )
    .expect("vector");
    let Decoded::Reading(measurement) = decoded else {
        panic!("the BM6 vector is a reading")
    };
    let reading = |mac: Mac, i: usize| DecodedReading {
        mac,
        model: bm6,
        source: Source::Gatt,
        measurement: Measurement {
            voltage: Some(12.0 + (i % 50) as f64 / 100.0),
            ..measurement.clone()
        },
        plain: plain.clone(),
        rssi: Some(-60),
        received_at: Utc::now(),
    };

    let macs: Vec<Mac> = (1..=4)
        .map(|i| format!("AA:BB:CC:DD:EE:{i:02X}").parse().expect("a MAC"))
        .collect();
    let mut text = String::from("[[vehicle]]\nid = \"van\"\nname = \"Van\"\n");
    for m in &macs {
        text += &format!(
            "[[device]]\nmac = \"{m}\"\ntype = \"BM6\"\nvehicle = \"van\"\ncapacity_ah = 50\n"
        );
    }
    let config = Config::from_toml(&text, Path::new("bench.toml"), Vec::new()).expect("config");
    let mut fleet = Fleet::new(
        Arc::new(config),
        Registry::default(),
        BluetoothState::Simulated,
    );
    fleet.start(Utc::now());
    let mut outputs = Vec::new();
    let mut out = Vec::new();
    measure("fleet: one reading, summary of 4 rebuilt", |i| {
        let event = FleetEvent::Reading(reading(macs[i % 4], i));
        fleet.handle_into(event, Utc::now(), &mut out);
        if i == 0 {
            outputs = out.clone();
        }
        black_box(&out);
        out.clear();
    });

    let devices: Vec<SummaryDevice> = macs
        .iter()
        .map(|m| SummaryDevice {
            mac: *m,
            name: "BM6".into(),
            model: Some(bm6),
            connected: true,
            voltage: Some(12.6),
            state_of_charge: Some(80.0),
            temperature: Some(21.0),
            last_reading: Some(Utc::now()),
            pending: false,
        })
        .collect();
    measure("summary: summarize 4 monitors", |_| {
        black_box(summarize(
            "van",
            "Van",
            black_box(devices.clone()),
            200.0,
            Utc::now(),
        ));
    });

    let renderer = Renderer::new("battery_hawk", "bench", 1);
    let per_reading: Vec<Outbound> = outputs
        .into_iter()
        .filter(|o| matches!(o, Outbound::Reading(_) | Outbound::DeviceStatus(_)))
        .collect();
    assert_eq!(
        per_reading.len(),
        2,
        "a reading causes a reading and a status"
    );
    measure("render: reading + device status (topic, JSON)", |_| {
        for out in &per_reading {
            black_box(renderer.render(out, LocalStatus::default));
        }
    });
}
