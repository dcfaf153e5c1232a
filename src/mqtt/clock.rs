//! Wall-clock trust (SPEC §3 "Clocks"). A board without RTC starts in 1970 until NTP sets the time;
//! whatever it stamps meanwhile is wrong. Outbound values stamped before [`not_before`] are held (at
//! most `gateway.clock_wait` s, monotonic) and stamped again once the wall clock is sane: each one's
//! true time is the sane wall clock minus the monotonic time elapsed since it was received, minus how
//! long before its receipt it had been stamped. Held longer than the wait, they go out with a stand-in
//! time — [`not_before`] plus the process's monotonic uptime at receipt, which keeps their order and
//! spacing but is only a lower bound — readings and device statuses marked `extra.clock_valid: false`.
//! So no time from an unset clock (1970) reaches a payload.
//!
//! Pure: time comes in as arguments. Must never: read a clock itself, or reorder what it holds.

use crate::devices::history::RECORD_SECONDS;
use crate::messages::{HistoryOut, Outbound};
use chrono::{DateTime, TimeDelta, Utc};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// 2026-11-29T00:00:00Z, the date of this source (SPEC §1 revision 2): a wall clock earlier than this
/// is certainly wrong. A constant rather than the compile time keeps builds reproducible.
const NOT_BEFORE_SECS: i64 = 1_795_910_400;

/// The earliest wall-clock time the gateway trusts.
pub fn not_before() -> DateTime<Utc> {
    DateTime::from_timestamp(NOT_BEFORE_SECS, 0).unwrap_or_default()
}

/// Whether `t` can be a real time.
pub fn is_sane(t: DateTime<Utc>) -> bool {
    t >= not_before()
}

/// The time `out` carries (the one its payload's `timestamp` is made of), if any.
pub fn stamp(out: &Outbound) -> Option<DateTime<Utc>> {
    match out {
        Outbound::Reading(r) => Some(r.reading.received_at),
        Outbound::DeviceStatus(s) => Some(s.at),
        Outbound::Summary(s) => Some(s.at),
        Outbound::Associated(a) => Some(a.at),
        Outbound::Discovered(s) => Some(s.at),
        Outbound::System(s) => Some(s.at),
        // Records are reconstructed back from the time of the read (a log holds weeks: a record may
        // well be older than `not_before`): the read's time is what was stamped by this clock.
        Outbound::History(h) => read_time(h),
        Outbound::Hears(h) => Some(h.at),
        Outbound::Owner(o) => o.claim.as_ref().map(|c| c.since),
        Outbound::Removed(_) | Outbound::Shutdown { .. } => None,
    }
}

/// When the read a history batch comes from was asked for: record `k` was stamped `t − 120 s × k`
/// (HISTORY-NOTES §5.7.2), so every record gives `t` back.
fn read_time(h: &HistoryOut) -> Option<DateTime<Utc>> {
    h.records
        .iter()
        .map(|r| r.timestamp + TimeDelta::seconds(RECORD_SECONDS * i64::from(r.index)))
        .max()
}

/// Move every timestamp in `out` by `delta` (those from before the clock was set; a later one, from
/// a sane clock, is left alone).
fn shift(out: &mut Outbound, delta: TimeDelta) {
    let fix = |t: &mut DateTime<Utc>| {
        if !is_sane(*t) {
            *t += delta;
        }
    };
    match out {
        Outbound::Reading(r) => fix(&mut r.reading.received_at),
        Outbound::DeviceStatus(s) => {
            fix(&mut s.at);
            s.last_reading_at.iter_mut().for_each(fix);
            if let Some(r) = s.reading.as_mut() {
                fix(&mut r.received_at);
            }
        }
        Outbound::Summary(s) => {
            fix(&mut s.at);
            for d in &mut s.devices {
                d.last_reading.iter_mut().for_each(fix);
            }
        }
        Outbound::Associated(a) => fix(&mut a.at),
        Outbound::Discovered(s) => fix(&mut s.at),
        Outbound::System(s) => fix(&mut s.at),
        Outbound::History(h) => {
            // All records were stamped back from one read: they move together, or not at all.
            if read_time(h).is_some_and(|t| !is_sane(t)) {
                h.records.iter_mut().for_each(|r| r.timestamp += delta);
            }
        }
        Outbound::Hears(h) => {
            fix(&mut h.at);
            h.monitors.iter_mut().for_each(|m| fix(&mut m.seen));
        }
        Outbound::Owner(o) => {
            if let Some(c) = o.claim.as_mut() {
                fix(&mut c.since);
            }
        }
        Outbound::Removed(_) | Outbound::Shutdown { .. } => {}
    }
}

#[derive(Debug)]
struct Entry {
    out: Outbound,
    /// Monotonic and (untrusted) wall time of its receipt.
    mono: Instant,
    wall: DateTime<Utc>,
}

/// The time to use when the wall clock is not sane: [`not_before`] plus the uptime (monotonic).
pub fn stand_in(mono: Instant, started: Instant) -> DateTime<Utc> {
    not_before() + TimeDelta::from_std(mono.saturating_duration_since(started)).unwrap_or_default()
}

/// Outbound values waiting for a sane wall clock, oldest first, bounded.
#[derive(Debug)]
pub struct Held {
    /// The process's start (for [`stand_in`]).
    started: Instant,
    entries: VecDeque<Entry>,
    wait: Duration,
    capacity: usize,
    /// When the wall clock was last looked at (it is looked at again a second later).
    checked: Option<Instant>,
    /// How far the wall clock stepped when it was set (true time − the unset clock's time), once known:
    /// times the fleet recorded before the step and reports again later (a device's last reading in a
    /// vehicle summary) are moved by it.
    step: Option<TimeDelta>,
}

impl Held {
    /// Hold for at most `wait`, at most `capacity` values (past it the oldest goes out at once, with a
    /// stand-in time); `started`: the process's start.
    pub fn new(wait: Duration, capacity: usize, started: Instant) -> Held {
        Held {
            started,
            entries: VecDeque::new(),
            wait,
            capacity: capacity.max(1),
            checked: None,
            step: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `out`, received at wall time `wall`, must be held: its stamp is not sane, or others are
    /// held already (order is kept).
    pub fn wants(&self, out: &Outbound, wall: DateTime<Utc>) -> bool {
        !self.entries.is_empty() || !is_sane(wall) || stamp(out).is_some_and(|t| !is_sane(t))
    }

    /// Hold `out`, received at `mono` / `wall`. Returns the oldest held value, with a stand-in time, to
    /// publish now when full.
    pub fn hold(&mut self, out: Outbound, mono: Instant, wall: DateTime<Utc>) -> Option<Outbound> {
        if self.entries.is_empty() {
            self.checked = Some(mono);
        }
        self.entries.push_back(Entry { out, mono, wall });
        if self.entries.len() > self.capacity {
            return self.entries.pop_front().map(|e| self.stand_in_for(e));
        }
        None
    }

    fn stand_in_for(&self, mut e: Entry) -> Outbound {
        let delta = stand_in(e.mono, self.started) - e.wall;
        shift(&mut e.out, delta);
        e.out
    }

    /// What may go out at `mono` / `wall`: with a sane wall clock, everything, stamped again
    /// (`true`: the time is right); otherwise what waited longer than the wait (everything with
    /// `all`, at shutdown), with a stand-in time (`false`).
    pub fn release(
        &mut self,
        mono: Instant,
        wall: DateTime<Utc>,
        all: bool,
    ) -> Vec<(Outbound, bool)> {
        self.checked = Some(mono);
        if is_sane(wall) {
            return self
                .entries
                .drain(..)
                .map(|mut e| {
                    let since = TimeDelta::from_std(mono.saturating_duration_since(e.mono))
                        .unwrap_or_default();
                    // Its receipt in true time, minus its receipt in the old clock's time.
                    let mut delta = (wall - since) - e.wall;
                    if !is_sane(e.wall) {
                        self.step = Some(delta);
                    } else if let Some(step) = self.step {
                        // Received after the step (held only to keep the order): what is still wrong
                        // in it was recorded before the step.
                        delta = step;
                    }
                    shift(&mut e.out, delta);
                    (e.out, true)
                })
                .collect();
        }
        let mut out = Vec::new();
        while self
            .entries
            .front()
            .is_some_and(|e| all || mono.saturating_duration_since(e.mono) >= self.wait)
        {
            if let Some(e) = self.entries.pop_front() {
                out.push((self.stand_in_for(e), false));
            }
        }
        out
    }

    /// Move the times inside `out` that were recorded before the wall clock was set by the step it made
    /// (a message made after the step may still carry them: a vehicle summary lists its devices' last
    /// readings). Times already right are left alone.
    pub fn correct(&self, out: &mut Outbound) {
        if let Some(step) = self.step {
            shift(out, step);
        }
    }

    /// When [`Held::release`] should be asked again: a second after the last look at the wall
    /// clock, or when the oldest held value has waited long enough.
    pub fn next_check(&self) -> Option<Instant> {
        let first = self.entries.front()?;
        let again = self.checked.unwrap_or(first.mono) + Duration::from_secs(1);
        Some((first.mono + self.wait).min(again))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{AssociationOut, Outbound};

    fn event(at: DateTime<Utc>) -> Outbound {
        Outbound::Associated(AssociationOut {
            mac: "AA:BB:CC:DD:EE:FF".parse().unwrap(),
            vehicle_id: "v".into(),
            model: None,
            new_vehicle: false,
            at,
        })
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn values_stamped_in_1970_are_stamped_again_from_the_monotonic_clock() {
        let t0 = Instant::now();
        let mut h = Held::new(Duration::from_secs(120), 100, t0);
        // Stamped 1 s before the stage received it, 10 s after boot in 1970.
        let e = event(at(9));
        assert!(h.wants(&e, at(10)));
        assert!(h.hold(e, t0, at(10)).is_none());
        assert!(
            h.release(t0 + Duration::from_secs(30), at(40), false)
                .is_empty()
        );
        // NTP: it is 2027 now, 60 s (monotonic) after the receipt.
        let now = not_before() + TimeDelta::days(400);
        let out = h.release(t0 + Duration::from_secs(60), now, false);
        assert_eq!(out.len(), 1);
        assert!(out[0].1);
        assert_eq!(
            stamp(&out[0].0),
            Some(now - TimeDelta::seconds(61)),
            "received 60 s ago, stamped 1 s before that"
        );
        assert!(h.is_empty());
    }

    #[test]
    fn times_recorded_before_the_step_and_sent_after_it_are_moved_by_the_step() {
        let t0 = Instant::now();
        let mut h = Held::new(Duration::from_secs(120), 100, t0);
        let mut later = event(at(20));
        h.correct(&mut later);
        assert_eq!(stamp(&later), Some(at(20)), "no step known yet: unchanged");
        h.hold(event(at(9)), t0, at(10));
        let now = not_before() + TimeDelta::days(400);
        h.release(t0 + Duration::from_secs(60), now, false);
        // A summary made after the step may still list a last reading from 1970 (at 20 s).
        h.correct(&mut later);
        let step = (now - TimeDelta::seconds(60)) - at(10);
        assert_eq!(stamp(&later), Some(at(20) + step));
        let mut right = event(now);
        h.correct(&mut right);
        assert_eq!(stamp(&right), Some(now), "a right time is left alone");
    }

    #[test]
    fn after_the_wait_they_go_out_with_a_stand_in_time() {
        let t0 = Instant::now();
        let mut h = Held::new(Duration::from_secs(120), 100, t0);
        // Received 10 s after start, stamped 1 s before its receipt by a clock 5 s after 1970.
        h.hold(event(at(4)), t0 + Duration::from_secs(10), at(5));
        h.hold(event(at(65)), t0 + Duration::from_secs(60), at(65));
        let out = h.release(t0 + Duration::from_secs(130), at(135), false);
        assert_eq!(out.len(), 1);
        assert!(!out[0].1, "marked: the clock is not valid");
        assert_eq!(
            stamp(&out[0].0),
            Some(not_before() + TimeDelta::seconds(9)),
            "no 1970: the floor plus the uptime"
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h.next_check(), Some(t0 + Duration::from_secs(131)));
    }

    /// A history batch of `n` records of a read asked for at `t`, oldest first.
    fn history(t: DateTime<Utc>, n: u32) -> Outbound {
        use crate::devices::history::{Record, Skip, timestamp};
        Outbound::History(HistoryOut {
            mac: "AA:BB:CC:DD:EE:FF".parse().unwrap(),
            records: (0..n)
                .rev()
                .map(|k| Record {
                    index: k,
                    timestamp: timestamp(t, k),
                    raw: [0; 4],
                    value: Err(Skip::Zero),
                })
                .collect(),
        })
    }

    #[test]
    fn a_log_older_than_not_before_read_by_a_sane_clock_is_not_held_nor_moved() {
        let t0 = Instant::now();
        let h = Held::new(Duration::from_secs(120), 100, t0);
        // Read a day after not_before: 3 days of records, the older ones before it.
        let now = not_before() + TimeDelta::days(1);
        let mut batch = history(now, 3 * 720);
        assert_eq!(stamp(&batch), Some(now), "the time of the read");
        assert!(!h.wants(&batch, now));
        let times = |b: &Outbound| match b {
            Outbound::History(h) => h.records.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        let before = times(&batch);
        shift(&mut batch, TimeDelta::days(400));
        assert_eq!(times(&batch), before, "stamped by a sane clock: left alone");
        // Read by an unset clock (1970): every record moves by the same step.
        let mut unset = history(at(100_000), 3);
        assert!(h.wants(&unset, now));
        shift(&mut unset, TimeDelta::days(20_000));
        assert_eq!(stamp(&unset), Some(at(100_000) + TimeDelta::days(20_000)));
    }

    #[test]
    fn a_sane_clock_holds_nothing_and_the_hold_is_bounded() {
        let t0 = Instant::now();
        let mut h = Held::new(Duration::from_secs(120), 2, t0);
        let now = not_before() + TimeDelta::days(1);
        assert!(!h.wants(&event(now), now));
        assert!(h.hold(event(at(1)), t0, at(1)).is_none());
        assert!(h.hold(event(at(2)), t0, at(2)).is_none());
        let out = h.hold(event(at(3)), t0, at(3)).unwrap();
        assert_eq!(
            stamp(&out),
            Some(not_before()),
            "the oldest goes out when full, stand-in time"
        );
    }
}
