//! The pipeline: creates the bounded channels, starts the named stage threads, reloads and stops them.
//!
//! ```text
//! ble ──BleEvent──▶ decode ──FleetEvent──▶ fleet ──Outbound──▶ mqtt ⇄ mqtt-conn ⇄ broker
//! ```
//! Shutdown cascades: the BLE thread forwards `Stopping`, each stage passes it on and ends, and the MQTT
//! stage runs the shutdown sequence. A reload travels the same way, so every stage applies it in order.
//! Must never: hold pipeline data itself, or let a stage end unnoticed (each one reports its exit).

use crate::ble::{self, BleStage};
use crate::config::Config;
use crate::devices::Model;
use crate::fleet::registry::Registry;
use crate::{decode, fleet, mqtt};
use crossbeam_channel::{Receiver, bounded};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Capacity of each channel between stages (messages). A bounded channel's slots are allocated and
/// written (their stamps) when it is made, so all of them are resident from the start: at 1024, the three
/// channels held 624 KiB (slots of 120, 184 and 320 bytes), 40 % of the heap at 200 monitors. 256 is
/// still over 100 ms at 2,000 readings/s in front of a stage that takes microseconds per message; a full
/// channel only makes the stage before it wait (nothing is dropped), and the MQTT stage, the last one,
/// drains its input into the outbox at all times.
const CHANNEL: usize = 256;

/// Why the pipeline cannot start.
#[derive(Debug)]
pub enum PipelineError {
    Ble(ble::BleError),
    Mqtt(mqtt::MqttError),
    Spawn(std::io::Error),
    StateDir(std::path::PathBuf, std::io::Error),
}

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PipelineError::Ble(e) => write!(f, "{e}"),
            PipelineError::Mqtt(e) => write!(f, "{e}"),
            PipelineError::Spawn(e) => write!(f, "cannot start a pipeline thread: {e}"),
            PipelineError::StateDir(p, e) => {
                write!(f, "gateway.state_dir {} is not usable: {e}", p.display())
            }
        }
    }
}

impl std::error::Error for PipelineError {}

/// The running pipeline.
pub struct Pipeline {
    ble: BleStage,
    decode: JoinHandle<()>,
    fleet: JoinHandle<()>,
    mqtt: mqtt::MqttStage,
    mqtt_timeout: Duration,
}

impl Pipeline {
    /// Start every stage for `config`.
    pub fn start(config: Arc<Config>) -> Result<Pipeline, PipelineError> {
        let started = Instant::now();
        let state_dir = &config.gateway.state_dir;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| PipelineError::StateDir(state_dir.clone(), e))?;
        mqtt::lock_state_dir(state_dir).map_err(PipelineError::Mqtt)?;
        let registry = Registry::load(state_dir);
        let memory = ble::Memory {
            auto: registry
                .devices
                .iter()
                .filter(|(_, d)| d.auto)
                .map(|(mac, d)| (*mac, d.device_type.as_deref().and_then(Model::by_name)))
                .collect(),
            known: registry.devices.keys().copied().collect(),
            synced: registry
                .devices
                .iter()
                .filter_map(|(mac, d)| Some((*mac, d.history.clone()?)))
                .collect(),
        };
        let (ble_tx, ble_rx) = bounded(CHANNEL);
        let (fleet_tx, fleet_rx) = bounded(CHANNEL);
        let (out_tx, out_rx) = bounded(CHANNEL);
        let inbox = ble::Inbox::new();
        let cluster = (inbox.facts(), fleet_tx.clone());
        let mqtt = mqtt::spawn(&config, out_rx, started, cluster).map_err(PipelineError::Mqtt)?;
        let bluetooth = ble::initial_state(&config);
        let fleet = fleet::spawn(Arc::clone(&config), registry, bluetooth, fleet_rx, out_tx)
            .map_err(PipelineError::Spawn)?;
        let decode = decode::spawn(ble_rx, fleet_tx).map_err(PipelineError::Spawn)?;
        let ble = BleStage::spawn(Arc::clone(&config), memory, ble_tx, inbox)
            .map_err(PipelineError::Ble)?;
        Ok(Pipeline {
            ble,
            decode,
            fleet,
            mqtt,
            mqtt_timeout: Duration::from_secs(config.mqtt.timeout),
        })
    }

    /// Becomes ready (disconnected) when the pipeline's last stage ended: after [`Pipeline::stop`], or on
    /// its own when a stage failed (a failure cascades down the pipeline by closing channels).
    pub fn ended(&self) -> &Receiver<()> {
        &self.mqtt.ended
    }

    /// Apply a reloaded configuration (devices, vehicles, intervals).
    pub fn reconfigure(&self, config: Arc<Config>) {
        self.ble.reconfigure(config);
    }

    /// Stop reading, flush to the broker (bounded by `mqtt.timeout`), and join every thread.
    pub fn stop(self, reason: &str) {
        let ble = self.ble.stop(reason);
        for (name, handle) in [("ble", ble), ("decode", self.decode), ("fleet", self.fleet)] {
            if handle.join().is_err() {
                log::error!("the {name} thread panicked");
            }
        }
        self.mqtt.join(self.mqtt_timeout);
    }
}

/// Called first by every stage thread after the BLE thread (decode, fleet, mqtt, mqtt-conn): run it
/// under `SCHED_BATCH`, the Linux policy for threads that are not interactive. A message handed to the
/// next stage then no longer preempts the thread that sent it: the sender finishes its batch, and the
/// receiver takes the whole batch in one wake-up instead of waking for each message. Measured at 2,000
/// readings/s (BENCHMARKS.md): context switches of the MQTT threads from ~0.7 to ~0.07 per reading and
/// ~4 µs less CPU per reading. Nothing waits longer than the sender's batch (microseconds); the BLE
/// thread, which keeps Bluetooth's timing, keeps the normal policy. Needs no privilege; where the
/// policy is refused (not Linux, a sandbox), the thread runs as before.
pub fn batch_policy() {
    #[cfg(target_os = "linux")]
    {
        // Zeroed, not a literal: musl's sched_param has more fields than glibc's (all zero = priority 0,
        // which SCHED_BATCH requires).
        // SAFETY: sched_param is plain integers, for which all-zero bytes are a valid value.
        let param: libc::sched_param = unsafe { std::mem::zeroed() };
        // The system call, not libc's wrapper: musl's `sched_setscheduler` always fails with ENOSYS (POSIX
        // makes it per process, Linux per thread), and the router build is musl.
        // SAFETY: sched_setscheduler on the calling thread (0) with a valid, initialised sched_param that
        // outlives the call.
        let set = unsafe {
            libc::syscall(
                libc::SYS_sched_setscheduler,
                0,
                libc::SCHED_BATCH,
                &param as *const libc::sched_param,
            )
        };
        if set != 0 {
            log::debug!(
                "SCHED_BATCH refused for this thread: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_stage_thread_runs_under_sched_batch() {
        let policy = std::thread::spawn(|| {
            super::batch_policy();
            // SAFETY: sched_getscheduler of the calling thread; no pointers.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_BATCH);
        // SAFETY: as above, on the test's own thread, which was left alone.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
