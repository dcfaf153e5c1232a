//! Recognising monitors in a scan (SPEC §5.3) and picking their broadcast frames (SPEC §5.4).
//!
//! Decision (issue 11): a device is a monitor only on evidence. In order of strength: an encrypted
//! advertisement that decrypts, with a model's key, to a frame carrying the device's own address
//! ([`Evidence::Advertisement`]); a model's iBeacon UUID ([`Evidence::Ibeacon`]); a known advertised name
//! **together with** the Leagend service `fff0` ([`Evidence::Name`], unconfirmed: a guess to show in `scan`
//! and to poll when configured). A known name without `fff0` is not a monitor at all: BMS boards, helmets
//! and set-top boxes also call themselves "Battery Monitor" or "Battery Guard".

use super::{ALL, IBEACON_LEN, Model, SERVICE_UUID, Source, decode_frame};
use crate::mac::Mac;

/// Apple's company id, under which iBeacon data comes.
pub const APPLE: u16 = 76;

/// What told us the model of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Its encrypted advertisement decrypts to a frame carrying its own address.
    Advertisement,
    /// It broadcasts the model's iBeacon UUID.
    Ibeacon,
    /// Only its advertised name (and service `fff0`): a guess.
    Name,
}

/// A device recognised as a monitor model, and on what evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub model: Model,
    pub evidence: Evidence,
}

impl Identity {
    /// Whether the evidence confirms the model (SPEC §5.3): everything but a name.
    pub fn confirmed(&self) -> bool {
        self.evidence != Evidence::Name
    }
}

/// Which model a device is, from what it advertises (see the module docs for the order of evidence).
/// `service_uuids` as BlueZ lists them (128-bit, any case; the 16-bit form `fff0` is accepted too),
/// `manufacturer` as BlueZ's map `company id → bytes`. `None`: not a monitor.
pub fn classify(
    mac: Mac,
    name: Option<&str>,
    service_uuids: &[String],
    manufacturer: &[(u16, Vec<u8>)],
) -> Option<Identity> {
    let found = |model, evidence| Identity { model, evidence };
    let by_advert = || {
        manufacturer
            .iter()
            .filter_map(|(cid, v)| advert_frame(*cid, v))
            .find_map(|f| identify_by_advert(mac, &f))
            .map(|m| found(m, Evidence::Advertisement))
    };
    let by_beacon = || {
        ALL.iter()
            .map(|m| Model(*m))
            .find(|m| ibeacon_value(*m, manufacturer).is_some())
            .map(|m| found(m, Evidence::Ibeacon))
    };
    let by_name = || {
        service_uuids
            .iter()
            .any(|u| is_leagend_service(u))
            .then(|| name.and_then(identify_by_name))
            .flatten()
            .map(|m| found(m, Evidence::Name))
    };
    by_advert().or_else(by_beacon).or_else(by_name)
}

/// Whether `uuid` names the Leagend GATT service `fff0` (128-bit or 16-bit form, any case).
fn is_leagend_service(uuid: &str) -> bool {
    uuid.eq_ignore_ascii_case(SERVICE_UUID) || uuid.eq_ignore_ascii_case("fff0")
}

/// The model whose decrypted advertisement carries `mac` (SPEC §5.3: the decisive test).
pub fn identify_by_advert(mac: Mac, frame: &[u8]) -> Option<Model> {
    ALL.iter()
        .map(|m| Model(*m))
        .find(|m| decode_frame(*m, Source::Advertisement, mac, frame).is_ok())
}

/// The model an advertised name suggests: a guess, never a confirmation (SPEC §5.3).
pub fn identify_by_name(name: &str) -> Option<Model> {
    ALL.iter()
        .find(|m| m.advertised_names().contains(&name))
        .map(|m| Model(*m))
}

/// Rebuild the 16-byte advertisement frame from BlueZ's manufacturer data entry (SPEC §5.4): the first two
/// frame bytes became the company id, little-endian. `None` when the value is not 14 bytes.
pub fn advert_frame(company_id: u16, value: &[u8]) -> Option<[u8; 16]> {
    let mut frame = [0u8; 16];
    frame[0..2].copy_from_slice(&company_id.to_le_bytes());
    frame
        .get_mut(2..)?
        .copy_from_slice(value.get(..14).filter(|_| value.len() == 14)?);
    Some(frame)
}

/// The first encrypted advertisement in `manufacturer` that decodes as `model`'s from `mac`.
/// Give it only the manufacturer data of **one** advertisement (the change signal's, SPEC §5.4): BlueZ's
/// cached map may hold older entries, and this takes whichever decodes first.
pub fn advert_reading(model: Model, mac: Mac, manufacturer: &[(u16, Vec<u8>)]) -> Option<[u8; 16]> {
    manufacturer
        .iter()
        .filter_map(|(cid, v)| advert_frame(*cid, v))
        .find(|f| decode_frame(model, Source::Advertisement, mac, f).is_ok())
}

/// `model`'s iBeacon value in `manufacturer` (the Apple entry `02 15 <model's UUID> …`, 23 bytes), if any:
/// what [`decode_frame`] takes with [`Source::Ibeacon`].
pub fn ibeacon_value(model: Model, manufacturer: &[(u16, Vec<u8>)]) -> Option<&[u8]> {
    let beacon = model.ibeacon()?;
    manufacturer
        .iter()
        .filter(|(cid, v)| *cid == APPLE && v.len() == IBEACON_LEN)
        .map(|(_, v)| v.as_slice())
        .find(|v| v[0..2] == [0x02, 0x15] && v[2..18] == beacon.uuid)
}

/// The iBeacon value `model` broadcasts with state of charge `soc` % (the simulated monitors use this);
/// `None` for a model without iBeacon.
pub fn ibeacon_payload(model: Model, soc: u8) -> Option<Vec<u8>> {
    let beacon = model.ibeacon()?;
    let mut v = vec![0u8; IBEACON_LEN];
    v[0..2].copy_from_slice(&[0x02, 0x15]);
    v[2..18].copy_from_slice(&beacon.uuid);
    v[beacon.soc_byte] = soc;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{Decoded, parse_hex};

    const FFF0: &str = "0000fff0-0000-1000-8000-00805f9b34fb";

    fn entry(hex: &str) -> (u16, Vec<u8>) {
        let f = parse_hex(hex).unwrap();
        (u16::from_le_bytes([f[0], f[1]]), f[2..].to_vec())
    }

    fn fff0() -> Vec<String> {
        vec![FFF0.to_string()]
    }

    fn name_of(i: Option<Identity>) -> Option<(&'static str, Evidence)> {
        i.map(|i| (i.model.name(), i.evidence))
    }

    #[test]
    fn adverts_identify_their_model_by_the_embedded_address() {
        let bm2 = parse_hex("e18911ed76d18e5ba793d5574f205b61").unwrap();
        let bm6 = parse_hex("ee6e22884c11f151c1760465b2fe9003").unwrap();
        let m = identify_by_advert("50:54:7B:22:2F:20".parse().unwrap(), &bm2).unwrap();
        assert_eq!(m.name(), "BM2");
        let m = identify_by_advert("38:3B:26:B5:30:AB".parse().unwrap(), &bm6).unwrap();
        assert_eq!(m.name(), "BM6");
        assert!(identify_by_advert("38:3B:26:B5:30:AC".parse().unwrap(), &bm6).is_none());
    }

    #[test]
    fn an_advert_with_the_own_address_confirms_whatever_the_name() {
        let mac: Mac = "38:3B:26:B5:30:AB".parse().unwrap();
        let mfr = vec![entry("ee6e22884c11f151c1760465b2fe9003")];
        let id = classify(mac, Some("Battery Monitor"), &[], &mfr).unwrap();
        assert_eq!(name_of(Some(id)), Some(("BM6", Evidence::Advertisement)));
        assert!(id.confirmed());
    }

    #[test]
    fn an_ibeacon_confirms_without_an_advert() {
        let mac: Mac = "C8:FD:19:7C:2E:0F".parse().unwrap();
        let value = parse_hex("0215655f83caae16a10a702e31f30d58dd82f6415bc164").unwrap();
        let id = classify(mac, None, &[], &[(APPLE, value)]).unwrap();
        assert_eq!(name_of(Some(id)), Some(("BM2", Evidence::Ibeacon)));
        assert!(id.confirmed());
    }

    #[test]
    fn a_name_with_fff0_is_an_unconfirmed_guess() {
        let mac: Mac = "AA:BB:CC:DD:EE:01".parse().unwrap();
        let id = classify(mac, Some("BM300 Pro"), &fff0(), &[]).unwrap();
        assert_eq!(name_of(Some(id)), Some(("BM7", Evidence::Name)));
        assert!(!id.confirmed());
        let short = vec!["FFF0".to_string()];
        assert_eq!(
            name_of(classify(mac, Some("BM7"), &short, &[])),
            Some(("BM7", Evidence::Name))
        );
    }

    #[test]
    fn a_name_without_fff0_is_not_a_monitor() {
        let mac: Mac = "AA:BB:CC:DD:EE:02".parse().unwrap();
        for name in ["Battery Monitor", "Battery Guard", "BM6", "BM300 Pro"] {
            assert!(classify(mac, Some(name), &[], &[]).is_none(), "{name}");
            let other = vec!["0000180f-0000-1000-8000-00805f9b34fb".to_string()];
            assert!(classify(mac, Some(name), &other, &[(APPLE, vec![1, 2, 3])]).is_none());
        }
        assert!(classify(mac, Some("Mi Band"), &fff0(), &[]).is_none());
        assert!(classify(mac, None, &fff0(), &[]).is_none());
    }

    #[test]
    fn an_advert_of_another_device_does_not_confirm() {
        // The frame carries 38:3B:26:B5:30:AB; a device at another address re-broadcasting it is no BM6.
        let mac: Mac = "38:3B:26:B5:30:AC".parse().unwrap();
        let mfr = vec![entry("ee6e22884c11f151c1760465b2fe9003")];
        assert!(classify(mac, Some("BM6"), &[], &mfr).is_none());
        assert_eq!(
            name_of(classify(mac, Some("BM6"), &fff0(), &mfr)),
            Some(("BM6", Evidence::Name))
        );
    }

    #[test]
    fn ibeacon_value_picks_the_models_entry() {
        let bm6 = parse_hex("02153ba29cd9a42c894856badaf2606ef77711640000cd").unwrap();
        // Rafciq/BM6 issue #16: one iBeacon and two cached encrypted entries.
        let mfr = vec![
            (APPLE, bm6.clone()),
            (11621, parse_hex("71825dc04f03a7f43f79af0d01d4").unwrap()),
            (28825, parse_hex("ee5d2fe28ee5b63e535980815f57").unwrap()),
        ];
        let bm6_model = Model::by_name("BM6").unwrap();
        assert_eq!(ibeacon_value(bm6_model, &mfr), Some(bm6.as_slice()));
        assert_eq!(ibeacon_value(Model::by_name("BM2").unwrap(), &mfr), None);
        assert_eq!(ibeacon_value(Model::by_name("BM7").unwrap(), &mfr), None);
        let mac: Mac = "3C:AB:72:CB:13:F4".parse().unwrap();
        assert_eq!(
            name_of(classify(mac, Some("BM6"), &fff0(), &mfr)),
            Some(("BM6", Evidence::Advertisement))
        );
    }

    #[test]
    fn ibeacon_payload_round_trips() {
        for m in ALL {
            let model = Model(*m);
            let Some(v) = ibeacon_payload(model, 42) else {
                assert!(model.ibeacon().is_none());
                continue;
            };
            let (_, d) = decode_frame(model, Source::Ibeacon, Mac([0; 6]), &v).unwrap();
            let Decoded::Reading(r) = d else {
                panic!("{d:?}")
            };
            assert_eq!(r.state_of_charge, Some(42.0));
        }
    }

    #[test]
    fn advert_frames_are_rebuilt_from_the_company_id() {
        assert!(advert_frame(1, &[0; 13]).is_none());
        assert!(advert_frame(1, &[0; 15]).is_none());
        let f = advert_frame(0x6eee, &[7; 14]).unwrap();
        assert_eq!(&f[..3], &[0xee, 0x6e, 7]);
        let mac: Mac = "38:3B:26:B5:30:AB".parse().unwrap();
        let mfr = vec![entry("ee6e22884c11f151c1760465b2fe9003")];
        assert!(advert_reading(Model::by_name("BM6").unwrap(), mac, &mfr).is_some());
        assert!(advert_reading(Model::by_name("BM2").unwrap(), mac, &mfr).is_none());
    }
}
