//! Every payload the gateway publishes (SPEC §2), built in this one place, with its topic, QoS and retain
//! flag (SPEC §1). Pure functions: what goes in is plain data, what comes out is a [`Message`].

use super::topics::Topics;
use crate::devices::{Measurement, Model, Source, to_hex};
use crate::fleet::summary::round2;
use crate::mac::Mac;
use crate::messages::{
    AssociationOut, DeviceStatusOut, HearsOut, HistoryOut, LatestReading, Outbound, OwnerOut,
    ReadingOut, Removed, Sighting, SummaryOut, SystemSnapshot,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value, json};

/// `last_command` of a device status for devices the gateway connects to (`protocol_version` is `null`:
/// the Leagend frames carry no version we could report).
const LAST_COMMAND: &str = "read_data";

/// One MQTT publication.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub kind: Kind,
}

/// How the outbox treats a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A reading: kept in order; the first to go when the outbox is full.
    Reading,
    /// Retained state: only the newest per topic matters.
    State,
    /// Any other event (association, discovery, shutdown): kept in order.
    Event,
}

/// What the MQTT stage knows that the fleet does not (SPEC §2.5 `storage` and `components.mqtt`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalStatus {
    pub uptime_seconds: u64,
    pub outbox_queued: usize,
    pub outbox_spooled: usize,
    pub dropped_messages: u64,
    pub disk_usage_percent: Option<f64>,
    pub mqtt_connected: bool,
}

/// Bytes of rendering buffer a thread keeps between messages (a larger one, for a long history batch
/// or a large summary, is given back).
const SCRATCH_KEPT: usize = 4096;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Renders messages for one gateway.
#[derive(Debug, Clone)]
pub struct Renderer {
    pub topics: Topics,
    gateway_id: String,
    qos: u8,
}

/// RFC 3339 UTC with milliseconds and `Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    Stamp(t).to_string()
}

/// A time as [`timestamp`] writes it (`2026-11-30T04:23:55.123Z`), written straight into a payload
/// (`collect_str`) rather than through a `String`: the payloads sent for every reading carry up to four.
struct Stamp(DateTime<Utc>);

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use chrono::{Datelike, Timelike};
        let t = self.0;
        let year = t.year();
        if !(0..=9999).contains(&year) {
            // Outside four digits RFC 3339 needs chrono's sign and width rules; never seen in practice.
            return f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let digits = |out: &mut [u8], mut v: u32| {
            for b in out.iter_mut().rev() {
                *b = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        let mut out = *b"0000-00-00T00:00:00.000Z";
        digits(&mut out[0..4], year.unsigned_abs());
        digits(&mut out[5..7], t.month());
        digits(&mut out[8..10], t.day());
        digits(&mut out[11..13], t.hour());
        digits(&mut out[14..16], t.minute());
        // A leap second is carried in the nanoseconds (≥ 1 s) and shown as second 60, as chrono does.
        let nanos = t.nanosecond();
        digits(&mut out[17..19], t.second() + nanos / 1_000_000_000);
        digits(&mut out[20..23], (nanos % 1_000_000_000) / 1_000_000);
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Bytes as lower-case hex (`extra.raw_data`), written straight into a payload like [`Stamp`].
struct Hex<'a>(&'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 128];
        for chunk in self.0.chunks(out.len() / 2) {
            for (i, b) in chunk.iter().enumerate() {
                out[2 * i] = HEX[usize::from(b >> 4)];
                out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
            }
            f.write_str(
                std::str::from_utf8(&out[..2 * chunk.len()]).map_err(|_| std::fmt::Error)?,
            )?;
        }
        Ok(())
    }
}

impl Serialize for Hex<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn time_or_null(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(timestamp(t)))
}

/// A float rounded to 2 decimals; `None` for none, NaN or infinity (published as `null`).
fn rounded(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite()).map(round2)
}

/// [`rounded`] as a JSON value.
fn num(v: Option<f64>) -> Value {
    rounded(v)
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn model_or_null(m: Option<Model>) -> Value {
    m.map_or(Value::Null, |m| Value::String(m.name().to_string()))
}

/// SPEC §2.1, in the spec's key order. The two payloads sent for every reading are typed structs rather
/// than `json!` values: that halves the MQTT thread's cost per reading.
#[derive(Serialize)]
struct ReadingBody<'a> {
    device_id: Mac,
    timestamp: Stamp,
    voltage: Option<f64>,
    current: (),
    temperature: Option<f64>,
    state_of_charge: Option<f64>,
    capacity: Option<f64>,
    cycles: (),
    power: (),
    vehicle_id: Option<&'a str>,
    device_type: &'a str,
    gateway_id: &'a str,
    extra: ReadingExtra<'a>,
}

/// `extra` of a reading: the state, the model's counters by name, then rssi, source and — in a
/// reading, not in a status's copy of it (SPEC §2.2) — raw_data.
struct ReadingExtra<'a> {
    measurement: &'a Measurement,
    rssi: Option<i16>,
    source: Source,
    plain: Option<&'a [u8]>,
}

impl Serialize for ReadingExtra<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.measurement;
        let mut map = s.serialize_map(Some(m.counters.len() + 4))?;
        map.serialize_entry("state", &m.state)?;
        for (name, value) in &m.counters {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("rssi", &self.rssi)?;
        map.serialize_entry("source", self.source.as_str())?;
        if let Some(plain) = self.plain {
            map.serialize_entry("raw_data", &Hex(plain))?;
        }
        map.end()
    }
}

/// SPEC §2.2 `reading`: the §2.1 object without `device_id`, `gateway_id`, `vehicle_id` and
/// `extra.raw_data`.
#[derive(Serialize)]
struct StatusReading<'a> {
    timestamp: Stamp,
    voltage: Option<f64>,
    current: (),
    temperature: Option<f64>,
    state_of_charge: Option<f64>,
    capacity: Option<f64>,
    cycles: (),
    power: (),
    device_type: &'a str,
    extra: ReadingExtra<'a>,
}

impl<'a> StatusReading<'a> {
    fn new(r: &'a LatestReading) -> StatusReading<'a> {
        let m = &r.measurement;
        StatusReading {
            timestamp: Stamp(r.received_at),
            voltage: rounded(m.voltage),
            current: (),
            temperature: rounded(m.temperature),
            state_of_charge: rounded(m.state_of_charge),
            capacity: rounded(r.capacity_ah),
            cycles: (),
            power: (),
            device_type: r.model.name(),
            extra: ReadingExtra {
                measurement: m,
                rssi: r.rssi,
                source: r.source,
                plain: None,
            },
        }
    }
}

/// SPEC §2.2, in the spec's key order.
#[derive(Serialize)]
struct StatusBody<'a> {
    device_id: Mac,
    timestamp: Stamp,
    connected: bool,
    device_type: Option<&'a str>,
    vehicle_id: Option<&'a str>,
    protocol_version: (),
    last_command: Option<&'a str>,
    error_code: Option<u16>,
    error_message: Option<&'a str>,
    last_reading_at: Option<Stamp>,
    extra: StatusExtra<'a>,
    reading: Option<StatusReading<'a>>,
}

#[derive(Serialize)]
struct StatusExtra<'a> {
    signal_strength: Option<i16>,
    consecutive_failures: u32,
    mode: &'a str,
}

impl Renderer {
    pub fn new(prefix: &str, gateway_id: &str, qos: u8) -> Renderer {
        Renderer {
            topics: Topics::new(prefix),
            gateway_id: gateway_id.to_string(),
            qos,
        }
    }

    /// The renderer for `config`: a cluster's system topics are per gateway (SPEC §6).
    pub fn for_config(config: &crate::config::Config) -> Renderer {
        let (prefix, id) = (&config.mqtt.topic_prefix, &config.gateway.id);
        Renderer {
            topics: if config.cluster.enabled {
                Topics::cluster(prefix, id)
            } else {
                Topics::new(prefix)
            },
            gateway_id: id.clone(),
            qos: config.mqtt.qos,
        }
    }

    /// The message for `out`; `System` needs the MQTT stage's own figures, asked for only then.
    pub fn render(&self, out: &Outbound, local: impl FnOnce() -> LocalStatus) -> Message {
        match out {
            Outbound::Reading(r) => self.reading(r),
            Outbound::DeviceStatus(s) => self.device_status(s),
            Outbound::Summary(s) => self.summary(s),
            Outbound::Associated(a) => self.associated(a),
            Outbound::Discovered(s) => self.discovered(s),
            Outbound::System(s) => self.system_status(s, &local()),
            Outbound::Removed(r) => self.removed(r),
            Outbound::History(h) => self.history(h),
            Outbound::Hears(h) => self.hears(h),
            Outbound::Owner(o) => self.owner(o),
            Outbound::Shutdown { reason } => self.shutdown(reason, Utc::now()),
        }
    }

    fn message(&self, topic: String, body: &impl Serialize, qos: u8, kind: Kind) -> Message {
        // Rendered into a buffer kept by the thread, then copied once into a payload of its exact size:
        // no regrowth while rendering (a device status is ~700 bytes), and the outbox holds no slack.
        let payload = SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            if let Err(e) = serde_json::to_writer(&mut *scratch, body) {
                log::error!("{topic}: cannot render the payload: {e}");
                scratch.clear();
            }
            let payload = scratch.as_slice().to_vec();
            scratch.shrink_to(SCRATCH_KEPT);
            payload
        });
        Message {
            topic,
            payload,
            qos,
            retain: kind == Kind::State,
            kind,
        }
    }

    pub fn reading(&self, r: &ReadingOut) -> Message {
        let d = &r.reading;
        let m = &d.measurement;
        let body = ReadingBody {
            device_id: d.mac,
            timestamp: Stamp(d.received_at),
            voltage: rounded(m.voltage),
            current: (),
            temperature: rounded(m.temperature),
            state_of_charge: rounded(m.state_of_charge),
            capacity: rounded(r.capacity_ah),
            cycles: (),
            power: (),
            vehicle_id: r.vehicle_id.as_deref(),
            device_type: d.model.name(),
            gateway_id: &self.gateway_id,
            extra: ReadingExtra {
                measurement: m,
                rssi: d.rssi,
                source: d.source,
                plain: Some(&d.plain),
            },
        };
        self.message(self.topics.reading(d.mac), &body, self.qos, Kind::Reading)
    }

    pub fn device_status(&self, s: &DeviceStatusOut) -> Message {
        let body = StatusBody {
            device_id: s.mac,
            timestamp: Stamp(s.at),
            connected: s.reachable,
            device_type: s.model.map(|m| m.name()),
            vehicle_id: s.vehicle_id.as_deref(),
            protocol_version: (),
            last_command: (s.mode != crate::config::Mode::Passive).then_some(LAST_COMMAND),
            error_code: s.error.as_ref().map(|e| e.0),
            error_message: s.error.as_ref().map(|e| e.1.as_str()),
            last_reading_at: s.last_reading_at.map(Stamp),
            extra: StatusExtra {
                signal_strength: s.rssi,
                consecutive_failures: s.consecutive_failures,
                mode: s.mode.as_str(),
            },
            reading: s.reading.as_ref().map(StatusReading::new),
        };
        self.message(self.topics.status(s.mac), &body, self.qos, Kind::State)
    }

    pub fn summary(&self, s: &SummaryOut) -> Message {
        let devices: Vec<Value> = s
            .devices
            .iter()
            .map(|d| {
                json!({
                    "id": d.mac.to_string(),
                    "name": d.name,
                    "device_type": model_or_null(d.model),
                    "status": if d.connected { "connected" } else { "disconnected" },
                    "voltage": num(d.voltage),
                    "state_of_charge": num(d.state_of_charge),
                    "temperature": num(d.temperature),
                    "last_reading": time_or_null(d.last_reading),
                })
            })
            .collect();
        let body = json!({
            "vehicle_id": s.vehicle_id,
            "name": s.name,
            "timestamp": timestamp(s.at),
            "total_devices": s.total_devices,
            "connected_devices": s.connected_devices,
            "average_voltage": num(s.average_voltage),
            "total_capacity": num(Some(s.total_capacity)),
            "overall_health": s.overall_health,
            "health_score": num(s.health_score),
            "devices": devices,
        });
        self.message(
            self.topics.summary(&s.vehicle_id),
            &body,
            self.qos,
            Kind::State,
        )
    }

    pub fn associated(&self, a: &AssociationOut) -> Message {
        let body = json!({
            "device_id": a.mac.to_string(),
            "vehicle_id": a.vehicle_id,
            "device_type": model_or_null(a.model),
            "new_vehicle": a.new_vehicle,
            "timestamp": timestamp(a.at),
        });
        self.message(
            self.topics.associated(&a.vehicle_id),
            &body,
            self.qos,
            Kind::Event,
        )
    }

    pub fn discovered(&self, s: &Sighting) -> Message {
        let manufacturer: Map<String, Value> = s
            .manufacturer_data
            .iter()
            .map(|(id, bytes)| (id.to_string(), Value::String(to_hex(bytes))))
            .collect();
        let body = json!({
            "device_id": s.mac.to_string(),
            "name": s.name.clone().or_else(|| s.model.map(|m| m.name().to_string())),
            "device_type": model_or_null(s.model),
            "rssi": s.rssi,
            "timestamp": timestamp(s.at),
            "advertisement": {
                "service_uuids": s.service_uuids,
                "manufacturer_data": manufacturer,
            },
        });
        self.message(self.topics.discovery(), &body, self.qos, Kind::Event)
    }

    pub fn system_status(&self, s: &SystemSnapshot, local: &LocalStatus) -> Message {
        let body = json!({
            "timestamp": timestamp(s.at),
            "gateway_id": self.gateway_id,
            "core": {
                "running": s.running,
                "uptime_seconds": local.uptime_seconds,
                "version": env!("CARGO_PKG_VERSION"),
            },
            "storage": {
                "outbox_queued": local.outbox_queued,
                "outbox_spooled": local.outbox_spooled,
                "dropped_messages": local.dropped_messages,
                "disk_usage_percent": num(local.disk_usage_percent),
            },
            "components": {
                "mqtt": if local.mqtt_connected { "connected" } else { "disconnected" },
                "bluetooth": s.bluetooth.as_str(),
            },
            "devices": { "total": s.devices_total, "connected": s.devices_connected },
            "counters": {
                "readings": s.readings,
                "decode_errors": s.decode_errors,
                "connection_failures": s.connection_failures,
            },
        });
        self.message(self.topics.system_status(), &body, 2, Kind::State)
    }

    /// An empty retained message clears the retained state of what left the configuration.
    pub fn removed(&self, r: &Removed) -> Message {
        let topic = match r {
            Removed::Device(mac) => self.topics.status(*mac),
            Removed::Vehicle(id) => self.topics.summary(id),
        };
        Message {
            topic,
            payload: Vec::new(),
            qos: self.qos,
            retain: true,
            kind: Kind::State,
        }
    }

    /// `P/device/{mac}/history` (SPEC §5.7): `{device_id, gateway_id, from, to, records}`, records
    /// oldest first, only the slots that are readings; QoS `mqtt.qos`, not retained, kept like readings.
    pub fn history(&self, h: &HistoryOut) -> Message {
        let records: Vec<Value> = h
            .records
            .iter()
            .filter_map(super::history::record)
            .collect();
        let readings = || h.records.iter().filter(|r| r.value.is_ok());
        let body = json!({
            "device_id": h.mac.to_string(),
            "gateway_id": self.gateway_id,
            "from": time_or_null(readings().next().map(|r| r.timestamp)),
            "to": time_or_null(readings().next_back().map(|r| r.timestamp)),
            "records": records,
        });
        self.message(self.topics.history(h.mac), &body, self.qos, Kind::Reading)
    }

    /// `P/gateway/{gid}/hears` (SPEC §6): `{"timestamp", "monitors": {"AA:…": {"rssi", "seen"}}}`, QoS 1,
    /// retained.
    pub fn hears(&self, h: &HearsOut) -> Message {
        let monitors: Map<String, Value> = h
            .monitors
            .iter()
            .map(|m| {
                (
                    m.mac.to_string(),
                    json!({"rssi": m.rssi, "seen": timestamp(m.seen)}),
                )
            })
            .collect();
        let body = json!({"timestamp": timestamp(h.at), "monitors": monitors});
        self.message(self.topics.hears(), &body, 1, Kind::State)
    }

    /// `P/device/{mac}/owner` (SPEC §6): `{"gateway_id","rssi","since"}`, QoS 1, retained; a release
    /// clears it (empty retained payload).
    pub fn owner(&self, o: &OwnerOut) -> Message {
        let topic = self.topics.owner(o.mac);
        match &o.claim {
            Some(c) => {
                let body = json!({
                    "gateway_id": self.gateway_id,
                    "rssi": c.rssi,
                    "since": timestamp(c.since),
                });
                self.message(topic, &body, 1, Kind::State)
            }
            None => Message {
                topic,
                payload: Vec::new(),
                qos: 1,
                retain: true,
                kind: Kind::State,
            },
        }
    }

    pub fn shutdown(&self, reason: &str, at: DateTime<Utc>) -> Message {
        let body = json!({
            "timestamp": timestamp(at),
            "gateway_id": self.gateway_id,
            "reason": reason,
        });
        self.message(self.topics.shutdown(), &body, 2, Kind::Event)
    }

    /// The `scan --json` listing: each monitor with what its advertisement carries.
    pub fn scan_listing(
        &self,
        found: &[(Sighting, Option<crate::devices::Measurement>)],
    ) -> String {
        let list: Vec<Value> = found
            .iter()
            .map(|(s, m)| {
                json!({
                    "address": s.mac.to_string(),
                    "model": model_or_null(s.model),
                    "confirmed": s.confirmed,
                    "name": s.name,
                    "rssi": s.rssi,
                    "voltage": num(m.as_ref().and_then(|m| m.voltage)),
                    "state_of_charge": num(m.as_ref().and_then(|m| m.state_of_charge)),
                })
            })
            .collect();
        Value::Array(list).to_string()
    }

    /// `online` / `offline` on the availability topic (also the last will).
    pub fn availability(&self, online: bool) -> Message {
        Message {
            topic: self.topics.availability(),
            payload: if online {
                b"online".to_vec()
            } else {
                b"offline".to_vec()
            },
            qos: 1,
            retain: true,
            kind: Kind::State,
        }
    }
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
