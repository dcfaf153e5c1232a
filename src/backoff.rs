//! Reconnect delays: exponential from 1 s, ×2, capped, ±10 % random jitter, never giving up (SPEC §3).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// SPEC §3's broker backoff: 1 s doubling to 300 s.
    pub fn broker() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
    }

    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    /// The delay to wait now (with jitter); the one after it doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        base.mul_f64(fastrand::f64().mul_add(0.2, 0.9))
    }

    /// Start again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_ten_percent_jitter() {
        let mut b = Backoff::broker();
        let expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300];
        for secs in expected {
            let d = b.next_delay().as_secs_f64();
            let s = f64::from(secs);
            assert!(d >= s * 0.9 - 1e-9 && d <= s * 1.1 + 1e-9, "{d} for {secs}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1100));
    }
}
