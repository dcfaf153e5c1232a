//! The protocol's worked examples (HISTORY-NOTES §5.7.7), byte for byte: commands, block classes,
//! records, timestamps, example A (BM6) and example F (BM2). The paging traps are in `read_tests.rs`.

use super::*;
use crate::devices::{crypto, parse_hex, to_hex};
use chrono::TimeZone;
use std::time::Duration;

pub(super) fn model(name: &str) -> Model {
    Model::by_name(name).unwrap()
}

pub(super) fn block(hex: &str) -> [u8; 16] {
    parse_hex(hex).unwrap().try_into().unwrap()
}

pub(super) fn plain_of(name: &str, cipher_hex: &str) -> [u8; 16] {
    crypto::decrypt(model(name).key(), &block(cipher_hex))
}

pub(super) fn cipher(name: &str, plain: &[u8; 16]) -> String {
    to_hex(&crypto::encrypt(model(name).key(), plain))
}

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A record with `centivolts`, SoC 80, 20 °C, no flags.
pub(super) fn rec(centivolts: u32) -> [u8; 4] {
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

pub(super) fn done(step: Step) -> History {
    match step {
        Step::Done(h) => h,
        other => panic!("expected Done, got {other:?}"),
    }
}
