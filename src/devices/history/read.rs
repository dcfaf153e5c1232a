//! [`HistoryRead`]: one download of a monitor's log as a state machine. Events in (a notification's bytes,
//! time passing — both with the caller's monotonic `now`), [`Step`]s out (write this, wait, done, failed),
//! plus [`HistoryRead::deadline`]. It pages, retries, checks seams and decodes; it never does I/O.

use super::{
    Block, PAGE_RECORDS, Protocol, Record, classify, count_request, decode_record,
    download_request, page_request, records_in, timestamp,
};
use crate::devices::{Model, crypto};
use chrono::{DateTime, Utc};
use std::fmt;
use std::time::Duration;

/// How long to wait, and how often to try.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// From a write to the first notification of its reply.
    pub reply: Duration,
    /// Between two notifications of one reply; longer means the page broke `[inf: HISTORY-NOTES §5.7.5]`.
    pub silence: Duration,
    /// BM2: between the count reply and the download request (≥ 1 s, or the BM2 ignores it `[1src: KD]`).
    pub pause: Duration,
    /// Attempts per page (spurious empty reply, broken page, silence) before the read fails.
    pub attempts: u32,
}

impl Timing {
    /// Defaults for `protocol`: BM6 silence 3 s (it streams ≈ 1500 records/s `[hw: AK]`); BM2 is slower
    /// and was seen to need much longer than KD's 5 s in total `[1src: TS]`.
    pub fn of(protocol: Protocol) -> Timing {
        match protocol {
            Protocol::Indexed => Timing {
                reply: Duration::from_secs(5),
                silence: Duration::from_secs(3),
                pause: Duration::ZERO,
                attempts: 3,
            },
            Protocol::Counted => Timing {
                reply: Duration::from_secs(10),
                silence: Duration::from_secs(10),
                pause: Duration::from_millis(1200),
                attempts: 3,
            },
        }
    }
}

/// What the link must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing: wait for a notification or [`HistoryRead::deadline`].
    Wait,
    /// Write these 16 bytes (already encrypted with the model key) to `fff3`, with response.
    Write([u8; 16]),
    /// The read is over.
    Done(History),
    /// The read failed; the records accepted before the failure are kept in [`HistoryFailure::partial`].
    Failed(HistoryFailure),
}

/// Why a page (or the read) failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadError {
    /// No reply, or a reply that stopped: waited `waited` in `phase`.
    Timeout {
        phase: &'static str,
        waited: Duration,
    },
    /// 0 records without the empty-log marker although the log has some: retry `[hw: AK trap 2]`.
    SpuriousEmpty,
    /// Fewer data bytes than the terminator announced: the capture ended early `[hw: AK trap 3]`.
    CutShort { expected: usize, got: usize },
    /// More records than asked for.
    TooMany { asked: u32, got: u32 },
    /// A terminator length that is not `4n + 9`.
    BadTerminator(u32),
    /// A notification whose length is not a multiple of 16.
    BadNotification(usize),
    /// The seam record of the previous page is not among the first three of this page.
    SeamMismatch { index: u32 },
    /// The link failed under the read (reported by the caller through [`HistoryRead::abandon`]).
    Link(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Timeout { phase, waited } => {
                write!(f, "no reply within {} ms ({phase})", waited.as_millis())
            }
            ReadError::SpuriousEmpty => f.write_str("empty reply although the log is not empty"),
            ReadError::CutShort { expected, got } => {
                write!(f, "page cut short: {got} of {expected} data bytes")
            }
            ReadError::TooMany { asked, got } => write!(f, "{got} records for {asked} asked"),
            ReadError::BadTerminator(l) => write!(f, "terminator length {l} is not 4n + 9"),
            ReadError::BadNotification(n) => {
                write!(f, "notification of {n} bytes is not whole 16-byte blocks")
            }
            ReadError::SeamMismatch { index } => {
                write!(
                    f,
                    "page seam at index {index} does not match the previous page"
                )
            }
            ReadError::Link(why) => write!(f, "link failed during the read: {why}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// A failed read: why, and what was accepted before.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryFailure {
    pub error: ReadError,
    pub partial: History,
}

/// The outcome of a read.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Model name (`BM6`).
    pub model: &'static str,
    /// `t`: when the read was asked for; record `k` is at `t − 120 s × k`.
    pub requested_at: DateTime<Utc>,
    /// Every slot read, **oldest first** (zero and out-of-range slots included, with their reason).
    pub records: Vec<Record>,
    /// Whether the monitor's log ended before the number of records asked for.
    pub log_end: bool,
    /// Records logged during the read (seam shifts detected).
    pub shifts: u32,
    /// Every request sent and what came back, for `history --json` (HISTORY-NOTES §5.7.8).
    pub pages: Vec<PageLog>,
}

impl History {
    /// A read of `model` asked for at `at` that got nothing: no request could be sent (the link cannot
    /// carry the history notifications, HISTORY-NOTES §5.7.1).
    pub fn empty(model: Model, at: DateTime<Utc>) -> History {
        History {
            model: model.name(),
            requested_at: at,
            records: Vec::new(),
            log_end: false,
            shifts: 0,
            pages: Vec::new(),
        }
    }
}

/// One request and its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct PageLog {
    /// Plaintext of the request.
    pub request: [u8; 16],
    /// Attempt number for this request (1 = first).
    pub attempt: u32,
    /// Monotonic time of the write, ms since the read began.
    pub sent_ms: u64,
    /// The acknowledgement's `CC CC` (BM6/BM7), meaning not established `[?]`.
    pub ack: Option<u16>,
    /// The raw BM2 count block (its layout is disputed `[?]`).
    pub count_block: Option<[u8; 16]>,
    /// The terminator's `L`.
    pub terminator: Option<u32>,
    /// Byte length of every notification received, in order.
    pub notification_sizes: Vec<usize>,
    /// Live frames that arrived during the request.
    pub live_frames: u32,
    /// `None` while running or when fine; otherwise why this attempt was discarded.
    pub error: Option<String>,
    /// Every decrypted block in order (only when the read keeps raw blocks).
    pub blocks: Vec<BlockLog>,
}

/// One decrypted block and the notification it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockLog {
    /// 0-based notification number within the page.
    pub notification: usize,
    pub plain: [u8; 16],
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// BM2: `e7` sent.
    AwaitCount,
    /// BM2: the count arrived; the download request goes out at the deadline.
    Pause {
        count: u32,
    },
    /// A page request is out.
    AwaitPage,
    Finished,
}

/// The current request: what was asked and what has arrived.
#[derive(Debug, Clone)]
struct Current {
    /// Monitor-frame indices asked for (BM2: `[0, count)`).
    start: u32,
    end: u32,
    empty_marker: bool,
    started: bool,
    data: Vec<u8>,
}

/// One download. Create with [`HistoryRead::new`], write what its [`Step`]s say, feed it every notification
/// ([`on_notification`](HistoryRead::on_notification)) and call [`on_time`](HistoryRead::on_time) when
/// [`deadline`](HistoryRead::deadline) passes. `now` is any monotonic clock, the same for every call.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    model: Model,
    protocol: Protocol,
    timing: Timing,
    want: u32,
    keep_raw: bool,
    wall_start: DateTime<Utc>,
    mono_start: Duration,
    requested_at: DateTime<Utc>,
    phase: Phase,
    deadline: Option<Duration>,
    /// Records in the first page's frame (position = index), newest first.
    acc: Vec<[u8; 4]>,
    shift: u32,
    attempt: u32,
    current: Current,
    pages: Vec<PageLog>,
    log_end: bool,
}

impl HistoryRead {
    /// Start reading at most `want` records (newest first) from `model`; `wall` and `now` are the same
    /// instant on the wall clock and the caller's monotonic clock. Returns the first step (a write, or
    /// `Done` when `want` is 0). `keep_raw` keeps every decrypted block in the page logs.
    pub fn new(
        model: Model,
        want: u32,
        wall: DateTime<Utc>,
        now: Duration,
        timing: Timing,
        keep_raw: bool,
    ) -> (HistoryRead, Step) {
        let protocol = Protocol::of(model);
        let mut read = HistoryRead {
            model,
            protocol,
            timing,
            want: want.min(super::MAX_INDEX),
            keep_raw,
            wall_start: wall,
            mono_start: now,
            requested_at: wall,
            phase: Phase::Finished,
            deadline: None,
            acc: Vec::new(),
            shift: 0,
            attempt: 1,
            current: Current::new(0, 0),
            pages: Vec::new(),
            log_end: false,
        };
        if read.want == 0 {
            return (read.clone(), Step::Done(read.history()));
        }
        let step = match protocol {
            Protocol::Indexed => {
                read.phase = Phase::AwaitPage;
                read.send(0, read.want.min(PAGE_RECORDS), now)
            }
            Protocol::Counted => {
                read.phase = Phase::AwaitCount;
                read.send(0, 0, now)
            }
        };
        (read, step)
    }

    /// When [`on_time`](Self::on_time) must be called next (caller's monotonic clock); `None` once over.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// End the read from outside (the link failed); returns what was accepted before.
    pub fn abandon(&mut self, error: ReadError) -> HistoryFailure {
        if let Some(page) = self.pages.last_mut()
            && self.phase != Phase::Finished
        {
            page.error = Some(error.to_string());
        }
        self.phase = Phase::Finished;
        self.deadline = None;
        HistoryFailure {
            error,
            partial: self.history(),
        }
    }

    /// Every request sent so far and what came back.
    pub fn pages(&self) -> &[PageLog] {
        &self.pages
    }

    /// Time has passed: act on an expired deadline (retry, give up, or send the delayed BM2 request).
    pub fn on_time(&mut self, now: Duration) -> Step {
        match (self.deadline, self.phase) {
            (Some(d), _) if now < d => Step::Wait,
            (None, _) | (_, Phase::Finished) => Step::Wait,
            (Some(_), Phase::Pause { count }) => {
                self.phase = Phase::AwaitPage;
                self.send(0, count, now)
            }
            (Some(_), phase) => {
                let waited = now.saturating_sub(self.last_sent());
                let phase = if phase == Phase::AwaitCount {
                    "count"
                } else {
                    "page"
                };
                self.page_error(ReadError::Timeout { phase, waited }, now)
            }
        }
    }

    /// A notification arrived on `fff4` (ciphertext as received).
    pub fn on_notification(&mut self, bytes: &[u8], now: Duration) -> Step {
        if matches!(self.phase, Phase::Finished | Phase::Pause { .. }) {
            return Step::Wait;
        }
        let Some(page) = self.pages.last_mut() else {
            return Step::Wait;
        };
        let number = page.notification_sizes.len();
        page.notification_sizes.push(bytes.len());
        if bytes.is_empty() || bytes.len() % 16 != 0 {
            return self.page_error(ReadError::BadNotification(bytes.len()), now);
        }
        let mut progress = false;
        for chunk in bytes.chunks_exact(16) {
            let cipher: [u8; 16] = chunk.try_into().expect("16-byte chunk");
            let plain = crypto::decrypt(self.model.key(), &cipher);
            let Some(page) = self.pages.last_mut() else {
                return Step::Wait;
            };
            if self.keep_raw {
                page.blocks.push(BlockLog {
                    notification: number,
                    plain,
                });
            }
            let block = classify(self.protocol, &plain);
            if block == Block::Live {
                page.live_frames += 1;
                continue;
            }
            progress = true;
            match (block, self.phase) {
                (Block::Count { count }, Phase::AwaitCount) => {
                    page.count_block = Some(plain);
                    if count == 0 {
                        self.log_end = true;
                        return self.finish();
                    }
                    self.phase = Phase::Pause { count };
                    self.deadline = Some(now + self.timing.pause);
                    return Step::Wait;
                }
                (_, Phase::AwaitCount) => {}
                // Data before this request's acknowledgement (or BM2 start marker) is the tail of an
                // earlier, abandoned attempt: drop it.
                (Block::Ack { count }, _) => {
                    page.ack = Some(count);
                    self.current.data.clear();
                    self.current.empty_marker = false;
                }
                (Block::EmptyMarker, _) => self.current.empty_marker = true,
                (Block::Start, _) => {
                    self.current.started = true;
                    self.current.data.clear();
                }
                (Block::Terminator { length }, _) => {
                    page.terminator = Some(length);
                    return self.finish_page(length, now);
                }
                (Block::Data, _) if self.protocol == Protocol::Indexed || self.current.started => {
                    self.current.data.extend_from_slice(&plain);
                }
                _ => {}
            }
        }
        if progress {
            self.deadline = Some(now + self.timing.silence);
        }
        Step::Wait
    }

    fn last_sent(&self) -> Duration {
        self.pages.last().map_or(self.mono_start, |p| {
            self.mono_start + Duration::from_millis(p.sent_ms)
        })
    }

    /// Write the request for `[start, end)` (BM2: `e7` when `end` is 0, else `e3` for `end` records).
    fn send(&mut self, start: u32, end: u32, now: Duration) -> Step {
        let request = match self.protocol {
            Protocol::Indexed => page_request(start, end),
            Protocol::Counted if end == 0 => count_request(),
            Protocol::Counted => download_request(end),
        };
        let first_data_request = self.acc.is_empty() && self.phase == Phase::AwaitPage;
        if first_data_request {
            let since = now.saturating_sub(self.mono_start);
            self.requested_at = self.wall_start
                + chrono::Duration::from_std(since).unwrap_or(chrono::Duration::zero());
        }
        self.current = Current::new(start, end);
        self.pages.push(PageLog {
            request,
            attempt: self.attempt,
            sent_ms: u64::try_from(now.saturating_sub(self.mono_start).as_millis())
                .unwrap_or(u64::MAX),
            ack: None,
            count_block: None,
            terminator: None,
            notification_sizes: Vec::new(),
            live_frames: 0,
            error: None,
            blocks: Vec::new(),
        });
        self.deadline = Some(now + self.timing.reply);
        Step::Write(crypto::encrypt(self.model.key(), &request))
    }

    /// A terminator arrived: check the page, merge it, and ask for the next one or finish.
    fn finish_page(&mut self, length: u32, now: Duration) -> Step {
        let Some(n) = records_in(length) else {
            return self.page_error(ReadError::BadTerminator(length), now);
        };
        let (start, end) = (self.current.start, self.current.end);
        let asked = end - start;
        if n == 0 {
            if self.current.empty_marker && start == 0 && self.acc.is_empty() {
                self.log_end = true;
                return self.finish();
            }
            return self.page_error(ReadError::SpuriousEmpty, now);
        }
        if n > asked {
            return self.page_error(ReadError::TooMany { asked, got: n }, now);
        }
        let needed = 4 * n as usize;
        if self.current.data.len() < needed {
            let got = self.current.data.len();
            return self.page_error(
                ReadError::CutShort {
                    expected: needed,
                    got,
                },
                now,
            );
        }
        let mut slots: Vec<[u8; 4]> = self.current.data[..needed]
            .chunks_exact(4)
            .map(|c| c.try_into().expect("4-byte chunk"))
            .collect();
        if !self.protocol.newest_first() {
            slots.reverse();
        }
        if let Some(seam) = self.acc.last().copied() {
            let Some(j) = slots.iter().take(3).position(|s| *s == seam) else {
                return self.page_error(ReadError::SeamMismatch { index: start }, now);
            };
            self.shift += j as u32;
            self.acc.extend_from_slice(&slots[j + 1..]);
        } else {
            self.acc = slots;
        }
        self.attempt = 1;
        if self.protocol == Protocol::Counted || n < asked {
            self.log_end = true;
        }
        let from = self.acc.len() as u32 - 1 + self.shift;
        let to = (from + PAGE_RECORDS)
            .min(self.want + self.shift)
            .min(super::MAX_INDEX);
        if self.log_end || self.acc.len() as u32 >= self.want || to <= from + 1 {
            return self.finish();
        }
        self.send(from, to, now)
    }

    /// Discard the current attempt; repeat the request or give up.
    fn page_error(&mut self, error: ReadError, now: Duration) -> Step {
        if let Some(page) = self.pages.last_mut() {
            page.error = Some(error.to_string());
        }
        if self.attempt >= self.timing.attempts {
            self.phase = Phase::Finished;
            self.deadline = None;
            return Step::Failed(HistoryFailure {
                error,
                partial: self.history(),
            });
        }
        self.attempt += 1;
        let (start, end) = (self.current.start, self.current.end);
        self.send(start, end, now)
    }

    fn finish(&mut self) -> Step {
        self.phase = Phase::Finished;
        self.deadline = None;
        Step::Done(self.history())
    }

    /// What has been accepted so far, oldest first.
    fn history(&self) -> History {
        let mut records: Vec<Record> = self
            .acc
            .iter()
            .take(self.want as usize)
            .enumerate()
            .map(|(k, raw)| Record {
                index: k as u32,
                timestamp: timestamp(self.requested_at, k as u32),
                raw: *raw,
                value: decode_record(self.protocol, *raw),
            })
            .collect();
        records.reverse();
        History {
            model: self.model.name(),
            requested_at: self.requested_at,
            records,
            log_end: self.log_end,
            shifts: self.shift,
            pages: self.pages.clone(),
        }
    }
}

impl Current {
    fn new(start: u32, end: u32) -> Current {
        Current {
            start,
            end,
            empty_marker: false,
            started: false,
            data: Vec::new(),
        }
    }
}
