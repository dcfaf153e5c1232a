//! BM6 (Leagend; sold as "Battery Guard", Ancel BM200 and others). Polled over GATT; also broadcasts.
//!
//! Key tail `0100009`. Request: write `d1 55 07` + 13 × `00` (encrypted) to `fff3`.
//!
//! GATT reply, decrypted (the same layout serves BM7, see `bm7.rs`):
//!
//! | byte  | meaning                                                          |
//! |-------|------------------------------------------------------------------|
//! | 0–2   | `d1 55 07` (a reading); other frames below                        |
//! | 3     | temperature sign: `01` negative, `00` positive, `FF` echo        |
//! | 4     | temperature, whole °C                                            |
//! | 5     | status: 2 charging, 0/1 not charging (not a low-battery flag)    |
//! | 6     | state of charge, %                                               |
//! | 7–8   | voltage, big-endian, /100 V                                      |
//! | 9–10  | rapid acceleration counter, big-endian                           |
//! | 11–12 | rapid deceleration counter, big-endian                           |
//! | 13–15 | unused (`00`)                                                    |
//!
//! Frames that decrypt with the key but are not readings (SPEC §5.1, §5.7; skipped, never errors):
//! `d1 55 01` version, `d1 55 03` cranking test, `d1 55 04` charging test, `d1 55 05` history
//! acknowledgement, `d1 55 06` history stop, `d1 55 08` battery-table ack, other `d1 55 NN` command replies,
//! `ff fe fe` end of history, `fe fe fe` empty history, `ff ff fe` end of a cranking curve, and blocks of
//! 4-byte history records (12-bit voltage /100 V, 8-bit SoC ≤ 100, 8-bit temperature with the top bit
//! clear, 4-bit flags; or all zero).
//!
//! Advertisement (manufacturer data rebuilt to 16 bytes), decrypted:
//!
//! | byte | meaning                                   |
//! |------|-------------------------------------------|
//! | 0–5  | the device's MAC, normal order            |
//! | 6–7  | voltage, big-endian, /100 V               |
//! | 8    | state of charge, %                        |
//! | 9–15 | not established                           |

use super::crypto::leagend_key;
use super::{DecodeError, Decoded, FrameKind, Ibeacon, Measurement, Monitor, battery_state};
use crate::mac::Mac;

pub struct Bm6;

const KEY: [u8; 16] = leagend_key(b"0100009");

impl Monitor for Bm6 {
    fn name(&self) -> &'static str {
        "BM6"
    }
    fn key(&self) -> &'static [u8; 16] {
        &KEY
    }
    fn advertised_names(&self) -> &'static [&'static str] {
        &["BM6", "Battery Guard"]
    }
    /// UUID `3ba29cd9-a42c-8948-56ba-daf2606ef777`; SoC in the low byte of *major* (SPEC §5.4).
    fn ibeacon(&self) -> Option<Ibeacon> {
        Some(Ibeacon {
            uuid: [
                0x3b, 0xa2, 0x9c, 0xd9, 0xa4, 0x2c, 0x89, 0x48, 0x56, 0xba, 0xda, 0xf2, 0x60, 0x6e,
                0xf7, 0x77,
            ],
            soc_byte: 19,
        })
    }
    fn measures_temperature(&self) -> bool {
        true
    }
    fn gatt_request(&self) -> Option<[u8; 16]> {
        Some(READ_REQUEST)
    }
    fn decode_gatt(&self, plain: &[u8; 16]) -> Result<Decoded, DecodeError> {
        decode_d155(plain)
    }
    fn decode_advert(&self, plain: &[u8; 16], mac: Mac) -> Result<Decoded, DecodeError> {
        if plain[0..6] != mac.0 {
            return Err(DecodeError::WrongAddress);
        }
        Ok(Decoded::Reading(advert_measurement(plain)))
    }
    fn encode_gatt(&self, m: &Measurement) -> [u8; 16] {
        encode_d155(m)
    }
    fn encode_advert(&self, m: &Measurement, mac: Mac) -> Option<[u8; 16]> {
        let mut p = [0u8; 16];
        p[0..6].copy_from_slice(&mac.0);
        put_advert_values(&mut p, m);
        Some(p)
    }
}

/// `d1 55 07` + 13 × `00`: ask for a reading.
pub(super) const READ_REQUEST: [u8; 16] = [0xd1, 0x55, 0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Decode a `d1 55 …` block (or another frame of the family) shared by BM6 and BM7.
pub(super) fn decode_d155(p: &[u8; 16]) -> Result<Decoded, DecodeError> {
    let skip = |kind| Ok(Decoded::NotReading(kind));
    match (p[0], p[1], p[2]) {
        (0xd1, 0x55, 0x07) => {}
        (0xd1, 0x55, 0x01) => return skip(FrameKind::Version),
        (0xd1, 0x55, 0x03) => return skip(FrameKind::CrankingTest),
        (0xd1, 0x55, 0x04) => return skip(FrameKind::ChargingTest),
        (0xd1, 0x55, 0x05) => return skip(FrameKind::HistoryHeader),
        (0xd1, 0x55, 0x06) => return skip(FrameKind::HistoryStop),
        (0xd1, 0x55, 0x08) => return skip(FrameKind::TableAck),
        (0xd1, 0x55, n) => return skip(FrameKind::Command(n)),
        (0xff, 0xfe, 0xfe) => return skip(FrameKind::HistoryEnd),
        (0xfe, 0xfe, 0xfe) => return skip(FrameKind::HistoryEmpty),
        (0xff, 0xff, 0xfe) => return skip(FrameKind::CrankingEnd),
        _ if is_history_block(p) => return skip(FrameKind::HistoryData),
        _ => return Err(DecodeError::NotMine),
    }
    let sign = match p[3] {
        0x00 => 1.0,
        0x01 => -1.0,
        0xff => return skip(FrameKind::Echo),
        n => {
            return Err(DecodeError::OutOfRange {
                field: "temperature_sign",
                value: f64::from(n),
            });
        }
    };
    Ok(Decoded::Reading(Measurement {
        voltage: Some(f64::from(u16::from_be_bytes([p[7], p[8]])) / 100.0),
        temperature: Some(sign * f64::from(p[4])),
        state_of_charge: Some(f64::from(p[6])),
        state: Some(battery_state(p[5])),
        counters: vec![
            ("status_code", i64::from(p[5])),
            (
                "rapid_acceleration",
                i64::from(u16::from_be_bytes([p[9], p[10]])),
            ),
            (
                "rapid_deceleration",
                i64::from(u16::from_be_bytes([p[11], p[12]])),
            ),
        ],
        dropped_temperature: None,
    }))
}

/// Whether a block is four history records (SPEC §5.7): each all zero, or a voltage of at most 40 V, a
/// SoC of at most 100 % and a temperature byte with the top bit clear. Wrong-key garbage passes with a
/// probability of about 0.2 %.
fn is_history_block(p: &[u8; 16]) -> bool {
    p.chunks_exact(4).all(|r| {
        let r = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        let (volts, soc, temp) = (r >> 20, (r >> 12) & 0xff, (r >> 4) & 0xff);
        r == 0 || (volts <= 4000 && soc <= 100 && temp < 0x80)
    })
}

/// The `d1 55 07` reply a BM6/BM7 sends for `m` (values clamped to what the layout can hold). Byte 5 is the
/// `status_code` counter if present, else 2 for `charging`, `n` for `unknown_<n>`, 1 (what units at rest
/// send) otherwise.
pub(super) fn encode_d155(m: &Measurement) -> [u8; 16] {
    let mut p = READ_REQUEST;
    let t = m.temperature.unwrap_or(0.0).round();
    p[3] = u8::from(t < 0.0);
    p[4] = t.abs().min(255.0) as u8;
    let counter = |name| m.counters.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let from_state = match m.state.as_deref() {
        Some("charging") => 2,
        Some(s) => s
            .strip_prefix("unknown_")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1),
        None => 1,
    };
    p[5] = counter("status_code").map_or(from_state, |v| v.clamp(0, 255) as u8);
    p[6] = m.state_of_charge.unwrap_or(0.0).round().clamp(0.0, 255.0) as u8;
    p[7..9].copy_from_slice(&centi(m.voltage.unwrap_or(0.0)).to_be_bytes());
    let counter16 = |name| counter(name).map_or(0, |v| v.clamp(0, 0xffff) as u16);
    p[9..11].copy_from_slice(&counter16("rapid_acceleration").to_be_bytes());
    p[11..13].copy_from_slice(&counter16("rapid_deceleration").to_be_bytes());
    p
}

/// Voltage in hundredths, as the frames carry it.
pub(super) fn centi(v: f64) -> u16 {
    (v * 100.0).round().clamp(0.0, 65535.0) as u16
}

/// Bytes 6–8 of a BM2/BM6 advertisement: voltage and SoC.
pub(super) fn advert_measurement(p: &[u8; 16]) -> Measurement {
    Measurement {
        voltage: Some(f64::from(u16::from_be_bytes([p[6], p[7]])) / 100.0),
        state_of_charge: Some(f64::from(p[8])),
        ..Measurement::default()
    }
}

pub(super) fn put_advert_values(p: &mut [u8; 16], m: &Measurement) {
    p[6..8].copy_from_slice(&centi(m.voltage.unwrap_or(0.0)).to_be_bytes());
    p[8] = m.state_of_charge.unwrap_or(0.0).round().clamp(0.0, 100.0) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::{cipher, reading, run};
    use crate::devices::{Model, Source, crypto, decode_frame, parse_hex, to_hex};

    const ANY: &str = "00:00:00:00:00:00";

    fn plain(hex: &str) -> [u8; 16] {
        parse_hex(hex).unwrap().try_into().unwrap()
    }

    #[test]
    fn request_encrypts_to_the_spec_vector() {
        assert_eq!(
            to_hex(&crypto::encrypt(&KEY, &READ_REQUEST)),
            "697ea0b5d54cf024e794772355554114"
        );
    }

    #[test]
    fn gatt_vector_not_charging_status_0() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "71543b749f6f614dd6333f21546f681d");
        assert_eq!(plain, "d155070019005004f600000000000000");
        let m = reading(d);
        assert_eq!(
            (m.voltage, m.temperature, m.state_of_charge),
            (Some(12.70), Some(25.0), Some(80.0))
        );
        assert_eq!(m.state.as_deref(), Some("not_charging"));
        assert_eq!(m.counters[0], ("status_code", 0));
    }

    #[test]
    fn gatt_vector_negative_temperature_charging() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "8d15e48e2f10fdb9536e0a95bd871c05");
        assert_eq!(plain, "d155070105023204e200000000000000");
        let m = reading(d);
        assert_eq!(
            (m.voltage, m.temperature, m.state_of_charge),
            (Some(12.50), Some(-5.0), Some(50.0))
        );
        assert_eq!(m.state.as_deref(), Some("charging"));
        assert_eq!(m.counters[0], ("status_code", 2));
    }

    #[test]
    fn status_1_is_a_healthy_battery_at_rest_not_low_voltage() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "319b051ed6943b2a6919cc278b4220ef");
        assert_eq!(plain, "d15507000f0154052a00030004000000");
        let m = reading(d);
        assert_eq!(
            (m.voltage, m.temperature, m.state_of_charge),
            (Some(13.22), Some(15.0), Some(84.0))
        );
        assert_eq!(m.state.as_deref(), Some("not_charging"));
        assert_eq!(
            m.counters,
            vec![
                ("status_code", 1),
                ("rapid_acceleration", 3),
                ("rapid_deceleration", 4)
            ]
        );
    }

    #[test]
    fn an_unknown_status_byte_is_named_by_its_value() {
        let m = reading(decode_d155(&plain("d155070019095004f600000000000000")).unwrap());
        assert_eq!(m.state.as_deref(), Some("unknown_9"));
        assert_eq!(m.counters[0], ("status_code", 9));
    }

    #[test]
    fn echo_and_version_are_no_readings() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "8ae0358523fe154976de18fc102eb1d4");
        assert_eq!(plain, "d15507ff000000000000000000000000");
        assert_eq!(d, Decoded::NotReading(FrameKind::Echo));
        let (plain, d) = run("BM6", Source::Gatt, ANY, "0df8721e454fa209648a87910814dad1");
        assert_eq!(plain, "d155010d0a0b0c000000000000000000");
        assert_eq!(d, Decoded::NotReading(FrameKind::Version));
    }

    #[test]
    fn other_frames_of_the_family_are_recognised_not_rejected() {
        for (hex, kind) in [
            ("d15503ff000000000000000000000000", FrameKind::CrankingTest),
            ("d1550403030558000000000000000000", FrameKind::ChargingTest),
            ("d1550500140000000000000000000000", FrameKind::HistoryHeader),
            ("d1550600000000000000000000000000", FrameKind::HistoryStop),
            ("d1550801000000000000000000000000", FrameKind::TableAck),
            ("d1550211000000000000000000000000", FrameKind::Command(2)),
            ("fffefe000ae900000000000000000000", FrameKind::HistoryEnd),
            ("fefefe00000000000000000000000000", FrameKind::HistoryEmpty),
            ("ffff fe00000000000000000000000000", FrameKind::CrankingEnd),
            ("52e6418000000000000000000000000c", FrameKind::HistoryData),
            ("00000000000000000000000000000000", FrameKind::HistoryData),
        ] {
            let bm6 = Model::by_name("BM6").unwrap();
            let frame = cipher("BM6", &hex.replace(' ', ""));
            let (_, d) = decode_frame(bm6, Source::Gatt, ANY.parse().unwrap(), &frame).unwrap();
            assert_eq!(d, Decoded::NotReading(kind), "{hex}");
        }
    }

    #[test]
    fn history_records_must_be_plausible() {
        // SoC 0xff, temperature with the top bit set, voltage 40.95 V: not history.
        for hex in [
            "52eff180000000000000000000000000",
            "52e64800000000000000000000000000",
            "fff64180000000000000000000000000",
        ] {
            assert!(!is_history_block(&plain(hex)), "{hex}");
        }
        assert!(is_history_block(&plain("52e64180fa064180000000004d411111")));
    }

    #[test]
    fn advert_vector() {
        let (plain, d) = run(
            "BM6",
            Source::Advertisement,
            "38:3B:26:B5:30:AB",
            "ee6e22884c11f151c1760465b2fe9003",
        );
        assert_eq!(plain, "383b26b530ab04e55500040000000108");
        let m = reading(d);
        assert_eq!((m.voltage, m.state_of_charge), (Some(12.53), Some(85.0)));
        assert_eq!((m.temperature, m.state.as_deref()), (None, None));
    }

    #[test]
    fn must_reject() {
        let bm6 = Model::by_name("BM6").unwrap();
        let mac = ANY.parse().unwrap();
        // A BM2 advert under the BM6 key: wrong key.
        let e = decode_frame(
            bm6,
            Source::Gatt,
            mac,
            &parse_hex("e18911ed76d18e5ba793d5574f205b61").unwrap(),
        );
        assert_eq!(e.unwrap_err(), DecodeError::NotMine);
        // A BM6 advert from another address.
        let e = decode_frame(
            bm6,
            Source::Advertisement,
            "38:3B:26:B5:30:AC".parse().unwrap(),
            &parse_hex("ee6e22884c11f151c1760465b2fe9003").unwrap(),
        );
        assert_eq!(e.unwrap_err(), DecodeError::WrongAddress);
        // Out of range: 0 V, 45.00 V, SoC 120, a temperature sign byte of 02.
        for plain in [
            "d1550700190050000000000000000000",
            "d1550700190050119400000000000000",
            "d155070019007804f600000000000000",
            "d155070219005004f600000000000000",
        ] {
            let e = decode_frame(bm6, Source::Gatt, mac, &cipher("BM6", plain));
            assert!(
                matches!(e, Err(DecodeError::OutOfRange { .. })),
                "{plain}: {e:?}"
            );
        }
    }

    #[test]
    fn an_implausible_temperature_keeps_the_voltage() {
        let bm6 = Model::by_name("BM6").unwrap();
        let frame = cipher("BM6", "d155070059015004f600000000000000");
        let (_, d) = decode_frame(bm6, Source::Gatt, ANY.parse().unwrap(), &frame).unwrap();
        let m = reading(d);
        assert_eq!((m.voltage, m.temperature), (Some(12.70), None));
        assert_eq!(m.dropped_temperature, Some(89.0));
    }

    #[test]
    fn encode_is_the_inverse_of_decode() {
        let (_, d) = run("BM6", Source::Gatt, ANY, "319b051ed6943b2a6919cc278b4220ef");
        let m = reading(d);
        assert_eq!(to_hex(&encode_d155(&m)), "d15507000f0154052a00030004000000");
        let charging = Measurement {
            voltage: Some(13.9),
            state: Some("charging".into()),
            ..Measurement::default()
        };
        assert_eq!(encode_d155(&charging)[5], 2);
        let resting = Measurement {
            state: Some("not_charging".into()),
            ..charging.clone()
        };
        assert_eq!(encode_d155(&resting)[5], 1);
        let odd = Measurement {
            state: Some("unknown_7".into()),
            ..charging
        };
        assert_eq!(encode_d155(&odd)[5], 7);
        let mac: Mac = "38:3B:26:B5:30:AB".parse().unwrap();
        let p = Bm6.encode_advert(&m, mac).unwrap();
        assert_eq!(
            reading(Bm6.decode_advert(&p, mac).unwrap()).voltage,
            Some(13.22)
        );
    }
}
