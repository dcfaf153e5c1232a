//! BM6 (Leagend; sold as "Battery Guard", Ancel BM200 and others). Polled over GATT; also broadcasts.
//!
//! Key tail `0100009`. Request: write `d1 55 07` + 13 × `00` (encrypted) to `fff3`.
//!
//! GATT reply, decrypted (the same layout serves BM7, see `bm7.rs`):
//!
//! | byte  | meaning                                                          |
//! |-------|------------------------------------------------------------------|
//! | 0–2   | `d1 55 07` (a reading); `d1 55 01` is a firmware version reply   |
//! | 3     | temperature sign: `01` negative, `00` positive, `FF` echo        |
//! | 4     | temperature, whole °C                                            |
//! | 5     | state: 0 normal, 1 low_voltage, 2 charging, other `unknown_<n>`  |
//! | 6     | state of charge, %                                               |
//! | 7–8   | voltage, big-endian, /100 V                                      |
//! | 9–10  | rapid acceleration counter, big-endian                           |
//! | 11–12 | rapid deceleration counter, big-endian                           |
//! | 13–15 | unused (`00`)                                                    |
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
use super::{DecodeError, Decoded, Measurement, Monitor};
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
    fn ibeacon_uuid(&self) -> Option<&'static str> {
        Some("3ba29cd9-a42c-8948-56ba-daf2606ef777")
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

/// Decode the `d1 55 …` reply shared by BM6 and BM7.
pub(super) fn decode_d155(p: &[u8; 16]) -> Result<Decoded, DecodeError> {
    match (p[0], p[1], p[2]) {
        (0xd1, 0x55, 0x01) => return Ok(Decoded::Version),
        (0xd1, 0x55, 0x07) => {}
        _ => return Err(DecodeError::NotMine),
    }
    let sign = match p[3] {
        0x00 => 1.0,
        0x01 => -1.0,
        0xff => return Ok(Decoded::Echo),
        _ => return Err(DecodeError::NotMine),
    };
    let state = match p[5] {
        0 => "normal".to_string(),
        1 => "low_voltage".to_string(),
        2 => "charging".to_string(),
        n => format!("unknown_{n}"),
    };
    Ok(Decoded::Reading(Measurement {
        voltage: f64::from(u16::from_be_bytes([p[7], p[8]])) / 100.0,
        temperature: Some(sign * f64::from(p[4])),
        state_of_charge: Some(f64::from(p[6])),
        state: Some(state),
        counters: vec![
            (
                "rapid_acceleration",
                i64::from(u16::from_be_bytes([p[9], p[10]])),
            ),
            (
                "rapid_deceleration",
                i64::from(u16::from_be_bytes([p[11], p[12]])),
            ),
        ],
    }))
}

/// The `d1 55 07` reply a BM6/BM7 sends for `m` (values clamped to what the layout can hold).
pub(super) fn encode_d155(m: &Measurement) -> [u8; 16] {
    let mut p = READ_REQUEST;
    let t = m.temperature.unwrap_or(0.0).round();
    p[3] = u8::from(t < 0.0);
    p[4] = t.abs().min(255.0) as u8;
    p[5] = match m.state.as_deref() {
        Some("low_voltage") => 1,
        Some("charging") => 2,
        _ => 0,
    };
    p[6] = m.state_of_charge.unwrap_or(0.0).round().clamp(0.0, 255.0) as u8;
    p[7..9].copy_from_slice(&centi(m.voltage).to_be_bytes());
    let counter = |name| {
        m.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| (*v).clamp(0, 0xffff) as u16)
    };
    p[9..11].copy_from_slice(&counter("rapid_acceleration").to_be_bytes());
    p[11..13].copy_from_slice(&counter("rapid_deceleration").to_be_bytes());
    p
}

/// Voltage in hundredths, as the frames carry it.
pub(super) fn centi(v: f64) -> u16 {
    (v * 100.0).round().clamp(0.0, 65535.0) as u16
}

/// Bytes 6–8 of a BM2/BM6 advertisement: voltage and SoC.
pub(super) fn advert_measurement(p: &[u8; 16]) -> Measurement {
    Measurement {
        voltage: f64::from(u16::from_be_bytes([p[6], p[7]])) / 100.0,
        temperature: None,
        state_of_charge: Some(f64::from(p[8])),
        state: None,
        counters: vec![],
    }
}

pub(super) fn put_advert_values(p: &mut [u8; 16], m: &Measurement) {
    p[6..8].copy_from_slice(&centi(m.voltage).to_be_bytes());
    p[8] = m.state_of_charge.unwrap_or(0.0).round().clamp(0.0, 100.0) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::{reading, run};
    use crate::devices::{Model, Source, crypto, decode_frame, parse_hex, to_hex};

    const ANY: &str = "00:00:00:00:00:00";

    #[test]
    fn request_encrypts_to_the_spec_vector() {
        assert_eq!(
            to_hex(&crypto::encrypt(&KEY, &READ_REQUEST)),
            "697ea0b5d54cf024e794772355554114"
        );
    }

    #[test]
    fn gatt_vector_normal() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "71543b749f6f614dd6333f21546f681d");
        assert_eq!(plain, "d155070019005004f600000000000000");
        let m = reading(d);
        assert_eq!(
            (m.voltage, m.temperature, m.state_of_charge),
            (12.70, Some(25.0), Some(80.0))
        );
        assert_eq!(m.state.as_deref(), Some("normal"));
    }

    #[test]
    fn gatt_vector_negative_temperature_charging() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "8d15e48e2f10fdb9536e0a95bd871c05");
        assert_eq!(plain, "d155070105023204e200000000000000");
        let m = reading(d);
        assert_eq!(
            (m.voltage, m.temperature, m.state_of_charge),
            (12.50, Some(-5.0), Some(50.0))
        );
        assert_eq!(m.state.as_deref(), Some("charging"));
    }

    #[test]
    fn gatt_vector_low_voltage_with_counters() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "319b051ed6943b2a6919cc278b4220ef");
        assert_eq!(plain, "d15507000f0154052a00030004000000");
        let m = reading(d);
        assert_eq!(
            (m.voltage, m.temperature, m.state_of_charge),
            (13.22, Some(15.0), Some(84.0))
        );
        assert_eq!(m.state.as_deref(), Some("low_voltage"));
        assert_eq!(
            m.counters,
            vec![("rapid_acceleration", 3), ("rapid_deceleration", 4)]
        );
    }

    #[test]
    fn echo_is_no_reading() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "8ae0358523fe154976de18fc102eb1d4");
        assert_eq!(plain, "d15507ff000000000000000000000000");
        assert_eq!(d, Decoded::Echo);
    }

    #[test]
    fn version_frame_is_no_reading() {
        let (plain, d) = run("BM6", Source::Gatt, ANY, "0df8721e454fa209648a87910814dad1");
        assert_eq!(plain, "d155010d0a0b0c000000000000000000");
        assert_eq!(d, Decoded::Version);
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
        assert_eq!((m.voltage, m.state_of_charge), (12.53, Some(85.0)));
    }

    #[test]
    fn must_reject() {
        let bm6 = Model::by_name("BM6").unwrap();
        let mac = ANY.parse().unwrap();
        let frame = |hex| parse_hex(hex).unwrap();
        // A BM2 advert under the BM6 key: wrong key.
        let e = decode_frame(
            bm6,
            Source::Gatt,
            mac,
            &frame("e18911ed76d18e5ba793d5574f205b61"),
        );
        assert_eq!(e.unwrap_err(), DecodeError::NotMine);
        // A BM6 advert from another address.
        let e = decode_frame(
            bm6,
            Source::Advertisement,
            "38:3B:26:B5:30:AC".parse().unwrap(),
            &frame("ee6e22884c11f151c1760465b2fe9003"),
        );
        assert_eq!(e.unwrap_err(), DecodeError::WrongAddress);
        // Out of range: 0 V and 45.00 V, 90 °C, SoC 120.
        for plain in [
            "d1550700190050000000000000000000",
            "d1550700190050119400000000000000",
            "d155070059005004f600000000000000",
            "d155070019007804f600000000000000",
        ] {
            let p: [u8; 16] = frame(plain).try_into().unwrap();
            let e = decode_frame(bm6, Source::Gatt, mac, &crypto::encrypt(&KEY, &p));
            assert!(
                matches!(e, Err(DecodeError::OutOfRange { .. })),
                "{plain}: {e:?}"
            );
        }
    }

    #[test]
    fn encode_is_the_inverse_of_decode() {
        let (_, d) = run("BM6", Source::Gatt, ANY, "319b051ed6943b2a6919cc278b4220ef");
        let m = reading(d);
        assert_eq!(to_hex(&encode_d155(&m)), "d15507000f0154052a00030004000000");
        let mac: Mac = "38:3B:26:B5:30:AB".parse().unwrap();
        let p = Bm6.encode_advert(&m, mac).unwrap();
        assert_eq!(reading(Bm6.decode_advert(&p, mac).unwrap()).voltage, 13.22);
    }
}
