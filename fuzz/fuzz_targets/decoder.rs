//! Shared by the decoder targets: byte 0 picks the source (mod 3: GATT, advertisement, iBeacon), bytes 1–6
//! are the sender's address, the rest is the frame (a GATT notification may be several 16-byte blocks),
//! decoded as `model`. A reading must be plausible (SPEC §5.5); anything else must be an error or a
//! non-reading, never a panic.

use battery_hawk::devices::{self, Decoded, Model, Source};
use battery_hawk::mac::Mac;

pub fn check(model: &str, data: &[u8]) {
    let Some(model) = Model::by_name(model) else {
        return;
    };
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some((mac, frame)) = rest.split_first_chunk::<6>() else {
        return;
    };
    let source = match pick % 3 {
        0 => Source::Gatt,
        1 => Source::Advertisement,
        _ => Source::Ibeacon,
    };
    for (_, d) in devices::decode_notification(model, source, Mac(*mac), frame)
        .iter()
        .flatten()
    {
        if let Decoded::Reading(m) = d {
            assert!(m.voltage.is_none_or(|v| v > 0.0 && v <= 40.0), "{m:?}");
            assert!(m.voltage.is_some() || source == Source::Ibeacon, "{m:?}");
            assert!(
                m.temperature.is_none_or(|t| (-40.0..=85.0).contains(&t)),
                "{m:?}"
            );
            assert!(
                m.state_of_charge.is_none_or(|s| (0.0..=100.0).contains(&s)),
                "{m:?}"
            );
        }
    }
    // The same bytes as plaintext, encrypted the way the monitor would: must decode or fail cleanly too.
    if let Ok(block) = <[u8; 16]>::try_from(frame) {
        let cipher = devices::encrypt_frame(model, &block);
        let _ = devices::decode_frame(model, source, Mac(*mac), &cipher);
    }
}
