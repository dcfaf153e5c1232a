//! Thread "decode": encrypted frames in, readings (or rejections) out.
//!
//! Owns: turning a [`RawFrame`] into a [`DecodedReading`] through the pure decoders of [`crate::devices`].
//! Must never: drop a notice (everything that is not a frame passes through unchanged and in order), or
//! let a bad frame become a reading. Echo and version frames are skipped silently: they are not errors.

use crate::devices::{self, Decoded};
use crate::messages::{BleEvent, DecodedReading, FleetEvent, Notice, RawFrame};
use crossbeam_channel::{Receiver, Sender};
use std::thread::JoinHandle;

/// Start the decode thread. It ends after forwarding `Stopping` (or when its input closes).
pub fn spawn(rx: Receiver<BleEvent>, tx: Sender<FleetEvent>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("decode".into())
        .spawn(move || {
            for event in rx {
                let stopping = matches!(event, BleEvent::Notice(Notice::Stopping { .. }));
                let out = match event {
                    BleEvent::Frame(frame) => decode(frame),
                    BleEvent::Notice(n) => Some(FleetEvent::Notice(n)),
                };
                if let Some(out) = out
                    && tx.send(out).is_err()
                {
                    log::error!("the fleet stage has stopped; decode ends");
                    return;
                }
                if stopping {
                    return;
                }
            }
        })
}

/// Decode one frame: a reading, a rejection, or nothing (echo / version reply).
pub fn decode(frame: RawFrame) -> Option<FleetEvent> {
    match devices::decode_frame(frame.model, frame.source, frame.mac, &frame.data) {
        Ok((plain, Decoded::Reading(measurement))) => Some(FleetEvent::Reading(DecodedReading {
            mac: frame.mac,
            model: frame.model,
            source: frame.source,
            measurement,
            plain,
            rssi: frame.rssi,
            received_at: frame.received_at,
        })),
        Ok((_, skipped)) => {
            log::trace!("{} {}: skipped {skipped:?} frame", frame.model, frame.mac);
            None
        }
        Err(e) => {
            log::debug!(
                "{} {}: rejected frame {}: {e}",
                frame.model,
                frame.mac,
                devices::to_hex(&frame.data)
            );
            Some(FleetEvent::Rejected {
                mac: frame.mac,
                model: frame.model,
                why: e.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{Model, Source, parse_hex};
    use chrono::Utc;

    fn frame(hex: &str) -> RawFrame {
        RawFrame {
            mac: "AA:BB:CC:DD:EE:FF".parse().unwrap(),
            model: Model::by_name("BM6").unwrap(),
            source: Source::Gatt,
            data: parse_hex(hex).unwrap(),
            rssi: Some(-60),
            received_at: Utc::now(),
        }
    }

    #[test]
    fn reading_rejection_and_skips() {
        let Some(FleetEvent::Reading(r)) = decode(frame("71543b749f6f614dd6333f21546f681d")) else {
            panic!("no reading");
        };
        assert_eq!(r.measurement.voltage, 12.7);
        assert_eq!(r.rssi, Some(-60));
        assert!(decode(frame("8ae0358523fe154976de18fc102eb1d4")).is_none());
        assert!(decode(frame("0df8721e454fa209648a87910814dad1")).is_none());
        let rejected = decode(frame("e18911ed76d18e5ba793d5574f205b61"));
        assert!(matches!(rejected, Some(FleetEvent::Rejected { .. })));
        let short = decode(frame("71543b74"));
        assert!(matches!(short, Some(FleetEvent::Rejected { .. })));
    }
}
