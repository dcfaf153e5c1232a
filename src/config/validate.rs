//! What a valid configuration is: every rule of SPEC §4 that the types alone do not enforce, the bounds of
//! every number, and the prefix and vehicle-id rules of SPEC §1. Errors name the key (or the device) at
//! fault; nothing here panics.

use super::{Config, ConfigError, MAX_POLL_INTERVAL, Mode, OUT_OF_RANGE, SimMonitor};
use crate::devices::Model;
use std::collections::BTreeSet;

impl Config {
    /// Every rule of SPEC §4 that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Err(e) = validate_prefix(&self.mqtt.topic_prefix) {
            return bad(format!("mqtt.topic_prefix: {e}"));
        }
        if let Err(e) = validate_prefix(&self.homeassistant.discovery_prefix) {
            return bad(format!("homeassistant.discovery_prefix: {e}"));
        }
        if let Err(e) = validate_prefix(&self.homeassistant.status_topic) {
            return bad(format!("homeassistant.status_topic: {e}"));
        }
        if self.mqtt.qos > 2 {
            return bad(format!("mqtt.qos = {} (allowed: 0, 1 or 2)", self.mqtt.qos));
        }
        if self.mqtt.max_qos > 2 {
            return bad(format!(
                "mqtt.max_qos = {} (allowed: 0, 1 or 2)",
                self.mqtt.max_qos
            ));
        }
        if self.gateway.id.trim().is_empty() {
            return bad("gateway.id must not be empty".into());
        }
        if self.cluster.enabled
            && let Err(e) = validate_gateway_id(&self.gateway.id)
        {
            return bad(format!("gateway.id (with [cluster] enabled): {e}"));
        }
        if self.cluster.enabled && !self.mqtt.enabled {
            return bad(
                "[cluster] enabled needs mqtt.enabled = true: the gateways agree through the broker"
                    .into(),
            );
        }
        for (key, value, min, max) in self.bounded() {
            if !(min..=max).contains(&value) {
                return bad(format!(
                    "{key} = {value} is out of range (allowed: {min} to {max})"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.simulation.failure_rate) {
            return bad(format!(
                "simulation.failure_rate = {} (allowed: 0.0 to 1.0)",
                self.simulation.failure_rate
            ));
        }
        self.history.validate().map_err(ConfigError::Invalid)?;
        if self.mqtt.client_cert.is_empty() != self.mqtt.client_key.is_empty() {
            return bad("mqtt.client_cert and mqtt.client_key must be set together".into());
        }
        let mut vehicle_ids = BTreeSet::new();
        for v in &self.vehicles {
            if let Err(e) = validate_vehicle_id(&v.id) {
                return bad(format!("[[vehicle]] id: {e}"));
            }
            if !vehicle_ids.insert(v.id.as_str()) {
                return bad(format!("[[vehicle]] id '{}' is defined twice", v.id));
            }
        }
        let mut macs = BTreeSet::new();
        for d in &self.devices {
            let at = format!("[[device]] {}", d.mac);
            if !macs.insert(d.mac) {
                return bad(format!("{at} is defined twice"));
            }
            if let Some(t) = &d.device_type
                && Model::by_name(t).is_none()
            {
                return bad(format!(
                    "{at}: type = \"{t}\" is not a supported model ({})",
                    Model::all_names()
                ));
            }
            if let Some(v) = &d.vehicle {
                if let Err(e) = validate_vehicle_id(v) {
                    return bad(format!("{at}: vehicle: {e}"));
                }
                if !vehicle_ids.contains(v.as_str()) {
                    return bad(format!(
                        "{at}: vehicle = \"{v}\" is not defined by any [[vehicle]]"
                    ));
                }
            }
            if let Some(c) = d.capacity_ah
                && !(c.is_finite() && c >= 0.0)
            {
                return bad(format!("{at}: capacity_ah = {c} must be 0 or more"));
            }
            if let Some(p) = d.poll_interval
                && !(1..=MAX_POLL_INTERVAL).contains(&p)
            {
                return bad(format!(
                    "{at}: poll_interval = {p} is out of range (allowed: 1 to {MAX_POLL_INTERVAL})"
                ));
            }
            if let Some(g) = &d.gateway {
                if !self.cluster.enabled {
                    return bad(format!(
                        "{at}: gateway = \"{}\" pins the monitor to a gateway of a cluster: it needs \
                         [cluster] enabled = true",
                        g.escape_debug()
                    ));
                }
                if let Err(e) = validate_gateway_id(g) {
                    return bad(format!("{at}: gateway: {e}"));
                }
            }
            let mode = d.mode.unwrap_or(self.defaults.mode);
            if let Some(m) = d.model()
                && mode == Mode::Passive
                && m.encode_advert(&probe_measurement(), d.mac).is_none()
            {
                return bad(format!(
                    "{at}: mode = \"passive\" needs a model that broadcasts readings; {m} does not"
                ));
            }
        }
        if self.discovery.auto_mode == Mode::Stream {
            return bad(
                "discovery.auto_mode = \"stream\" is not allowed: a found monitor is read \"passive\" or \"poll\""
                    .into(),
            );
        }
        let modes = || {
            self.devices
                .iter()
                .map(|d| d.mode.unwrap_or(self.defaults.mode))
        };
        let streams = modes().filter(|m| *m == Mode::Stream).count();
        let polled = modes().any(|m| m == Mode::Poll)
            || (self.discovery.auto_configure && self.discovery.auto_mode == Mode::Poll);
        let needed = streams + usize::from(polled);
        if streams > 0 && needed > self.bluetooth.max_concurrent_connections as usize {
            return bad(format!(
                "{streams} device(s) in mode = \"stream\" hold a connection each{}: \
                 bluetooth.max_concurrent_connections = {} must be at least {needed}",
                if polled {
                    ", and polling needs one more"
                } else {
                    ""
                },
                self.bluetooth.max_concurrent_connections
            ));
        }
        let mut simulated = BTreeSet::new();
        for m in &self.simulation.monitors {
            let at = format!("[[simulation.monitor]] {}", m.mac);
            if !macs.contains(&m.mac) {
                return bad(format!(
                    "{at}: no [[device]] has this mac (a simulated monitor plays a configured device)"
                ));
            }
            if !simulated.insert(m.mac) {
                return bad(format!("{at} is defined twice"));
            }
            if !(OUT_OF_RANGE..=0).contains(&m.rssi) {
                return bad(format!(
                    "{at}: rssi = {} is out of range (allowed: {OUT_OF_RANGE} to 0 dBm)",
                    m.rssi
                ));
            }
            if m.history_days > SimMonitor::MAX_HISTORY_DAYS {
                return bad(format!(
                    "{at}: history_days = {} (allowed: 0 to {})",
                    m.history_days,
                    SimMonitor::MAX_HISTORY_DAYS
                ));
            }
        }
        Ok(())
    }

    /// Every bounded number of SPEC §4: (key, value, smallest, largest allowed). The upper bounds keep all
    /// deadline arithmetic far from overflow and catch typos (a poll interval of 30 years).
    fn bounded(&self) -> [(&'static str, u64, u64, u64); 18] {
        const DAY: u64 = 86_400;
        [
            ("mqtt.port", u64::from(self.mqtt.port), 1, 65_535),
            (
                "cluster.report_interval",
                self.cluster.report_interval,
                2,
                3_600,
            ),
            ("mqtt.keepalive", self.mqtt.keepalive, 5, 65_535),
            ("mqtt.timeout", self.mqtt.timeout, 1, 3_600),
            ("mqtt.retries", u64::from(self.mqtt.retries), 1, 100),
            ("mqtt.status_interval", self.mqtt.status_interval, 1, DAY),
            (
                "mqtt.outbox_capacity",
                self.mqtt.outbox_capacity as u64,
                1,
                10_000_000,
            ),
            ("mqtt.spool_max_mb", self.mqtt.spool_max_mb, 0, 1_000_000),
            (
                "bluetooth.max_concurrent_connections",
                u64::from(self.bluetooth.max_concurrent_connections),
                1,
                16,
            ),
            (
                "bluetooth.connection_timeout",
                self.bluetooth.connection_timeout,
                1,
                300,
            ),
            (
                "bluetooth.data_wait_timeout",
                self.bluetooth.data_wait_timeout,
                1,
                300,
            ),
            (
                "discovery.periodic_interval",
                self.discovery.periodic_interval,
                0,
                30 * DAY,
            ),
            (
                "discovery.scan_duration",
                self.discovery.scan_duration,
                1,
                3_600,
            ),
            (
                "discovery.max_auto_devices",
                u64::from(self.discovery.max_auto_devices),
                0,
                1_000,
            ),
            (
                "discovery.forget_after",
                self.discovery.forget_after,
                60,
                365 * DAY,
            ),
            (
                "defaults.poll_interval",
                self.defaults.poll_interval,
                1,
                MAX_POLL_INTERVAL,
            ),
            (
                "simulation.interval_ms",
                self.simulation.interval_ms,
                10,
                3_600_000,
            ),
            (
                "simulation.foreign_advertisers",
                u64::from(self.simulation.foreign_advertisers),
                0,
                10_000,
            ),
        ]
    }
}

fn probe_measurement() -> crate::devices::Measurement {
    crate::devices::Measurement {
        voltage: Some(12.0),
        ..Default::default()
    }
}

/// SPEC §1: not empty, no `+`, `#`, NUL, no leading or trailing `/` or white space.
pub fn validate_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    if p.trim() != p {
        return Err(format!(
            "'{}' starts or ends with white space (it would become part of every topic)",
            p.escape_debug()
        ));
    }
    if let Some(c) = p.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(format!(
            "'{}' contains '{}'",
            p.escape_debug(),
            c.escape_debug()
        ));
    }
    if p.starts_with('/') || p.ends_with('/') {
        return Err(format!("'{p}' must not start or end with '/'"));
    }
    if p.split('/').any(str::is_empty) {
        return Err(format!("'{p}' contains an empty level ('//')"));
    }
    Ok(())
}

/// SPEC §1: `^[A-Za-z0-9_-]{1,64}$`.
/// A gateway id used in topics (`P/gateway/{gid}/…`, SPEC §6): 1–64 of `A-Z a-z 0-9 _ - .` (a host name
/// fits; `/`, `+`, `#` would break the topic tree).
pub fn validate_gateway_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a valid gateway id (1-64 of A-Z a-z 0-9 _ - .)",
            id.escape_debug()
        ))
    }
}

pub fn validate_vehicle_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a valid vehicle id (1-64 of A-Z a-z 0-9 _ -)",
            id.escape_debug()
        ))
    }
}
