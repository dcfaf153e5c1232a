//! Thread "fleet": device state, vehicles, summaries, the registry, and the system-status timer.
//!
//! Owns: [`state::Fleet`] (pure logic), the persisted [`registry::Registry`], the status interval and passive
//! expiry timers. Must never: build topics or JSON (it sends [`Outbound`] values), touch Bluetooth, or block
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
        .spawn(move || run(Fleet::new(config, registry, bluetooth), &rx, &tx))
}

fn run(mut fleet: Fleet, rx: &Receiver<FleetEvent>, tx: &Sender<Outbound>) {
    let status_every = |f: &Fleet| Duration::from_secs(f.config().mqtt.status_interval);
    let mut next_status = Instant::now() + status_every(&fleet);
    let out = fleet.start(Utc::now());
    forward(&mut fleet, out, tx);
    loop {
        let until_expiry = fleet
            .next_expiry()
            .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO));
        let until_status = next_status.saturating_duration_since(Instant::now());
        let wait = until_expiry.map_or(until_status, |e| e.min(until_status));
        select! {
            recv(rx) -> event => {
                let event = event.unwrap_or_else(|_| FleetEvent::Notice(Notice::Stopping {
                    reason: "pipeline closed".into(),
                }));
                let stopping = matches!(event, FleetEvent::Notice(Notice::Stopping { .. }));
                let out = fleet.handle(event, Utc::now());
                forward(&mut fleet, out, tx);
                if stopping {
                    return;
                }
            }
            default(wait) => {
                let now = Utc::now();
                if Instant::now() >= next_status {
                    next_status = Instant::now() + status_every(&fleet);
                    let snapshot = Outbound::System(fleet.snapshot(now, true));
                    forward(&mut fleet, vec![snapshot], tx);
                }
                let out = fleet.expire(now);
                forward(&mut fleet, out, tx);
            }
        }
    }
}

/// Hand messages to the MQTT stage and persist the registry if they changed it.
fn forward(fleet: &mut Fleet, out: Vec<Outbound>, tx: &Sender<Outbound>) {
    for message in out {
        if tx.send(message).is_err() {
            log::error!("the MQTT stage has stopped; dropping fleet output");
            break;
        }
    }
    let state_dir = fleet.config().gateway.state_dir.clone();
    if let Some(registry) = fleet.take_dirty_registry()
        && let Err(e) = registry.save(&state_dir)
    {
        log::error!("{e}");
    }
}
