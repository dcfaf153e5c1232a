//! Home Assistant MQTT discovery: an observer of what the gateway publishes.
//!
//! Owns: device-based discovery configs (`<prefix>/device/<object_id>/config`, retained) for every
//! monitor, vehicle and the gateway itself, their removal (an empty retained config), and re-announcing
//! them when Home Assistant comes online. It is fed the same [`Outbound`] events the MQTT stage publishes
//! and only adds messages: the core never calls it, and nothing here changes what the core publishes.
//! The MQTT stage publishes what [`HomeAssistant::observe`] returns *before* the message observed, so a
//! config always precedes the state its entities read, and an empty config precedes the clearing of
//! that state (no template renders against an empty payload).
//!
//! A monitor's measurement entities read the retained device status's `reading` (SPEC §2.2), never the
//! `…/reading` time series: Home Assistant subscribing after a config change or its own restart gets the
//! current value at once, and no first reading is lost.

use super::payload::{Kind, Message};
use super::topics::Topics;
use crate::config::{self, Mode};
use crate::devices::Model;
use crate::mac::Mac;
use crate::messages::{Outbound, Removed};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const ORIGIN_URL: &str = "https://github.com/battery-hawk/battery-hawk";
const MANUFACTURER: &str = "Leagend";
/// A silent monitor goes unavailable after this many poll intervals without a reading.
const EXPIRE_INTERVALS: u64 = 3;

/// What a monitor's discovery config depends on.
#[derive(Debug, Clone, PartialEq)]
struct Monitor {
    model: Option<Model>,
    name: String,
    poll_interval: u64,
    mode: Mode,
}

impl Monitor {
    /// Temperature and the monitor's state come only from a GATT reading of a model that measures
    /// temperature; a `passive` device's advertisements carry voltage and SoC only (SPEC §5.4).
    fn measures_temperature_and_state(&self) -> bool {
        self.mode != Mode::Passive && self.model.is_none_or(|m| m.measures_temperature())
    }
}

/// A template reading `field` of the status's latest reading; `None` (Home Assistant's "no value")
/// before the first reading.
fn from_reading(field: &str) -> String {
    format!("{{{{ value_json.reading.{field} if value_json.reading else None }}}}")
}

pub struct HomeAssistant {
    prefix: String,
    status_topic: String,
    topics: Topics,
    gateway_id: String,
    monitors: BTreeMap<Mac, Monitor>,
    vehicles: BTreeMap<String, String>,
    gateway_announced: bool,
}

/// Only `[a-zA-Z0-9_-]` in object ids and unique ids.
fn object_id(parts: &[&str]) -> String {
    parts
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn mac_id(mac: Mac) -> String {
    crate::devices::to_hex(&mac.0)
}

impl HomeAssistant {
    pub fn new(cfg: &config::HomeAssistant, topics: Topics, gateway_id: &str) -> HomeAssistant {
        HomeAssistant {
            prefix: cfg.discovery_prefix.clone(),
            status_topic: cfg.status_topic.clone(),
            topics,
            gateway_id: gateway_id.to_string(),
            monitors: BTreeMap::new(),
            vehicles: BTreeMap::new(),
            gateway_announced: false,
        }
    }

    /// The topic on which Home Assistant announces itself.
    pub fn status_topic(&self) -> &str {
        &self.status_topic
    }

    /// The discovery messages that publishing `out` calls for: a config for anything new or changed, an
    /// empty config for anything removed.
    pub fn observe(&mut self, out: &Outbound) -> Vec<Message> {
        let mut msgs = Vec::new();
        if !self.gateway_announced {
            self.gateway_announced = true;
            msgs.push(self.gateway_config());
        }
        match out {
            Outbound::DeviceStatus(s) => {
                let m = Monitor {
                    model: s.model,
                    name: s.name.clone(),
                    poll_interval: s.poll_interval,
                    mode: s.mode,
                };
                if self.monitors.get(&s.mac) != Some(&m) {
                    msgs.push(self.monitor_config(s.mac, &m));
                    self.monitors.insert(s.mac, m);
                }
            }
            Outbound::Summary(s) if self.vehicles.get(&s.vehicle_id) != Some(&s.name) => {
                self.vehicles.insert(s.vehicle_id.clone(), s.name.clone());
                msgs.push(self.vehicle_config(&s.vehicle_id, &s.name));
            }
            Outbound::Removed(Removed::Device(mac)) if self.monitors.remove(mac).is_some() => {
                msgs.push(self.empty(&object_id(&["battery_hawk", &mac_id(*mac)])));
            }
            // Another gateway of the cluster serves it now and re-publishes its config (SPEC §6): forget
            // it without clearing, so that taking it back re-publishes ours.
            Outbound::Owner(o) if o.claim.is_none() => {
                self.monitors.remove(&o.mac);
            }
            Outbound::Removed(Removed::Vehicle(id)) if self.vehicles.remove(id).is_some() => {
                msgs.push(self.empty(&object_id(&["battery_hawk_vehicle", id])));
            }
            _ => {}
        }
        msgs
    }

    /// In a cluster, this gateway let go of every monitor (it lost the broker): forget the monitors and
    /// vehicles announced, so that nothing is re-announced for them until it serves them again, and
    /// serving them again re-publishes their configs (with this gateway as `via_device`).
    pub fn forget_served(&mut self) {
        self.monitors.clear();
        self.vehicles.clear();
    }

    /// Every discovery config again (Home Assistant restarted and forgot them).
    pub fn announce_all(&self) -> Vec<Message> {
        let mut msgs = vec![self.gateway_config()];
        msgs.extend(
            self.monitors
                .iter()
                .map(|(mac, m)| self.monitor_config(*mac, m)),
        );
        msgs.extend(
            self.vehicles
                .iter()
                .map(|(id, name)| self.vehicle_config(id, name)),
        );
        msgs
    }

    fn config_topic(&self, object: &str) -> String {
        format!("{}/device/{object}/config", self.prefix)
    }

    fn message(&self, object: &str, body: &Value) -> Message {
        Message {
            topic: self.config_topic(object),
            payload: body.to_string().into_bytes(),
            qos: 1,
            retain: true,
            kind: Kind::State,
        }
    }

    fn empty(&self, object: &str) -> Message {
        Message {
            topic: self.config_topic(object),
            payload: Vec::new(),
            qos: 1,
            retain: true,
            kind: Kind::State,
        }
    }

    fn origin() -> Value {
        json!({"name": "Battery Hawk", "sw": env!("CARGO_PKG_VERSION"), "url": ORIGIN_URL})
    }

    fn gateway_object(&self) -> String {
        object_id(&["battery_hawk_gateway", &self.gateway_id])
    }

    /// Add a component `key` reading `template` from `topic`, with `extra` fields (device class, unit, …).
    fn add(
        cmps: &mut Map<String, Value>,
        object: &str,
        key: &str,
        name: &str,
        topic: &str,
        template: Option<&str>,
        extra: Value,
    ) {
        let mut c = Map::new();
        c.insert("p".into(), json!("sensor"));
        c.insert("name".into(), json!(name));
        c.insert("unique_id".into(), json!(format!("{object}_{key}")));
        c.insert("state_topic".into(), json!(topic));
        if let Some(t) = template {
            c.insert("value_template".into(), json!(t));
        }
        if let Value::Object(extra) = extra {
            c.extend(extra);
        }
        cmps.insert(key.into(), Value::Object(c));
    }

    fn monitor_config(&self, mac: Mac, m: &Monitor) -> Message {
        let object = object_id(&["battery_hawk", &mac_id(mac)]);
        let status = self.topics.status(mac);
        let expire = EXPIRE_INTERVALS * m.poll_interval;
        let measured = |class: &str, unit: &str| {
            json!({"device_class": class, "unit_of_measurement": unit, "state_class": "measurement",
                   "expire_after": expire})
        };
        let mut cmps = Map::new();
        let mut measurements = vec![
            ("voltage", "Voltage", "voltage", measured("voltage", "V")),
            (
                "soc",
                "State of charge",
                "state_of_charge",
                measured("battery", "%"),
            ),
        ];
        if m.measures_temperature_and_state() {
            measurements.push((
                "temperature",
                "Temperature",
                "temperature",
                measured("temperature", "°C"),
            ));
            // Free text, not an enum: `unknown_<n>` (SPEC §5.1) cannot be listed as options.
            measurements.push((
                "state",
                "State",
                "extra.state",
                json!({"expire_after": expire}),
            ));
        }
        for (key, name, field, extra) in measurements {
            Self::add(
                &mut cmps,
                &object,
                key,
                name,
                &status,
                Some(&from_reading(field)),
                extra,
            );
        }
        Self::add(
            &mut cmps,
            &object,
            "rssi",
            "Signal strength",
            &status,
            Some("{{ value_json.extra.signal_strength }}"),
            json!({"device_class": "signal_strength", "unit_of_measurement": "dBm",
                   "state_class": "measurement", "entity_category": "diagnostic"}),
        );
        Self::add(
            &mut cmps,
            &object,
            "last_reading",
            "Last reading",
            &status,
            Some("{{ value_json.last_reading_at }}"),
            json!({"device_class": "timestamp", "entity_category": "diagnostic"}),
        );
        let body = json!({
            "dev": {
                "ids": [object],
                "connections": [["mac", mac.to_string().to_lowercase()]],
                "name": m.name,
                "mf": MANUFACTURER,
                "mdl": m.model.map_or("BM6/BM7/BM2", |m| m.name()),
                "via_device": self.gateway_object(),
            },
            "o": Self::origin(),
            "cmps": cmps,
            "availability": [
                {"topic": self.topics.availability()},
                {"topic": status,
                 "value_template": "{{ 'online' if value_json.connected else 'offline' }}"},
            ],
            "availability_mode": "all",
            "qos": 1,
        });
        self.message(&object, &body)
    }

    fn vehicle_config(&self, id: &str, name: &str) -> Message {
        let object = object_id(&["battery_hawk_vehicle", id]);
        let topic = self.topics.summary(id);
        let measurement = json!({"state_class": "measurement"});
        let mut cmps = Map::new();
        Self::add(
            &mut cmps,
            &object,
            "health",
            "Health",
            &topic,
            Some("{{ value_json.overall_health }}"),
            json!({"device_class": "enum", "options": ["excellent", "good", "fair", "poor"]}),
        );
        Self::add(
            &mut cmps,
            &object,
            "health_score",
            "Health score",
            &topic,
            Some("{{ value_json.health_score }}"),
            measurement.clone(),
        );
        Self::add(
            &mut cmps,
            &object,
            "average_voltage",
            "Average voltage",
            &topic,
            Some("{{ value_json.average_voltage }}"),
            json!({"device_class": "voltage", "unit_of_measurement": "V", "state_class": "measurement"}),
        );
        Self::add(
            &mut cmps,
            &object,
            "connected_devices",
            "Connected devices",
            &topic,
            Some("{{ value_json.connected_devices }}"),
            measurement,
        );
        let body = json!({
            "dev": {"ids": [object], "name": name, "mdl": "Vehicle", "via_device": self.gateway_object()},
            "o": Self::origin(),
            "cmps": cmps,
            "availability": [{"topic": self.topics.availability()}],
            "qos": 1,
        });
        self.message(&object, &body)
    }

    fn gateway_config(&self) -> Message {
        let object = self.gateway_object();
        let status = self.topics.system_status();
        // Everything but Connectivity is unavailable while the gateway is offline; Connectivity itself
        // shows the offline state.
        let availability = json!([{"topic": self.topics.availability()}]);
        let diagnostic = |state_class: &str| {
            json!({"state_class": state_class, "entity_category": "diagnostic",
                   "availability": availability})
        };
        let mut cmps = Map::new();
        Self::add(
            &mut cmps,
            &object,
            "connectivity",
            "Connectivity",
            &self.topics.availability(),
            None,
            json!({"p": "binary_sensor", "payload_on": "online", "payload_off": "offline",
                   "device_class": "connectivity", "entity_category": "diagnostic"}),
        );
        Self::add(
            &mut cmps,
            &object,
            "uptime",
            "Uptime",
            &status,
            Some("{{ value_json.core.uptime_seconds }}"),
            json!({"device_class": "duration", "unit_of_measurement": "s", "state_class": "measurement",
                   "entity_category": "diagnostic", "availability": availability}),
        );
        for (key, name, template) in [
            ("readings", "Readings", "{{ value_json.counters.readings }}"),
            (
                "decode_errors",
                "Decode errors",
                "{{ value_json.counters.decode_errors }}",
            ),
            (
                "connection_failures",
                "Connection failures",
                "{{ value_json.counters.connection_failures }}",
            ),
        ] {
            Self::add(
                &mut cmps,
                &object,
                key,
                name,
                &status,
                Some(template),
                diagnostic("total_increasing"),
            );
        }
        let body = json!({
            "dev": {
                "ids": [object],
                "name": format!("Battery Hawk {}", self.gateway_id),
                "mf": "Battery Hawk",
                "mdl": "Gateway",
                "sw": env!("CARGO_PKG_VERSION"),
            },
            "o": Self::origin(),
            "cmps": cmps,
            "qos": 1,
        });
        self.message(&object, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::messages::DeviceStatusOut;
    use chrono::Utc;

    fn status(mac: &str, model: &str) -> Outbound {
        Outbound::DeviceStatus(DeviceStatusOut {
            mac: mac.parse().unwrap(),
            at: Utc::now(),
            reachable: true,
            model: Model::by_name(model),
            vehicle_id: None,
            error: None,
            last_reading_at: None,
            rssi: None,
            consecutive_failures: 0,
            mode: Mode::Poll,
            name: "Starter".into(),
            poll_interval: 300,
            reading: None,
        })
    }

    fn ha() -> HomeAssistant {
        HomeAssistant::new(
            &config::HomeAssistant::default(),
            Topics::new("battery_hawk"),
            "garage pi",
        )
    }

    #[test]
    fn a_monitor_is_announced_once_with_its_sensors() {
        let mut h = ha();
        let msgs = h.observe(&status("AA:BB:CC:DD:EE:01", "BM6"));
        assert_eq!(msgs.len(), 2, "gateway and monitor");
        assert_eq!(
            msgs[0].topic,
            "homeassistant/device/battery_hawk_gateway_garage_pi/config"
        );
        let m = &msgs[1];
        assert_eq!(
            m.topic,
            "homeassistant/device/battery_hawk_aabbccddee01/config"
        );
        assert!(m.retain);
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["cmps"]["voltage"]["device_class"], "voltage");
        assert_eq!(
            v["cmps"]["voltage"]["unique_id"],
            "battery_hawk_aabbccddee01_voltage"
        );
        assert_eq!(v["cmps"]["voltage"]["expire_after"], 900);
        assert_eq!(v["cmps"]["temperature"]["unit_of_measurement"], "°C");
        assert_eq!(v["dev"]["mdl"], "BM6");
        assert_eq!(v["dev"]["via_device"], "battery_hawk_gateway_garage_pi");
        assert_eq!(v["availability_mode"], "all");
        assert!(h.observe(&status("AA:BB:CC:DD:EE:01", "BM6")).is_empty());
    }

    #[test]
    fn measurements_read_the_retained_status_and_state_is_free_text() {
        let mut h = ha();
        let msgs = h.observe(&status("AA:BB:CC:DD:EE:01", "BM6"));
        let v: Value = serde_json::from_slice(&msgs[1].payload).unwrap();
        for key in ["voltage", "soc", "temperature", "state"] {
            assert_eq!(
                v["cmps"][key]["state_topic"], "battery_hawk/device/AA:BB:CC:DD:EE:01/status",
                "{key}"
            );
        }
        assert_eq!(
            v["cmps"]["voltage"]["value_template"],
            "{{ value_json.reading.voltage if value_json.reading else None }}"
        );
        assert!(v["cmps"]["state"].get("device_class").is_none());
        assert!(v["cmps"]["state"].get("options").is_none());
    }

    #[test]
    fn a_passive_bm6_has_no_temperature_or_state() {
        let mut h = ha();
        let Outbound::DeviceStatus(mut s) = status("AA:BB:CC:DD:EE:01", "BM6") else {
            unreachable!()
        };
        s.mode = Mode::Passive;
        let msgs = h.observe(&Outbound::DeviceStatus(s));
        let v: Value = serde_json::from_slice(&msgs[1].payload).unwrap();
        let keys: Vec<&String> = v["cmps"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["voltage", "soc", "rssi", "last_reading"]);
    }

    #[test]
    fn gateway_sensors_follow_its_availability_and_are_diagnostic() {
        let mut h = ha();
        let msgs = h.observe(&status("AA:BB:CC:DD:EE:01", "BM6"));
        let v: Value = serde_json::from_slice(&msgs[0].payload).unwrap();
        let cmps = v["cmps"].as_object().unwrap();
        assert_eq!(cmps.len(), 5);
        for (key, c) in cmps {
            assert_eq!(c["entity_category"], "diagnostic", "{key}");
            let expected = if key == "connectivity" {
                Value::Null
            } else {
                json!([{"topic": "battery_hawk/system/availability"}])
            };
            assert_eq!(
                c.get("availability").cloned().unwrap_or(Value::Null),
                expected,
                "{key}"
            );
        }
    }

    #[test]
    fn bm2_has_no_temperature_or_state() {
        let mut h = ha();
        let msgs = h.observe(&status("AA:BB:CC:DD:EE:02", "BM2"));
        let v: Value = serde_json::from_slice(&msgs[1].payload).unwrap();
        assert!(v["cmps"].get("temperature").is_none() && v["cmps"].get("state").is_none());
        assert!(v["cmps"].get("soc").is_some());
    }

    #[test]
    fn forgetting_what_is_served_re_announces_a_monitor_when_served_again() {
        let mut h = ha();
        h.observe(&status("AA:BB:CC:DD:EE:01", "BM6"));
        h.forget_served();
        assert_eq!(h.announce_all().len(), 1, "the gateway only");
        let msgs = h.observe(&status("AA:BB:CC:DD:EE:01", "BM6"));
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            msgs[0].topic,
            "homeassistant/device/battery_hawk_aabbccddee01/config"
        );
    }

    #[test]
    fn removal_sends_an_empty_retained_config_and_announce_all_repeats_the_rest() {
        let mut h = ha();
        h.observe(&status("AA:BB:CC:DD:EE:01", "BM6"));
        h.observe(&status("AA:BB:CC:DD:EE:02", "BM2"));
        let msgs = h.observe(&Outbound::Removed(Removed::Device(
            "AA:BB:CC:DD:EE:01".parse().unwrap(),
        )));
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].payload.is_empty() && msgs[0].retain);
        assert_eq!(
            h.announce_all().len(),
            2,
            "gateway and the remaining monitor"
        );
    }
}
