//! BM2 (Leagend; sold as "Battery Monitor", ZX-1689, Ancel BM200 and others). Streams over GATT; broadcasts.
//!
//! Key tail `1882466`. No request: after subscribing to `fff4` it notifies about once a second.
//!
//! GATT notification, decrypted:
//!
//! | byte | meaning                                                                        |
//! |------|--------------------------------------------------------------------------------|
//! | 0    | `F5`                                                                           |
//! | 1–2  | voltage × 100 in the upper 12 bits of the big-endian word (`word >> 4`)        |
//! | 2    | low nibble: status code, meaning not established (published raw)              |
//! | 3    | state of charge, % per one implementation: accepted only when ≤ 100            |
//! | 4–15 | not established                                                                |
//!
//! No temperature. History replies (SPEC §5.2, §5.7) decrypt with the key but are not readings: `e7 …`
//! (sample count), `ff ff fe …` (data follows), `ff fe fe …` (end); they are skipped, never errors.
//!
//! Advertisement (manufacturer data rebuilt to 16 bytes), decrypted:
//!
//! | byte | meaning                                   |
//! |------|-------------------------------------------|
//! | 0–5  | the device's MAC, **reversed** order      |
//! | 6–7  | voltage, big-endian, /100 V               |
//! | 8    | state of charge, %                        |
//! | 9–15 | not established                           |

use super::bm6::{advert_measurement, centi, put_advert_values};
use super::crypto::leagend_key;
use super::{DecodeError, Decoded, FrameKind, Ibeacon, Measurement, Monitor};
use crate::mac::Mac;

pub struct Bm2;

const KEY: [u8; 16] = leagend_key(b"1882466");

impl Monitor for Bm2 {
    fn name(&self) -> &'static str {
        "BM2"
    }
    fn key(&self) -> &'static [u8; 16] {
        &KEY
    }
    fn advertised_names(&self) -> &'static [&'static str] {
        &["Battery Monitor", "ZX-1689", "Li Battery Monitor"]
    }
    /// UUID `655f83ca-ae16-a10a-702e-31f30d58dd82`; SoC in the last byte, where iBeacon has the TX power
    /// (SPEC §5.4).
    fn ibeacon(&self) -> Option<Ibeacon> {
        Some(Ibeacon {
            uuid: [
                0x65, 0x5f, 0x83, 0xca, 0xae, 0x16, 0xa1, 0x0a, 0x70, 0x2e, 0x31, 0xf3, 0x0d, 0x58,
                0xdd, 0x82,
            ],
            soc_byte: 22,
        })
    }
    fn measures_temperature(&self) -> bool {
        false
    }
    fn gatt_request(&self) -> Option<[u8; 16]> {
        None
    }
    fn decode_gatt(&self, p: &[u8; 16]) -> Result<Decoded, DecodeError> {
        let skip = |kind| Ok(Decoded::NotReading(kind));
        match (p[0], p[1], p[2]) {
            (0xf5, _, _) => {}
            (0xe7, _, _) => return skip(FrameKind::HistoryCount),
            (0xff, 0xff, 0xfe) => return skip(FrameKind::HistoryStart),
            (0xff, 0xfe, 0xfe) => return skip(FrameKind::HistoryEnd),
            _ => return Err(DecodeError::NotMine),
        }
        let word = u16::from_be_bytes([p[1], p[2]]);
        Ok(Decoded::Reading(Measurement {
            voltage: Some(f64::from(word >> 4) / 100.0),
            state_of_charge: (p[3] <= 100).then_some(f64::from(p[3])),
            counters: vec![("status_code", i64::from(p[2] & 0x0f))],
            ..Measurement::default()
        }))
    }
    fn decode_advert(&self, plain: &[u8; 16], mac: Mac) -> Result<Decoded, DecodeError> {
        let mut reversed = mac.0;
        reversed.reverse();
        if plain[0..6] != reversed {
            return Err(DecodeError::WrongAddress);
        }
        Ok(Decoded::Reading(advert_measurement(plain)))
    }
    fn encode_gatt(&self, m: &Measurement) -> [u8; 16] {
        let status = m
            .counters
            .iter()
            .find(|(n, _)| *n == "status_code")
            .map_or(0, |(_, v)| (*v & 0x0f) as u16);
        let word = (centi(m.voltage.unwrap_or(0.0)).min(0x0fff) << 4) | status;
        let mut p = [0u8; 16];
        p[0] = 0xf5;
        p[1..3].copy_from_slice(&word.to_be_bytes());
        p[3] = m.state_of_charge.unwrap_or(255.0).round().clamp(0.0, 255.0) as u8;
        p
    }
    fn encode_advert(&self, m: &Measurement, mac: Mac) -> Option<[u8; 16]> {
        let mut p = [0u8; 16];
        p[0..6].copy_from_slice(&mac.0);
        p[0..6].reverse();
        put_advert_values(&mut p, m);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::{cipher, reading, run};
    use crate::devices::{Model, Source, decode_frame, parse_hex};

    const ANY: &str = "00:00:00:00:00:00";

    #[test]
    fn advert_vector() {
        let (plain, d) = run(
            "BM2",
            Source::Advertisement,
            "50:54:7B:22:2F:20",
            "e18911ed76d18e5ba793d5574f205b61",
        );
        assert_eq!(plain, "202f227b545005035d01030000000900");
        let m = reading(d);
        assert_eq!(
            (m.voltage, m.state_of_charge, m.temperature),
            (Some(12.83), Some(93.0), None)
        );
    }

    #[test]
    fn gatt_capture_voltage_status_and_soc() {
        // KrystianD/bm2-battery-monitor .docs/reverse_engineering.md, first capture: 12.88 V.
        let (plain, d) = run("BM2", Source::Gatt, ANY, "3627d57495cb945e11d392c800a28bfa");
        assert_eq!(plain, "f550816400fa00000000000000000000");
        let m = reading(d);
        assert_eq!((m.voltage, m.state_of_charge), (Some(12.88), Some(100.0)));
        assert_eq!(m.counters, vec![("status_code", 1)]);
        assert_eq!((m.temperature, m.state.as_deref()), (None, None));
    }

    #[test]
    fn encode_is_the_inverse_of_decode() {
        // 12.83 V → 1283 = 0x503; word 0x5037 (status 7); SoC 0x5d = 93.
        let plain: [u8; 16] = parse_hex("f550375d000000000000000000000000")
            .unwrap()
            .try_into()
            .unwrap();
        let m = reading(Bm2.decode_gatt(&plain).unwrap());
        assert_eq!(m.voltage, Some(12.83));
        assert_eq!(m.counters, vec![("status_code", 7)]);
        assert_eq!(Bm2.encode_gatt(&m), plain);
    }

    #[test]
    fn soc_above_100_is_not_a_soc() {
        let plain: [u8; 16] = parse_hex("f55030c8000000000000000000000000")
            .unwrap()
            .try_into()
            .unwrap();
        let m = reading(Bm2.decode_gatt(&plain).unwrap());
        assert_eq!((m.voltage, m.state_of_charge), (Some(12.83), None));
    }

    #[test]
    fn history_replies_are_recognised_not_rejected() {
        let bm2 = Model::by_name("BM2").unwrap();
        for (hex, kind) in [
            ("e7000870000000000000000000000000", FrameKind::HistoryCount),
            ("fffffe00000000000000000000000000", FrameKind::HistoryStart),
            ("fffefe0021c900000000000000000000", FrameKind::HistoryEnd),
        ] {
            let (_, d) =
                decode_frame(bm2, Source::Gatt, ANY.parse().unwrap(), &cipher("BM2", hex)).unwrap();
            assert_eq!(d, Decoded::NotReading(kind), "{hex}");
        }
    }

    #[test]
    fn must_reject() {
        let bm2 = Model::by_name("BM2").unwrap();
        // The advert from another address (the BM2 one's, not reversed).
        let e = decode_frame(
            bm2,
            Source::Advertisement,
            "20:2F:22:7B:54:50".parse().unwrap(),
            &parse_hex("e18911ed76d18e5ba793d5574f205b61").unwrap(),
        );
        assert_eq!(e.unwrap_err(), DecodeError::WrongAddress);
        // A BM6 reply under the BM2 key.
        let mac = ANY.parse().unwrap();
        let e = decode_frame(
            bm2,
            Source::Gatt,
            mac,
            &parse_hex("71543b749f6f614dd6333f21546f681d").unwrap(),
        );
        assert_eq!(e.unwrap_err(), DecodeError::NotMine);
        // 0 V is not plausible.
        let e = decode_frame(
            bm2,
            Source::Gatt,
            mac,
            &cipher("BM2", "f5000032000000000000000000000000"),
        );
        assert!(matches!(
            e,
            Err(DecodeError::OutOfRange {
                field: "voltage",
                ..
            })
        ));
    }
}
