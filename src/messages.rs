//! Every value that crosses a thread boundary. Plain data only: no channels, no handles, no JSON.
//!
//! ```text
//! ble ──BleEvent──▶ decode ──FleetEvent──▶ fleet ──Outbound──▶ mqtt
//! ```

use crate::config::{Config, Mode};
use crate::devices::{DecodeError, Measurement, Model, Source};
use crate::mac::Mac;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// What the BLE thread reports.
#[derive(Debug, Clone)]
pub enum BleEvent {
    /// An encrypted frame as received (GATT notification, or advertisement rebuilt to 16 bytes).
    Frame(RawFrame),
    /// Anything the decode stage passes on unchanged.
    Notice(Notice),
}

/// What the decode thread hands to the fleet.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    Reading(DecodedReading),
    /// A frame (or one block of a notification) that failed to decrypt or validate (SPEC §2.2 code 1005).
    Rejected {
        mac: Mac,
        model: Model,
        reason: DecodeError,
    },
    Notice(Notice),
    /// With `[cluster]`: a monitor's retained status as read from the broker (the MQTT stage parses it),
    /// for the summary of a vehicle whose devices several gateways serve (SPEC §6).
    Remote(RemoteStatus),
}

/// What the summary needs of a device another gateway serves, from its retained status (SPEC §2.2);
/// `None` fields were absent. A cleared status (empty payload) has `cleared` set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteStatus {
    pub mac: Mac,
    pub cleared: bool,
    pub connected: bool,
    /// Volts, percent, degrees Celsius, as the latest reading in the status.
    pub voltage: Option<f64>,
    pub state_of_charge: Option<f64>,
    pub temperature: Option<f64>,
    pub last_reading: Option<DateTime<Utc>>,
}

/// Events the decode stage does not touch.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A poll attempt (all its retries) failed.
    PollFailed {
        mac: Mac,
        model: Option<Model>,
        error: LinkError,
    },
    /// A monitor was seen advertising or found by a scan.
    Seen(Sighting),
    /// The BLE stage adopted a newly found confirmed monitor (`discovery.auto_configure`; SPEC §4). The BLE
    /// scheduler is the only place that decides auto-configuration; the fleet records it.
    Adopted { mac: Mac, model: Model, mode: Mode },
    /// An auto-configured monitor was not heard for `discovery.forget_after`: forget it and clear its state.
    Forgotten { mac: Mac },
    /// Records newly downloaded from a monitor's own log (SPEC §5.7), one batch of at most a day, and
    /// what to remember of the read for the next sync (the registry keeps it).
    History {
        out: HistoryOut,
        synced: Option<crate::devices::history::Synced>,
    },
    /// With `[cluster]`: what this gateway hears now (SPEC §6 `hears`), for the retained report.
    Hears(Vec<HeardMonitor>),
    /// With `[cluster]`: this gateway took a monitor (`rssi`: its smoothed RSSI as heard here) or let it go
    /// (`held: false`, after its link closed; `clear`: the retained owner still names this gateway and is
    /// to be cleared — never when it names another one).
    Owner {
        mac: Mac,
        held: bool,
        rssi: Option<i16>,
        clear: bool,
    },
    /// The Bluetooth side changed state.
    Bluetooth(BluetoothState),
    /// A new configuration (SIGHUP), passed down the pipeline so each stage applies it in order.
    Reconfigure(Arc<Config>),
    /// The pipeline is stopping; the last event every stage forwards.
    Stopping { reason: String },
}

#[derive(Debug, Clone)]
pub struct RawFrame {
    pub mac: Mac,
    pub model: Model,
    pub source: Source,
    pub data: Vec<u8>,
    pub rssi: Option<i16>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct DecodedReading {
    pub mac: Mac,
    pub model: Model,
    pub source: Source,
    pub measurement: Measurement,
    /// The decrypted block, or the iBeacon value as received (published as `extra.raw_data`).
    pub plain: Vec<u8>,
    pub rssi: Option<i16>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Sighting {
    pub mac: Mac,
    pub name: Option<String>,
    pub model: Option<Model>,
    /// Whether the model is confirmed (SPEC §5.3); a name-only match is not.
    pub confirmed: bool,
    pub rssi: Option<i16>,
    pub service_uuids: Vec<String>,
    /// Manufacturer data as BlueZ reports it: company id → bytes.
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    pub at: DateTime<Utc>,
}

/// State of the Bluetooth side (system status `components.bluetooth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BluetoothState {
    Active,
    Unavailable,
    Simulated,
}

impl BluetoothState {
    pub fn as_str(self) -> &'static str {
        match self {
            BluetoothState::Active => "active",
            BluetoothState::Unavailable => "unavailable",
            BluetoothState::Simulated => "simulated",
        }
    }
}

/// Why a device could not be read (SPEC §2.2 error codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    Timeout,
    Failed(String),
    NotFound,
    NoData,
    /// A `passive` device that broadcasts no reading (neither encrypted frame nor iBeacon).
    NoBroadcast,
    BadData(String),
    AdapterUnavailable,
    Busy,
}

impl LinkError {
    pub fn code(&self) -> u16 {
        match self {
            LinkError::Timeout => 1001,
            LinkError::Failed(_) => 1002,
            LinkError::NotFound => 1003,
            LinkError::NoData | LinkError::NoBroadcast => 1004,
            LinkError::BadData(_) => 1005,
            LinkError::AdapterUnavailable => 1006,
            LinkError::Busy => 1007,
        }
    }

    pub fn message(&self) -> String {
        match self {
            LinkError::Timeout => "Connection timeout".into(),
            LinkError::Failed(why) => format!("Connection failed: {why}"),
            LinkError::NotFound => "Device not found".into(),
            LinkError::NoData => "No data received".into(),
            LinkError::NoBroadcast => {
                "No data: the monitor broadcasts no reading (read it with mode = \"poll\")".into()
            }
            LinkError::BadData(why) => format!("Bad data: {why}"),
            LinkError::AdapterUnavailable => "Bluetooth adapter unavailable".into(),
            LinkError::Busy => "Device busy".into(),
        }
    }
}

/// What the fleet asks the MQTT stage to publish. The MQTT stage alone turns these into topics and JSON.
#[derive(Debug, Clone)]
pub enum Outbound {
    Reading(ReadingOut),
    DeviceStatus(DeviceStatusOut),
    Summary(SummaryOut),
    Associated(AssociationOut),
    Discovered(Sighting),
    System(SystemSnapshot),
    /// A device or vehicle left the configuration: its retained state is cleared.
    Removed(Removed),
    /// Records from a monitor's own log (SPEC §5.7), one batch of at most one day.
    History(HistoryOut),
    /// With `[cluster]`: this gateway's retained `hears` report (SPEC §6).
    Hears(HearsOut),
    /// With `[cluster]`: the retained `P/device/{mac}/owner` announcement, or its clearing.
    Owner(OwnerOut),
    Shutdown {
        reason: String,
    },
}

/// A batch for `P/device/{mac}/history`: records oldest first, spanning less than a day (make batches
/// with [`crate::devices::history::day_batches`]). Slots that are not readings are left out when rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryOut {
    pub mac: Mac,
    pub records: Vec<crate::devices::history::Record>,
}

/// One monitor in a `hears` report (SPEC §6).
#[derive(Debug, Clone, PartialEq)]
pub struct HeardMonitor {
    pub mac: Mac,
    /// Smoothed RSSI (dBm) of its advertisements as heard by this gateway.
    pub rssi: i16,
    /// When it was last heard (wall clock, as the radio stamped it).
    pub seen: DateTime<Utc>,
}

/// A `P/gateway/{gid}/hears` report (SPEC §6).
#[derive(Debug, Clone, PartialEq)]
pub struct HearsOut {
    pub at: DateTime<Utc>,
    pub monitors: Vec<HeardMonitor>,
}

/// `P/device/{mac}/owner` (SPEC §6): `claim` is this gateway's announcement, `None` its release: the
/// retained message is cleared when `clear`, else nothing is published (the topic names another gateway,
/// or the broker is away) and the MQTT stage only forgets the monitor's retained state.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerOut {
    pub mac: Mac,
    pub claim: Option<OwnerClaim>,
    pub clear: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OwnerClaim {
    /// dBm, smoothed, as heard by this gateway when it took the monitor.
    pub rssi: Option<i16>,
    /// When this gateway took the monitor.
    pub since: DateTime<Utc>,
}

/// What the other gateways of a cluster said on the broker (SPEC §6), read by the MQTT stage for the BLE
/// stage's ownership rule. Plain data: the MQTT stage alone parses topics and JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterFact {
    /// The broker connection came up (subscriptions sent) or went down.
    Broker { connected: bool },
    /// `P/gateway/{gid}/availability`.
    Availability { gateway: String, online: bool },
    /// `P/gateway/{gid}/hears`: the smoothed RSSI (dBm) of each monitor that gateway hears.
    Hears {
        gateway: String,
        monitors: Vec<(Mac, i16)>,
    },
    /// `P/device/{mac}/owner`: the gateway that announced itself, `None` when cleared.
    Owner { mac: Mac, gateway: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Removed {
    Device(Mac),
    Vehicle(String),
}

#[derive(Debug, Clone)]
pub struct ReadingOut {
    pub reading: DecodedReading,
    pub vehicle_id: Option<String>,
    pub capacity_ah: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatusOut {
    pub mac: Mac,
    pub at: DateTime<Utc>,
    pub reachable: bool,
    pub model: Option<Model>,
    pub vehicle_id: Option<String>,
    pub error: Option<(u16, String)>,
    pub last_reading_at: Option<DateTime<Utc>>,
    pub rssi: Option<i16>,
    pub consecutive_failures: u32,
    pub mode: Mode,
    /// The device's name (config, registry, or model and MAC) and poll interval (s), for observers.
    pub name: String,
    pub poll_interval: u64,
    /// The latest accepted reading (SPEC §2.2 `reading`, revision 2); `None` before the first one.
    pub reading: Option<LatestReading>,
}

/// A device's latest accepted reading, carried by every status so that the retained status is the
/// device's current state (SPEC §2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct LatestReading {
    pub model: Model,
    pub source: Source,
    pub measurement: Measurement,
    /// dBm, as received with the frame.
    pub rssi: Option<i16>,
    pub received_at: DateTime<Utc>,
    /// Nominal capacity (Ah) configured for the battery, if any.
    pub capacity_ah: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryOut {
    pub vehicle_id: String,
    pub name: String,
    pub at: DateTime<Utc>,
    pub total_devices: usize,
    pub connected_devices: usize,
    pub average_voltage: Option<f64>,
    pub total_capacity: f64,
    /// `None` while no verdict can be given: no devices, or a device not yet tried in this run.
    pub overall_health: Option<&'static str>,
    /// 0–1; `None` exactly when `overall_health` is.
    pub health_score: Option<f64>,
    pub devices: Vec<SummaryDevice>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryDevice {
    pub mac: Mac,
    pub name: String,
    pub model: Option<Model>,
    pub connected: bool,
    pub voltage: Option<f64>,
    pub state_of_charge: Option<f64>,
    pub temperature: Option<f64>,
    pub last_reading: Option<DateTime<Utc>>,
    /// Not yet tried in this run (no reading and no failure since the gateway started): not scored.
    pub pending: bool,
}

#[derive(Debug, Clone)]
pub struct AssociationOut {
    pub mac: Mac,
    pub vehicle_id: String,
    pub model: Option<Model>,
    pub new_vehicle: bool,
    pub at: DateTime<Utc>,
}

/// The fleet's part of the system status; the MQTT stage adds its own (outbox, connection).
#[derive(Debug, Clone, PartialEq)]
pub struct SystemSnapshot {
    pub at: DateTime<Utc>,
    pub running: bool,
    pub bluetooth: BluetoothState,
    pub devices_total: usize,
    pub devices_connected: usize,
    pub readings: u64,
    pub decode_errors: u64,
    pub connection_failures: u64,
}
