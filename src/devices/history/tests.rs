//! Worked examples (HISTORY-NOTES §5.7.7) and traps, against a fake monitor that answers requests the way
//! AK measured a BM6 answering them.

use super::*;
use crate::devices::{crypto, parse_hex, to_hex};
use chrono::TimeZone;
use std::time::Duration;

fn model(name: &str) -> Model {
    Model::by_name(name).unwrap()
}

fn block(hex: &str) -> [u8; 16] {
    parse_hex(hex).unwrap().try_into().unwrap()
}

fn plain_of(name: &str, cipher_hex: &str) -> [u8; 16] {
    crypto::decrypt(model(name).key(), &block(cipher_hex))
}

fn cipher(name: &str, plain: &[u8; 16]) -> String {
    to_hex(&crypto::encrypt(model(name).key(), plain))
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A record with `centivolts`, SoC 80, 20 °C, no flags.
fn rec(centivolts: u32) -> [u8; 4] {
    ((centivolts << 20) | (80 << 12) | (20 << 4)).to_be_bytes()
}

#[test]
fn command_frames_match_the_table() {
    let cases = [
        (
            0,
            20,
            "2bd4b713e1c452e6c1a4eb384262e36b",
            "6e04efc68d98f9ca319f755d0bb19392",
        ),
        (
            5,
            10,
            "5f927e605a7c6bf651acfba06ffd5811",
            "b41c0569dfd254538010bb3e3a3072a5",
        ),
        (
            0,
            8000,
            "899015a6552e10b8a84aba50670b8de1",
            "56c40481d56da85b3f3d5b96b766a230",
        ),
        (
            7999,
            15999,
            "5d7ac366008e21d765dd3240f47b22a3",
            "bc75e6476e5d6ed7f4ca86b0346f3f6e",
        ),
    ];
    for (start, end, bm6, bm7) in cases {
        assert_eq!(
            cipher("BM6", &page_request(start, end)),
            bm6,
            "[{start},{end})"
        );
        assert_eq!(
            cipher("BM7", &page_request(start, end)),
            bm7,
            "[{start},{end})"
        );
    }
    assert_eq!(
        to_hex(&page_request(0, 0xff00)),
        "d1550500000000ff0000000000000000"
    );
    assert_eq!(
        cipher("BM2", &count_request()),
        "1238aff06c90f6dbc93331cedc1c9328"
    );
    assert_eq!(
        cipher("BM2", &download_request(2160)),
        "3138f4fca7c6cdd6229fb67376886a61"
    );
    assert_eq!(
        cipher("BM2", &download_request(16)),
        "1fb4ce937a177cb4d6cd7c7066ee3890"
    );
    // Indices beyond 16 bits are never sent.
    assert_eq!(page_request(70000, 80000), page_request(65535, 65535));
}

#[test]
fn classification_of_the_example_blocks() {
    let p = Protocol::Indexed;
    assert_eq!(
        classify(p, &plain_of("BM6", "2e6a4e19b27a6a3332696e9d43e6a916")),
        Block::Ack { count: 1 }
    );
    assert_eq!(
        classify(p, &plain_of("BM6", "7e5cb931800dbc0c789ccd531167dc82")),
        Block::EmptyMarker
    );
    assert_eq!(
        classify(p, &plain_of("BM6", "538c869b02bd33007b8ac90858904006")),
        Block::Terminator { length: 12 }
    );
    assert_eq!(
        classify(p, &plain_of("BM6", "9cc756b7c90a7b81970df2add9ca2c24")),
        Block::Terminator { length: 2793 }
    );
    assert_eq!(
        classify(p, &block("d155070019005004f600000000000000")),
        Block::Live
    );
    // Cranking and charging-test replies are not history: data-looking, but never sent during a read.
    assert_eq!(
        classify(p, &plain_of("BM6", "5080ab8a013813b0904ba217326800f3")),
        Block::Data
    );
    let c = Protocol::Counted;
    assert_eq!(
        classify(c, &plain_of("BM2", "88c5c91f3ce3a57b28a20cae71288788")),
        Block::Count { count: 2160 }
    );
    assert_eq!(
        classify(c, &plain_of("BM2", "78c1ed05bd36fc6a2ed90bc208386cc0")),
        Block::Start
    );
    assert_eq!(
        classify(c, &plain_of("BM2", "64d285f7492777344612d0175d11ff61")),
        Block::Terminator { length: 8649 }
    );
    assert_eq!(
        classify(c, &plain_of("BM2", "3627d57495cb945e11d392c800a28bfa")),
        Block::Live
    );
}

#[test]
fn terminator_lengths() {
    assert_eq!(records_in(13), Some(1));
    assert_eq!(records_in(2793), Some(696));
    assert_eq!(records_in(0x2695), Some(2467));
    assert_eq!(records_in(0x7d09), Some(8000));
    assert_eq!(records_in(0x26ad), Some(2473));
    assert_eq!(records_in(9), Some(0));
    assert_eq!(records_in(12), Some(0));
    assert_eq!(records_in(10), None);
    assert_eq!(records_in(3), None);
}

#[test]
fn record_fields_and_validation() {
    let s = decode_record(Protocol::Indexed, [0x52, 0xe6, 0x41, 0x80]).unwrap();
    assert_eq!(
        s,
        Sample {
            voltage: 13.26,
            state_of_charge: Some(100.0),
            temperature: Some(24.0),
            flags: 0
        }
    );
    assert_eq!(decode_record(Protocol::Indexed, [0; 4]), Err(Skip::Zero));
    // Flag 4 (voltage step down) kept.
    assert_eq!(
        decode_record(Protocol::Indexed, [0x4d, 0x85, 0x01, 0x44])
            .unwrap()
            .flags,
        4
    );
    // 40.95 V (raw memory) and SoC 0xff are rejected, not published.
    assert!(matches!(
        decode_record(Protocol::Indexed, [0xff, 0xf0, 0x00, 0x00]),
        Err(Skip::OutOfRange {
            field: "voltage",
            ..
        })
    ));
    assert!(matches!(
        decode_record(Protocol::Indexed, [0x4d, 0x8f, 0xf1, 0x40]),
        Err(Skip::OutOfRange {
            field: "state_of_charge",
            ..
        })
    ));
    // Temperature with the top bit set: sign encoding unknown, so null, voltage kept.
    let hot = decode_record(Protocol::Indexed, [0x4d, 0x85, 0x0f, 0x00]).unwrap();
    assert_eq!((hot.voltage, hot.temperature), (12.40, None));
    // BM2: voltage and type nibble only (KD's example).
    assert_eq!(
        decode_record(Protocol::Counted, [0x4d, 0x41, 0x11, 0x11]).unwrap(),
        Sample {
            voltage: 12.36,
            state_of_charge: None,
            temperature: None,
            flags: 1
        }
    );
}

#[test]
fn timestamps_count_back_two_minutes_per_record() {
    assert_eq!(timestamp(t0(), 0), t0());
    assert_eq!(
        (t0() - timestamp(t0(), 695)).num_seconds(),
        83_400,
        "example B"
    );
    assert_eq!((t0() - timestamp(t0(), 2466)).num_seconds(), 295_920);
    assert_eq!(
        (t0() - timestamp(t0(), 50466)).num_seconds(),
        6_055_920,
        "example D"
    );
    assert_eq!(records_for(7 * 86_400), 5040);
    assert_eq!(records_for(1), 1);
    assert_eq!(records_for(u64::MAX), MAX_INDEX);
}

/// Example A, byte for byte: one record, ack, a 160-byte zero-padded notification, terminator.
#[test]
fn example_a_one_record() {
    let bm6 = model("BM6");
    let (mut read, step) =
        HistoryRead::new(bm6, 1, t0(), ms(0), Timing::of(Protocol::Indexed), true);
    assert_eq!(step, Step::Write(block("273904a8420ac935e52656ef6b779be3")));
    assert_eq!(read.deadline(), Some(ms(5000)));
    let ack = parse_hex("2e6a4e19b27a6a3332696e9d43e6a916").unwrap();
    assert_eq!(read.on_notification(&ack, ms(50)), Step::Wait);
    let mut data = parse_hex("5080ab8a013813b0904ba217326800f3").unwrap();
    for _ in 0..9 {
        data.extend(parse_hex("485ee1040e6ff06db409a84383d55c8e").unwrap());
    }
    assert_eq!(data.len(), 160);
    assert_eq!(read.on_notification(&data, ms(80)), Step::Wait);
    assert_eq!(read.deadline(), Some(ms(3080)));
    let term = parse_hex("5071c1321c31cf66c844bca3da142670").unwrap();
    let Step::Done(h) = read.on_notification(&term, ms(90)) else {
        panic!("not done")
    };
    assert_eq!(h.records.len(), 1, "the padding is not 39 records of 0 V");
    let r = &h.records[0];
    assert_eq!(
        (r.index, r.timestamp, r.raw),
        (0, t0(), [0x52, 0xe6, 0x41, 0x80])
    );
    assert_eq!(r.value.unwrap().voltage, 13.26);
    assert!(!h.log_end, "1 of 1 returned: the log may hold more");
    assert_eq!(h.pages.len(), 1);
    assert_eq!(h.pages[0].ack, Some(1));
    assert_eq!(h.pages[0].terminator, Some(13));
    assert_eq!(h.pages[0].notification_sizes, vec![16, 160, 16]);
    assert_eq!(h.pages[0].blocks.len(), 12);
    assert_eq!(read.deadline(), None);
}

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
        let mut out = vec![];
        let mut ack = [0u8; 16];
        ack[..5].copy_from_slice(&[0xd1, 0x55, 0x05, 0, 0]);
        if self.spurious > 0 {
            self.spurious -= 1;
            let mut t = [0u8; 16];
            t[..6].copy_from_slice(&[0xff, 0xfe, 0xfe, 0, 0, 9]);
            return vec![self.enc(&t)];
        }
        out.push(self.enc(&ack));
        if self.log.is_empty() {
            let mut m = [0u8; 16];
            m[..4].copy_from_slice(&[0xfe, 0xfe, 0xfe, 0]);
            out.push(self.enc(&m));
        }
        let end = (end as usize).min(self.log.len());
        let records: Vec<[u8; 4]> = self.log[(start as usize).min(end)..end].to_vec();
        for chunk in records.chunks(40) {
            let mut bytes = [0u8; 160];
            for (i, r) in chunk.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(r);
            }
            let mut n = vec![];
            for b in bytes.chunks_exact(16) {
                n.extend(self.enc(&b.try_into().unwrap()));
            }
            out.push(n);
            if self.live {
                out.push(self.enc(&block("d155070019005004f600000000000000")));
            }
        }
        if self.cut > 0 && records.len() > 40 {
            self.cut -= 1;
            out.remove(out.len() - 1 - usize::from(self.live));
        }
        let l = 4 * records.len() as u32 + if self.log.is_empty() { 12 } else { 9 };
        let mut t = [0u8; 16];
        t[..6].copy_from_slice(&[0xff, 0xfe, 0xfe, 0, (l >> 8) as u8, l as u8]);
        out.push(self.enc(&t));
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

fn done(step: Step) -> History {
    match step {
        Step::Done(h) => h,
        other => panic!("expected Done, got {other:?}"),
    }
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

/// Example F: BM2, 2160 samples, with the 1 s pause and live `f5` frames interleaved.
#[test]
fn example_f_bm2_counted_read() {
    let bm2 = model("BM2");
    let timing = Timing::of(Protocol::Counted);
    let (mut read, step) = HistoryRead::new(bm2, 5040, t0(), ms(0), timing, true);
    assert_eq!(step, Step::Write(block("1238aff06c90f6dbc93331cedc1c9328")));
    let live = parse_hex("3627d57495cb945e11d392c800a28bfa").unwrap();
    assert_eq!(read.on_notification(&live, ms(100)), Step::Wait);
    let count = parse_hex("88c5c91f3ce3a57b28a20cae71288788").unwrap();
    assert_eq!(read.on_notification(&count, ms(200)), Step::Wait);
    assert_eq!(read.deadline(), Some(ms(1400)), "≥ 1 s pause before e3");
    assert_eq!(read.on_time(ms(1399)), Step::Wait);
    assert_eq!(
        read.on_time(ms(1400)),
        Step::Write(block("3138f4fca7c6cdd6229fb67376886a61"))
    );
    let start = parse_hex("78c1ed05bd36fc6a2ed90bc208386cc0").unwrap();
    assert_eq!(read.on_notification(&start, ms(1500)), Step::Wait);
    // 540 blocks of 4 records; item i (oldest first per KD) has voltage 11.00 + i/100 (mod 4 V).
    let items: Vec<[u8; 4]> = (0..2160u32)
        .map(|i| (((1100 + i % 400) << 20) | 1).to_be_bytes())
        .collect();
    let mut now = 1500;
    for (b, chunk) in items.chunks(4).enumerate() {
        let mut p = [0u8; 16];
        for (i, r) in chunk.iter().enumerate() {
            p[4 * i..4 * i + 4].copy_from_slice(r);
        }
        now += 5;
        let n = crypto::encrypt(bm2.key(), &p);
        assert_eq!(read.on_notification(&n, ms(now)), Step::Wait);
        if b % 100 == 0 {
            assert_eq!(read.on_notification(&live, ms(now)), Step::Wait);
        }
    }
    let term = parse_hex("64d285f7492777344612d0175d11ff61").unwrap();
    let h = done(read.on_notification(&term, ms(now + 5)));
    assert_eq!(h.records.len(), 2160);
    assert_eq!(h.requested_at, t0() + chrono::Duration::milliseconds(1400));
    let oldest = &h.records[0];
    assert_eq!(oldest.raw, items[0]);
    assert_eq!(
        (h.requested_at - oldest.timestamp).num_seconds(),
        2 * 86_400 + 23 * 3600 + 58 * 60
    );
    let newest = h.records.last().unwrap();
    assert_eq!((newest.index, newest.raw), (0, items[2159]));
    assert_eq!(
        h.pages[0].count_block.unwrap()[..4],
        [0xe7, 0x00, 0x08, 0x70]
    );
}

#[test]
fn bm2_empty_log_and_silence() {
    let bm2 = model("BM2");
    let (mut read, _) =
        HistoryRead::new(bm2, 100, t0(), ms(0), Timing::of(Protocol::Counted), false);
    let mut zero = [0u8; 16];
    zero[0] = 0xe7;
    let zero = crypto::encrypt(bm2.key(), &zero);
    assert!(done(read.on_notification(&zero, ms(10))).records.is_empty());
    // No count reply at all: the e7 is repeated, then the read fails.
    let (mut read, _) =
        HistoryRead::new(bm2, 100, t0(), ms(0), Timing::of(Protocol::Counted), false);
    assert_eq!(
        read.on_time(ms(10_000)),
        Step::Write(crypto::encrypt(bm2.key(), &count_request()))
    );
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
