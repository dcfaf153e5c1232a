//! Property tests: whatever bytes arrive from the air and whatever text is in the config file, the gateway
//! answers with a value or an error — never a panic, never an implausible reading.

use battery_hawk::config::Config;
use battery_hawk::devices::{self, ALL, Decoded, Model, Source};
use battery_hawk::mac::Mac;
use proptest::prelude::*;
use std::path::Path;

/// SPEC §5.5: a reading is plausible, and only an iBeacon reading lacks a voltage.
fn plausible(d: &Decoded, source: Source) -> bool {
    match d {
        Decoded::Reading(m) => {
            m.voltage.is_none_or(|v| v > 0.0 && v <= 40.0)
                && (m.voltage.is_some() || source == Source::Ibeacon)
                && m.temperature.is_none_or(|t| (-40.0..=85.0).contains(&t))
                && m.state_of_charge.is_none_or(|s| (0.0..=100.0).contains(&s))
        }
        Decoded::NotReading(_) => true,
    }
}

const SOURCES: [Source; 3] = [Source::Gatt, Source::Advertisement, Source::Ibeacon];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_under_any_model_decode_or_fail_cleanly(
        data in proptest::collection::vec(any::<u8>(), 0..=64),
        mac in any::<[u8; 6]>(),
        pick in 0usize..3,
    ) {
        let source = SOURCES[pick];
        for m in ALL {
            if let Ok((_, d)) = devices::decode_frame(Model(*m), source, Mac(mac), &data) {
                let expected = if source == Source::Ibeacon { devices::IBEACON_LEN } else { 16 };
                prop_assert!(data.len() == expected);
                prop_assert!(plausible(&d, source), "{} {:?}", m.name(), d);
            }
            let blocks = devices::decode_notification(Model(*m), source, Mac(mac), &data);
            let expected = if source == Source::Gatt { data.len().div_ceil(16).max(1) } else { 1 };
            prop_assert_eq!(blocks.len(), expected);
            for (_, d) in blocks.iter().flatten() {
                prop_assert!(plausible(d, source), "{} {:?}", m.name(), d);
            }
        }
        let uuids = vec![devices::SERVICE_UUID.to_string()];
        let _ = devices::classify(Mac(mac), Some("BM6"), &uuids, &[(u16::from(mac[0]), data.clone())]);
        let _ = devices::classify(Mac(mac), None, &[], &[(devices::APPLE, data)]);
    }

    #[test]
    fn any_plaintext_encrypted_with_any_key_gives_only_plausible_readings(
        plain in any::<[u8; 16]>(),
        mac in any::<[u8; 6]>(),
    ) {
        for m in ALL {
            let model = Model(*m);
            let frame = devices::encrypt_frame(model, &plain);
            for source in [Source::Gatt, Source::Advertisement] {
                if let Ok((back, d)) = devices::decode_frame(model, source, Mac(mac), &frame) {
                    prop_assert_eq!(back, plain.to_vec());
                    prop_assert!(plausible(&d, source), "{} {:?}", m.name(), d);
                }
            }
        }
    }

    #[test]
    fn any_soc_in_a_models_ibeacon_is_read_back_or_rejected(soc in any::<u8>()) {
        for m in ALL {
            let model = Model(*m);
            let Some(value) = devices::ibeacon_payload(model, soc) else { continue };
            let r = devices::decode_frame(model, Source::Ibeacon, Mac([0; 6]), &value);
            match r {
                Ok((_, Decoded::Reading(m))) => {
                    prop_assert!(soc <= 100);
                    prop_assert_eq!((m.voltage, m.state_of_charge), (None, Some(f64::from(soc))));
                }
                other => prop_assert!(soc > 100 && other.is_err(), "{:?}", other),
            }
        }
    }

    #[test]
    fn a_name_alone_never_confirms_and_never_counts_without_fff0(
        name in prop::sample::select(vec!["Battery Monitor", "Battery Guard", "BM6", "BM7", "BM300 Pro", "ZX-1689", "x"]),
        cid in any::<u16>(),
        value in proptest::collection::vec(any::<u8>(), 0..=30),
        mac in any::<[u8; 6]>(),
    ) {
        let mfr = [(cid, value)];
        if let Some(id) = devices::classify(Mac(mac), Some(name), &[], &mfr) {
            prop_assert!(id.confirmed(), "{:?}", id);
        }
        let uuids = vec![devices::SERVICE_UUID.to_string()];
        if let Some(id) = devices::classify(Mac(mac), Some(name), &uuids, &mfr)
            && !id.confirmed()
        {
            prop_assert_eq!(devices::identify_by_name(name), Some(id.model));
        }
    }

    #[test]
    fn any_config_text_parses_or_gives_an_error(text in "\\PC{0,200}") {
        let _ = Config::from_toml(&text, Path::new("fuzz.toml"), Vec::new());
    }

    #[test]
    fn config_shaped_text_parses_or_gives_an_error(
        section in prop::sample::select(vec!["gateway", "mqtt", "bluetooth", "defaults", "simulation", "x"]),
        key in "[a-z_]{1,20}",
        value in prop::sample::select(vec!["1", "-1", "\"\"", "\"a/#\"", "true", "1e400", "[1]", "{a=1}", "99999999999999999999"]),
        mac in "[0-9A-Fa-f:-]{0,20}",
    ) {
        let text = format!("[{section}]\n{key} = {value}\n[[device]]\nmac = \"{mac}\"\n");
        let _ = Config::from_toml(&text, Path::new("fuzz.toml"), Vec::new());
        let env = vec![(format!("BATTERYHAWK_{}_{}", section.to_uppercase(), key.to_uppercase()), value.to_string())];
        let _ = Config::from_toml("", Path::new("fuzz.toml"), env);
    }
}
