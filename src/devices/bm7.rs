//! BM7 (Ancel BM300 Pro). Same GATT frames as the BM6 (layout table in `bm6.rs`), its own key.
//!
//! Key tail `010000@`. Request: write `d1 55 07` + 13 × `00` (encrypted) to `fff3`.
//! Broadcast readings are not established for this model, so it supports `poll`/`stream` only.

use super::bm6::{READ_REQUEST, decode_d155, encode_d155};
use super::crypto::leagend_key;
use super::{DecodeError, Decoded, Ibeacon, Measurement, Monitor};
use crate::mac::Mac;

pub struct Bm7;

const KEY: [u8; 16] = leagend_key(b"010000@");

impl Monitor for Bm7 {
    fn name(&self) -> &'static str {
        "BM7"
    }
    fn key(&self) -> &'static [u8; 16] {
        &KEY
    }
    fn advertised_names(&self) -> &'static [&'static str] {
        &["BM7", "BM300 Pro"]
    }
    fn ibeacon(&self) -> Option<Ibeacon> {
        None
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
    fn decode_advert(&self, _plain: &[u8; 16], _mac: Mac) -> Result<Decoded, DecodeError> {
        Err(DecodeError::NoAdvertisement)
    }
    fn encode_gatt(&self, m: &Measurement) -> [u8; 16] {
        encode_d155(m)
    }
    fn encode_advert(&self, _m: &Measurement, _mac: Mac) -> Option<[u8; 16]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::reading;
    use crate::devices::{Model, Source, crypto, decode_frame, parse_hex, to_hex};

    #[test]
    fn request_encrypts_to_the_spec_vector() {
        assert_eq!(
            to_hex(&crypto::encrypt(&KEY, &READ_REQUEST)),
            "586d7b2377c6924dcd750acb29f5bf8d"
        );
    }

    #[test]
    fn ancel_bm300_pro_is_a_bm7_by_name() {
        let m = crate::devices::identify_by_name("BM300 Pro").unwrap();
        assert_eq!(m.name(), "BM7");
        assert_eq!(
            crate::devices::identify_by_name("BM7").unwrap().name(),
            "BM7"
        );
    }

    #[test]
    fn bm7_key_decodes_a_bm6_layout_frame() {
        let plain: [u8; 16] = parse_hex("d155070019005004f600000000000000")
            .unwrap()
            .try_into()
            .unwrap();
        let bm7 = Model::by_name("BM7").unwrap();
        let mac = "00:00:00:00:00:00".parse().unwrap();
        let (_, d) = decode_frame(bm7, Source::Gatt, mac, &crypto::encrypt(&KEY, &plain)).unwrap();
        assert_eq!(reading(d).voltage, Some(12.70));
    }

    #[test]
    fn must_reject_bm6_frames_and_adverts() {
        let bm7 = Model::by_name("BM7").unwrap();
        let mac = "38:3B:26:B5:30:AB".parse().unwrap();
        // A BM6 GATT vector decrypted with the BM7 key is garbage.
        let bm6_frame = parse_hex("71543b749f6f614dd6333f21546f681d").unwrap();
        let e = decode_frame(bm7, Source::Gatt, mac, &bm6_frame);
        assert_eq!(e.unwrap_err(), DecodeError::NotMine);
        let advert = parse_hex("ee6e22884c11f151c1760465b2fe9003").unwrap();
        let e = decode_frame(bm7, Source::Advertisement, mac, &advert);
        assert_eq!(e.unwrap_err(), DecodeError::NoAdvertisement);
    }
}
