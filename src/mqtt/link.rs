//! What the life and death of broker connections mean (SPEC §3): when the reconnect backoff may start
//! again from 1 s, and what a run of short-lived connections says about the broker.
//!
//! Pure state machines fed with monotonic instants; no I/O, no logging. Must never: read a clock itself
//! (the callers pass `Instant`s, so tests use a fake clock), or use the wall clock.

use crate::backoff::Backoff;
use std::time::{Duration, Instant};

/// A connection must stay up this long before the backoff starts again from its first delay: a broker
/// that closes us right after CONNACK (another client with our id, a message it refuses) then meets a
/// growing backoff instead of a reconnect every second.
pub const STABLE: Duration = Duration::from_secs(30);

/// Deaths in a row of one kind before the log says what the broker probably is doing.
pub const IN_A_ROW: u32 = 3;

/// The reconnect backoff of one connection loop, reset only by a connection that stayed up [`STABLE`].
#[derive(Debug)]
pub struct Link {
    backoff: Backoff,
    up_since: Option<Instant>,
}

impl Link {
    pub fn new(backoff: Backoff) -> Link {
        Link {
            backoff,
            up_since: None,
        }
    }

    /// The broker accepted the connection (CONNACK) at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection (or the attempt) ended at `now`. Returns how long it had been up (`None`: it
    /// never got a CONNACK) and how long to wait before the next attempt.
    pub fn lost(&mut self, now: Instant) -> (Option<Duration>, Duration) {
        let uptime = self
            .up_since
            .take()
            .map(|t| now.saturating_duration_since(t));
        if uptime.is_some_and(|u| u >= STABLE) {
            self.backoff.reset();
        }
        (uptime, self.backoff.next_delay())
    }
}

/// How a connection ended, classified by the error's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The broker could not be reached or stopped answering (refused, unresolvable, timeout, TLS).
    Unreachable,
    /// The broker closed the connection (EOF, reset).
    Closed,
    /// A packet from the broker was larger than we accept.
    IncomingTooLarge,
}

/// The message most likely to have made the broker close the connection (see
/// `Outbox::connection_lost`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    pub qos: u8,
    pub retain: bool,
}

/// What was in flight (written, not acknowledged) when the broker closed the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InFlight {
    Nothing,
    /// One message: the suspect.
    One(Suspect),
    /// Several: no single suspect (they are re-sent one at a time, so the next death will tell).
    Several,
}

/// What a run of short-lived connections probably means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// Closed right after CONNACK with nothing suspicious in flight: another client uses our client id.
    TakeOver,
    /// Closed right after a QoS 2 publish (`retained`: it was retained too, so that may be the limit).
    NoQos2 { retained: bool },
    /// Closed right after a retained publish, or at CONNECT while our last will is retained.
    NoRetain,
}

/// Counts deaths in a row by kind and reports a [`Finding`] when a run reaches [`IN_A_ROW`] (once per
/// run: a connection that stays up [`STABLE`], or a network failure, starts counting again).
#[derive(Debug, Default)]
pub struct Diagnosis {
    take_overs: u32,
    qos2: u32,
    retain: u32,
    /// The broker acknowledged a QoS 2 / a retained publish: it has no such limit.
    qos2_works: bool,
    retain_works: bool,
}

impl Diagnosis {
    /// The broker acknowledged a publish like `kind`.
    pub fn accepted(&mut self, kind: &Suspect) {
        self.qos2_works |= kind.qos == 2;
        self.retain_works |= kind.retain;
    }

    /// A connection ended: `uptime` as from [`Link::lost`], `in_flight` what the broker had not
    /// acknowledged, `will_retained` whether our last will is retained.
    pub fn lost(
        &mut self,
        loss: Loss,
        uptime: Option<Duration>,
        in_flight: &InFlight,
        will_retained: bool,
    ) -> Option<Finding> {
        let short = match (loss, uptime) {
            (Loss::Closed, Some(u)) => u < STABLE,
            (Loss::Closed, None) => {
                // Closed at CONNECT: a broker without retain refuses a retained last will this way.
                self.take_overs = 0;
                self.qos2 = 0;
                if !will_retained {
                    self.retain = 0;
                    return None;
                }
                return bump(&mut self.retain).then_some(Finding::NoRetain);
            }
            _ => false,
        };
        if !short {
            (self.take_overs, self.qos2, self.retain) = (0, 0, 0);
            return None;
        }
        let suspect = match in_flight {
            InFlight::Several => return None,
            InFlight::Nothing => return bump(&mut self.take_overs).then_some(Finding::TakeOver),
            InFlight::One(s) => s,
        };
        let qos2 = suspect.qos == 2 && !self.qos2_works;
        let retain = suspect.retain && !self.retain_works;
        let refused = suspect.qos == 2 || suspect.retain;
        if !qos2 {
            self.qos2 = 0;
        }
        if !retain {
            self.retain = 0;
        }
        if refused {
            self.take_overs = 0;
        }
        if qos2 {
            let report = bump(&mut self.qos2);
            if retain {
                self.retain += 1;
            }
            return report.then_some(Finding::NoQos2 { retained: retain });
        }
        if retain {
            return bump(&mut self.retain).then_some(Finding::NoRetain);
        }
        if refused {
            // A kind the broker accepted before: it refused this very message (too large, perhaps);
            // the outbox gives it up after `retries`.
            return None;
        }
        bump(&mut self.take_overs).then_some(Finding::TakeOver)
    }
}

/// Count one more; true when the count just reached [`IN_A_ROW`].
fn bump(n: &mut u32) -> bool {
    *n += 1;
    *n == IN_A_ROW
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_backoff_grows_across_connections_that_die_young() {
        let mut link = Link::new(Backoff::broker());
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..5 {
            link.connected(now);
            now += secs(1);
            let (up, delay) = link.lost(now);
            assert_eq!(up, Some(secs(1)));
            delays.push(delay.as_secs_f64());
            now += delay;
        }
        for (i, d) in delays.iter().enumerate() {
            let base = f64::from(1u32 << i);
            assert!(*d >= base * 0.9 && *d <= base * 1.1, "{delays:?}");
        }
    }

    #[test]
    fn a_connection_up_for_thirty_seconds_resets_the_backoff() {
        let mut link = Link::new(Backoff::broker());
        let t = Instant::now();
        link.lost(t);
        link.lost(t);
        link.connected(t);
        let (up, delay) = link.lost(t + STABLE);
        assert_eq!(up, Some(STABLE));
        assert!(delay <= Duration::from_millis(1100), "{delay:?}");
        let (up, _) = link.lost(t + STABLE);
        assert_eq!(up, None, "an attempt without CONNACK has no uptime");
    }

    const NOTHING: InFlight = InFlight::Nothing;

    fn one(qos: u8, retain: bool) -> InFlight {
        InFlight::One(Suspect { qos, retain })
    }

    #[test]
    fn three_short_connections_in_a_row_are_a_take_over() {
        let mut d = Diagnosis::default();
        assert_eq!(d.lost(Loss::Closed, Some(secs(1)), &NOTHING, true), None);
        assert_eq!(
            d.lost(Loss::Closed, Some(secs(2)), &one(1, false), true),
            None
        );
        assert_eq!(
            d.lost(Loss::Closed, Some(secs(2)), &InFlight::Several, true),
            None,
            "several in flight: wait for the next"
        );
        assert_eq!(
            d.lost(Loss::Closed, Some(secs(4)), &NOTHING, true),
            Some(Finding::TakeOver)
        );
        assert_eq!(
            d.lost(Loss::Closed, Some(secs(8)), &NOTHING, true),
            None,
            "once per run"
        );
        d.lost(Loss::Closed, Some(STABLE), &NOTHING, true);
        d.lost(Loss::Closed, Some(secs(1)), &NOTHING, true);
        d.lost(Loss::Unreachable, None, &NOTHING, true);
        d.lost(Loss::Closed, Some(secs(1)), &NOTHING, true);
        assert_eq!(
            d.lost(Loss::Closed, Some(secs(1)), &NOTHING, true),
            None,
            "a stable connection or a network failure starts counting again"
        );
    }

    #[test]
    fn deaths_after_qos2_or_retained_publishes_name_the_limit() {
        let mut d = Diagnosis::default();
        d.lost(Loss::Closed, Some(secs(0)), &one(2, false), true);
        d.lost(Loss::Closed, Some(secs(0)), &one(2, true), true);
        assert_eq!(
            d.lost(Loss::Closed, Some(secs(0)), &one(2, false), true),
            Some(Finding::NoQos2 { retained: false })
        );
        let mut d = Diagnosis::default();
        d.lost(Loss::Closed, Some(secs(0)), &one(1, true), true);
        d.lost(Loss::Closed, None, &NOTHING, true);
        assert_eq!(
            d.lost(Loss::Closed, Some(secs(0)), &one(1, true), true),
            Some(Finding::NoRetain)
        );
        let mut d = Diagnosis::default();
        d.lost(Loss::Closed, None, &NOTHING, false);
        d.lost(Loss::Closed, None, &NOTHING, false);
        assert_eq!(d.lost(Loss::Closed, None, &NOTHING, false), None);
    }

    #[test]
    fn a_kind_the_broker_accepted_before_is_not_its_limit() {
        let mut d = Diagnosis::default();
        d.accepted(&Suspect {
            qos: 1,
            retain: true,
        });
        for _ in 0..5 {
            assert_eq!(
                d.lost(Loss::Closed, Some(secs(0)), &one(1, true), true),
                None,
                "a retained message too large, say: given up by the outbox, no diagnosis"
            );
        }
    }
}
