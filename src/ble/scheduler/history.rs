//! Downloads of a monitor's own log (SPEC §5.7): when a poll or an open stream link also asks for it, and
//! what of a download is new and published.

use super::device::Dev;
use super::device::Phase;
use super::{Action, HISTORY_GAP, HistoryAsk, Scheduler};
use crate::config::{Config, Mode};
use crate::devices::history::{History, day_batches, new_since};
use crate::mac::Mac;
use crate::messages::{HistoryOut, Notice};
use std::time::Instant;

impl Scheduler {
    /// A live frame arrived on `mac`'s stream link: when its log is due (never downloaded in this run, or
    /// not for [`HISTORY_GAP`]) and no download runs on the link, ask the link for one. So the first
    /// reading of a link is followed by the records logged while it was down, and an open link keeps the
    /// sync recent (the next reconnection then reads only its own gap).
    pub(super) fn stream_history_due(&mut self, mac: Mac, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        if d.phase != Phase::Connected || d.history_running {
            return;
        }
        if let Some(ask) = history_ask(d, &self.config, now) {
            d.history_running = true;
            self.out.push(Action::StreamHistory { mac, ask });
        }
    }

    /// A download on `mac`'s stream link ended (complete, or what was read before the link failed):
    /// published like a poll's, whatever became of the link meanwhile.
    pub fn stream_history(&mut self, mac: Mac, h: &History, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        d.history_running = false;
        self.history_read(mac, h, now);
    }

    /// A download of `mac`'s log came back: publish what is new since the last one, oldest first, in
    /// batches of at most a day; remember where it ended.
    pub(super) fn history_read(&mut self, mac: Mac, h: &History, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        let fresh = new_since(d.synced.as_ref(), h);
        d.last_sync = Some(now);
        if h.records.is_empty() && !h.log_end {
            d.history_off = true;
            log::info!("{mac}: its log could not be read; not asked for it again in this run");
        }
        if fresh.gap {
            log::info!("{mac}: its log does not continue the last download (reset or clock step)");
        }
        if let Some(next) = &fresh.next {
            d.synced = Some(next.clone());
        }
        let batches = day_batches(&fresh.records);
        let last = batches.len().saturating_sub(1);
        for (i, records) in batches.into_iter().enumerate() {
            let synced = if i == last { fresh.next.clone() } else { None };
            self.emit(Notice::History {
                out: HistoryOut { mac, records },
                synced,
            });
        }
    }
}

/// Whether this poll (or this stream link) also downloads the monitor's own log: a polled or streamed
/// model the `[history]` section covers, not downloaded for [`HISTORY_GAP`] in this run.
pub(super) fn history_ask(d: &Dev, config: &Config, now: Instant) -> Option<HistoryAsk> {
    let model = d.model?;
    let due = !d.history_off && d.last_sync.is_none_or(|t| now >= t + HISTORY_GAP);
    let connected = matches!(d.mode, Mode::Poll | Mode::Stream);
    (connected && config.history.covers(model) && due).then(|| HistoryAsk {
        last: d.synced.clone(),
        initial_days: config.history.initial_days,
    })
}
