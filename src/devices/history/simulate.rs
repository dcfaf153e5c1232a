//! The monitor's side of a history read, for simulated monitors and tests: what a BM6/BM7 sends back for
//! `d1 55 05` as AK measured it (HISTORY-NOTES §5.7.2), and what a BM2 sends for `e7`/`e3` as KD's code
//! expects it (§5.7.4) — including the raw-memory trap of a start index past the end of the log — and a
//! monitor's log as a function of the wall clock ([`SimLog`]).

use super::{Protocol, RECORD_SECONDS};
use crate::devices::{Model, crypto};
use crate::mac::Mac;
use chrono::{DateTime, Utc};

/// Most records a BM6 keeps: it drops the oldest 1024 at a limit between 50591 and 51281 records, 51200
/// (≈ 71.1 days) being the hypothesis `[1src: AK @6848e29]`.
pub const CAPACITY: usize = 51200;

/// A simulated monitor's log as a function of the wall clock: one record every [`RECORD_SECONDS`]
/// (2 min) on a fixed grid (Unix time, shifted by a per-monitor phase of 0–119 s), each record's bytes a
/// function of its slot and the seed only. So two reads, and two runs of the gateway, see the same records
/// at the same times, and new ones appear as time passes, exactly as a monitor that logs on its own.
/// The log holds the slots from `began` on (at most [`CAPACITY`]). Values: a daily swing of ±0.6 V around
/// 12.0 V plus up to 0.04 V of noise, SoC following the voltage, 12–24 °C, no flags (BM6 record layout,
/// HISTORY-NOTES §5.7.2).
#[derive(Debug, Clone, PartialEq)]
pub struct SimLog {
    seed: u64,
    phase: i64,
    began: DateTime<Utc>,
}

impl SimLog {
    /// The log of the monitor `seed`, holding every record logged since `began`.
    pub fn new(seed: u64, began: DateTime<Utc>) -> SimLog {
        SimLog {
            seed,
            phase: (mix(seed) % RECORD_SECONDS as u64) as i64,
            began,
        }
    }

    /// The slot of the newest record logged at or before `t` (slots count 2-minute steps of the grid).
    pub fn slot(&self, t: DateTime<Utc>) -> i64 {
        (t.timestamp() - self.phase).div_euclid(RECORD_SECONDS)
    }

    /// When the record of `slot` was logged.
    pub fn logged_at(&self, slot: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(slot * RECORD_SECONDS + self.phase, 0).unwrap_or(self.began)
    }

    /// The 4 bytes of the record of `slot`.
    pub fn record(&self, slot: i64) -> [u8; 4] {
        let day = std::f64::consts::TAU * slot.rem_euclid(720) as f64 / 720.0;
        let noise = (mix(self.seed ^ slot as u64) % 5) as f64;
        let cv = (1200.0 + 60.0 * day.sin() + noise).round() as u32;
        let soc = cv.saturating_sub(1180).min(100);
        let temp = (18.0 + 6.0 * day.cos()).round() as u32;
        ((cv << 20) | (soc << 12) | (temp << 4)).to_be_bytes()
    }

    /// The log as the monitor holds it at `now`, newest first (index 0 = the newest record).
    pub fn at(&self, now: DateTime<Utc>) -> Vec<[u8; 4]> {
        let newest = self.slot(now);
        let oldest = self.slot(self.began - chrono::Duration::seconds(1)) + 1;
        let n = usize::try_from(newest - oldest + 1)
            .unwrap_or(0)
            .min(CAPACITY);
        (0..n as i64).map(|k| self.record(newest - k)).collect()
    }
}

/// The seed of everything random about the simulated monitor at `mac` (its live values, its log): the
/// same in every run, so a test can rebuild the log a gateway downloads.
pub fn seed(mac: Mac) -> u64 {
    mac.0
        .iter()
        .fold(0u64, |a, b| a.wrapping_mul(257).wrapping_add(u64::from(*b)))
}

/// SplitMix64: a well-spread hash of `x` (noise and phase that look random but never change).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a slot past the end of a BM6 log reads as: old memory, plausible-looking (12.46 V) `[hw: AK
/// trap 1]`.
const RAW_MEMORY: [u8; 4] = [0x4d, 0xe6, 0x41, 0x80];

fn block(head: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..head.len()].copy_from_slice(head);
    b
}

fn terminator(records: usize) -> [u8; 16] {
    let l = (4 * records + 9) as u32;
    block(&[0xff, 0xfe, 0xfe, (l >> 16) as u8, (l >> 8) as u8, l as u8])
}

/// The encrypted notifications `model` sends for the decrypted command `command`, its log being `log`
/// (newest first). `None` for anything that is not a history command: the monitor ignores it.
/// BM6/BM7 send 160-byte data notifications (40 records, the last zero-padded); BM2 16-byte ones, oldest
/// record first.
pub fn answer(model: Model, log: &[[u8; 4]], command: &[u8; 16]) -> Option<Vec<Vec<u8>>> {
    let plain = match Protocol::of(model) {
        Protocol::Indexed => indexed(log, command)?,
        Protocol::Counted => counted(log, command)?,
    };
    let enc = |p: &Vec<[u8; 16]>| -> Vec<u8> {
        p.iter()
            .flat_map(|b| crypto::encrypt(model.key(), b))
            .collect()
    };
    Some(plain.iter().map(enc).collect())
}

/// BM6/BM7: notifications as lists of plaintext blocks.
fn indexed(log: &[[u8; 4]], c: &[u8; 16]) -> Option<Vec<Vec<[u8; 16]>>> {
    if c[..3] != [0xd1, 0x55, 0x05] {
        return None;
    }
    let index = |b: &[u8]| u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize & 0xffff;
    let (start, end) = (index(&c[3..6]), index(&c[6..9]));
    if start > end {
        return Some(vec![vec![terminator(0)]]);
    }
    if log.is_empty() {
        let mut t = terminator(0);
        t[5] = 12;
        return Some(vec![vec![block(&[0xfe, 0xfe, 0xfe])], vec![t]]);
    }
    let records: Vec<[u8; 4]> = if start >= log.len() {
        vec![RAW_MEMORY; end - start]
    } else {
        log[start..end.min(log.len())].to_vec()
    };
    let n = records.len();
    let mut out = vec![vec![block(&[0xd1, 0x55, 0x05, (n >> 8) as u8, n as u8])]];
    for chunk in records.chunks(40) {
        let mut bytes = [0u8; 160];
        for (i, r) in chunk.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(r);
        }
        out.push(bytes.chunks_exact(16).map(block).collect());
    }
    out.push(vec![terminator(n)]);
    Some(out)
}

/// BM2: `e7` → the count (24-bit, as KD reads it); `e3` + count → start marker, data, terminator.
fn counted(log: &[[u8; 4]], c: &[u8; 16]) -> Option<Vec<Vec<[u8; 16]>>> {
    let n = log.len() as u32;
    match c[0] {
        0xe7 => Some(vec![vec![block(&[
            0xe7,
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
        ])]]),
        0xe3 => {
            let asked = u32::from_be_bytes([c[3], c[4], c[5], c[6]]) as usize;
            let oldest_first: Vec<[u8; 4]> =
                log[..asked.min(log.len())].iter().rev().copied().collect();
            let mut out = vec![vec![block(&[0xff, 0xff, 0xfe])]];
            for chunk in oldest_first.chunks(4) {
                let mut b = [0u8; 16];
                for (i, r) in chunk.iter().enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(r);
                }
                out.push(vec![b]);
            }
            out.push(vec![terminator(oldest_first.len())]);
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::history::{
        HistoryRead, Step, Timing, count_request, decode_record, page_request, records_in,
    };
    use chrono::Utc;
    use std::time::Duration;

    fn model(name: &str) -> Model {
        Model::by_name(name).unwrap()
    }

    fn plain(m: Model, n: &[u8]) -> Vec<[u8; 16]> {
        n.chunks_exact(16)
            .map(|c| crypto::decrypt(m.key(), c.try_into().unwrap()))
            .collect()
    }

    fn log(n: u32) -> Vec<[u8; 4]> {
        (0..n)
            .map(|k| ((1200 + k % 100) << 20 | 7).to_be_bytes())
            .collect()
    }

    #[test]
    fn bm6_trap_and_odd_requests() {
        let bm6 = model("BM6");
        let l = log(10);
        // Past the end: raw memory that looks like records, exactly as many as asked.
        let past = answer(bm6, &l, &page_request(20, 25)).unwrap();
        let term = plain(bm6, past.last().unwrap())[0];
        assert_eq!(
            records_in(u32::from_be_bytes([0, term[3], term[4], term[5]])),
            Some(5)
        );
        let data = plain(bm6, &past[1]);
        assert_eq!(
            decode_record(Protocol::Indexed, data[0][..4].try_into().unwrap())
                .unwrap()
                .voltage,
            12.46
        );
        // start > end: only a terminator with LL = 9; empty log: marker, then LL = 12.
        assert_eq!(answer(bm6, &l, &page_request(20, 10)).unwrap().len(), 1);
        let empty = answer(bm6, &[], &page_request(0, 20)).unwrap();
        assert_eq!(plain(bm6, &empty[0])[0][..3], [0xfe, 0xfe, 0xfe]);
        assert_eq!(plain(bm6, &empty[1])[0][5], 12);
        // Anything else is ignored.
        assert_eq!(answer(bm6, &l, &count_request()), None);
    }

    #[test]
    fn a_simulated_log_grows_every_two_minutes_and_keeps_its_records() {
        let began = Utc::now() - chrono::Duration::days(3);
        let sim = SimLog::new(42, began);
        let now = began + chrono::Duration::days(3);
        let first = sim.at(now);
        assert!((2160..=2161).contains(&first.len()), "{}", first.len());
        // Two minutes later: one record more at index 0, the others unchanged one place further.
        let later = sim.at(now + chrono::Duration::seconds(120));
        assert_eq!(later.len(), first.len() + 1);
        assert_eq!(later[1..], first[..]);
        // Newest record logged within the last 2 minutes; values decode and stay plausible.
        let newest = sim.logged_at(sim.slot(now));
        assert!(newest <= now && now - newest < chrono::Duration::seconds(120));
        for r in &first {
            let s = decode_record(Protocol::Indexed, *r).unwrap();
            assert!((11.3..=12.7).contains(&s.voltage), "{}", s.voltage);
            assert!(s.temperature.is_some_and(|t| (12.0..=24.0).contains(&t)));
        }
        // Capacity: a log older than the monitor keeps holds only the newest CAPACITY records.
        let old = SimLog::new(42, now - chrono::Duration::days(80));
        assert_eq!(old.at(now).len(), CAPACITY);
        assert_eq!(
            SimLog::new(42, now + chrono::Duration::hours(1)).at(now),
            Vec::<[u8; 4]>::new()
        );
    }

    #[test]
    fn a_bm2_read_round_trips_newest_last() {
        let bm2 = model("BM2");
        let l = log(30);
        let (mut read, mut step) = HistoryRead::new(
            bm2,
            100,
            Utc::now(),
            Duration::ZERO,
            Timing::of(Protocol::Counted),
            false,
        );
        let mut now = Duration::ZERO;
        let h = loop {
            step = match step {
                Step::Write(w) => {
                    let c = crypto::decrypt(bm2.key(), &w);
                    let mut next = Step::Wait;
                    for n in answer(bm2, &l, &c).unwrap() {
                        now += Duration::from_millis(5);
                        next = read.on_notification(&n, now);
                    }
                    if next == Step::Wait {
                        now = read.deadline().unwrap();
                        read.on_time(now)
                    } else {
                        next
                    }
                }
                Step::Done(h) => break h,
                other => panic!("{other:?}"),
            };
        };
        let newest_first: Vec<[u8; 4]> = h.records.iter().rev().map(|r| r.raw).collect();
        assert_eq!(newest_first, l);
    }
}
