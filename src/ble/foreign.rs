//! A bounded memory of addresses that need no attention: devices found not to be monitors (phones,
//! watches, cars) and monitors the gateway does not read. Their adverts are not looked at again until
//! the entry expires, so a busy neighbourhood costs a hash look-up per advert instead of D-Bus reads and
//! AES decryptions. Pure data; must never grow without bound.

use crate::mac::Mac;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a non-monitor is ignored before its advert is classified again (a device may change its name).
pub const FOREIGN_RECHECK: Duration = Duration::from_secs(600);
/// How long a monitor the gateway does not read is ignored before it is looked at again.
pub const MONITOR_RECHECK: Duration = Duration::from_secs(60);
/// Most addresses remembered; past it the entries closest to expiry make room.
pub const CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub struct Foreign {
    until: HashMap<Mac, Instant>,
}

impl Foreign {
    /// Whether `mac`'s adverts are to be ignored at `now`.
    pub fn ignored(&self, mac: Mac, now: Instant) -> bool {
        self.until.get(&mac).is_some_and(|t| now < *t)
    }

    /// Ignore `mac` for `how_long` from `now`.
    pub fn remember(&mut self, mac: Mac, now: Instant, how_long: Duration) {
        if self.until.len() >= CAPACITY && !self.until.contains_key(&mac) {
            self.until.retain(|_, t| *t > now);
            if self.until.len() >= CAPACITY
                && let Some(oldest) = self.until.iter().min_by_key(|(_, t)| **t).map(|(m, _)| *m)
            {
                self.until.remove(&oldest);
            }
        }
        self.until.insert(mac, now + how_long);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> Mac {
        let b = n.to_be_bytes();
        Mac([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn remembered_addresses_are_ignored_until_they_expire() {
        let t0 = Instant::now();
        let mut f = Foreign::default();
        assert!(!f.ignored(mac(1), t0));
        f.remember(mac(1), t0, FOREIGN_RECHECK);
        assert!(f.ignored(mac(1), t0 + Duration::from_secs(599)));
        assert!(!f.ignored(mac(1), t0 + FOREIGN_RECHECK));
    }

    #[test]
    fn memory_stays_bounded_however_many_devices_pass() {
        let t0 = Instant::now();
        let mut f = Foreign::default();
        for n in 0..(3 * CAPACITY as u32) {
            f.remember(
                mac(n),
                t0 + Duration::from_millis(u64::from(n)),
                FOREIGN_RECHECK,
            );
            assert!(f.len() <= CAPACITY);
        }
        let last = mac(3 * CAPACITY as u32 - 1);
        assert!(f.ignored(last, t0 + Duration::from_secs(60)));
    }
}
