//! What the other gateways of a cluster publish, read back (SPEC §6): availability, `hears` reports,
//! owner announcements and device statuses, parsed into plain data for the BLE stage's ownership rule
//! and the fleet's summaries. Must never: trust a malformed message (it is named and ignored), or render
//! anything (`payload.rs` does).

use super::topics::{ClusterTopic, Topics};
use crate::mac::Mac;
use crate::messages::{ClusterFact, RemoteStatus};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// What a message on a cluster subscription says: `None` for another topic, an error naming what is
/// wrong for a malformed payload.
pub fn parse(topics: &Topics, topic: &str, payload: &[u8]) -> Option<Result<Incoming, String>> {
    match topics.parse_cluster(topic)? {
        ClusterTopic::Status(mac) => Some(parse_status(mac, payload).map(Incoming::Status)),
        which => Some(parse_cluster_fact(which, payload).map(Incoming::Fact)),
    }
}

/// A message read on a cluster subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// For the BLE stage's ownership rule.
    Fact(ClusterFact),
    /// For the fleet's vehicle summaries.
    Status(RemoteStatus),
}

/// A device status (SPEC §2.2) as far as a summary needs it: `connected`, the latest reading's voltage,
/// SoC, temperature and timestamp. An empty payload is a cleared status.
fn parse_status(mac: Mac, payload: &[u8]) -> Result<RemoteStatus, String> {
    if payload.is_empty() {
        return Ok(RemoteStatus {
            mac,
            cleared: true,
            ..RemoteStatus::default()
        });
    }
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let connected = v
        .get("connected")
        .and_then(Value::as_bool)
        .ok_or("no boolean `connected`")?;
    let reading = v.get("reading").filter(|r| r.is_object());
    let field = |k: &str| reading.and_then(|r| r.get(k)).and_then(Value::as_f64);
    let last_reading = reading
        .and_then(|r| r.get("timestamp"))
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(RemoteStatus {
        mac,
        cleared: false,
        connected,
        voltage: field("voltage"),
        state_of_charge: field("state_of_charge"),
        temperature: field("temperature"),
        last_reading,
    })
}

/// A cluster fact from its topic and payload: availability `online`/`offline`; a `hears` report (its
/// `monitors` object, RSSI -127..=20 dBm; an empty payload: no report); an owner announcement (its
/// `gateway_id`; an empty payload: nobody).
fn parse_cluster_fact(which: ClusterTopic, payload: &[u8]) -> Result<ClusterFact, String> {
    match which {
        ClusterTopic::Availability(gateway) => match payload {
            b"online" => Ok(ClusterFact::Availability {
                gateway,
                online: true,
            }),
            b"offline" | b"" => Ok(ClusterFact::Availability {
                gateway,
                online: false,
            }),
            _ => Err("availability is neither `online` nor `offline`".into()),
        },
        ClusterTopic::Hears(gateway) => {
            if payload.is_empty() {
                return Ok(ClusterFact::Hears {
                    gateway,
                    monitors: Vec::new(),
                });
            }
            let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
            let Some(monitors) = v.get("monitors").and_then(Value::as_object) else {
                return Err("no `monitors` object".into());
            };
            let mut heard = Vec::with_capacity(monitors.len());
            for (mac, m) in monitors {
                let mac = mac
                    .parse()
                    .map_err(|_| format!("`{}` is not a MAC address", mac.escape_debug()))?;
                let rssi = m
                    .get("rssi")
                    .and_then(Value::as_i64)
                    .filter(|r| (-127..=20).contains(r))
                    .ok_or_else(|| format!("{mac}: no rssi in -127..=20"))?;
                heard.push((mac, rssi as i16));
            }
            Ok(ClusterFact::Hears {
                gateway,
                monitors: heard,
            })
        }
        ClusterTopic::Status(mac) => Err(format!("{mac}: a status is no cluster fact")),
        ClusterTopic::Owner(mac) => {
            if payload.is_empty() {
                return Ok(ClusterFact::Owner { mac, gateway: None });
            }
            let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
            let gateway = v
                .get("gateway_id")
                .and_then(Value::as_str)
                .filter(|g| crate::config::validate_gateway_id(g).is_ok())
                .ok_or("no valid `gateway_id`")?;
            Ok(ClusterFact::Owner {
                mac,
                gateway: Some(gateway.to_string()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_messages_are_parsed_and_bad_ones_named() {
        let topics = Topics::cluster("p", "g1");
        let mac: Mac = "AA:BB:CC:DD:EE:FF".parse().unwrap();
        let parsed = |t: &str, p: &[u8]| parse(&topics, t, p).unwrap();
        assert_eq!(
            parsed("p/gateway/g2/availability", b"online"),
            Ok(Incoming::Fact(ClusterFact::Availability {
                gateway: "g2".into(),
                online: true
            }))
        );
        let hears =
            br#"{"timestamp":"x","monitors":{"AA:BB:CC:DD:EE:FF":{"rssi":-71,"seen":"y"}}}"#;
        assert_eq!(
            parsed("p/gateway/g2/hears", hears),
            Ok(Incoming::Fact(ClusterFact::Hears {
                gateway: "g2".into(),
                monitors: vec![(mac, -71)]
            }))
        );
        assert_eq!(
            parsed(
                "p/device/AA:BB:CC:DD:EE:FF/owner",
                br#"{"gateway_id":"g2","rssi":-60}"#
            ),
            Ok(Incoming::Fact(ClusterFact::Owner {
                mac,
                gateway: Some("g2".into())
            }))
        );
        assert_eq!(
            parsed("p/device/AA:BB:CC:DD:EE:FF/owner", b""),
            Ok(Incoming::Fact(ClusterFact::Owner { mac, gateway: None }))
        );
        let status = br#"{"connected":true,"reading":{"timestamp":"2026-11-30T01:00:00.000Z","voltage":12.61,"state_of_charge":88,"temperature":null}}"#;
        let Ok(Incoming::Status(s)) = parsed("p/device/AA:BB:CC:DD:EE:FF/status", status) else {
            panic!()
        };
        assert!(s.connected && !s.cleared);
        assert_eq!(
            (s.voltage, s.state_of_charge, s.temperature),
            (Some(12.61), Some(88.0), None)
        );
        assert!(s.last_reading.is_some());
        for (topic, bad, why) in [
            ("p/gateway/g2/availability", &b"maybe"[..], "neither"),
            ("p/gateway/g2/hears", b"{", "not JSON"),
            (
                "p/gateway/g2/hears",
                br#"{"monitors":{"nonsense":{"rssi":-1}}}"#,
                "not a MAC",
            ),
            (
                "p/gateway/g2/hears",
                br#"{"monitors":{"AA:BB:CC:DD:EE:FF":{"rssi":500}}}"#,
                "rssi",
            ),
            (
                "p/device/AA:BB:CC:DD:EE:FF/owner",
                br#"{"gateway_id":"a/b"}"#,
                "gateway_id",
            ),
            (
                "p/device/AA:BB:CC:DD:EE:FF/status",
                br#"{"reading":null}"#,
                "connected",
            ),
        ] {
            let e = parsed(topic, bad).unwrap_err();
            assert!(e.contains(why), "{topic}: {e}");
        }
        assert!(parse(&topics, "p/device/AA:BB:CC:DD:EE:FF/reading", b"{}").is_none());
    }
}
