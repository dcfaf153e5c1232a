//! The disk spool: readings that cannot wait in memory, in `<state_dir>/spool/`, oldest first.
//!
//! Owns: append-only segment files (`NNNNNNNNNN.seg`), their replay in order, and the size bound
//! (`mqtt.spool_max_mb`: past it the oldest segment is dropped, its readings counted as dropped).
//! Records are framed and checksummed ([`record`]). At start-up every segment is checked: a damaged one
//! (a power cut, a zero-filled page) is moved aside as `<id>.damaged` with one error line saying how
//! many readings were recovered and lost, and its intact readings are replayed.
//!
//! Write pattern (SD cards wear): nothing is written while the broker is healthy and the outbox has room.
//! While readings go to the spool each one is one `write` (so a killed process loses none) and the file is
//! fsynced at most once a second ([`Spool::sync`]): a power cut loses at most the last second of spooled
//! readings. A segment is deleted once all its readings were read back *and* acknowledged by the broker.
//! Must never: reorder readings, or grow past its bound.

mod record;

use super::payload::Message;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Segments per spool: the size bound is enforced one segment at a time.
const SEGMENTS: u64 = 8;
const MIN_SEGMENT: u64 = 64 * 1024;
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Id of the first segment; [`Spool::prepend`] counts down from the oldest.
const FIRST_ID: u64 = 1_000_000_000;

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    bytes: u64,
    records: u64,
    /// Records handed back to the outbox, and of those, not yet acknowledged.
    read: u64,
    read_offset: u64,
    outstanding: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    unsynced_since: Option<Instant>,
    dropped: u64,
}

/// Why the spool could not be used (the gateway then keeps readings in memory only).
#[derive(Debug)]
pub struct SpoolError(pub String);

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read the record at the reader's position; `None` at the end or at a torn/corrupt record.
fn read_record(r: &mut impl Read) -> Option<(Message, u64)> {
    let mut buf = vec![0u8; record::HEADER];
    r.read_exact(&mut buf).ok()?;
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if len > 2 * 1024 * 1024 {
        return None;
    }
    buf.resize(record::HEADER + len, 0);
    r.read_exact(&mut buf[record::HEADER..]).ok()?;
    let (msg, _, n) = record::decode(&buf)?;
    Some((msg, n as u64))
}

/// Write `msgs` as a fresh, synced segment file at `path` (indices from 0); its size in bytes.
fn write_segment(path: &Path, msgs: &[Message]) -> io::Result<u64> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let mut bytes = 0;
    for (i, m) in msgs.iter().enumerate() {
        let r = record::encode(m, i as u32);
        f.write_all(&r)?;
        bytes += r.len() as u64;
    }
    f.sync_data()?;
    Ok(bytes)
}

/// Read the segment at `path`, recovering around damage: a damaged file is moved aside (to
/// `<id>.damaged`) with one error line and its intact records written to a fresh file in its place;
/// a file in the old unframed layout is rewritten framed. Returns its records and size.
fn load_segment(path: &Path) -> io::Result<(u64, u64)> {
    let bytes = std::fs::read(path)?;
    let scan = record::scan(&bytes);
    if !scan.damaged && !scan.legacy {
        return Ok((scan.records.len() as u64, bytes.len() as u64));
    }
    if scan.damaged {
        let mut aside = path.with_extension("damaged");
        let mut n = 1;
        while aside.exists() {
            aside = path.with_extension(format!("damaged-{n}"));
            n += 1;
        }
        std::fs::rename(path, &aside)?;
        log::error!(
            "spool: {} is damaged: {} reading(s) recovered, {} lost{}; the damaged file is kept as {}",
            path.display(),
            scan.records.len(),
            scan.lost,
            if scan.torn_tail { " (at least)" } else { "" },
            aside.display()
        );
    } else {
        log::info!(
            "spool: {} rewritten in the framed layout ({} reading(s))",
            path.display(),
            scan.records.len()
        );
    }
    let size = write_segment(path, &scan.records)?;
    Ok((scan.records.len() as u64, size))
}

impl Spool {
    /// Open the spool in `dir` (created if missing) bounded to `max_mb` MiB, counting what a previous run
    /// left there.
    pub fn open(dir: &Path, max_mb: u64) -> Result<Spool, SpoolError> {
        let err = |e: io::Error| SpoolError(format!("spool {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(err)?;
        let max_bytes = max_mb * 1024 * 1024;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(err)?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        for id in ids {
            let path = dir.join(format!("{id:010}.seg"));
            let (records, bytes) = load_segment(&path).map_err(err)?;
            segments.push_back(Segment {
                id,
                path,
                bytes,
                records,
                read: 0,
                read_offset: 0,
                outstanding: 0,
            });
        }
        let spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / SEGMENTS).max(MIN_SEGMENT),
            segments,
            writer: None,
            unsynced_since: None,
            dropped: 0,
        };
        if !spool.is_empty() {
            log::info!(
                "spool holds {} reading(s) from before; replaying them first",
                spool.len()
            );
        }
        Ok(spool)
    }

    /// Readings in the spool not yet read back.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.records - s.read).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Readings dropped because the spool was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Append a reading at the end.
    pub fn append(&mut self, msg: &Message) -> io::Result<()> {
        let size = (record::HEADER + 3 + msg.topic.len() + msg.payload.len()) as u64;
        let need_new = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + size > self.segment_bytes || self.writer.is_none());
        if need_new {
            let id = self.segments.back().map_or(FIRST_ID, |s| s.id + 1);
            let path = self.dir.join(format!("{id:010}.seg"));
            self.sync();
            self.writer = Some(OpenOptions::new().create(true).append(true).open(&path)?);
            self.segments.push_back(Segment {
                id,
                path,
                bytes: 0,
                records: 0,
                read: 0,
                read_offset: 0,
                outstanding: 0,
            });
        }
        let index = self.segments.back().map_or(0, |s| s.records as u32);
        let record = record::encode(msg, index);
        if let Some(w) = self.writer.as_mut() {
            w.write_all(&record)?;
        }
        if let Some(s) = self.segments.back_mut() {
            s.bytes += record.len() as u64;
            s.records += 1;
        }
        self.unsynced_since.get_or_insert_with(Instant::now);
        while self.total_bytes() > self.max_bytes && self.segments.len() > 1 {
            self.drop_oldest();
        }
        Ok(())
    }

    /// Put `msgs` (older than everything spooled) in front of the spool, in their order, synced. Used at
    /// shutdown for the readings still in memory while the broker is unreachable.
    pub fn prepend(&mut self, msgs: &[Message]) -> io::Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let id = self.segments.front().map_or(FIRST_ID, |s| s.id - 1);
        let path = self.dir.join(format!("{id:010}.seg"));
        let bytes = write_segment(&path, msgs)?;
        self.segments.push_front(Segment {
            id,
            path,
            bytes,
            records: msgs.len() as u64,
            read: 0,
            read_offset: 0,
            outstanding: 0,
        });
        Ok(())
    }

    fn drop_oldest(&mut self) {
        if let Some(s) = self.segments.pop_front() {
            let lost = s.records - s.read;
            self.dropped += lost;
            log::warn!(
                "spool full ({} MiB): dropped {lost} oldest reading(s)",
                self.max_bytes >> 20
            );
            let _ = std::fs::remove_file(&s.path);
        }
    }

    /// fsync what was appended, if anything was and at least a second passed (or `force`).
    pub fn sync_due(&mut self, force: bool) {
        if self
            .unsynced_since
            .is_some_and(|t| force || t.elapsed() >= SYNC_EVERY)
        {
            self.sync();
        }
    }

    fn sync(&mut self) {
        if let Some(w) = &self.writer
            && self.unsynced_since.take().is_some()
            && let Err(e) = w.sync_data()
        {
            log::error!("spool: fsync failed: {e}");
        }
    }

    /// When the next fsync is due, if one is.
    pub fn sync_deadline(&self) -> Option<Instant> {
        self.unsynced_since.map(|t| t + SYNC_EVERY)
    }

    /// Read up to `n` readings back, oldest first; each carries its segment id for [`Spool::acked`].
    pub fn read_batch(&mut self, n: usize) -> Vec<(Message, u64)> {
        let mut out = Vec::new();
        for s in self.segments.iter_mut() {
            if out.len() >= n {
                break;
            }
            if s.read >= s.records {
                continue;
            }
            let Ok(mut f) = File::open(&s.path) else {
                log::error!("spool: cannot open {}", s.path.display());
                s.read = s.records;
                continue;
            };
            if f.seek(SeekFrom::Start(s.read_offset)).is_err() {
                s.read = s.records;
                continue;
            }
            let mut r = io::BufReader::new(f);
            while out.len() < n && s.read < s.records {
                match read_record(&mut r) {
                    Some((msg, len)) => {
                        s.read += 1;
                        s.read_offset += len;
                        s.outstanding += 1;
                        out.push((msg, s.id));
                    }
                    None => {
                        log::warn!(
                            "spool: {} ends in a torn record; skipping the rest",
                            s.path.display()
                        );
                        s.records = s.read;
                    }
                }
            }
        }
        self.collect();
        out
    }

    /// A reading read back from segment `id` was acknowledged by the broker (or given up).
    pub fn acked(&mut self, id: u64) {
        if let Some(s) = self.segments.iter_mut().find(|s| s.id == id) {
            s.outstanding = s.outstanding.saturating_sub(1);
        }
        self.collect();
    }

    /// Delete the segments fully read back and acknowledged.
    fn collect(&mut self) {
        while let Some(s) = self.segments.front() {
            // Also the segment being written: the next append starts a new one, so nothing already
            // delivered is replayed again after a restart.
            if s.read < s.records || s.outstanding > 0 {
                break;
            }
            if let Some(s) = self.segments.pop_front() {
                if self.segments.is_empty() {
                    self.writer = None;
                    self.unsynced_since = None;
                }
                let _ = std::fs::remove_file(&s.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::payload::Kind;

    fn reading(i: usize) -> Message {
        Message {
            topic: format!("p/device/AA:BB:CC:DD:EE:{:02X}/reading", i % 256),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
            qos: 1,
            retain: false,
            kind: Kind::Reading,
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bh-spool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn replays_in_order_and_deletes_once_acked() {
        let d = dir("order");
        let mut s = Spool::open(&d, 1).unwrap();
        for i in 0..100 {
            s.append(&reading(i)).unwrap();
        }
        assert_eq!(s.len(), 100);
        let batch = s.read_batch(60);
        assert_eq!(batch[0].0, reading(0));
        assert_eq!(batch[59].0.payload, reading(59).payload);
        let rest = s.read_batch(100);
        assert_eq!(rest.len(), 40);
        assert_eq!(rest[39].0.payload, reading(99).payload);
        assert!(s.is_empty());
        for (_, id) in batch.iter().chain(&rest) {
            s.acked(*id);
        }
        s.writer = None;
        s.collect();
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            0,
            "acked segments are deleted"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn survives_a_restart_and_a_torn_tail() {
        let d = dir("restart");
        let mut s = Spool::open(&d, 1).unwrap();
        for i in 0..10 {
            s.append(&reading(i)).unwrap();
        }
        s.sync_due(true);
        drop(s);
        let seg = std::fs::read_dir(&d)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 3]).unwrap();
        let mut again = Spool::open(&d, 1).unwrap();
        assert_eq!(again.len(), 10);
        let all = again.read_batch(100);
        assert_eq!(all.len(), 10);
        assert_eq!(all[9].0.payload, reading(9).payload);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn prepended_readings_come_first() {
        let d = dir("prepend");
        let mut s = Spool::open(&d, 1).unwrap();
        s.append(&reading(2)).unwrap();
        s.prepend(&[reading(0), reading(1)]).unwrap();
        let all: Vec<Vec<u8>> = s
            .read_batch(10)
            .into_iter()
            .map(|(m, _)| m.payload)
            .collect();
        assert_eq!(
            all,
            [reading(0).payload, reading(1).payload, reading(2).payload]
        );
        drop(s);
        assert_eq!(
            Spool::open(&d, 1).unwrap().len(),
            3,
            "still there after a restart"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_full_spool_drops_the_oldest_readings_and_counts_them() {
        let d = dir("full");
        let mut s = Spool::open(&d, 1).unwrap();
        let big = |i: usize| Message {
            payload: vec![b'x'; 4000],
            ..reading(i)
        };
        for i in 0..1000 {
            s.append(&big(i)).unwrap();
        }
        assert!(s.total_bytes() <= 1024 * 1024);
        assert!(s.dropped() > 0);
        assert_eq!(s.len() + s.dropped(), 1000);
        let first = s.read_batch(1);
        assert!(first[0].0.topic == big(s.dropped() as usize).topic);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_damaged_segment_is_moved_aside_and_its_intact_readings_replayed() {
        let d = dir("damaged");
        let mut s = Spool::open(&d, 1).unwrap();
        for i in 0..24 {
            s.append(&reading(i)).unwrap();
        }
        s.sync_due(true);
        drop(s);
        let seg = d.join(format!("{FIRST_ID:010}.seg"));
        let mut bytes = std::fs::read(&seg).unwrap();
        let record = bytes.len() / 24;
        bytes[record * 2..record * 6].fill(0);
        bytes.truncate(bytes.len() - 5);
        std::fs::write(&seg, &bytes).unwrap();
        let mut again = Spool::open(&d, 1).unwrap();
        let got: Vec<Vec<u8>> = again
            .read_batch(100)
            .into_iter()
            .map(|(m, _)| m.payload)
            .collect();
        let want: Vec<Vec<u8>> = (0..2).chain(6..23).map(|i| reading(i).payload).collect();
        assert_eq!(got, want, "every intact reading, in order");
        assert!(d.join(format!("{FIRST_ID:010}.damaged")).exists());
        drop(again);
        assert_eq!(
            Spool::open(&d, 1).unwrap().len(),
            19,
            "the rewritten segment is whole"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
