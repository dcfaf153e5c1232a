//! Thread "ble": everything that talks to monitors over the air, on a small current-thread tokio runtime.
//!
//! Owns: the runtime, the [`scheduler`] (every decision: scans, polls, the connection limit, retries,
//! passive throttling, streams, auto-configuration), the event loop that joins it to a radio ([`driver`]),
//! and the radios behind one interface ([`radio`]): BlueZ through bluer ([`bluez`], [`link`]) and the
//! simulated air ([`air`]). It reports encrypted frames and link failures as [`BleEvent`]s and never
//! decodes, aggregates or publishes. Must never: be imported for tokio or bluer by any other module (they
//! live here alone), or block on the broker (its only output is the bounded channel to the decode stage).

mod air;
mod bluez;
mod driver;
mod foreign;
mod history;
mod link;
mod radio;
mod scheduler;

use crate::config::{Backend, Config};
use crate::devices::Model;
use crate::mac::Mac;
use crate::messages::{BleEvent, BluetoothState, ClusterFact, LinkError, RawFrame, Sighting};
use crossbeam_channel::Sender;
pub use scheduler::Memory;
use scheduler::Scheduler;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use history::Download;

/// Commands to the BLE thread. A tokio channel (not crossbeam) because the thread's async loop must wake on
/// it; only this module sees that.
#[derive(Debug)]
enum Command {
    Reconfigure(Arc<Config>),
    Stop {
        reason: String,
    },
    /// What the other gateways of a cluster said on the broker (SPEC §6).
    Cluster(ClusterFact),
}

/// Room in the BLE thread's inbox: cluster facts arrive in bursts at every broker connection (one
/// retained owner per monitor, one report per gateway).
const INBOX: usize = 4096;

/// The BLE thread's inbox, made before the threads so that the MQTT stage can be handed a
/// [`FactSender`] before the BLE thread starts.
pub struct Inbox {
    tx: tokio::sync::mpsc::Sender<Command>,
    rx: tokio::sync::mpsc::Receiver<Command>,
}

impl Inbox {
    pub fn new() -> Inbox {
        let (tx, rx) = tokio::sync::mpsc::channel(INBOX);
        Inbox { tx, rx }
    }

    /// A handle that delivers cluster facts to the BLE thread.
    pub fn facts(&self) -> FactSender {
        FactSender {
            tx: self.tx.clone(),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox::new()
    }
}

/// Delivers cluster facts to the BLE thread without ever blocking the caller (the MQTT stage).
#[derive(Debug)]
pub struct FactSender {
    tx: tokio::sync::mpsc::Sender<Command>,
    dropped: std::sync::atomic::AtomicU64,
}

impl FactSender {
    /// Hand `fact` over. If the BLE thread is gone, nothing happens; if its inbox is full (it is stuck),
    /// the fact is dropped and counted: the first drop and every 1000th are logged.
    pub fn send(&self, fact: ClusterFact) {
        use tokio::sync::mpsc::error::TrySendError;
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Command::Cluster(fact)) {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n % 1000 == 0 {
                log::warn!(
                    "the BLE thread's inbox is full: {} cluster fact(s) dropped",
                    n + 1
                );
            }
        }
    }
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
    /// Start the BLE thread for `config`'s devices and what the registry remembers (`memory`:
    /// auto-configured devices, every address ever known, where each log download ended). What it hears
    /// goes to `tx`.
    pub fn spawn(
        config: Arc<Config>,
        memory: Memory,
        tx: Sender<BleEvent>,
        inbox: Inbox,
    ) -> Result<BleStage, BleError> {
        let Inbox { tx: commands, rx } = inbox;
        let runtime = runtime()?;
        let thread = std::thread::Builder::new()
            .name("ble".into())
            .spawn(move || {
                let scheduler = Scheduler::new(Arc::clone(&config), memory, Instant::now());
                // The radios are made inside the runtime: they own its timers.
                runtime.block_on(async {
                    match config.bluetooth.backend {
                        Backend::Simulated => {
                            let air = air::Air::new(Arc::clone(&config));
                            driver::drive(scheduler, air, tx, rx).await;
                        }
                        Backend::Bluez => {
                            let radio = bluez::Bluez::new(Arc::clone(&config));
                            driver::drive(scheduler, radio, tx, rx).await;
                        }
                    }
                });
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
    rt.block_on(bluez::read(config, mac, model))
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
