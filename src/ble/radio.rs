//! The interface between the BLE event loop ([`super::driver`]) and a radio: BlueZ through bluer
//! ([`super::bluez`]) or the simulated air ([`super::air`]). A radio does I/O only — it scans, connects,
//! polls once, keeps stream links — and reports what happened; the [`super::scheduler::Scheduler`] decides.

use super::scheduler::{Action, Heard, PollOutcome};
use crate::config::Config;
use crate::devices::history::History;
use crate::mac::Mac;
use crate::messages::{BluetoothState, LinkError, RawFrame};
use std::sync::Arc;

/// What a radio reports.
#[derive(Debug)]
pub enum RadioEvent {
    /// The adapter (or the simulated air) is usable.
    Available(BluetoothState),
    /// The adapter or bluetoothd went away (why); the radio tries again by itself, with backoff.
    Lost(String),
    /// BlueZ refused to start discovery (why); the scheduler asks again later.
    ScanFailed(String),
    /// A device advertised; its details cost I/O ([`Radio::details`]) and are fetched only if wanted.
    Advert(Mac),
    /// A device advertised, with everything already known (a change signal carried it).
    Heard(Heard),
    /// One poll attempt ended.
    PollDone(Mac, PollOutcome),
    /// A notification on a stream link.
    StreamFrame(RawFrame),
    /// A download of the monitor's own log on its stream link ended (what was read, even if the link
    /// failed meanwhile).
    StreamHistory(Mac, History),
    /// A stream link ended, and why.
    StreamEnded(Mac, LinkError),
}

/// A radio. `next` must be cancel-safe: the event loop drops it when a command or a deadline comes first.
pub trait Radio {
    /// The next thing that happened on the air.
    async fn next(&mut self) -> RadioEvent;
    /// What `mac` advertises (name, services, RSSI, manufacturer data as cached), if it is still there.
    async fn details(&mut self, mac: Mac) -> Option<Heard>;
    /// Follow `mac`'s advertisements from now on (a device the scheduler reads): each change becomes a
    /// [`RadioEvent::Heard`] carrying what changed.
    async fn watch(&mut self, mac: Mac);
    /// Carry out a scheduler action (scans, polls, streams; never `Emit`).
    async fn act(&mut self, action: Action);
    /// A reloaded configuration (timeouts, simulated monitors).
    fn reconfigure(&mut self, config: &Arc<Config>);
    /// Close every link and the scan (at stop).
    async fn shutdown(&mut self);
}
