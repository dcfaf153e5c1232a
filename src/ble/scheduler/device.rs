//! One monitor as the scheduler sees it: where it is in its cycle and what it last did.

use super::{FRESH, PASSIVE_SILENCE_INTERVALS, STREAM_RETRY_FIRST};
use crate::config::Mode;
use crate::devices::Model;
use crate::devices::history::Synced;
use crate::messages::RawFrame;
use std::time::{Duration, Instant};

/// Where a monitor is in its cycle.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    /// Waiting for `due` (poll), or nothing to do (passive).
    Idle,
    /// Due, but BlueZ may have forgotten it: discovery runs until it is heard or `until` passes (1003).
    Finding { until: Instant },
    /// Heard and due: waiting for a connection slot (FIFO by `since`).
    Queued { since: Instant },
    /// A poll attempt or an open stream holds a connection slot.
    Connected,
    /// The attempt failed; the next one of the cycle waits until `at`.
    Retry { at: Instant },
    /// A stream link is closed; it is opened again at `at` (after being found).
    StreamClosed { at: Instant },
}

#[derive(Debug, Clone)]
pub(super) struct Dev {
    pub(super) model: Option<Model>,
    pub(super) mode: Mode,
    pub(super) interval: Duration,
    pub(super) auto: bool,
    pub(super) phase: Phase,
    /// Start of the next poll cycle (poll), or of the next passive silence check (passive).
    pub(super) due: Instant,
    /// Attempt number within the current poll cycle (1-based; 0 between cycles).
    pub(super) attempt: u32,
    pub(super) cycle_started: Instant,
    pub(super) last_heard: Option<Instant>,
    pub(super) last_emit: Option<Instant>,
    /// The newest manufacturer data seen from this device (to tell a new advert from a repeated one).
    pub(super) last_manufacturer: Vec<(u16, Vec<u8>)>,
    /// Passive: when the first fresh advert came, and the last one carrying an encrypted frame (a device
    /// that sends those is never published from its iBeacon).
    pub(super) first_fresh: Option<Instant>,
    pub(super) last_encrypted: Option<Instant>,
    /// A stream frame waiting for the end of the current interval (only the newest is kept).
    pub(super) pending: Option<RawFrame>,
    pub(super) stream_retry: Duration,
    pub(super) rssi: Option<i16>,
    /// Where the last download of its own log ended, and when it was made (this run).
    pub(super) synced: Option<Synced>,
    pub(super) last_sync: Option<Instant>,
    /// Its log could not be read at all (no reply to the history request): not asked again in this run,
    /// so a monitor whose firmware ignores the request does not hold the link for it every time.
    pub(super) history_off: bool,
    /// This gateway may connect to it and publish for it: always without `[cluster]`; with it, while the
    /// ownership rule gives it to this gateway (SPEC §6).
    pub(super) held: bool,
    /// Let go of, and the release not yet announced (a link to it was still open).
    pub(super) releasing: bool,
    /// Smoothed RSSI of its advertisements (dBm), for the cluster's `hears` reports.
    pub(super) rssi_avg: Option<f32>,
    /// When it was last heard, by the radio's wall-clock stamp.
    pub(super) seen_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A download of its log runs on its stream link now (asked, not reported yet).
    pub(super) history_running: bool,
}

impl Dev {
    pub(super) fn new(
        model: Option<Model>,
        mode: Mode,
        interval: Duration,
        auto: bool,
        now: Instant,
    ) -> Dev {
        Dev {
            model,
            mode,
            interval,
            auto,
            phase: if mode == Mode::Stream {
                Phase::StreamClosed { at: now }
            } else {
                Phase::Idle
            },
            due: if mode == Mode::Passive {
                now + interval * PASSIVE_SILENCE_INTERVALS
            } else {
                now
            },
            attempt: 0,
            cycle_started: now,
            last_heard: None,
            last_emit: None,
            last_manufacturer: Vec::new(),
            first_fresh: None,
            last_encrypted: None,
            pending: None,
            stream_retry: STREAM_RETRY_FIRST,
            rssi: None,
            synced: None,
            last_sync: None,
            history_off: false,
            held: true,
            releasing: false,
            rssi_avg: None,
            seen_at: None,
            history_running: false,
        }
    }

    pub(super) fn heard_recently(&self, now: Instant) -> bool {
        self.last_heard
            .is_some_and(|t| now.saturating_duration_since(t) < FRESH)
    }

    pub(super) fn holds_slot(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// This device's own next deadline, if it has one.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if !self.held {
            return None;
        }
        let pending = self
            .pending
            .as_ref()
            .and(self.last_emit)
            .map(|t| t + self.interval);
        let phase = match (&self.phase, self.mode) {
            (Phase::Idle, Mode::Poll | Mode::Passive) => Some(self.due),
            (Phase::Finding { until }, _) => Some(*until),
            (Phase::Retry { at }, _) | (Phase::StreamClosed { at }, _) => Some(*at),
            _ => None,
        };
        [pending, phase].into_iter().flatten().min()
    }
}

/// The settings of a device that, when changed by a reload, need its link reopened.
pub(super) fn settings(d: &Dev) -> (Option<Model>, Mode, Duration) {
    (d.model, d.mode, d.interval)
}

/// Due now: connect at once if BlueZ surely still knows the device, else find it first.
pub(super) fn find_or_queue(d: &Dev, now: Instant, timeout: Duration) -> Phase {
    if d.heard_recently(now) {
        Phase::Queued { since: now }
    } else {
        Phase::Finding {
            until: now + timeout,
        }
    }
}

/// How much earlier than a full interval after the last one a reading may be handed on: adverts and
/// notifications come at their own pace (about one a second), so "one per interval" compared exactly
/// would drop every other reading whenever an advert lands a hair before the interval is over.
pub(super) fn slack(interval: Duration) -> Duration {
    interval / 20
}

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
