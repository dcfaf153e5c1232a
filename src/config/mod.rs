//! Configuration: the TOML file of SPEC §4, `BATTERYHAWK_<SECTION>_<KEY>` overrides, validation.
//!
//! Owns: parsing, defaults, every rule about what a valid configuration is, and redaction for printing.
//! Must never: log or print a secret, accept an unknown key, or panic on bad input — every error names the
//! file/line, key or environment variable at fault.

mod env;
mod validate;

pub use validate::{validate_gateway_id, validate_prefix, validate_vehicle_id};

use crate::devices::Model;
use crate::mac::Mac;
use env::apply_env;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest `poll_interval` accepted (s): one week.
pub const MAX_POLL_INTERVAL: u64 = 7 * 86_400;

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
    pub history: History,
    pub cluster: Cluster,
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
    /// Seconds between periodic scans; 0 = no periodic scans.
    pub periodic_interval: u64,
    pub scan_duration: u64,
    /// Newly found *confirmed* monitors (SPEC §5.3) are read and given a vehicle of their own.
    pub auto_configure: bool,
    /// How auto-configured monitors are read (SPEC rev. 2: `passive` never connects to a neighbour's monitor).
    pub auto_mode: Mode,
    /// At most this many auto-configured monitors.
    pub max_auto_devices: u32,
    /// Seconds without a sighting after which an auto-configured monitor is forgotten.
    pub forget_after: u64,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            initial_scan: true,
            periodic_interval: 43_200,
            scan_duration: 10,
            auto_configure: true,
            auto_mode: Mode::Passive,
            max_auto_devices: 32,
            forget_after: 1_209_600,
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
    /// How often each simulated monitor broadcasts, and how often a stream notifies (ms).
    pub interval_ms: u64,
    /// Share of connection attempts that time out (0.0–1.0).
    pub failure_rate: f64,
    /// Non-monitor devices advertising nearby (phones, watches), each twice every `interval_ms`.
    pub foreign_advertisers: u32,
    /// A directory shared by the simulated gateways of one site (SPEC §7, §6): a monitor accepts one
    /// central at a time across every gateway process using it (a lock file per monitor), and a second
    /// connection attempt is refused as busy and written to `collisions.log` there. Empty: no site.
    pub site_dir: String,
    /// Per-monitor behaviour on the simulated air (SPEC §7); monitors not listed behave well.
    #[serde(rename = "monitor", skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<SimMonitor>,
}

impl Default for Simulation {
    fn default() -> Self {
        Simulation {
            interval_ms: 1000,
            failure_rate: 0.0,
            foreign_advertisers: 0,
            site_dir: String::new(),
            monitors: Vec::new(),
        }
    }
}

/// What a simulated monitor broadcasts (SPEC §7).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Broadcasts {
    /// The encrypted reading frame and the iBeacon.
    Encrypted,
    /// Only the iBeacon (older BM2 firmware).
    Ibeacon,
    /// Nothing usable (BM7, some BM6 firmware): name and service only.
    None,
}

/// `[[simulation.monitor]]`: how one configured monitor behaves on the simulated air (SPEC §7).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimMonitor {
    pub mac: Mac,
    /// Signal strength as heard by this gateway (dBm); -127 = out of range.
    pub rssi: i16,
    /// false: accepts connections but never notifies (1004).
    pub answers: bool,
    /// false: connection attempts time out (1001).
    pub connectable: bool,
    /// true: another central holds the monitor (1007).
    pub busy: bool,
    pub broadcasts: Broadcasts,
    /// Days of its own log (one record every 2 minutes, HISTORY-NOTES §5.7.2) it holds when the air
    /// starts, 0–71 (a BM6 keeps about 71 days); records are added as time passes.
    pub history_days: u32,
}

impl Default for SimMonitor {
    fn default() -> Self {
        SimMonitor {
            mac: Mac([0; 6]),
            rssi: -67,
            answers: true,
            connectable: true,
            busy: false,
            broadcasts: Broadcasts::Encrypted,
            history_days: 0,
        }
    }
}

impl SimMonitor {
    /// Longest `history_days`: what a BM6 keeps (51200 records of 2 minutes, HISTORY-NOTES §5.7.2).
    pub const MAX_HISTORY_DAYS: u32 = 71;
}

/// RSSI that means "out of range" on the simulated air.
pub const OUT_OF_RANGE: i16 = -127;

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

/// `[cluster]` (SPEC §6): several gateways sharing one topic prefix and one fleet through the broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    pub enabled: bool,
    /// Seconds between this gateway's retained `hears` reports (SPEC §6: at most every 30 s; shorter only
    /// for tests). A monitor not heard for three of these is no longer reported as heard.
    pub report_interval: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            enabled: false,
            report_interval: 30,
        }
    }
}

/// `[history]` (SPEC §4, §5.7): downloading the monitors' own logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct History {
    /// Download the log after a gap, in `poll` and `stream` modes.
    pub enabled: bool,
    /// Days the first sync of a device reaches back (1–91: the monitor indexes at most 65535 records).
    pub initial_days: u32,
    /// Models whose history is read. BM7 and BM2 history is unverified on hardware (HISTORY-NOTES
    /// §5.7.8), so only BM6 by default.
    pub models: Vec<String>,
}

impl Default for History {
    fn default() -> Self {
        History {
            enabled: true,
            initial_days: 7,
            models: vec!["BM6".into()],
        }
    }
}

impl History {
    /// Longest `initial_days`: 65535 records of 2 minutes.
    pub const MAX_DAYS: u32 = 91;

    /// Whether `model`'s history is read (enabled, and the model listed).
    pub fn covers(&self, model: Model) -> bool {
        self.enabled
            && self
                .models
                .iter()
                .any(|m| m.eq_ignore_ascii_case(model.name()))
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=History::MAX_DAYS).contains(&self.initial_days) {
            return Err(format!(
                "history.initial_days = {} (allowed: 1 to {})",
                self.initial_days,
                History::MAX_DAYS
            ));
        }
        let mut seen = BTreeSet::new();
        for m in &self.models {
            let Some(model) = Model::by_name(m) else {
                return Err(format!(
                    "history.models: \"{m}\" is not a supported model ({})",
                    Model::all_names()
                ));
            };
            if !seen.insert(model.name()) {
                return Err(format!("history.models lists {} twice", model.name()));
            }
        }
        Ok(())
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
    /// With `[cluster]`: the `gateway.id` that serves this monitor whenever it is online (SPEC §6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
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
