//! The spool's record format and its recovery from damage (SPEC §3 "Damaged files"). Pure: bytes in,
//! records out.
//!
//! A record is framed and checksummed so that damage anywhere (a power cut, a zero-filled page on an SD
//! card) costs only the records it touches:
//!
//! ```text
//! magic "BHs1" | index u32 LE | len u32 LE | crc u32 LE | body (len bytes)
//! body = qos u8 | topic_len u16 LE | topic | payload
//! ```
//! `index` counts the records of a segment from 0, so a gap after damage says how many were lost;
//! `crc` is CRC-32 (IEEE) over index, len and body. A reader that meets a bad frame searches for the
//! next magic and goes on from there. Files written before framing (no magic) are read with the old
//! layout (`len u32 | qos u8 | topic_len u16 | topic | payload`).

use crate::mqtt::payload::{Kind, Message};

pub const MAGIC: [u8; 4] = *b"BHs1";
/// magic, index, len, crc.
pub const HEADER: usize = 16;
/// No record is larger (a message is at most 256 KiB; this leaves room and rejects garbage lengths).
const MAX_BODY: usize = 1024 * 1024;

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`). Written out rather than a dependency: ten
/// lines, and the project's dependency list has no checksum crate.
fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for part in parts {
        for &b in *part {
            c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
    }
    !c
}

/// The framed record for `msg`, the `index`-th of its segment.
pub fn encode(msg: &Message, index: u32) -> Vec<u8> {
    let topic = msg.topic.as_bytes();
    let mut body = Vec::with_capacity(3 + topic.len() + msg.payload.len());
    body.push(msg.qos);
    body.extend((topic.len() as u16).to_le_bytes());
    body.extend(topic);
    body.extend(&msg.payload);
    let index = index.to_le_bytes();
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32(&[&index, &len, &body]).to_le_bytes();
    let mut out = Vec::with_capacity(HEADER + body.len());
    for part in [&MAGIC[..], &index, &len, &crc, &body] {
        out.extend(part);
    }
    out
}

fn body_to_message(body: &[u8]) -> Option<Message> {
    let (&qos, rest) = body.split_first()?;
    let topic_len = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    let rest = rest.get(2..)?;
    if qos > 2 || topic_len > rest.len() {
        return None;
    }
    let (topic, payload) = rest.split_at(topic_len);
    Some(Message {
        topic: String::from_utf8(topic.to_vec()).ok()?,
        payload: payload.to_vec(),
        qos,
        retain: false,
        kind: Kind::Reading,
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The record at the start of `b`: the message, its index and its length in bytes; `None` if the
/// frame is not whole and intact.
pub fn decode(b: &[u8]) -> Option<(Message, u32, usize)> {
    if b.get(..4)? != MAGIC {
        return None;
    }
    let index = u32_at(b, 4)?;
    let len = u32_at(b, 8)? as usize;
    let crc = u32_at(b, 12)?;
    if len > MAX_BODY {
        return None;
    }
    let body = b.get(HEADER..HEADER + len)?;
    if crc32(&[&b[4..8], &b[8..12], body]) != crc {
        return None;
    }
    Some((body_to_message(body)?, index, HEADER + len))
}

/// The old, unframed record at the start of `b`, and its length.
fn decode_legacy(b: &[u8]) -> Option<(Message, usize)> {
    let len = u32_at(b, 0)? as usize;
    if !(3..=MAX_BODY).contains(&len) {
        return None;
    }
    Some((body_to_message(b.get(4..4 + len)?)?, 4 + len))
}

/// What a segment file holds.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    /// The intact records, in order.
    pub records: Vec<Message>,
    /// Records known to be lost: gaps in the indices, plus one for damage at the end (a torn or
    /// overwritten tail hides how many it held; at least one).
    pub lost: u64,
    /// Some bytes were not part of an intact record.
    pub damaged: bool,
    /// Written before framing: must be rewritten (not an error).
    pub legacy: bool,
    /// The damage reaches the end of the file, so `lost` is a lower bound.
    pub torn_tail: bool,
}

/// Read every intact record of a segment, skipping damaged regions.
pub fn scan(b: &[u8]) -> Scan {
    let mut s = Scan::default();
    if !b.is_empty() && !b.starts_with(&MAGIC) && decode_legacy(b).is_some() {
        s.legacy = true;
        let mut at = 0;
        while let Some((msg, n)) = b.get(at..).and_then(decode_legacy) {
            s.records.push(msg);
            at += n;
        }
        if at < b.len() {
            s.damaged = true;
            s.torn_tail = true;
            s.lost += 1;
        }
        return s;
    }
    let mut at = 0;
    let mut expected: u64 = 0;
    while at < b.len() {
        if let Some((msg, index, n)) = decode(&b[at..]) {
            s.lost += u64::from(index).saturating_sub(expected);
            expected = u64::from(index) + 1;
            s.records.push(msg);
            at += n;
            continue;
        }
        s.damaged = true;
        match b[at + 1..].windows(MAGIC.len()).position(|w| w == MAGIC) {
            Some(skip) => at += 1 + skip,
            None => {
                s.torn_tail = true;
                s.lost += 1;
                break;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(i: usize) -> Message {
        Message {
            topic: format!("p/device/AA:BB:CC:DD:EE:{:02X}/reading", i % 256),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
            qos: 1,
            retain: false,
            kind: Kind::Reading,
        }
    }

    fn segment(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(bytes.len());
            bytes.extend(encode(&reading(i), i as u32));
        }
        (bytes, starts)
    }

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    }

    #[test]
    fn an_intact_segment_reads_back_whole() {
        let (bytes, _) = segment(20);
        let s = scan(&bytes);
        assert_eq!(s.records, (0..20).map(reading).collect::<Vec<_>>());
        assert_eq!((s.lost, s.damaged), (0, false));
    }

    #[test]
    fn a_zero_filled_region_costs_only_its_records() {
        let (mut bytes, starts) = segment(30);
        // Zero from the middle of record 3 to the middle of record 7: 3..=7 are lost.
        let (from, to) = (starts[3] + 5, starts[7] + 5);
        bytes[from..to].fill(0);
        let s = scan(&bytes);
        let kept: Vec<Message> = (0..3).chain(8..30).map(reading).collect();
        assert_eq!(s.records, kept);
        assert_eq!(s.lost, 5);
        assert!(s.damaged);
    }

    #[test]
    fn a_flipped_bit_or_a_torn_tail_is_found() {
        let (mut bytes, starts) = segment(10);
        bytes[starts[4] + HEADER + 2] ^= 0x10;
        bytes.truncate(starts[9] + 7);
        let s = scan(&bytes);
        assert_eq!(s.records.len(), 8, "4 (checksum) and 9 (torn) lost");
        assert_eq!(s.lost, 2);
    }

    #[test]
    fn the_old_unframed_layout_is_still_read() {
        let mut bytes = Vec::new();
        for i in 0..3 {
            let m = reading(i);
            let len = 3 + m.topic.len() + m.payload.len();
            bytes.extend((len as u32).to_le_bytes());
            bytes.push(m.qos);
            bytes.extend((m.topic.len() as u16).to_le_bytes());
            bytes.extend(m.topic.as_bytes());
            bytes.extend(&m.payload);
        }
        let s = scan(&bytes);
        assert!(s.legacy && !s.damaged);
        assert_eq!(s.records, (0..3).map(reading).collect::<Vec<_>>());
    }
}
