//! Configuration: the TOML file of SPEC §4, `BATTERYHAWK_<SECTION>_<KEY>` overrides, validation.
//!
//! Owns: parsing, defaults, every rule about what a valid configuration is, and redaction for printing.
//! Must never: log or print a secret, accept an unknown key, or panic on bad input — every error names the
//! file/line, key or environment variable at fault.

mod env;

use crate::devices::Model;
use crate::mac::Mac;
use env::apply_env;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/battery-hawk/config.toml";

/// A configuration that cannot be used, and why.
#[derive(Debug)]
pub enum ConfigError {
    Read(PathBuf, std::io::Error),
    /// TOML syntax or type error; the message carries line, column and key.
    Parse(PathBuf, String),
    /// An environment override that does not fit.
    Env(String, String),
    /// A value that parses but is not allowed.
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ConfigError::Parse(p, e) => write!(f, "{}: {}", p.display(), e.trim_end()),
            ConfigError::Env(var, e) => write!(f, "environment variable {var}: {e}"),
            ConfigError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub gateway: Gateway,
    pub logging: Logging,
    pub mqtt: Mqtt,
    pub bluetooth: Bluetooth,
    pub discovery: Discovery,
    pub defaults: Defaults,
    pub simulation: Simulation,
    pub homeassistant: HomeAssistant,
    #[serde(rename = "vehicle", skip_serializing_if = "Vec::is_empty")]
    pub vehicles: Vec<VehicleConf>,
    #[serde(rename = "device", skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Gateway {
    pub id: String,
    pub state_dir: PathBuf,
    /// Seconds to hold readings while the wall clock is before the build date (SPEC §3, rev. 2).
    pub clock_wait: u64,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            id: host_name(),
            state_dir: PathBuf::from("/var/lib/battery-hawk"),
            clock_wait: 120,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Auto,
    Syslog,
    Stderr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    pub level: Level,
    pub target: LogTarget,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: Level::Info,
            target: LogTarget::Auto,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Mqtt {
    pub enabled: bool,
    pub broker: String,
    pub port: u16,
    pub topic_prefix: String,
    pub qos: u8,
    pub keepalive: u64,
    pub timeout: u64,
    pub retries: u32,
    pub client_id: String,
    pub username: String,
    pub password: Secret,
    pub password_file: String,
    pub tls: bool,
    pub ca_file: String,
    pub client_cert: String,
    pub client_key: String,
    pub status_interval: u64,
    pub outbox_capacity: usize,
    pub spool_max_mb: u64,
    /// Cap (0–2) for the QoS of every publish, including system status, shutdown and the last will
    /// (brokers without QoS 2: AWS IoT, Azure IoT Hub). SPEC §3/§4, rev. 2.
    pub max_qos: u8,
    /// `false`: nothing is retained (brokers without retain); the current state is re-published every
    /// `status_interval` s instead. SPEC §3/§4, rev. 2.
    pub retain: bool,
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            enabled: true,
            broker: "localhost".into(),
            port: 1883,
            topic_prefix: "battery_hawk".into(),
            qos: 1,
            keepalive: 60,
            timeout: 10,
            retries: 3,
            client_id: String::new(),
            username: String::new(),
            password: Secret::default(),
            password_file: String::new(),
            tls: false,
            ca_file: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
            status_interval: 60,
            outbox_capacity: 10_000,
            spool_max_mb: 16,
            max_qos: 2,
            retain: true,
        }
    }
}

/// A secret string: serialised as is (for round trips), but never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Bluez,
    Simulated,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Bluetooth {
    pub backend: Backend,
    pub adapter: String,
    pub max_concurrent_connections: u32,
    pub connection_timeout: u64,
    pub data_wait_timeout: u64,
}

impl Default for Bluetooth {
    fn default() -> Self {
        Bluetooth {
            backend: Backend::Bluez,
            adapter: "hci0".into(),
            max_concurrent_connections: 1,
            connection_timeout: 30,
            data_wait_timeout: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Discovery {
    pub initial_scan: bool,
    pub periodic_interval: u64,
    pub scan_duration: u64,
    pub auto_configure: bool,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            initial_scan: true,
            periodic_interval: 43_200,
            scan_duration: 10,
            auto_configure: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Poll,
    Stream,
    Passive,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Stream => "stream",
            Mode::Passive => "passive",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    pub poll_interval: u64,
    pub mode: Mode,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            poll_interval: 300,
            mode: Mode::Poll,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Simulation {
    pub interval_ms: u64,
    pub failure_rate: f64,
}

impl Default for Simulation {
    fn default() -> Self {
        Simulation {
            interval_ms: 1000,
            failure_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistant {
    pub enabled: bool,
    pub discovery_prefix: String,
    pub status_topic: String,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        HomeAssistant {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
            status_topic: "homeassistant/status".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VehicleConf {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConf {
    pub mac: Mac,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_ah: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl DeviceConf {
    /// The model named by `type`, if any (validated at load).
    pub fn model(&self) -> Option<Model> {
        self.device_type.as_deref().and_then(Model::by_name)
    }
}

impl Config {
    /// Read, override from the environment, validate. `path` is also used to name the file in errors.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Config::from_toml(&text, path, std::env::vars())
    }

    /// Parse `text` (named `origin` in errors), apply `env` overrides, read secrets, validate.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parsed: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(origin.into(), e.to_string()))?;
        let mut config = apply_env(parsed, env)?;
        config.read_password_file()?;
        config.validate()?;
        Ok(config)
    }

    fn read_password_file(&mut self) -> Result<(), ConfigError> {
        if self.mqtt.password_file.is_empty() {
            return Ok(());
        }
        let secret = std::fs::read_to_string(&self.mqtt.password_file).map_err(|e| {
            ConfigError::Invalid(format!(
                "mqtt.password_file: cannot read {}: {e}",
                self.mqtt.password_file
            ))
        })?;
        self.mqtt.password = Secret(secret.trim_end_matches(['\r', '\n']).to_string());
        Ok(())
    }

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
        let positive = [
            ("mqtt.port", u64::from(self.mqtt.port)),
            ("mqtt.timeout", self.mqtt.timeout),
            ("mqtt.retries", u64::from(self.mqtt.retries)),
            ("mqtt.status_interval", self.mqtt.status_interval),
            ("mqtt.outbox_capacity", self.mqtt.outbox_capacity as u64),
            (
                "bluetooth.max_concurrent_connections",
                u64::from(self.bluetooth.max_concurrent_connections),
            ),
            (
                "bluetooth.connection_timeout",
                self.bluetooth.connection_timeout,
            ),
            (
                "bluetooth.data_wait_timeout",
                self.bluetooth.data_wait_timeout,
            ),
            ("discovery.scan_duration", self.discovery.scan_duration),
            ("defaults.poll_interval", self.defaults.poll_interval),
            ("simulation.interval_ms", self.simulation.interval_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return bad(format!("{key} must be greater than 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.simulation.failure_rate) {
            return bad(format!(
                "simulation.failure_rate = {} (allowed: 0.0 to 1.0)",
                self.simulation.failure_rate
            ));
        }
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
            if d.poll_interval == Some(0) {
                return bad(format!("{at}: poll_interval must be greater than 0"));
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
        Ok(())
    }

    /// The MQTT client id in effect.
    pub fn client_id(&self) -> String {
        if self.mqtt.client_id.is_empty() {
            format!("battery-hawk-{}", self.gateway.id)
        } else {
            self.mqtt.client_id.clone()
        }
    }

    /// The effective configuration as TOML, secrets replaced by `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.mqtt.password.0.is_empty() {
            shown.mqtt.password = Secret("<redacted>".into());
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_redacted_toml())
    }
}

fn probe_measurement() -> crate::devices::Measurement {
    crate::devices::Measurement {
        voltage: 12.0,
        temperature: None,
        state_of_charge: None,
        state: None,
        counters: vec![],
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

/// The machine's host name, the default gateway id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "battery-hawk".into())
}

#[cfg(test)]
mod tests;
