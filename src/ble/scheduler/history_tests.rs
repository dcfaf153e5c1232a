//! Scheduler tests of log downloads, after a poll's reading and on stream links, with a fake clock.

use super::tests::{A, config, heard, mac, ok, started};
use super::*;
use crate::devices::history::{History, Protocol, Record, decode_record, timestamp};
use crate::messages::RawFrame;

fn stream_config(model: &str, extra: &str) -> Arc<Config> {
    config(&format!(
        "[discovery]\ninitial_scan = false\n{extra}[[device]]\nmac = \"{A}\"\ntype = \"{model}\"\n\
         mode = \"stream\"\npoll_interval = 5\n"
    ))
}

fn frame() -> RawFrame {
    ok(A).frames.remove(0)
}

fn asks(actions: &[Action]) -> Vec<HistoryAsk> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StreamHistory { mac: m, ask } if *m == mac(A) => Some(ask.clone()),
            _ => None,
        })
        .collect()
}

fn published(actions: &[Action]) -> Vec<usize> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(BleEvent::Notice(Notice::History { out, .. })) => Some(out.records.len()),
            _ => None,
        })
        .collect()
}

/// A read asked for at `requested_at` that returned records of these centivolts, newest first.
fn read(requested_at: chrono::DateTime<chrono::Utc>, newest_first: &[u32]) -> History {
    let raw = |cv: u32| ((cv << 20) | (80 << 12) | (20 << 4)).to_be_bytes();
    let records: Vec<Record> = (0..newest_first.len() as u32)
        .rev()
        .map(|k| {
            let cv = newest_first[k as usize];
            Record {
                index: k,
                timestamp: timestamp(requested_at, k),
                raw: raw(cv),
                value: decode_record(Protocol::Indexed, raw(cv)),
            }
        })
        .collect();
    History {
        model: "BM6",
        requested_at,
        records,
        log_end: true,
        shifts: 0,
        pages: Vec::new(),
    }
}

/// An open stream link to `A` at `t0`.
fn open(c: Arc<Config>, t0: Instant) -> Scheduler {
    let mut s = started(c, t0);
    s.heard(heard(A), t0);
    let opened = s
        .take_actions()
        .iter()
        .any(|a| matches!(a, Action::OpenStream { .. }));
    assert!(opened, "the stream link opens");
    s
}

#[test]
fn a_streamed_bm6_downloads_its_log_after_the_first_frame_then_every_half_hour() {
    let t0 = Instant::now();
    let mut s = open(stream_config("BM6", ""), t0);
    let t1 = t0 + Duration::from_secs(1);
    s.stream_frame(frame(), t1);
    let first = s.take_actions();
    assert_eq!(
        asks(&first),
        vec![HistoryAsk {
            last: None,
            initial_days: 7
        }],
        "the first frame of the link asks for the log"
    );
    // More frames while the download runs: no second request on the same link.
    s.stream_frame(frame(), t1 + Duration::from_secs(1));
    assert!(asks(&s.take_actions()).is_empty());
    let at = chrono::Utc::now();
    s.stream_history(
        mac(A),
        &read(at, &[1270, 1260, 1250]),
        t1 + Duration::from_secs(3),
    );
    assert_eq!(published(&s.take_actions()), vec![3]);
    // A minute on: not due (HISTORY_GAP); live frames go on being handed over.
    s.stream_frame(frame(), t1 + Duration::from_secs(60));
    let later = s.take_actions();
    assert!(asks(&later).is_empty());
    assert!(
        later
            .iter()
            .any(|a| matches!(a, Action::Emit(BleEvent::Frame(_))))
    );
    // Past HISTORY_GAP: asked again, from where the last read ended.
    s.stream_frame(frame(), t1 + Duration::from_secs(3) + HISTORY_GAP);
    let again = asks(&s.take_actions());
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].last.as_ref().map(|l| l.at), Some(at));
}

#[test]
fn a_download_cut_by_the_link_still_counts_and_the_next_one_publishes_only_new_records() {
    let t0 = Instant::now();
    let mut s = open(stream_config("BM6", ""), t0);
    s.stream_frame(frame(), t0 + Duration::from_secs(1));
    assert_eq!(asks(&s.take_actions()).len(), 1);
    // The link drops mid-read; what was read is reported afterwards and published.
    let lost = t0 + Duration::from_secs(2);
    s.stream_ended(mac(A), LinkError::Failed("lost".into()), lost);
    s.take_actions();
    let at = chrono::Utc::now();
    s.stream_history(mac(A), &read(at, &[1270, 1260, 1250]), lost);
    assert_eq!(published(&s.take_actions()), vec![3]);
    // Reopened (after the 1 s pause): that read was a sync, so the next one waits for HISTORY_GAP.
    let back = lost + Duration::from_secs(2);
    s.heard(heard(A), back);
    s.tick(back);
    s.take_actions();
    s.stream_frame(frame(), back);
    assert!(asks(&s.take_actions()).is_empty());
    // HISTORY_GAP on (the clock of the read 4 minutes on): only the two newer records are published.
    let due = lost + HISTORY_GAP;
    s.stream_frame(frame(), due);
    assert_eq!(asks(&s.take_actions()).len(), 1);
    let next = read(
        at + chrono::Duration::seconds(240),
        &[1290, 1280, 1270, 1260, 1250],
    );
    s.stream_history(mac(A), &next, due + Duration::from_secs(1));
    assert_eq!(published(&s.take_actions()), vec![2]);
}

#[test]
fn models_and_switches_the_history_section_does_not_cover_are_never_asked() {
    let t0 = Instant::now();
    for (model, extra) in [
        ("BM2", ""),
        ("BM7", ""),
        ("BM6", "[history]\nenabled = false\n"),
    ] {
        let mut s = open(stream_config(model, extra), t0);
        for k in 1..5 {
            s.stream_frame(frame(), t0 + Duration::from_secs(k));
        }
        assert!(asks(&s.take_actions()).is_empty(), "{model} {extra}");
    }
    let mut s = open(stream_config("BM2", "[history]\nmodels = [\"BM2\"]\n"), t0);
    s.stream_frame(frame(), t0 + Duration::from_secs(1));
    assert_eq!(asks(&s.take_actions()).len(), 1, "BM2 once listed");
}

#[test]
fn a_polled_bm6_downloads_its_log_with_the_reading_and_publishes_only_what_is_new() {
    let t0 = Instant::now();
    let c = config(&format!(
        "[discovery]\ninitial_scan = false\n[[device]]\nmac = \"{A}\"\ntype = \"BM6\"\npoll_interval = 60\n"
    ));
    let mut s = started(c, t0);
    s.heard(heard(A), t0);
    let poll_asks = |a: &[Action]| -> Vec<Option<HistoryAsk>> {
        a.iter()
            .filter_map(|x| match x {
                Action::Poll { history, .. } => Some(history.clone()),
                _ => None,
            })
            .collect()
    };
    let first = poll_asks(&s.take_actions());
    assert_eq!(
        first,
        vec![Some(HistoryAsk {
            last: None,
            initial_days: 7
        })]
    );
    // A read of 3 records, newest first as logged: 12.70, 12.60, 12.50 V.
    let requested_at = chrono::Utc::now();
    let read = read(requested_at, &[1270, 1260, 1250]);
    let mut outcome = ok(A);
    outcome.history = Some(read);
    s.poll_done(mac(A), outcome, t0 + Duration::from_secs(5));
    let published: Vec<usize> = s
        .take_actions()
        .iter()
        .filter_map(|x| match x {
            Action::Emit(BleEvent::Notice(Notice::History { out, synced })) => {
                assert!(synced.is_some(), "the registry learns where the read ended");
                Some(out.records.len())
            }
            _ => None,
        })
        .collect();
    assert_eq!(published, vec![3]);
    // The next poll, a minute later: no new download yet (HISTORY_GAP is 5 minutes).
    s.heard(heard(A), t0 + Duration::from_secs(65));
    s.tick(t0 + Duration::from_secs(65));
    assert_eq!(poll_asks(&s.take_actions()), vec![None]);
    s.poll_done(mac(A), ok(A), t0 + Duration::from_secs(66));
    s.take_actions();
    // Past HISTORY_GAP: due again.
    let later = t0 + Duration::from_secs(5) + HISTORY_GAP + Duration::from_secs(60);
    s.heard(heard(A), later);
    s.tick(later);
    let ask = poll_asks(&s.take_actions())
        .pop()
        .flatten()
        .expect("a download is due");
    assert_eq!(
        ask.last.map(|l| l.at),
        Some(requested_at),
        "asked from where the last one ended"
    );
}
