//! When discovery runs: scan windows (initial, periodic; `periodic_interval = 0`: none), and continuously
//! while any device is passive or being looked for.

use super::device::{Phase, secs};
use super::io::Action;
use super::{SCAN_RETRY, Scheduler};
use crate::config::Mode;
use std::time::Instant;

impl Scheduler {
    /// BlueZ refused to start discovery (another client's operation in progress, a daemon still
    /// starting): try again after [`SCAN_RETRY`] instead of believing it runs.
    pub fn scan_failed(&mut self, now: Instant) {
        self.earliest = None;
        self.scanning = false;
        self.scan_retry = Some(now + SCAN_RETRY);
    }

    /// Open and close scan windows (initial and periodic).
    pub(super) fn scan_windows(&mut self, now: Instant) {
        if self.scan_retry.is_some_and(|t| now >= t) {
            self.scan_retry = None;
        }
        if let Some(at) = self.next_scan
            && now >= at
        {
            self.scan_until = Some(now + secs(self.config.discovery.scan_duration));
            self.next_scan = self.periodic_after(now);
            self.announced.clear();
        }
        if let Some(end) = self.scan_until
            && now >= end
        {
            self.scan_until = None;
        }
    }

    pub(super) fn periodic_after(&self, now: Instant) -> Option<Instant> {
        match self.config.discovery.periodic_interval {
            0 => None,
            s => Some(now + secs(s)),
        }
    }

    /// Discovery runs while a scan window is open, any device is passive, any device is being found, or
    /// always with `[cluster]` (every gateway must keep hearing every monitor to report it: SPEC §6) — and
    /// not while a refused start waits for its retry.
    pub(super) fn steer_discovery(&mut self) {
        let wanted = self.adapter_up()
            && !self.stopping
            && self.scan_retry.is_none()
            && (self.scan_until.is_some()
                || (self.cluster.is_some() && !self.devices.is_empty())
                || self
                    .devices
                    .values()
                    .any(|d| d.mode == Mode::Passive || matches!(d.phase, Phase::Finding { .. })));
        if wanted != self.scanning {
            self.scanning = wanted;
            self.out.push(if wanted {
                Action::StartScan
            } else {
                Action::StopScan
            });
        }
    }
}
