//! Shared by the decoder targets: byte 0 picks the source (even: GATT, odd: advertisement), bytes 1–6 are
//! the sender's address, the rest is the frame, decrypted and decoded as `model`. A reading must be
//! plausible (SPEC §5.5); anything else must be an error, never a panic.

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
    let source = if pick % 2 == 0 {
        Source::Gatt
    } else {
        Source::Advertisement
    };
    if let Ok((_, Decoded::Reading(m))) = devices::decode_frame(model, source, Mac(*mac), frame) {
        assert!(m.voltage > 0.0 && m.voltage <= 40.0, "{m:?}");
        assert!(
            m.temperature.is_none_or(|t| (-40.0..=85.0).contains(&t)),
            "{m:?}"
        );
        assert!(
            m.state_of_charge.is_none_or(|s| (0.0..=100.0).contains(&s)),
            "{m:?}"
        );
    }
    // The same bytes as plaintext, encrypted the way the monitor would: must decode or fail cleanly too.
    if let Ok(block) = <[u8; 16]>::try_from(frame) {
        let cipher = devices::encrypt_frame(model, &block);
        let _ = devices::decode_frame(model, source, Mac(*mac), &cipher);
    }
}
