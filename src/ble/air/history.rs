//! A history download over a simulated link (SPEC §5.7 on the simulated air): the gateway's real
//! [`HistoryRead`] on one side, the simulated monitor's log ([`SimLog`], answered by
//! [`simulate::answer`] exactly as HISTORY-NOTES §5.7.2 describes: acknowledgement, 160-byte data
//! notifications newest first, terminator) on the other. The whole exchange is played at once on a
//! virtual clock, at the pace measured on real units; the air then holds the link that long.

use crate::devices::Model;
use crate::devices::crypto;
use crate::devices::history::simulate::{self, SimLog};
use crate::devices::history::{History, HistoryRead, Protocol, ReadError, Step, Timing};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// From a history write to the first notification of its reply.
const REPLY: Duration = Duration::from_millis(40);
/// Between two notifications of a reply: 27 ms per 160-byte notification of 40 records is ≈ 1500
/// records/s, what AK measured on long BM6 reads (50467 records in 28–39 s) `[hw: AK]`.
const NOTIFY: Duration = Duration::from_millis(27);

/// Download at most `want` records of `log` from a monitor of `model`, the first request being written at
/// `wall`. Returns what the gateway's read ends with (the part read before a failure, if it fails) and
/// how long the exchange holds the link.
pub(super) fn download(
    model: Model,
    log: &SimLog,
    want: u32,
    wall: DateTime<Utc>,
) -> (History, Duration) {
    let (mut read, mut step) = HistoryRead::new(
        model,
        want,
        wall,
        Duration::ZERO,
        Timing::of(Protocol::of(model)),
        false,
    );
    let mut now = Duration::ZERO;
    loop {
        step = match step {
            Step::Done(h) => return (h, now),
            Step::Failed(f) => return (f.partial, now),
            Step::Write(cipher) => {
                let command = crypto::decrypt(model.key(), &cipher);
                now += REPLY;
                let at = wall + chrono::Duration::from_std(now).unwrap_or_default();
                let reply = simulate::answer(model, &log.at(at), &command).unwrap_or_default();
                let mut next = Step::Wait;
                for notification in reply {
                    now += NOTIFY;
                    next = read.on_notification(&notification, now);
                    if next != Step::Wait {
                        break;
                    }
                }
                next
            }
            Step::Wait => match read.deadline() {
                Some(deadline) => {
                    now = now.max(deadline);
                    read.on_time(now)
                }
                None => {
                    let stalled = ReadError::Link("history read stalled".into());
                    return (read.abandon(stalled).partial, now);
                }
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_three_day_log_is_read_whole_at_the_measured_pace() {
        let bm6 = Model::by_name("BM6").unwrap();
        let wall = Utc::now();
        let log = SimLog::new(7, wall - chrono::Duration::days(3));
        let (h, took) = download(bm6, &log, 5040, wall);
        let expected = log.at(wall);
        assert!(h.log_end, "the log ended before 5040 records");
        let newest_first: Vec<[u8; 4]> = h.records.iter().rev().map(|r| r.raw).collect();
        assert_eq!(newest_first, expected);
        // 2160 records = 54 notifications + ack + terminator, 27 ms each, plus the reply time.
        let notifications = expected.len().div_ceil(40) as u32 + 2;
        assert_eq!(took, REPLY + NOTIFY * notifications);
    }

    #[test]
    fn an_incremental_read_asks_only_for_the_newest_records() {
        let bm6 = Model::by_name("BM6").unwrap();
        let wall = Utc::now();
        let log = SimLog::new(7, wall - chrono::Duration::days(3));
        let (h, _) = download(bm6, &log, 20, wall);
        assert!(!h.log_end);
        let newest_first: Vec<[u8; 4]> = h.records.iter().rev().map(|r| r.raw).collect();
        assert_eq!(newest_first, log.at(wall)[..20]);
    }
}
