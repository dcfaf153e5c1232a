//! Thread "decode": encrypted frames in, readings (or rejections) out.
//!
//! Owns: turning a [`RawFrame`] into fleet events through the pure decoders of [`crate::devices`] — one
//! outcome per 16-byte block of a notification (SPEC §5.1) — and the debug breakdown of what did not become
//! a reading (per model, per reason; SPEC §5.5). Must never: drop a notice (everything that is not a frame
//! passes through unchanged and in order), let a bad frame become a reading, or report a frame that is not a
//! reading but is the model's (version, history, …) as an error: those are skipped at debug.

use crate::devices::{self, Decoded, FrameKind};
use crate::messages::{BleEvent, DecodedReading, FleetEvent, Notice, RawFrame};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{BTreeMap, BTreeSet};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the breakdown of skipped and rejected frames is logged (at debug), at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Start the decode thread. It ends after forwarding `Stopping` (or when its input closes).
pub fn spawn(rx: Receiver<BleEvent>, tx: Sender<FleetEvent>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("decode".into())
        .spawn(move || {
            crate::pipeline::batch_policy();
            let mut tally = Tally::default();
            for event in rx {
                let stopping = matches!(event, BleEvent::Notice(Notice::Stopping { .. }));
                let out = match event {
                    BleEvent::Frame(frame) => {
                        let decoding = decode(frame);
                        for line in tally.observe(&decoding) {
                            log::debug!("{line}");
                        }
                        if let Some(report) = tally.report(Instant::now()) {
                            log::debug!("{report}");
                        }
                        decoding.events
                    }
                    BleEvent::Notice(n) => vec![FleetEvent::Notice(n)],
                };
                for e in out {
                    if tx.send(e).is_err() {
                        log::error!("the fleet stage has stopped; decode ends");
                        return;
                    }
                }
                if stopping {
                    return;
                }
            }
        })
}

/// What one frame came to: the events for the fleet (readings and rejections, in block order) and the
/// blocks skipped as not readings.
#[derive(Debug, Clone)]
pub struct Decoding {
    /// The frame's model, address and data (hex), for the logs.
    pub model: devices::Model,
    pub mac: crate::mac::Mac,
    pub data_hex: String,
    pub events: Vec<FleetEvent>,
    pub skipped: Vec<FrameKind>,
}

/// Decode one frame, block by block (a pure function: frame in, events out).
pub fn decode(frame: RawFrame) -> Decoding {
    let mut decoding = Decoding {
        model: frame.model,
        mac: frame.mac,
        data_hex: devices::to_hex(&frame.data),
        events: Vec::new(),
        skipped: Vec::new(),
    };
    for outcome in devices::decode_notification(frame.model, frame.source, frame.mac, &frame.data) {
        match outcome {
            Ok((plain, Decoded::Reading(measurement))) => {
                decoding.events.push(FleetEvent::Reading(DecodedReading {
                    mac: frame.mac,
                    model: frame.model,
                    source: frame.source,
                    measurement,
                    plain,
                    rssi: frame.rssi,
                    received_at: frame.received_at,
                }))
            }
            Ok((_, Decoded::NotReading(kind))) => decoding.skipped.push(kind),
            Err(reason) => decoding.events.push(FleetEvent::Rejected {
                mac: frame.mac,
                model: frame.model,
                reason,
            }),
        }
    }
    decoding
}

/// Counts of what did not become a (whole) reading, per model, outcome and kind; a plain state machine
/// with time as an input. The first occurrence of each key is logged at once with its detail; after that
/// only counted, and the counts logged at most every [`REPORT_EVERY`].
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    seen: BTreeSet<(&'static str, &'static str, &'static str)>,
    next_report: Option<Instant>,
}

impl Tally {
    /// Count a frame's outcomes; returns the lines to log now (first occurrences).
    pub fn observe(&mut self, d: &Decoding) -> Vec<String> {
        let model = d.model.name();
        let mut notes: Vec<(&'static str, &'static str, String)> = Vec::new();
        for kind in &d.skipped {
            let detail = format!("skipped a {} frame (not a reading)", kind.as_str());
            notes.push(("skipped", kind.as_str(), detail));
        }
        for e in &d.events {
            match e {
                FleetEvent::Rejected { reason, .. } => notes.push((
                    "rejected",
                    reason.kind(),
                    format!("rejected a frame: {reason}"),
                )),
                FleetEvent::Reading(r) => {
                    if let Some(t) = r.measurement.dropped_temperature {
                        let detail =
                            format!("temperature {t} °C is outside −40…85 °C: published as null");
                        notes.push(("dropped", "temperature", detail));
                    }
                }
                FleetEvent::Notice(_) | FleetEvent::Remote(_) => {}
            }
        }
        let mut lines = Vec::new();
        for (outcome, kind, detail) in notes {
            let key = (model, outcome, kind);
            *self.counts.entry(key).or_default() += 1;
            if self.seen.insert(key) {
                lines.push(format!(
                    "{model} {}: {detail} ({}; first of its kind, further ones are counted)",
                    d.mac, d.data_hex
                ));
            }
        }
        lines
    }

    /// The breakdown since the last report, when one is due at `now` and anything was counted.
    pub fn report(&mut self, now: Instant) -> Option<String> {
        if self.counts.is_empty() || self.next_report.is_some_and(|t| now < t) {
            return None;
        }
        self.next_report = Some(now + REPORT_EVERY);
        let parts: Vec<String> = std::mem::take(&mut self.counts)
            .into_iter()
            .map(|((model, outcome, kind), n)| format!("{model} {outcome} {kind}: {n}"))
            .collect();
        Some(format!(
            "frames that were not readings: {}",
            parts.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_support::cipher;
    use crate::devices::{DecodeError, Model, Source, parse_hex};
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

    fn reasons(d: &Decoding) -> Vec<&'static str> {
        d.events
            .iter()
            .filter_map(|e| match e {
                FleetEvent::Rejected { reason, .. } => Some(reason.kind()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_reading() {
        let d = decode(frame("71543b749f6f614dd6333f21546f681d"));
        let [FleetEvent::Reading(r)] = d.events.as_slice() else {
            panic!("{:?}", d.events);
        };
        assert_eq!(r.measurement.voltage, Some(12.7));
        assert_eq!((r.rssi, r.source), (Some(-60), Source::Gatt));
        assert_eq!(
            devices::to_hex(&r.plain),
            "d155070019005004f600000000000000"
        );
    }

    #[test]
    fn echo_and_version_are_skipped_not_rejected() {
        let d = decode(frame("8ae0358523fe154976de18fc102eb1d4"));
        assert!(d.events.is_empty());
        assert_eq!(d.skipped, vec![FrameKind::Echo]);
        let d = decode(frame("0df8721e454fa209648a87910814dad1"));
        assert_eq!(
            (d.events.len(), d.skipped.clone()),
            (0, vec![FrameKind::Version])
        );
    }

    #[test]
    fn rejections_are_typed() {
        let d = decode(frame("e18911ed76d18e5ba793d5574f205b61"));
        assert_eq!(reasons(&d), vec!["not_mine"]);
        let d = decode(frame("71543b74"));
        let [FleetEvent::Rejected { reason, model, .. }] = d.events.as_slice() else {
            panic!("{:?}", d.events);
        };
        assert_eq!(
            (reason, model.name()),
            (
                &DecodeError::Length {
                    got: 4,
                    expected: 16
                },
                "BM6"
            )
        );
    }

    #[test]
    fn a_long_notification_gives_one_outcome_per_block() {
        let mut data = cipher("BM6", "d1550500140000000000000000000000");
        data.extend(cipher("BM6", "52e64180000000000000000000000000"));
        data.extend(cipher("BM6", "fffefe000000d0000000000000000000"));
        data.extend(cipher("BM6", "d155070019005004f600000000000000"));
        data.extend([0xaa; 5]);
        let mut f = frame("00");
        f.data = data;
        let d = decode(f);
        assert_eq!(
            d.skipped,
            vec![
                FrameKind::HistoryHeader,
                FrameKind::HistoryData,
                FrameKind::HistoryEnd
            ]
        );
        assert!(matches!(d.events[0], FleetEvent::Reading(_)));
        assert_eq!(reasons(&d), vec!["length"]);
    }

    #[test]
    fn tally_logs_first_occurrences_and_reports_at_most_once_a_minute() {
        let mut t = Tally::default();
        let t0 = Instant::now();
        assert_eq!(t.report(t0), None);
        let lines = t.observe(&decode(frame("e18911ed76d18e5ba793d5574f205b61")));
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("BM6 AA:BB:CC:DD:EE:FF: rejected a frame"),
            "{}",
            lines[0]
        );
        assert!(
            t.observe(&decode(frame("e18911ed76d18e5ba793d5574f205b61")))
                .is_empty()
        );
        t.observe(&decode(frame("71543b74")));
        t.observe(&decode(frame("0df8721e454fa209648a87910814dad1")));
        let report = t.report(t0).unwrap();
        assert_eq!(
            report,
            "frames that were not readings: BM6 rejected length: 1, BM6 rejected not_mine: 2, \
             BM6 skipped version: 1"
        );
        t.observe(&decode(frame("71543b74")));
        assert_eq!(t.report(t0 + Duration::from_secs(59)), None);
        let later = t.report(t0 + REPORT_EVERY).unwrap();
        assert_eq!(
            later,
            "frames that were not readings: BM6 rejected length: 1"
        );
        assert_eq!(t.report(t0 + 3 * REPORT_EVERY), None);
    }

    #[test]
    fn a_dropped_temperature_is_noted_with_its_value() {
        let mut f = frame("00");
        f.data = cipher("BM6", "d155070159015004f600000000000000");
        let d = decode(f);
        let [FleetEvent::Reading(r)] = d.events.as_slice() else {
            panic!("{:?}", d.events);
        };
        assert_eq!(
            (r.measurement.voltage, r.measurement.temperature),
            (Some(12.7), None)
        );
        let lines = Tally::default().observe(&d);
        assert!(
            lines[0].contains("temperature -89 °C is outside"),
            "{lines:?}"
        );
    }
}
