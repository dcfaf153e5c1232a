//! Thread "ble": everything that talks to monitors over the air, on a small current-thread tokio runtime.
//!
//! Owns: the Bluetooth backends ([`bluez`] through bluer, and the simulated monitors of [`sim`]), poll
//! scheduling, and the runtime. It reports encrypted frames and link failures as [`BleEvent`]s and never decodes, aggregates
//! or publishes. Must never: be imported for tokio or bluer by any other module (they live here alone), or
//! block on the broker (its only output is the bounded channel to the decode stage).

mod bluez;
mod history;
mod link;
mod sim;

use crate::config::{Backend, Config, Mode};
use crate::devices::{Model, Source};
use crate::mac::Mac;
use crate::messages::{BleEvent, BluetoothState, LinkError, RawFrame, Sighting};
use crossbeam_channel::Sender;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use history::Download;

/// A device the BLE thread reads, and how.
#[derive(Debug, Clone)]
struct Target {
    model: Option<Model>,
    mode: Mode,
    poll_interval: Duration,
}

/// Configured devices, plus `auto` ones (auto-configured earlier) that the config does not list.
fn targets(config: &Config, auto: impl Iterator<Item = (Mac, Target)>) -> BTreeMap<Mac, Target> {
    let mut map: BTreeMap<Mac, Target> = auto.collect();
    for d in &config.devices {
        map.insert(
            d.mac,
            Target {
                model: d.model(),
                mode: d.mode.unwrap_or(config.defaults.mode),
                poll_interval: Duration::from_secs(
                    d.poll_interval.unwrap_or(config.defaults.poll_interval),
                ),
            },
        );
    }
    map
}

/// Commands to the BLE thread. A tokio channel (not crossbeam) because the thread's async loop must wake on
/// it; only this module sees that.
#[derive(Debug)]
enum Command {
    Reconfigure(Arc<Config>),
    Stop { reason: String },
}

/// Why the BLE stage cannot start.
#[derive(Debug)]
pub enum BleError {
    Runtime(std::io::Error),
    /// BlueZ or the adapter cannot be used.
    Bluetooth(String),
}

impl std::fmt::Display for BleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BleError::Runtime(e) => write!(f, "cannot start the BLE runtime: {e}"),
            BleError::Bluetooth(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for BleError {}

/// The running BLE thread.
pub struct BleStage {
    commands: tokio::sync::mpsc::Sender<Command>,
    thread: JoinHandle<()>,
}

/// The state the Bluetooth side starts in, for the fleet's first system status.
pub fn initial_state(config: &Config) -> BluetoothState {
    match config.bluetooth.backend {
        Backend::Simulated => BluetoothState::Simulated,
        Backend::Bluez => BluetoothState::Unavailable,
    }
}

impl BleStage {
    /// Start the BLE thread for `config`'s devices and the auto-configured devices `auto` (address and
    /// model, from the registry), sending what it hears on `tx`.
    pub fn spawn(
        config: Arc<Config>,
        auto: Vec<(Mac, Option<Model>)>,
        tx: Sender<BleEvent>,
    ) -> Result<BleStage, BleError> {
        let (commands, rx) = tokio::sync::mpsc::channel(8);
        let runtime = runtime()?;
        let interval = Duration::from_secs(config.defaults.poll_interval);
        let auto = auto.into_iter().map(|(mac, model)| {
            let mode = config.defaults.mode;
            (
                mac,
                Target {
                    model,
                    mode,
                    poll_interval: interval,
                },
            )
        });
        let targets = targets(&config, auto);
        let thread = std::thread::Builder::new()
            .name("ble".into())
            .spawn(move || match config.bluetooth.backend {
                Backend::Simulated => runtime.block_on(sim::run(config, tx, rx)),
                Backend::Bluez => runtime.block_on(bluez::run(config, targets, tx, rx)),
            })
            .map_err(BleError::Runtime)?;
        Ok(BleStage { commands, thread })
    }

    /// Apply a new configuration (devices, intervals); it then travels down the pipeline.
    pub fn reconfigure(&self, config: Arc<Config>) {
        if self
            .commands
            .blocking_send(Command::Reconfigure(config))
            .is_err()
        {
            log::error!("the BLE thread has stopped; reload ignored");
        }
    }

    /// Stop reading; `Stopping { reason }` then travels down the pipeline. Returns the thread to join.
    pub fn stop(self, reason: &str) -> JoinHandle<()> {
        let reason = reason.to_string();
        if self
            .commands
            .blocking_send(Command::Stop { reason })
            .is_err()
        {
            log::error!("the BLE thread had already stopped");
        }
        self.thread
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, BleError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BleError::Runtime)
}

/// Scan with BlueZ for `duration` on `adapter` and list the monitors seen (`battery-hawk scan`).
pub fn scan(adapter: &str, duration: Duration) -> Result<Vec<Sighting>, BleError> {
    runtime()?
        .block_on(bluez::scan(adapter, duration))
        .map_err(BleError::Bluetooth)
}

/// Connect to `mac` once and return its reading's frame (`battery-hawk read`).
pub fn read(config: &Config, mac: Mac, model: Option<Model>) -> Result<RawFrame, LinkError> {
    let rt = runtime().map_err(|e| LinkError::Failed(e.to_string()))?;
    let (model, data, rssi) = rt.block_on(bluez::read(config, mac, model))?;
    Ok(RawFrame {
        mac,
        model,
        source: Source::Gatt,
        data,
        rssi,
        received_at: chrono::Utc::now(),
    })
}

/// Connect to `mac` once and download at most `want` records of its own log (`battery-hawk history`);
/// `keep_raw` keeps every decrypted block for the report.
pub fn history(
    config: &Config,
    mac: Mac,
    model: Option<Model>,
    want: u32,
    keep_raw: bool,
) -> Result<Download, LinkError> {
    let rt = runtime().map_err(|e| LinkError::Failed(e.to_string()))?;
    rt.block_on(history::download(config, mac, model, want, keep_raw))
}
