//! Incremental sync (HISTORY-NOTES §5.7.6 items 2–4, a design of ours, not from sources): what to ask for
//! after the last sync of a device, and which records of a read are new. The gateway keeps a [`Synced`]
//! per device between reads; everything here is a pure function of it, the read and the clock.

use super::{History, MAX_INDEX, RECORD_SECONDS, Record, records_for};
use chrono::{DateTime, Utc};

/// Records of the previous read used to find where it ends in the next one.
pub const SIGNATURE: usize = 8;
/// Extra records asked for beyond the time-based estimate (clock drift, the ±1 record of the sample
/// instant, a record logged during the read).
pub const MARGIN: u32 = 16;
/// How many records later than the clock predicts the signature may sit (drift, sample instant).
const NEAR: usize = 2;

/// What the gateway remembers about a device's log after a read (kept in the registry, so a restart
/// does not publish the same records again).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Synced {
    /// `requested_at` of that read: its index 0 was logged within 2 minutes before.
    pub at: DateTime<Utc>,
    /// Raw bytes of its newest records (up to [`SIGNATURE`]), newest first.
    pub newest: Vec<[u8; 4]>,
}

/// The result of comparing a read with the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct Fresh {
    /// Records logged since the previous read, oldest first (every slot, readings or not).
    pub records: Vec<Record>,
    /// The previous read's records were not found where expected (log reset by a power loss, trimmed
    /// by 1024 at its limit, or the clock jumped): `records` are those younger than the previous read
    /// by their computed time, and there may be a gap before them.
    pub gap: bool,
    /// What to remember for the next sync; `None` when the read brought nothing and did not reach the
    /// end of the log (a read that failed at once): keep what was remembered before.
    pub next: Option<Synced>,
}

/// How many records (newest first) to ask for at `now`: `initial_days` for a device never synced, else
/// the records logged since the last sync plus [`MARGIN`], at most what the monitor can index.
pub fn records_to_ask(last: Option<&Synced>, now: DateTime<Utc>, initial_days: u32) -> u32 {
    match last {
        None => records_for(u64::from(initial_days) * 86_400),
        Some(s) => {
            let since = (now - s.at).num_seconds().max(0) / RECORD_SECONDS;
            let since = u32::try_from(since).unwrap_or(u32::MAX);
            since.saturating_add(MARGIN).min(MAX_INDEX)
        }
    }
}

/// Split `read` into what is new since `last` (§5.7.6 item 3): find the previous read's newest records;
/// where they match several places (a flat battery logs identical records), the one nearest the place
/// the clock predicts wins. Found at most 2 records later than predicted: the records before it are new.
/// Not found (or far too late): the records younger than the last read by their computed time, with
/// `gap` set.
pub fn new_since(last: Option<&Synced>, read: &History) -> Fresh {
    let newest_first: Vec<&Record> = read.records.iter().rev().collect();
    let next = (!newest_first.is_empty() || read.log_end).then(|| Synced {
        at: read.requested_at,
        newest: newest_first.iter().take(SIGNATURE).map(|r| r.raw).collect(),
    });
    if next.is_none() {
        return Fresh {
            records: Vec::new(),
            gap: false,
            next,
        };
    }
    let Some(last) = last else {
        return Fresh {
            records: read.records.clone(),
            gap: false,
            next,
        };
    };
    let expected =
        usize::try_from((read.requested_at - last.at).num_seconds().max(0) / RECORD_SECONDS)
            .unwrap_or(usize::MAX);
    let matches_at = |p: usize| {
        p + last.newest.len() <= newest_first.len()
            && newest_first[p..p + last.newest.len()]
                .iter()
                .zip(&last.newest)
                .all(|(r, s)| r.raw == *s)
    };
    let found = (0..newest_first.len())
        .filter(|&p| matches_at(p))
        .min_by_key(|&p| p.abs_diff(expected));
    let (count, gap) = match found {
        // The log was empty at the last read: everything in it now is new.
        _ if last.newest.is_empty() => (newest_first.len(), false),
        Some(p) if p <= expected + NEAR => (p, false),
        // More new records than the time since allows (the clock went back): trust the clock.
        Some(_) => (expected.min(newest_first.len()), true),
        None => (expected.min(newest_first.len()), true),
    };
    let mut records: Vec<Record> = newest_first[..count].iter().map(|r| (*r).clone()).collect();
    records.reverse();
    Fresh { records, gap, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::history::{Protocol, decode_record, timestamp};
    use chrono::{Duration, TimeZone};

    fn t1() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
    }

    fn rec(cv: u32) -> [u8; 4] {
        ((cv << 20) | (80 << 12) | (20 << 4)).to_be_bytes()
    }

    /// A read at `at` of `log` (newest first).
    fn read(log: &[[u8; 4]], at: DateTime<Utc>, log_end: bool) -> History {
        let mut records: Vec<Record> = log
            .iter()
            .enumerate()
            .map(|(k, raw)| Record {
                index: k as u32,
                timestamp: timestamp(at, k as u32),
                raw: *raw,
                value: decode_record(Protocol::Indexed, *raw),
            })
            .collect();
        records.reverse();
        History {
            model: "BM6",
            requested_at: at,
            records,
            log_end,
            shifts: 0,
            pages: vec![],
        }
    }

    fn raws(records: &[Record]) -> Vec<[u8; 4]> {
        records.iter().map(|r| r.raw).collect()
    }

    #[test]
    fn first_sync_takes_everything_read() {
        assert_eq!(records_to_ask(None, t1(), 7), 5040);
        let log: Vec<[u8; 4]> = (0..50).map(|i| rec(1200 + i)).collect();
        let f = new_since(None, &read(&log, t1(), true));
        assert_eq!(f.records.len(), 50);
        assert!(!f.gap);
        assert_eq!(f.next.as_ref().unwrap().newest, log[..8].to_vec());
        assert_eq!(f.next.unwrap().at, t1());
    }

    #[test]
    fn later_sync_takes_only_the_new_records() {
        let old: Vec<[u8; 4]> = (0..100).map(|i| rec(1200 + i)).collect();
        let s = new_since(None, &read(&old, t1(), true)).next.unwrap();
        let t2 = t1() + Duration::minutes(10) + Duration::seconds(30);
        assert_eq!(records_to_ask(Some(&s), t2, 7), 5 + MARGIN);
        // 5 new records (10 min 30 s); the read asked for 21.
        let mut now: Vec<[u8; 4]> = (0..5).map(|i| rec(1300 + i)).collect();
        now.extend(&old);
        let f = new_since(Some(&s), &read(&now[..21], t2, false));
        assert_eq!(
            raws(&f.records),
            now[..5].iter().rev().copied().collect::<Vec<_>>()
        );
        assert!(!f.gap);
        assert_eq!(f.next.as_ref().unwrap().newest, now[..8].to_vec());
        // One more than the clock predicts (the sample instant): still found.
        let mut drift = vec![rec(1400)];
        drift.extend(&now);
        let f = new_since(Some(&s), &read(&drift[..21], t2, false));
        assert_eq!((f.records.len(), f.gap), (6, false));
    }

    #[test]
    fn a_flat_battery_trusts_the_clock() {
        let flat = vec![rec(1270); 200];
        let s = new_since(None, &read(&flat, t1(), true)).next.unwrap();
        let f = new_since(
            Some(&s),
            &read(&flat[..21], t1() + Duration::minutes(10), false),
        );
        assert_eq!((f.records.len(), f.gap), (5, false));
    }

    #[test]
    fn a_reset_log_gives_the_records_younger_than_the_last_sync() {
        let old: Vec<[u8; 4]> = (0..100).map(|i| rec(1200 + i)).collect();
        let s = new_since(None, &read(&old, t1(), true)).next.unwrap();
        // Power lost: the log restarted 3 records ago.
        let fresh: Vec<[u8; 4]> = (0..3).map(|i| rec(1350 + i)).collect();
        let f = new_since(Some(&s), &read(&fresh, t1() + Duration::hours(1), true));
        assert_eq!((f.records.len(), f.gap), (3, true));
        // Not found in a longer read either: only what the clock allows (30 records in an hour).
        let other: Vec<[u8; 4]> = (0..60).map(|i| rec(1500 + i)).collect();
        let f = new_since(Some(&s), &read(&other, t1() + Duration::hours(1), false));
        assert_eq!((f.records.len(), f.gap), (30, true));
    }

    #[test]
    fn the_clock_going_back_is_not_believed() {
        let old: Vec<[u8; 4]> = (0..100).map(|i| rec(1200 + i)).collect();
        let s = new_since(None, &read(&old, t1(), true)).next.unwrap();
        assert_eq!(
            records_to_ask(Some(&s), t1() - Duration::hours(1), 7),
            MARGIN
        );
        assert_eq!(
            records_to_ask(Some(&s), t1() + Duration::days(400), 7),
            MAX_INDEX
        );
        let mut now: Vec<[u8; 4]> = (0..10).map(|i| rec(1300 + i)).collect();
        now.extend(&old);
        // Only 2 minutes passed by the clock, but the signature is 10 records later.
        let f = new_since(
            Some(&s),
            &read(&now[..26], t1() + Duration::minutes(2), false),
        );
        assert_eq!((f.records.len(), f.gap), (1, true));
    }

    #[test]
    fn a_read_that_brought_nothing_changes_nothing() {
        let old: Vec<[u8; 4]> = (0..100).map(|i| rec(1200 + i)).collect();
        let s = new_since(None, &read(&old, t1(), true)).next.unwrap();
        let failed = read(&[], t1() + Duration::hours(1), false);
        let f = new_since(Some(&s), &failed);
        assert!(f.records.is_empty() && f.next.is_none() && !f.gap);
        assert_eq!(new_since(None, &failed).next, None);
    }

    #[test]
    fn an_empty_log_then_records() {
        let s = new_since(None, &read(&[], t1(), true)).next.unwrap();
        assert!(s.newest.is_empty());
        let log: Vec<[u8; 4]> = (0..4).map(|i| rec(1200 + i)).collect();
        let f = new_since(Some(&s), &read(&log, t1() + Duration::minutes(8), true));
        assert_eq!((f.records.len(), f.gap), (4, false));
    }
}
