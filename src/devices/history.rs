//! The monitors' own log (SPEC §5.7, `HISTORY-NOTES.md` beside the spec): commands, how to tell the blocks
//! of a history transfer apart, and what a 4-byte record means. [`HistoryRead`] (in `read.rs`) drives one
//! download as a plain state machine; the BLE link only writes what it says and feeds it what arrives.
//!
//! Owns: the history wire format of BM6/BM7 (`d1 55 05`) and BM2 (`e7`/`e3`). Pure functions of their
//! input: no I/O, no clocks (time is always passed in), no JSON. Facts carry the confidence tags of
//! HISTORY-NOTES (`[hw]` measured on real units, `[1src]` one unchecked source, `[inf]` our inference).

mod read;
#[cfg(test)]
mod read_tests;
pub mod simulate;
mod sync;
#[cfg(test)]
mod tests;

pub use read::{BlockLog, History, HistoryFailure, HistoryRead, PageLog, ReadError, Step, Timing};
pub use sync::{Fresh, MARGIN, SIGNATURE, Synced, new_since, records_to_ask};

use super::Model;
use chrono::{DateTime, Duration as WallDuration, Utc};
use std::fmt;

/// Seconds between two records: the monitors log every 2 minutes `[2src: AK §5; KD#19]`.
pub const RECORD_SECONDS: i64 = 120;
/// Records per day at one per 2 minutes.
pub const RECORDS_PER_DAY: u32 = 720;
/// Records asked for per BM6/BM7 request: AK's firmware pages with 8000 `[hw: AK §5.6]`.
pub const PAGE_RECORDS: u32 = 8000;
/// Only the low 16 bits of an index are used by the BM6 `[hw: AK]`: never ask beyond this.
pub const MAX_INDEX: u32 = 65535;
/// BM6 history arrives in 160-byte notifications, which need an ATT MTU of at least 163 `[hw: AK §1]`.
pub const MIN_MTU: u16 = 163;

/// How a model's log is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// BM6 (and, unverified, BM7): `d1 55 05 start end` asks for records `[start, end)`, newest first.
    Indexed,
    /// BM2: `e7 01` asks for the count, `e3 00 00 NNNNNNNN` for all of it; order newest **last** per KD
    /// `[1src]`, a per-model constant until verified on hardware (HISTORY-NOTES §5.7.8 item 4).
    Counted,
}

impl Protocol {
    /// The protocol `model` speaks: BM2 has its own command set, BM6 and BM7 share the `d1 55` family.
    pub fn of(model: Model) -> Protocol {
        if model.name() == "BM2" {
            Protocol::Counted
        } else {
            Protocol::Indexed
        }
    }

    /// Whether the first record of a transfer is the newest.
    pub fn newest_first(self) -> bool {
        self == Protocol::Indexed
    }
}

fn frame(head: &[u8]) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..head.len()].copy_from_slice(head);
    p
}

/// Plaintext of the BM6/BM7 request for records `[start, end)`: `d1 55 05 | start (24-bit BE) | end (24-bit
/// BE)`, zero-padded `[hw+apk: AK §3,§5]`. Indices above [`MAX_INDEX`] are clamped to it.
pub fn page_request(start: u32, end: u32) -> [u8; 16] {
    let s = start.min(MAX_INDEX).to_be_bytes();
    let e = end.min(MAX_INDEX).to_be_bytes();
    frame(&[0xd1, 0x55, 0x05, s[1], s[2], s[3], e[1], e[2], e[3]])
}

/// Plaintext of the BM2 count request `e7 01` `[2src: KD, KD#19]`.
pub fn count_request() -> [u8; 16] {
    frame(&[0xe7, 0x01])
}

/// Plaintext of the BM2 download request for `count` samples: `e3 00 00` + count (32-bit BE) `[2src]`.
pub fn download_request(count: u32) -> [u8; 16] {
    let n = count.to_be_bytes();
    frame(&[0xe3, 0x00, 0x00, n[0], n[1], n[2], n[3]])
}

/// What one decrypted 16-byte block is, during a history read (HISTORY-NOTES §5.7.6 item 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// BM6/BM7 `d1 55 05 CC CC`: acknowledgement; the meaning of `CC CC` is not established `[?]`.
    Ack { count: u16 },
    /// A live reading (`d1 55 07` / BM2 `f5`): not part of the log, skipped.
    Live,
    /// BM6/BM7 `fe fe fe`: the log is empty.
    EmptyMarker,
    /// BM2 `e7`: the number of stored samples, read as KD does (24-bit BE in bytes 1–3) `[1src]`; KD#19
    /// reads 32 bits from bytes 1–4 instead `[?]`, which is why the raw block is always kept.
    Count { count: u32 },
    /// BM2 `ff ff fe`: the data follows.
    Start,
    /// `ff fe fe` + 24-bit BE length `L = 4 × records + 9` `[2src]`.
    Terminator { length: u32 },
    /// Any other block: record data (or the zero padding of the last notification).
    Data,
}

/// Classify one decrypted block. A data block could only look like one of the markers at voltages above
/// 33 V, which no 12 V monitor logs `[inf]`.
pub fn classify(protocol: Protocol, p: &[u8; 16]) -> Block {
    let length = u32::from_be_bytes([0, p[3], p[4], p[5]]);
    match (protocol, p[0], p[1], p[2]) {
        (_, 0xff, 0xfe, 0xfe) => Block::Terminator { length },
        (Protocol::Indexed, 0xd1, 0x55, 0x05) => Block::Ack {
            count: u16::from_be_bytes([p[3], p[4]]),
        },
        (Protocol::Indexed, 0xd1, 0x55, 0x07) => Block::Live,
        (Protocol::Indexed, 0xfe, 0xfe, 0xfe) => Block::EmptyMarker,
        (Protocol::Counted, 0xf5, _, _) => Block::Live,
        (Protocol::Counted, 0xe7, _, _) => Block::Count {
            count: u32::from_be_bytes([0, p[1], p[2], p[3]]),
        },
        (Protocol::Counted, 0xff, 0xff, 0xfe) => Block::Start,
        _ => Block::Data,
    }
}

/// Records announced by a terminator's length `L`: `(L − 9) / 4`. `L = 12` follows the empty-log marker
/// and means 0 `[hw: AK §5]`. `None` for any other length that is not `4n + 9`.
pub fn records_in(length: u32) -> Option<u32> {
    match length {
        12 => Some(0),
        l if l >= 9 && (l - 9) % 4 == 0 => Some((l - 9) / 4),
        _ => None,
    }
}

/// A decoded record's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Volts (12 bits / 100).
    pub voltage: f64,
    /// Percent, as the monitor computed it when logging; `None` for BM2 (not established there).
    pub state_of_charge: Option<f64>,
    /// °C; `None` when the top bit is set (sign encoding unknown `[?]`), outside −40…85 °C (SPEC §5.5),
    /// or for BM2.
    pub temperature: Option<f64>,
    /// Low nibble: BM6 `2` = voltage step up, `4` = step down `[hw: AK]`; BM2 "type" `[?]`.
    pub flags: u8,
}

/// Why a record slot is not a reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skip {
    /// `00000000`: a real slot (it occupies 2 minutes) the vendor app skips `[hw: AK]`; not an error.
    Zero,
    /// A value outside SPEC §5.5's range (0 < V ≤ 40, SoC ≤ 100).
    OutOfRange { field: &'static str, value: f64 },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Zero => f.write_str("zero record"),
            Skip::OutOfRange { field, value } => write!(f, "{field} {value} out of range"),
        }
    }
}

/// Decode one 4-byte record. BM6/BM7: voltage 12 bits /100, SoC 8 bits, temperature 8 bits, flags 4 bits,
/// big-endian bit fields `[hw+apk: AK §5]`. BM2: only the voltage (first 12 bits) and the last nibble sit
/// where BM6 has them; the middle 16 bits are not established `[1src: KD]` and stay in the raw bytes.
pub fn decode_record(protocol: Protocol, raw: [u8; 4]) -> Result<Sample, Skip> {
    let word = u32::from_be_bytes(raw);
    if word == 0 {
        return Err(Skip::Zero);
    }
    let voltage = f64::from(word >> 20) / 100.0;
    let flags = (word & 0x0f) as u8;
    if voltage <= 0.0 || voltage > 40.0 {
        return Err(Skip::OutOfRange {
            field: "voltage",
            value: voltage,
        });
    }
    if protocol == Protocol::Counted {
        return Ok(Sample {
            voltage,
            state_of_charge: None,
            temperature: None,
            flags,
        });
    }
    let soc = f64::from((word >> 12) & 0xff);
    if soc > 100.0 {
        return Err(Skip::OutOfRange {
            field: "state_of_charge",
            value: soc,
        });
    }
    // Top bit set (sign encoding unknown) or above 85 °C (SPEC §5.5): not a temperature.
    let t = (word >> 4) & 0xff;
    let temperature = (t <= 85).then_some(f64::from(t));
    Ok(Sample {
        voltage,
        state_of_charge: Some(soc),
        temperature,
        flags,
    })
}

/// One slot of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Position counted back from the newest record (0) at the time of the read.
    pub index: u32,
    /// Reconstructed time `t − 120 s × index` (`t` = when the read was asked for); ±2 min `[hw+apk: AK]`.
    pub timestamp: DateTime<Utc>,
    /// The record's 4 bytes as sent.
    pub raw: [u8; 4],
    /// Decoded values, or why the slot is not a reading.
    pub value: Result<Sample, Skip>,
}

/// The time of the record at `index` of a read asked for at `t`.
pub fn timestamp(t: DateTime<Utc>, index: u32) -> DateTime<Utc> {
    t - WallDuration::seconds(RECORD_SECONDS * i64::from(index))
}

/// Records a sync must ask for to cover `seconds` of log: one per 2 minutes, at least 1, at most the
/// indices the monitor understands.
pub fn records_for(seconds: u64) -> u32 {
    let n = seconds.div_ceil(RECORD_SECONDS as u64).max(1);
    u32::try_from(n).unwrap_or(u32::MAX).min(MAX_INDEX)
}

/// Split the readings among `records` (oldest first) into batches that each span less than a day
/// (SPEC §5.7: one message per day at most). Slots that are not readings are left out.
pub fn day_batches(records: &[Record]) -> Vec<Vec<Record>> {
    let mut batches: Vec<Vec<Record>> = Vec::new();
    for r in records.iter().filter(|r| r.value.is_ok()) {
        match batches.last_mut() {
            Some(b) if r.timestamp - b[0].timestamp < WallDuration::days(1) => b.push(r.clone()),
            _ => batches.push(vec![r.clone()]),
        }
    }
    batches
}
