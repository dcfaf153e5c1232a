//! Tests of the payloads (SPEC §2): the spec's examples, key order, rounding, timestamps.

use super::*;
use crate::config::Mode;
use crate::devices::{Measurement, Source};
use crate::messages::{BluetoothState, DecodedReading};
use chrono::TimeZone;

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0).unwrap()
}

fn parse(m: &Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap()
}

#[test]
fn reading_matches_the_spec_example() {
    let r = Renderer::new("battery_hawk", "garage", 1);
    let plain = crate::devices::parse_hex("d155070019005004f600000000000000").unwrap();
    let m = r.reading(&ReadingOut {
        reading: DecodedReading {
            mac: "AA:BB:CC:DD:EE:FF".parse().unwrap(),
            model: Model::by_name("BM6").unwrap(),
            source: Source::Gatt,
            measurement: Measurement {
                voltage: Some(12.6),
                temperature: Some(25.0),
                state_of_charge: Some(85.0),
                state: Some("not_charging".into()),
                counters: vec![
                    ("status_code", 0),
                    ("rapid_acceleration", 0),
                    ("rapid_deceleration", 0),
                ],
                dropped_temperature: None,
            },
            plain,
            rssi: Some(-67),
            received_at: at(),
        },
        vehicle_id: Some("my_vehicle".into()),
        capacity_ah: Some(100.0),
    });
    assert_eq!(m.topic, "battery_hawk/device/AA:BB:CC:DD:EE:FF/reading");
    assert_eq!((m.qos, m.retain, m.kind), (1, false, Kind::Reading));
    let expected: Value = serde_json::from_str(
        r#"{"device_id":"AA:BB:CC:DD:EE:FF","timestamp":"2024-01-15T10:30:00.000Z","voltage":12.6,"current":null,
 "temperature":25.0,"state_of_charge":85.0,"capacity":100.0,"cycles":null,"power":null,
 "vehicle_id":"my_vehicle","device_type":"BM6","gateway_id":"garage",
 "extra":{"state":"not_charging","status_code":0,"rapid_acceleration":0,"rapid_deceleration":0,"rssi":-67,"source":"gatt",
      "raw_data":"d155070019005004f600000000000000"}}"#,
    )
    .unwrap();
    assert_eq!(parse(&m), expected);
    let text = String::from_utf8(m.payload).unwrap();
    assert_eq!(
        text,
        expected.to_string(),
        "compact, in the spec's key order"
    );
}

#[test]
fn an_ibeacon_reading_has_a_null_voltage() {
    let r = Renderer::new("battery_hawk", "garage", 1);
    let value =
        crate::devices::parse_hex("0215655f83caae16a10a702e31f30d58dd82f441423144").unwrap();
    let m = r.reading(&ReadingOut {
        reading: DecodedReading {
            mac: "AA:BB:CC:DD:EE:FF".parse().unwrap(),
            model: Model::by_name("BM2").unwrap(),
            source: Source::Ibeacon,
            measurement: Measurement {
                state_of_charge: Some(68.0),
                ..Measurement::default()
            },
            plain: value,
            rssi: Some(-80),
            received_at: at(),
        },
        vehicle_id: None,
        capacity_ah: None,
    });
    let v = parse(&m);
    assert!(v["voltage"].is_null() && v["temperature"].is_null());
    assert_eq!(v["state_of_charge"], 68.0);
    assert_eq!(v["extra"]["source"], "ibeacon");
    assert_eq!(
        v["extra"]["raw_data"],
        "0215655f83caae16a10a702e31f30d58dd82f441423144"
    );
}

#[test]
fn device_status_with_error() {
    let r = Renderer::new("p", "g", 0);
    let m = r.device_status(&DeviceStatusOut {
        mac: "AA:BB:CC:DD:EE:FF".parse().unwrap(),
        at: at(),
        reachable: false,
        model: Model::by_name("BM6"),
        vehicle_id: None,
        error: Some((1001, "Connection timeout".into())),
        last_reading_at: None,
        rssi: Some(-45),
        consecutive_failures: 3,
        mode: Mode::Poll,
        name: "Starter".into(),
        poll_interval: 300,
        reading: None,
    });
    assert_eq!((m.qos, m.retain), (0, true));
    let v = parse(&m);
    assert_eq!(v["connected"], false);
    assert_eq!(v["error_code"], 1001);
    assert_eq!(v["error_message"], "Connection timeout");
    assert_eq!(v["vehicle_id"], Value::Null);
    assert_eq!(v["last_reading_at"], Value::Null);
    assert_eq!(v["extra"]["consecutive_failures"], 3);
    assert_eq!(v["extra"]["mode"], "poll");
    assert_eq!(
        String::from_utf8(m.payload).unwrap(),
        r#"{"device_id":"AA:BB:CC:DD:EE:FF","timestamp":"2024-01-15T10:30:00.000Z","connected":false,"#
            .to_string()
            + r#""device_type":"BM6","vehicle_id":null,"protocol_version":null,"last_command":"read_data","#
            + r#""error_code":1001,"error_message":"Connection timeout","last_reading_at":null,"#
            + r#""extra":{"signal_strength":-45,"consecutive_failures":3,"mode":"poll"},"reading":null}"#
    );
}

#[test]
fn device_status_carries_the_latest_reading_without_raw_data() {
    let r = Renderer::new("p", "g", 1);
    let m = r.device_status(&DeviceStatusOut {
        mac: "AA:BB:CC:DD:EE:FF".parse().unwrap(),
        at: at(),
        reachable: true,
        model: Model::by_name("BM6"),
        vehicle_id: Some("my_vehicle".into()),
        error: None,
        last_reading_at: Some(at()),
        rssi: Some(-45),
        consecutive_failures: 0,
        mode: Mode::Poll,
        name: "Starter".into(),
        poll_interval: 300,
        reading: Some(LatestReading {
            model: Model::by_name("BM6").unwrap(),
            source: Source::Gatt,
            measurement: Measurement {
                voltage: Some(12.604),
                temperature: Some(25.0),
                state_of_charge: Some(85.0),
                state: Some("not_charging".into()),
                counters: vec![("status_code", 1)],
                ..Measurement::default()
            },
            rssi: Some(-45),
            received_at: at(),
            capacity_ah: Some(100.0),
        }),
    });
    let expected: Value = serde_json::from_str(
        r#"{"timestamp":"2024-01-15T10:30:00.000Z","voltage":12.6,"current":null,"temperature":25.0,
            "state_of_charge":85.0,"capacity":100.0,"cycles":null,"power":null,"device_type":"BM6",
            "extra":{"state":"not_charging","status_code":1,"rssi":-45,"source":"gatt"}}"#,
    )
    .unwrap();
    assert_eq!(parse(&m)["reading"], expected);
}

#[test]
fn system_status_is_qos2_retained_and_complete() {
    let r = Renderer::new("p", "garage", 1);
    let m = r.system_status(
        &SystemSnapshot {
            at: at(),
            running: false,
            bluetooth: BluetoothState::Simulated,
            devices_total: 3,
            devices_connected: 2,
            readings: 1234,
            decode_errors: 0,
            connection_failures: 5,
        },
        &LocalStatus {
            uptime_seconds: 3600,
            disk_usage_percent: Some(45.234),
            mqtt_connected: true,
            ..Default::default()
        },
    );
    assert_eq!(
        (m.topic.as_str(), m.qos, m.retain),
        ("p/system/status", 2, true)
    );
    let v = parse(&m);
    assert_eq!(v["core"]["running"], false);
    assert_eq!(v["storage"]["disk_usage_percent"], 45.23);
    assert_eq!(v["components"]["bluetooth"], "simulated");
    assert_eq!(v["devices"]["connected"], 2);
    assert_eq!(v["counters"]["connection_failures"], 5);
}

#[test]
fn timestamps_are_written_as_chrono_writes_them() {
    let chrono = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut times: Vec<DateTime<Utc>> = (0..10_000)
        .map(|_| {
            let secs = rng.i64(0..253_402_300_799); // 1970 … 9999-12-31T23:59:59
            DateTime::from_timestamp(secs, rng.u32(0..1_000_000_000)).unwrap()
        })
        .collect();
    times.extend([
        DateTime::from_timestamp(0, 0).unwrap(),
        DateTime::from_timestamp(-62_167_219_200, 0).unwrap(), // year 0
        DateTime::from_timestamp(-62_198_755_200, 999_999_999).unwrap(), // year -1
        DateTime::from_timestamp(253_402_300_800, 5_000_000).unwrap(), // year 10000
        // A leap second: 2016-12-31T23:59:60.500Z.
        DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap(),
    ]);
    for t in times {
        assert_eq!(timestamp(t), chrono(t));
    }
}

#[test]
fn raw_data_is_lower_case_hex_at_any_length() {
    for len in [0, 1, 16, 63, 64, 65, 200] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(Hex(&bytes).to_string(), to_hex(&bytes));
    }
}

#[test]
fn floats_are_rounded_and_never_nan() {
    assert_eq!(num(Some(12.345_678)), json!(12.35));
    assert_eq!(num(Some(f64::NAN)), Value::Null);
    assert_eq!(num(Some(f64::INFINITY)), Value::Null);
    assert_eq!(num(None), Value::Null);
}

#[test]
fn shutdown_and_availability() {
    let r = Renderer::new("p", "g", 1);
    let m = r.shutdown("SIGTERM", at());
    assert_eq!((m.qos, m.retain), (2, false));
    assert_eq!(parse(&m)["reason"], "SIGTERM");
    let a = r.availability(false);
    assert_eq!(
        (a.payload.as_slice(), a.qos, a.retain),
        (&b"offline"[..], 1, true)
    );
}
