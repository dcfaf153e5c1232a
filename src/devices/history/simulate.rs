//! The monitor's side of a history read, for simulated monitors and tests: what a BM6/BM7 sends back for
//! `d1 55 05` as AK measured it (HISTORY-NOTES §5.7.2), and what a BM2 sends for `e7`/`e3` as KD's code
//! expects it (§5.7.4) — including the raw-memory trap of a start index past the end of the log.

use super::Protocol;
use crate::devices::{Model, crypto};

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
