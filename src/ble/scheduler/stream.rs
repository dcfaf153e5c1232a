//! Stream links: the newest notification handed on at most once per interval; a link that ends is reported
//! and opened again after a doubling pause.

use super::device::{Phase, slack};
use super::io::Action;
use super::{STREAM_RETRY_CAP, STREAM_RETRY_FIRST, Scheduler};
use crate::config::Mode;
use crate::mac::Mac;
use crate::messages::{BleEvent, LinkError, RawFrame};
use std::time::Instant;

impl Scheduler {
    /// A notification arrived on a stream link: the newest is handed on at most once per interval.
    /// Then the monitor's own log is asked for when it is due.
    pub fn stream_frame(&mut self, frame: RawFrame, now: Instant) {
        self.earliest = None;
        let mac = frame.mac;
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        if d.mode != Mode::Stream || d.phase != Phase::Connected {
            return;
        }
        d.stream_retry = STREAM_RETRY_FIRST;
        d.last_heard = Some(now);
        let free = d
            .last_emit
            .is_none_or(|t| now >= t + d.interval - slack(d.interval));
        if free {
            d.last_emit = Some(now);
            d.pending = None;
            self.out.push(Action::Emit(BleEvent::Frame(frame)));
        } else {
            d.pending = Some(frame);
        }
        self.stream_history_due(mac, now);
    }

    /// A stream link ended (dropped, refused, or its task failed): report it and open it again later.
    pub fn stream_ended(&mut self, mac: Mac, error: LinkError, now: Instant) {
        self.earliest = None;
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        if d.mode != Mode::Stream || d.phase != Phase::Connected {
            return;
        }
        let at = now + d.stream_retry;
        d.stream_retry = (d.stream_retry * 2).min(STREAM_RETRY_CAP);
        d.phase = Phase::StreamClosed { at };
        d.pending = None;
        // A download that was running ended with the link (its partial read may still be reported).
        d.history_running = false;
        let model = d.model;
        if error != LinkError::AdapterUnavailable && !self.stopping {
            self.failed(mac, model, error);
        }
        self.tick(now);
    }
}
