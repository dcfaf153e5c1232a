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
//! No temperature. Advertisement (manufacturer data rebuilt to 16 bytes), decrypted:
//!
//! | byte | meaning                                   |
//! |------|-------------------------------------------|
//! | 0–5  | the device's MAC, **reversed** order      |
//! | 6–7  | voltage, big-endian, /100 V               |
//! | 8    | state of charge, %                        |
//! | 9–15 | not established                           |

use super::bm6::{advert_measurement, centi, put_advert_values};
use super::crypto::leagend_key;
use super::{DecodeError, Decoded, Measurement, Monitor};
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
    fn ibeacon_uuid(&self) -> Option<&'static str> {
        Some("655f83ca-ae16-a10a-702e-31f30d58dd82")
    }
    fn measures_temperature(&self) -> bool {
        false
    }
    fn gatt_request(&self) -> Option<[u8; 16]> {
        None
    }
    fn decode_gatt(&self, p: &[u8; 16]) -> Result<Decoded, DecodeError> {
        if p[0] != 0xf5 {
            return Err(DecodeError::NotMine);
        }
        let word = u16::from_be_bytes([p[1], p[2]]);
        Ok(Decoded::Reading(Measurement {
            voltage: f64::from(word >> 4) / 100.0,
            temperature: None,
            state_of_charge: (p[3] <= 100).then_some(f64::from(p[3])),
            state: None,
            counters: vec![("status_code", i64::from(p[2] & 0x0f))],
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
        let word = (centi(m.voltage).min(0x0fff) << 4) | status;
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
    use crate::devices::test_support::{reading, run};
    use crate::devices::{Model, Source, crypto, decode_frame, parse_hex};

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
            (12.83, Some(93.0), None)
        );
    }

    #[test]
    fn gatt_frame_voltage_status_and_soc() {
        // 12.83 V → 1283 = 0x503; word 0x5037 (status 7); SoC 0x5d = 93.
        let plain: [u8; 16] = parse_hex("f550375d000000000000000000000000")
            .unwrap()
            .try_into()
            .unwrap();
        let m = reading(Bm2.decode_gatt(&plain).unwrap());
        assert_eq!(m.voltage, 12.83);
        assert_eq!(m.state_of_charge, Some(93.0));
        assert_eq!(m.counters, vec![("status_code", 7)]);
        assert_eq!(Bm2.encode_gatt(&m), plain);
    }

    #[test]
    fn soc_above_100_is_not_a_soc() {
        let plain: [u8; 16] = parse_hex("f55030c8000000000000000000000000")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            reading(Bm2.decode_gatt(&plain).unwrap()).state_of_charge,
            None
        );
    }

    #[test]
    fn must_reject() {
        let bm2 = Model::by_name("BM2").unwrap();
        // The advert from another address (the BM6 one's, not reversed).
        let e = decode_frame(
            bm2,
            Source::Advertisement,
            "20:2F:22:7B:54:50".parse().unwrap(),
            &parse_hex("e18911ed76d18e5ba793d5574f205b61").unwrap(),
        );
        assert_eq!(e.unwrap_err(), DecodeError::WrongAddress);
        // A BM6 reply under the BM2 key.
        let mac = "00:00:00:00:00:00".parse().unwrap();
        let e = decode_frame(
            bm2,
            Source::Gatt,
            mac,
            &parse_hex("71543b749f6f614dd6333f21546f681d").unwrap(),
        );
        assert_eq!(e.unwrap_err(), DecodeError::NotMine);
        // 0 V is not plausible.
        let zero = crypto::encrypt(&KEY, &[0xf5, 0, 0, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let e = decode_frame(bm2, Source::Gatt, mac, &zero);
        assert!(matches!(
            e,
            Err(DecodeError::OutOfRange {
                field: "voltage",
                ..
            })
        ));
    }
}
