//! Thread "ble": everything that talks to monitors over the air, on a small current-thread tokio runtime.
//!
//! Owns: the Bluetooth backends (today the simulated monitors of [`sim`]), poll scheduling, and the
//! runtime. It reports encrypted frames and link failures as [`BleEvent`]s and never decodes, aggregates
//! or publishes. Must never: be imported for tokio by any other module (tokio lives here alone), or block
//! on the broker (its only output is the bounded channel to the decode stage).

mod sim;

use crate::config::{Backend, Config};
use crate::messages::{BleEvent, BluetoothState};
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

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
    /// The configured backend is not part of this build.
    BackendUnavailable(&'static str),
    Runtime(std::io::Error),
}

impl std::fmt::Display for BleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BleError::BackendUnavailable(why) => f.write_str(why),
            BleError::Runtime(e) => write!(f, "cannot start the BLE thread: {e}"),
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
    /// Start the BLE thread for `config`'s devices, sending what it hears on `tx`.
    pub fn spawn(config: Arc<Config>, tx: Sender<BleEvent>) -> Result<BleStage, BleError> {
        if config.bluetooth.backend == Backend::Bluez {
            return Err(BleError::BackendUnavailable(
                "bluetooth.backend = \"bluez\" is not available in this build yet; \
                 set bluetooth.backend = \"simulated\" (or run `battery-hawk demo`)",
            ));
        }
        let (commands, rx) = tokio::sync::mpsc::channel(8);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(BleError::Runtime)?;
        let thread = std::thread::Builder::new()
            .name("ble".into())
            .spawn(move || runtime.block_on(sim::run(config, tx, rx)))
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
