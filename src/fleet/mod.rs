//! Thread "fleet": device state, vehicles, summaries, the registry, and the system-status timer.
//!
//! Owns: [`state::Fleet`] (pure logic), the persisted [`registry::Registry`], the status interval timer
//! (monotonic; a passive device's silence is timed by the BLE scheduler, on the monotonic clock too). Must never: build topics or JSON (it sends [`Outbound`] values), touch Bluetooth, or block
//! on the broker (the MQTT stage always drains its channel into its outbox).

pub mod registry;
pub mod state;
pub mod summary;

use crate::config::Config;
use crate::messages::{BluetoothState, FleetEvent, Notice, Outbound};
use chrono::Utc;
use crossbeam_channel::{Receiver, Sender, select};
use registry::Registry;
use state::Fleet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Start the fleet thread. It ends after forwarding `Stopping` (or when its input closes).
pub fn spawn(
    config: Arc<Config>,
    registry: Registry,
    bluetooth: BluetoothState,
    rx: Receiver<FleetEvent>,
    tx: Sender<Outbound>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || {
            crate::pipeline::batch_policy();
            run(Fleet::new(config, registry, bluetooth), &rx, &tx)
        })
}

/// The registry is written at most this often (a burst of first sightings costs one write).
const REGISTRY_WRITE_DELAY: Duration = Duration::from_secs(1);

fn run(mut fleet: Fleet, rx: &Receiver<FleetEvent>, tx: &Sender<Outbound>) {
    let status_every = |f: &Fleet| Duration::from_secs(f.config().mqtt.status_interval);
    let mut next_status = Instant::now() + status_every(&fleet);
    let mut registry = RegistryWriter::default();
    let mut out = fleet.start(Utc::now());
    forward(&mut fleet, &mut out, tx, &mut registry);
    loop {
        let mut wait = next_status.saturating_duration_since(Instant::now());
        if let Some(due) = registry.due {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        select! {
            recv(rx) -> event => {
                let event = event.unwrap_or_else(|_| FleetEvent::Notice(Notice::Stopping {
                    reason: "pipeline closed".into(),
                }));
                let stopping = matches!(event, FleetEvent::Notice(Notice::Stopping { .. }));
                fleet.handle_into(event, Utc::now(), &mut out);
                forward(&mut fleet, &mut out, tx, &mut registry);
                if stopping {
                    registry.write(&fleet);
                    return;
                }
            }
            default(wait) => {
                let now = Utc::now();
                if Instant::now() >= next_status {
                    next_status = Instant::now() + status_every(&fleet);
                    out.push(Outbound::System(fleet.snapshot(now, true)));
                    forward(&mut fleet, &mut out, tx, &mut registry);
                }
                if registry.due.is_some_and(|d| d <= Instant::now()) {
                    registry.write(&fleet);
                }
            }
        }
    }
}

/// Hand messages to the MQTT stage (`out` is left empty); note a registry change for writing soon.
fn forward(
    fleet: &mut Fleet,
    out: &mut Vec<Outbound>,
    tx: &Sender<Outbound>,
    registry: &mut RegistryWriter,
) {
    for message in out.drain(..) {
        if tx.send(message).is_err() {
            log::error!("the MQTT stage has stopped; dropping fleet output");
            break;
        }
    }
    if fleet.take_dirty_registry() && registry.due.is_none() {
        registry.due = Some(Instant::now() + REGISTRY_WRITE_DELAY);
    }
}

/// Debounced persistence of the registry.
#[derive(Default)]
struct RegistryWriter {
    due: Option<Instant>,
}

impl RegistryWriter {
    fn write(&mut self, fleet: &Fleet) {
        if self.due.take().is_some()
            && let Err(e) = fleet.registry().save(&fleet.config().gateway.state_dir)
        {
            log::error!("{e}");
        }
    }
}
