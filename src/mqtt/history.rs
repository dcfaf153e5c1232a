//! JSON of downloaded history (SPEC §5.7): the record shape shared by the `P/device/{mac}/history` payload
//! and `battery-hawk history --json`, and the full report that command prints (records plus every page
//! and raw block, so the open questions of HISTORY-NOTES §5.7.8 can be answered from one run).

use super::payload::timestamp;
use crate::devices::history::{History, PageLog, Record};
use crate::devices::to_hex;
use crate::fleet::summary::round2;
use crate::mac::Mac;
use serde_json::{Value, json};
use std::time::Duration;

fn num(v: Option<f64>) -> Value {
    v.filter(|v| v.is_finite())
        .map(round2)
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// One record as published: `{timestamp, voltage, state_of_charge, temperature, flags}`; `None` for a
/// slot that is not a reading (zero or out of range).
pub fn record(r: &Record) -> Option<Value> {
    let s = r.value.ok()?;
    Some(json!({
        "timestamp": timestamp(r.timestamp),
        "voltage": num(Some(s.voltage)),
        "state_of_charge": num(s.state_of_charge),
        "temperature": num(s.temperature),
        "flags": s.flags,
    }))
}

/// Every slot for the report: the published fields (null when skipped) plus `index`, `raw_data` and
/// `skipped` (why the slot is not a reading, or null).
fn slot(r: &Record) -> Value {
    let mut v = record(r).unwrap_or_else(|| {
        json!({
            "timestamp": timestamp(r.timestamp),
            "voltage": null,
            "state_of_charge": null,
            "temperature": null,
            "flags": null,
        })
    });
    v["index"] = json!(r.index);
    v["raw_data"] = json!(to_hex(&r.raw));
    v["skipped"] = r.value.err().map_or(Value::Null, |s| json!(s.to_string()));
    v
}

fn page(p: &PageLog) -> Value {
    json!({
        "request": to_hex(&p.request),
        "attempt": p.attempt,
        "sent_ms": p.sent_ms,
        "ack_count": p.ack,
        "count_block": p.count_block.map(|b| to_hex(&b)),
        "terminator_length": p.terminator,
        "terminator_records": p.terminator.and_then(crate::devices::history::records_in),
        "notification_sizes": p.notification_sizes,
        "live_frames": p.live_frames,
        "error": p.error,
        "blocks": p.blocks.iter().map(|b| json!({
            "notification": b.notification,
            "plain": to_hex(&b.plain),
        })).collect::<Vec<_>>(),
    })
}

/// What the link saw besides the records.
#[derive(Debug, Clone, Default)]
pub struct LinkFacts {
    /// ATT MTU BlueZ reported for `fff4`.
    pub mtu: Option<u16>,
    /// From the first history write to the end of the read.
    pub read_time: Duration,
    /// From the connection attempt to the disconnect.
    pub link_held: Duration,
    /// Why the read stopped early, if it did.
    pub failure: Option<String>,
}

/// The `history --json` document: records oldest first, then the pages with their raw blocks.
pub fn report(mac: Mac, h: &History, link: &LinkFacts) -> String {
    let readings = h.records.iter().filter(|r| r.value.is_ok()).count();
    let secs = link.read_time.as_secs_f64();
    let doc = json!({
        "device_id": mac.to_string(),
        "model": h.model,
        "requested_at": timestamp(h.requested_at),
        "from": h.records.first().map(|r| timestamp(r.timestamp)),
        "to": h.records.last().map(|r| timestamp(r.timestamp)),
        "slots": h.records.len(),
        "readings": readings,
        "log_end": h.log_end,
        "seam_shifts": h.shifts,
        "complete": link.failure.is_none(),
        "failure": link.failure,
        "mtu": link.mtu,
        "read_seconds": num(Some(secs)),
        "link_held_seconds": num(Some(link.link_held.as_secs_f64())),
        "records_per_second": num((secs > 0.0).then(|| h.records.len() as f64 / secs)),
        "records": h.records.iter().map(slot).collect::<Vec<_>>(),
        "pages": h.pages.iter().map(page).collect::<Vec<_>>(),
    });
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::history::{Sample, Skip};
    use chrono::{TimeZone, Utc};

    fn history() -> History {
        let t = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
        let rec = |index, raw, value| Record {
            index,
            timestamp: crate::devices::history::timestamp(t, index),
            raw,
            value,
        };
        History {
            model: "BM6",
            requested_at: t,
            records: vec![
                rec(1, [0; 4], Err(Skip::Zero)),
                rec(
                    0,
                    [0x52, 0xe6, 0x41, 0x80],
                    Ok(Sample {
                        voltage: 13.26,
                        state_of_charge: Some(100.0),
                        temperature: Some(24.0),
                        flags: 0,
                    }),
                ),
            ],
            log_end: true,
            shifts: 0,
            pages: vec![],
        }
    }

    #[test]
    fn report_lists_every_slot_oldest_first() {
        let mac: Mac = "38:3B:26:B5:30:AB".parse().unwrap();
        let link = LinkFacts {
            mtu: Some(247),
            read_time: Duration::from_millis(500),
            link_held: Duration::from_millis(900),
            failure: None,
        };
        let v: Value = serde_json::from_str(&report(mac, &history(), &link)).unwrap();
        assert_eq!(v["from"], "2026-11-29T11:58:00.000Z");
        assert_eq!(v["to"], "2026-11-29T12:00:00.000Z");
        assert_eq!(v["readings"], 1);
        assert_eq!(v["records_per_second"], 4.0);
        assert_eq!(v["records"][0]["skipped"], "zero record");
        assert_eq!(v["records"][0]["voltage"], Value::Null);
        assert_eq!(v["records"][1]["voltage"], 13.26);
        assert_eq!(v["records"][1]["raw_data"], "52e64180");
        assert_eq!(v["records"][1]["index"], 0);
    }

    #[test]
    fn history_message_topic_and_body() {
        use crate::messages::{HistoryOut, Outbound};
        use crate::mqtt::payload::{Kind, LocalStatus, Renderer};
        let mac: Mac = "38:3B:26:B5:30:AB".parse().unwrap();
        let renderer = Renderer::new("home/battery_hawk", "garage", 1);
        let out = Outbound::History(HistoryOut {
            mac,
            records: history().records,
        });
        let m = renderer.render(&out, LocalStatus::default);
        assert_eq!(
            m.topic,
            "home/battery_hawk/device/38:3B:26:B5:30:AB/history"
        );
        assert_eq!((m.qos, m.retain, m.kind), (1, false, Kind::Reading));
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            v,
            json!({"device_id": "38:3B:26:B5:30:AB", "gateway_id": "garage",
                   "from": "2026-11-29T12:00:00.000Z", "to": "2026-11-29T12:00:00.000Z",
                   "records": [{"timestamp": "2026-11-29T12:00:00.000Z", "voltage": 13.26,
                                "state_of_charge": 100.0, "temperature": 24.0, "flags": 0}]})
        );
        let empty = Outbound::History(HistoryOut {
            mac,
            records: vec![],
        });
        let v: Value =
            serde_json::from_slice(&renderer.render(&empty, LocalStatus::default).payload).unwrap();
        assert_eq!(
            (v["from"].clone(), v["records"].clone()),
            (Value::Null, json!([]))
        );
    }

    #[test]
    fn published_record_shape() {
        let h = history();
        assert_eq!(record(&h.records[0]), None);
        assert_eq!(
            record(&h.records[1]).unwrap(),
            json!({"timestamp": "2026-11-29T12:00:00.000Z", "voltage": 13.26,
                   "state_of_charge": 100.0, "temperature": 24.0, "flags": 0})
        );
    }
}
