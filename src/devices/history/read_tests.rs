//! Reads against a fake BM6 that answers requests the way AK measured one answering them: examples B–D
//! and every trap of HISTORY-NOTES §5.7.2 (raw memory, spurious empty reply, mid-read record, cut page).

use super::tests::{block, cipher, done, model, ms, rec, t0};
use super::*;
use crate::devices::{crypto, parse_hex};

/// A BM6 as AK measured it: answers `[start, end)` newest first, in 160-byte notifications.
struct FakeBm6 {
    /// Newest first.
    log: Vec<[u8; 4]>,
    requests: Vec<(u32, u32)>,
    /// Answer the next `n` requests with `LL = 9` and no marker.
    spurious: u32,
    /// Drop the last data notification of the next `n` replies.
    cut: u32,
    /// Log this record at index 0 just before answering request number `k` (0-based).
    insert_before: Option<(usize, Vec<[u8; 4]>)>,
    /// Interleave a live frame after every data notification.
    live: bool,
}

impl FakeBm6 {
    fn new(log: Vec<[u8; 4]>) -> FakeBm6 {
        FakeBm6 {
            log,
            requests: vec![],
            spurious: 0,
            cut: 0,
            insert_before: None,
            live: false,
        }
    }

    fn enc(&self, plain: &[u8; 16]) -> Vec<u8> {
        crypto::encrypt(model("BM6").key(), plain).to_vec()
    }

    fn answer(&mut self, cipher: &[u8; 16]) -> Vec<Vec<u8>> {
        let p = crypto::decrypt(model("BM6").key(), cipher);
        assert_eq!(
            &p[..3],
            &[0xd1, 0x55, 0x05],
            "only history requests are sent"
        );
        let start = u32::from_be_bytes([0, p[3], p[4], p[5]]);
        let end = u32::from_be_bytes([0, p[6], p[7], p[8]]);
        if let Some((k, new)) = &self.insert_before
            && *k == self.requests.len()
        {
            for r in new {
                self.log.insert(0, *r);
            }
        }
        self.requests.push((start, end));
        assert!(
            start == 0 || (start as usize) < self.log.len(),
            "asked from {start} past the end of a {}-record log: raw memory",
            self.log.len()
        );
        if self.spurious > 0 {
            self.spurious -= 1;
            let mut t = [0u8; 16];
            t[..6].copy_from_slice(&[0xff, 0xfe, 0xfe, 0, 0, 9]);
            return vec![self.enc(&t)];
        }
        let mut out = simulate::answer(model("BM6"), &self.log, &p).unwrap();
        let data = out.iter().filter(|n| n.len() == 160).count();
        if self.cut > 0 && data > 1 {
            self.cut -= 1;
            out.remove(out.len() - 2);
        }
        if self.live {
            let live = self.enc(&block("d155070019005004f600000000000000"));
            out = out
                .into_iter()
                .flat_map(|n| {
                    let after = (n.len() == 160).then(|| live.clone());
                    std::iter::once(n).chain(after)
                })
                .collect();
        }
        out
    }
}

/// Drive a read against the fake until it ends; 10 ms per notification.
fn run(fake: &mut FakeBm6, want: u32) -> Step {
    let (mut read, mut step) = HistoryRead::new(
        model("BM6"),
        want,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    let mut now = 0;
    loop {
        match step {
            Step::Write(w) => {
                let mut last = Step::Wait;
                for n in fake.answer(&w) {
                    now += 10;
                    last = read.on_notification(&n, ms(now));
                    if last != Step::Wait {
                        break;
                    }
                }
                step = if last == Step::Wait {
                    now = read.deadline().unwrap().as_millis() as u64;
                    read.on_time(ms(now))
                } else {
                    last
                };
            }
            Step::Wait => panic!("waiting with nothing to wait for"),
            done => return done,
        }
    }
}

fn log_of(n: u32) -> Vec<[u8; 4]> {
    // Distinct neighbours so seams are detectable: 11.00 V … 14.99 V repeating.
    (0..n).map(|i| rec(1100 + i % 400)).collect()
}

fn assert_exact(h: &History, log: &[[u8; 4]]) {
    let newest_first: Vec<[u8; 4]> = h.records.iter().rev().map(|r| r.raw).collect();
    assert_eq!(newest_first.len(), log.len());
    assert!(newest_first == log, "records differ from the log");
    for (k, r) in h.records.iter().rev().enumerate() {
        assert_eq!(r.index, k as u32);
        assert_eq!(r.timestamp, timestamp(h.requested_at, k as u32));
    }
}

#[test]
fn example_b_and_c_padding_is_dropped() {
    for n in [696, 2467] {
        let log = log_of(n);
        let mut fake = FakeBm6::new(log.clone());
        let h = done(run(&mut fake, MAX_INDEX));
        assert_eq!(fake.requests, vec![(0, 8000)]);
        assert_exact(&h, &log);
        assert!(h.log_end);
        let oldest = &h.records[0];
        assert_eq!(
            (t0() - oldest.timestamp).num_seconds(),
            120 * (i64::from(n) - 1)
        );
    }
}

#[test]
fn example_d_full_log_in_pages() {
    let log = log_of(50467);
    let mut fake = FakeBm6::new(log.clone());
    let (read, first) = HistoryRead::new(
        model("BM6"),
        MAX_INDEX,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    assert_eq!(
        first,
        Step::Write(block("899015a6552e10b8a84aba50670b8de1"))
    );
    drop(read);
    let h = done(run(&mut fake, MAX_INDEX));
    assert_eq!(
        fake.requests,
        vec![
            (0, 8000),
            (7999, 15999),
            (15998, 23998),
            (23997, 31997),
            (31996, 39996),
            (39995, 47995),
            (47994, 55994)
        ]
    );
    let ciphers: Vec<String> = fake
        .requests
        .iter()
        .map(|(s, e)| cipher("BM6", &page_request(*s, *e)))
        .collect();
    assert_eq!(ciphers[2], "79810fdc2995e5a04bba90bf335ca6aa");
    assert_eq!(ciphers[6], "2c25c6ea169257e3359c8c3a5ae6b60f");
    assert_exact(&h, &log);
    assert_eq!(h.shifts, 0);
    assert_eq!((t0() - h.records[0].timestamp).num_seconds(), 6_055_920);
}

#[test]
fn first_sync_is_bounded_by_initial_days() {
    let log = log_of(50467);
    let mut fake = FakeBm6::new(log.clone());
    let h = done(run(&mut fake, records_for(7 * 86_400)));
    assert_eq!(fake.requests, vec![(0, 5040)]);
    assert_exact(&h, &log[..5040]);
    assert!(!h.log_end);
    // 10 000 records: two pages, the second starting one early and stopping at the limit.
    let mut fake = FakeBm6::new(log.clone());
    let h = done(run(&mut fake, 10_000));
    assert_eq!(fake.requests, vec![(0, 8000), (7999, 10_000)]);
    assert_exact(&h, &log[..10_000]);
}

#[test]
fn raw_memory_past_the_end_is_never_requested() {
    // Logs ending exactly at, just before and just after a page boundary (the fake asserts every start).
    for n in [7999, 8000, 8001, 15999, 16000] {
        let log = log_of(n);
        let mut fake = FakeBm6::new(log.clone());
        let h = done(run(&mut fake, MAX_INDEX));
        assert_exact(&h, &log);
        assert!(h.log_end);
    }
}

#[test]
fn empty_log() {
    let mut fake = FakeBm6::new(vec![]);
    let h = done(run(&mut fake, 5040));
    assert!(h.records.is_empty() && h.log_end);
    assert_eq!(fake.requests.len(), 1);
    // Example E's exact frames.
    let (mut read, _) = HistoryRead::new(
        model("BM6"),
        20,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    let marker = parse_hex("7e5cb931800dbc0c789ccd531167dc82").unwrap();
    assert_eq!(read.on_notification(&marker, ms(1)), Step::Wait);
    let t = parse_hex("538c869b02bd33007b8ac90858904006").unwrap();
    assert!(done(read.on_notification(&t, ms(2))).records.is_empty());
}

#[test]
fn spurious_empty_reply_is_retried() {
    let log = log_of(728);
    let mut fake = FakeBm6::new(log.clone());
    fake.spurious = 2;
    let h = done(run(&mut fake, 5040));
    assert_eq!(fake.requests, vec![(0, 5040); 3]);
    assert_exact(&h, &log);
    assert_eq!(h.pages.len(), 3);
    assert!(h.pages[0].error.as_deref().unwrap().contains("empty reply"));
    // Example E's LL = 9 frame, three times in a row: the read fails, nothing invented.
    let (mut read, _) = HistoryRead::new(
        model("BM6"),
        20,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    let ll9 = parse_hex("2b085bbe1ef75f00d7c2ee00d67d61b0").unwrap();
    assert!(matches!(read.on_notification(&ll9, ms(1)), Step::Write(_)));
    assert!(matches!(read.on_notification(&ll9, ms(2)), Step::Write(_)));
    match read.on_notification(&ll9, ms(3)) {
        Step::Failed(f) => {
            assert_eq!(f.error, ReadError::SpuriousEmpty);
            assert!(f.partial.records.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn record_logged_mid_read_shifts_the_seam() {
    let log = log_of(12_000);
    let mut fake = FakeBm6::new(log.clone());
    let newer = rec(1299);
    fake.insert_before = Some((1, vec![newer]));
    let h = done(run(&mut fake, MAX_INDEX));
    assert_eq!(h.shifts, 1);
    assert_eq!(fake.requests, vec![(0, 8000), (7999, 15999)]);
    // Exactly the log as it was at the first request: the duplicate dropped, the older part shifted back.
    assert_exact(&h, &log);
}

#[test]
fn page_cut_short_is_rejected_then_retried() {
    let log = log_of(3000);
    let mut fake = FakeBm6::new(log.clone());
    fake.cut = 1;
    let h = done(run(&mut fake, 5040));
    assert_eq!(fake.requests.len(), 2);
    assert!(h.pages[0].error.as_deref().unwrap().contains("cut short"));
    assert_exact(&h, &log);
    // Always cut: fails after three attempts, never accepts a short page.
    let mut fake = FakeBm6::new(log);
    fake.cut = 3;
    match run(&mut fake, 5040) {
        Step::Failed(f) => assert!(matches!(f.error, ReadError::CutShort { .. })),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failure_keeps_the_pages_already_accepted() {
    let log = log_of(12_000);
    let mut fake = FakeBm6::new(log.clone());
    let (mut read, step) = HistoryRead::new(
        model("BM6"),
        MAX_INDEX,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    let Step::Write(w) = step else { panic!() };
    let mut next = Step::Wait;
    for (i, n) in fake.answer(&w).into_iter().enumerate() {
        next = read.on_notification(&n, ms(i as u64));
    }
    assert!(matches!(next, Step::Write(_)), "page 2 asked for");
    // Page 2 never answers: three silent attempts, then failure with page 1 kept.
    let mut now = 1000;
    let mut step = Step::Wait;
    for _ in 0..3 {
        now = read.deadline().unwrap().as_millis() as u64;
        assert_eq!(
            read.on_time(ms(now - 1)),
            Step::Wait,
            "not before the deadline"
        );
        step = read.on_time(ms(now));
    }
    let Step::Failed(f) = step else {
        panic!("{step:?}")
    };
    assert!(matches!(f.error, ReadError::Timeout { .. }));
    assert_exact(&f.partial, &log[..8000]);
    assert!(now >= 15_000);
}

#[test]
fn a_lost_link_keeps_what_was_read() {
    let log = log_of(9000);
    let mut fake = FakeBm6::new(log.clone());
    let (mut read, step) = HistoryRead::new(
        model("BM6"),
        MAX_INDEX,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    let Step::Write(w) = step else { panic!() };
    for n in fake.answer(&w) {
        read.on_notification(&n, ms(1));
    }
    let f = read.abandon(ReadError::Link("connection lost".into()));
    assert_exact(&f.partial, &log[..8000]);
    assert_eq!(
        f.partial.pages[1].error.as_deref(),
        Some("link failed during the read: connection lost")
    );
    assert_eq!(read.deadline(), None);
}

#[test]
fn seam_mismatch_is_not_merged() {
    let log = log_of(9000);
    let mut fake = FakeBm6::new(log.clone());
    // Three records logged between two pages (a few seconds apart) cannot happen; the seam record three
    // places later is refused rather than spliced at a guessed place, and page 1 is kept.
    fake.insert_before = Some((1, vec![rec(1391), rec(1392), rec(1393)]));
    match run(&mut fake, MAX_INDEX) {
        Step::Failed(f) => {
            assert_eq!(f.error, ReadError::SeamMismatch { index: 7999 });
            assert_exact(&f.partial, &log[..8000]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests.len(), 4);
}

#[test]
fn live_frames_during_a_read_are_skipped() {
    let log = log_of(500);
    let mut fake = FakeBm6::new(log.clone());
    fake.live = true;
    let h = done(run(&mut fake, 5040));
    assert_exact(&h, &log);
    assert_eq!(h.pages[0].live_frames, 13);
}

#[test]
fn odd_notifications_are_errors_not_panics() {
    let (mut read, _) = HistoryRead::new(
        model("BM6"),
        20,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    assert!(matches!(
        read.on_notification(&[1, 2, 3], ms(1)),
        Step::Write(_)
    ));
    assert!(matches!(read.on_notification(&[], ms(2)), Step::Write(_)));
    assert!(matches!(
        read.on_notification(&[0; 17], ms(3)),
        Step::Failed(_)
    ));
    // Once over, nothing more happens.
    assert_eq!(read.on_notification(&[0; 16], ms(4)), Step::Wait);
    assert_eq!(read.on_time(ms(100_000)), Step::Wait);
    // A terminator of an impossible length.
    let (mut read, _) = HistoryRead::new(
        model("BM6"),
        20,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    let mut t = [0u8; 16];
    t[..6].copy_from_slice(&[0xff, 0xfe, 0xfe, 0, 0, 10]);
    let t = crypto::encrypt(model("BM6").key(), &t);
    assert!(matches!(read.on_notification(&t, ms(1)), Step::Write(_)));
    assert_eq!(
        read.pages()[0].error.as_deref(),
        Some("terminator length 10 is not 4n + 9")
    );
    // More records than asked for (raw memory) is refused.
    let mut t = [0u8; 16];
    t[..6].copy_from_slice(&[0xff, 0xfe, 0xfe, 0, 0, 4 * 21 + 9]);
    let t = crypto::encrypt(model("BM6").key(), &t);
    assert!(matches!(read.on_notification(&t, ms(2)), Step::Write(_)));
    assert!(
        read.pages()[1]
            .error
            .as_deref()
            .unwrap()
            .contains("21 records")
    );
}

#[test]
fn nothing_asked_nothing_sent() {
    let (read, step) = HistoryRead::new(
        model("BM6"),
        0,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    assert!(done(step).records.is_empty());
    assert_eq!(read.deadline(), None);
}

#[test]
fn batches_of_at_most_a_day_oldest_first() {
    let mut fake = FakeBm6::new(log_of(3 * 720 + 5));
    fake.log[7] = [0; 4];
    let h = done(run(&mut fake, MAX_INDEX));
    let batches = day_batches(&h.records);
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        vec![720, 720, 719, 5],
        "the zero slot (index 7) left out"
    );
    for b in &batches {
        assert!(b.last().unwrap().timestamp - b[0].timestamp < chrono::Duration::days(1));
        assert!(b.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
    }
    assert_eq!(batches[0][0].index, 3 * 720 + 4);
    assert!(day_batches(&[]).is_empty());
}

#[test]
fn a_late_tail_of_an_abandoned_attempt_is_not_mixed_in() {
    let log = log_of(400);
    let mut fake = FakeBm6::new(log.clone());
    let (mut read, step) = HistoryRead::new(
        model("BM6"),
        5040,
        t0(),
        ms(0),
        Timing::of(Protocol::Indexed),
        false,
    );
    let Step::Write(w) = step else { panic!() };
    let first = fake.answer(&w);
    // The first reply stalls after its ack and two data notifications: the page is asked again.
    for n in &first[..3] {
        assert_eq!(read.on_notification(n, ms(10)), Step::Wait);
    }
    let retry = read.on_time(read.deadline().unwrap());
    assert_eq!(retry, Step::Write(w));
    // Then the stalled reply's next notification arrives late, before the new reply.
    let late = read.deadline().unwrap() - ms(4000);
    assert_eq!(read.on_notification(&first[3], late), Step::Wait);
    let mut last = Step::Wait;
    for n in fake.answer(&w) {
        last = read.on_notification(&n, late + ms(10));
    }
    assert_exact(&done(last), &log);
}
