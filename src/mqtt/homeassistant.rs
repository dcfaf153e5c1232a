//! Home Assistant MQTT discovery: an observer of what the gateway publishes.
//!
//! Owns: device-based discovery configs (`<prefix>/device/<object_id>/config`, retained) for every
//! monitor, vehicle and the gateway itself, their removal (an empty retained config), and re-announcing
//! them when Home Assistant comes online. It is fed the same [`Outbound`] events the MQTT stage publishes
//! and only adds messages: the core never calls it, and nothing here changes what the core publishes.

use super::payload::{Kind, Message};
use super::topics::Topics;
use crate::config;
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
            Outbound::Removed(Removed::Vehicle(id)) if self.vehicles.remove(id).is_some() => {
                msgs.push(self.empty(&object_id(&["battery_hawk_vehicle", id])));
            }
            _ => {}
        }
        msgs
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

    /// One sensor component.
    fn sensor(
        &self,
        object: &str,
        key: &str,
        name: &str,
        topic: &str,
        template: &str,
    ) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("p".into(), json!("sensor"));
        c.insert("name".into(), json!(name));
        c.insert("unique_id".into(), json!(format!("{object}_{key}")));
        c.insert("state_topic".into(), json!(topic));
        c.insert("value_template".into(), json!(template));
        c
    }

    fn monitor_config(&self, mac: Mac, m: &Monitor) -> Message {
        let object = object_id(&["battery_hawk", &mac_id(mac)]);
        let reading = self.topics.reading(mac);
        let status = self.topics.status(mac);
        let expire = EXPIRE_INTERVALS * m.poll_interval;
        let measured = |key: &str, name: &str, template: &str, class: &str, unit: &str| {
            let mut c = self.sensor(&object, key, name, &reading, template);
            c.insert("device_class".into(), json!(class));
            c.insert("unit_of_measurement".into(), json!(unit));
            c.insert("state_class".into(), json!("measurement"));
            c.insert("expire_after".into(), json!(expire));
            (key.to_string(), Value::Object(c))
        };
        let mut cmps: Map<String, Value> = Map::new();
        let (k, v) = measured(
            "voltage",
            "Voltage",
            "{{ value_json.voltage }}",
            "voltage",
            "V",
        );
        cmps.insert(k, v);
        let (k, v) = measured(
            "soc",
            "State of charge",
            "{{ value_json.state_of_charge }}",
            "battery",
            "%",
        );
        cmps.insert(k, v);
        if m.model.is_none_or(|m| m.measures_temperature()) {
            let (k, v) = measured(
                "temperature",
                "Temperature",
                "{{ value_json.temperature }}",
                "temperature",
                "°C",
            );
            cmps.insert(k, v);
            let mut state = self.sensor(
                &object,
                "state",
                "State",
                &reading,
                "{{ value_json.extra.state }}",
            );
            state.insert("device_class".into(), json!("enum"));
            state.insert(
                "options".into(),
                json!(["normal", "low_voltage", "charging"]),
            );
            state.insert("expire_after".into(), json!(expire));
            cmps.insert("state".into(), Value::Object(state));
        }
        let mut rssi = self.sensor(
            &object,
            "rssi",
            "Signal strength",
            &status,
            "{{ value_json.extra.signal_strength }}",
        );
        rssi.insert("device_class".into(), json!("signal_strength"));
        rssi.insert("unit_of_measurement".into(), json!("dBm"));
        rssi.insert("state_class".into(), json!("measurement"));
        rssi.insert("entity_category".into(), json!("diagnostic"));
        cmps.insert("rssi".into(), Value::Object(rssi));
        let mut last = self.sensor(
            &object,
            "last_reading",
            "Last reading",
            &status,
            "{{ value_json.last_reading_at }}",
        );
        last.insert("device_class".into(), json!("timestamp"));
        last.insert("entity_category".into(), json!("diagnostic"));
        cmps.insert("last_reading".into(), Value::Object(last));
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
        let mut cmps = Map::new();
        let mut health = self.sensor(
            &object,
            "health",
            "Health",
            &topic,
            "{{ value_json.overall_health }}",
        );
        health.insert("device_class".into(), json!("enum"));
        health.insert(
            "options".into(),
            json!(["excellent", "good", "fair", "poor", "unknown"]),
        );
        cmps.insert("health".into(), Value::Object(health));
        let mut score = self.sensor(
            &object,
            "health_score",
            "Health score",
            &topic,
            "{{ value_json.health_score }}",
        );
        score.insert("state_class".into(), json!("measurement"));
        cmps.insert("health_score".into(), Value::Object(score));
        let mut volts = self.sensor(
            &object,
            "average_voltage",
            "Average voltage",
            &topic,
            "{{ value_json.average_voltage }}",
        );
        volts.insert("device_class".into(), json!("voltage"));
        volts.insert("unit_of_measurement".into(), json!("V"));
        volts.insert("state_class".into(), json!("measurement"));
        cmps.insert("average_voltage".into(), Value::Object(volts));
        let mut connected = self.sensor(
            &object,
            "connected_devices",
            "Connected devices",
            &topic,
            "{{ value_json.connected_devices }}",
        );
        connected.insert("state_class".into(), json!("measurement"));
        cmps.insert("connected_devices".into(), Value::Object(connected));
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
        let mut cmps = Map::new();
        let mut link = Map::new();
        link.insert("p".into(), json!("binary_sensor"));
        link.insert("name".into(), json!("Connectivity"));
        link.insert("unique_id".into(), json!(format!("{object}_connectivity")));
        link.insert("state_topic".into(), json!(self.topics.availability()));
        link.insert("payload_on".into(), json!("online"));
        link.insert("payload_off".into(), json!("offline"));
        link.insert("device_class".into(), json!("connectivity"));
        link.insert("entity_category".into(), json!("diagnostic"));
        cmps.insert("connectivity".into(), Value::Object(link));
        let counters = [
            (
                "uptime",
                "Uptime",
                "{{ value_json.core.uptime_seconds }}",
                Some(("duration", "s")),
                "measurement",
            ),
            (
                "readings",
                "Readings",
                "{{ value_json.counters.readings }}",
                None,
                "total_increasing",
            ),
            (
                "decode_errors",
                "Decode errors",
                "{{ value_json.counters.decode_errors }}",
                None,
                "total_increasing",
            ),
            (
                "connection_failures",
                "Connection failures",
                "{{ value_json.counters.connection_failures }}",
                None,
                "total_increasing",
            ),
        ];
        for (key, name, template, class, state_class) in counters {
            let mut c = self.sensor(&object, key, name, &status, template);
            if let Some((class, unit)) = class {
                c.insert("device_class".into(), json!(class));
                c.insert("unit_of_measurement".into(), json!(unit));
            }
            c.insert("state_class".into(), json!(state_class));
            c.insert("entity_category".into(), json!("diagnostic"));
            cmps.insert(key.into(), Value::Object(c));
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
    fn bm2_has_no_temperature_or_state() {
        let mut h = ha();
        let msgs = h.observe(&status("AA:BB:CC:DD:EE:02", "BM2"));
        let v: Value = serde_json::from_slice(&msgs[1].payload).unwrap();
        assert!(v["cmps"].get("temperature").is_none() && v["cmps"].get("state").is_none());
        assert!(v["cmps"].get("soc").is_some());
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
