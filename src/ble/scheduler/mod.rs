//! The BLE stage's decisions, without I/O: a plain state machine in the spirit of rumqttc's `MqttState`.
//!
//! Owns: when to scan, which monitor to connect to next (the poll queue, the connection limit, fairness,
//! retries with backoff), making sure BlueZ knows a monitor before connecting to it, passive throttling (at
//! most one reading per `poll_interval`, from the newest advertisement only), stream supervision,
//! auto-configuration (the only place that decides it), when to download a monitor's own log, and the
//! cache that makes foreign devices cheap. Every input carries the current instant; every output is an
//! [`Action`] for the radio loop, and [`Scheduler::next_deadline`] says when to call [`Scheduler::tick`]
//! next (always in the future, or `None`: wait for an event). Must never: do I/O, read a clock (the radio
//! stamps what it hears), decode a frame (the decode stage does), or block.
//!
//! Files: this one holds the cycle (scans, polls, streams, the connection limit); `io.rs` what goes in and
//! out; `device.rs` one monitor's state; `heard.rs` what an advertisement decides (identification,
//! adoption, forgetting, passive readings); `history.rs` the log downloads; `scan.rs` when discovery runs;
//! `stream.rs` stream links.

mod cluster;
mod device;
mod heard;
mod history;
mod io;
mod scan;
mod stream;

pub use io::{Action, Heard, HistoryAsk, Memory, PollOutcome};

use super::foreign::Foreign;
use crate::config::{Config, Mode};
use crate::devices::Model;
use crate::mac::Mac;
use crate::messages::{BleEvent, BluetoothState, LinkError, Notice, Sighting};
use device::{Dev, Phase, find_or_queue, secs, settings};
use history::history_ask;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monitor heard within this long is still known to BlueZ, which forgets unpaired devices about 30 s
/// after discovery stops (bluetoothd's `TemporaryTimeout`), so it can be connected to without a scan.
pub const FRESH: Duration = Duration::from_secs(20);
/// Attempts per poll cycle before the device is reported unreachable until its next cycle.
pub const ATTEMPTS: u32 = 3;
/// Pause before the second attempt of a cycle; it doubles for each further attempt.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Smallest gap between the end of one poll cycle and the start of the next (a cycle that overran its
/// interval starts the next one after this, never at once).
pub const MIN_GAP: Duration = Duration::from_secs(1);
/// Bounds of the pause before a dropped stream link is opened again (doubling).
pub const STREAM_RETRY_FIRST: Duration = Duration::from_secs(1);
pub const STREAM_RETRY_CAP: Duration = Duration::from_secs(60);
/// How long a passive device must have been heard without an encrypted frame before its iBeacon is used
/// (at most; one poll interval when that is shorter).
pub const IBEACON_WAIT: Duration = Duration::from_secs(10);
/// A polled or streamed monitor's own log is downloaded again (in the same connection, after a live
/// reading) when the last download is older than this ("older than a few minutes", issue #16): with the
/// default 300 s poll interval every poll brings the two or three records logged since the last one, and
/// such an incremental read is short (measured on the real-BlueZ VM: 18 records in 123 ms, the link held
/// 3.15 s in all, as long as a plain poll), so the owner's phone app is not kept waiting for it.
pub const HISTORY_GAP: Duration = Duration::from_secs(300);
/// Pause before asking BlueZ again to start discovery after it refused.
pub const SCAN_RETRY: Duration = Duration::from_secs(5);
/// A passive device without a usable broadcast for this many poll intervals is reported (1003 or 1004).
pub const PASSIVE_SILENCE_INTERVALS: u32 = 3;

/// The BLE stage's state machine. See the module documentation.
pub struct Scheduler {
    config: Arc<Config>,
    devices: BTreeMap<Mac, Dev>,
    /// Every address the gateway ever knew (registry): never auto-configured (they were seen before).
    known: HashSet<Mac>,
    /// Devices a reload removed from the configuration: never adopted again in this run.
    removed: HashSet<Mac>,
    /// Monitors announced (`Notice::Seen`) since the current scan window began.
    announced: HashSet<Mac>,
    foreign: Foreign,
    bluetooth: Option<BluetoothState>,
    scanning: bool,
    scan_until: Option<Instant>,
    next_scan: Option<Instant>,
    /// A refused discovery start is tried again at this instant.
    scan_retry: Option<Instant>,
    /// After [`Scheduler::stop`]: nothing starts any more.
    stopping: bool,
    /// With `[cluster]`: the facts and rule that say which monitors this gateway holds (SPEC §6).
    cluster: Option<cluster::Cluster>,
    out: Vec<Action>,
    /// [`Scheduler::next_deadline`] as last computed (`None`: to be computed again). Finding it walks every
    /// device, and a passive fleet sends thousands of adverts a second, so it is kept between events that
    /// can only move deadlines later (see [`Scheduler::heard`]); it is then early at worst, and a tick
    /// that comes early does nothing.
    earliest: Option<Option<Instant>>,
}

impl Scheduler {
    /// A scheduler for `config`'s devices plus what the registry remembers (`memory`). Scans start at
    /// `now` when `discovery.initial_scan` is set.
    pub fn new(config: Arc<Config>, memory: Memory, now: Instant) -> Scheduler {
        let Memory {
            auto,
            known,
            mut synced,
        } = memory;
        let mut s = Scheduler {
            devices: BTreeMap::new(),
            known,
            removed: HashSet::new(),
            announced: HashSet::new(),
            foreign: Foreign::default(),
            bluetooth: None,
            scanning: false,
            scan_until: None,
            next_scan: None,
            scan_retry: None,
            stopping: false,
            cluster: cluster::Cluster::new(&config, now),
            out: Vec::new(),
            earliest: None,
            config: Arc::clone(&config),
        };
        let interval = secs(config.defaults.poll_interval);
        for (mac, model) in auto {
            let mut d = Dev::new(model, config.discovery.auto_mode, interval, true, now);
            d.held = !config.cluster.enabled;
            // Forgetting counts from the start of this run: the registry does not keep sightings.
            d.last_heard = Some(now);
            s.devices.insert(mac, d);
        }
        s.apply_config(&config, now);
        for (mac, d) in s.devices.iter_mut() {
            d.synced = synced.remove(mac);
        }
        s.next_scan = if config.discovery.initial_scan {
            Some(now)
        } else {
            s.periodic_after(now)
        };
        s
    }

    /// Actions produced since the last call, in order.
    #[cfg(test)]
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// Move what the scheduler decided into `into` (which must be empty) and keep `into`'s allocation
    /// for the next decisions: the event loop calls this after every event, thousands of times a second.
    pub fn swap_actions(&mut self, into: &mut Vec<Action>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.out, into);
    }

    /// When [`Scheduler::tick`] has something to do next; `None`: only an event can change anything.
    /// Never later than the true next deadline (it may be earlier after adverts; see `earliest`).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if let Some(known) = self.earliest {
            return known;
        }
        let next = self.compute_deadline();
        self.earliest = Some(next);
        next
    }

    /// The next deadline, from every device (O(devices)).
    pub(super) fn compute_deadline(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        let up = self.adapter_up();
        let scans = [self.next_scan, self.scan_until, self.scan_retry]
            .into_iter()
            .flatten();
        let devices = self
            .devices
            .values()
            .filter(|_| up)
            .filter_map(Dev::deadline);
        let forget = self.forget_deadlines();
        let cluster = self.cluster_deadline();
        scans.chain(devices).chain(forget).chain(cluster).min()
    }

    /// Whether the radio should read the details of a device it hears (false for addresses found not to
    /// be monitors, so that a busy neighbourhood costs almost nothing).
    pub fn wants_details(&mut self, mac: Mac, now: Instant) -> bool {
        self.devices.contains_key(&mac) || !self.foreign.ignored(mac, now)
    }

    /// The radio is usable (`Active`, or `Simulated`).
    pub fn adapter_up(&self) -> bool {
        matches!(
            self.bluetooth,
            Some(BluetoothState::Active | BluetoothState::Simulated)
        )
    }

    /// The adapter (or the simulated air) is ready.
    pub fn adapter_available(&mut self, state: BluetoothState, now: Instant) {
        self.earliest = None;
        if self.bluetooth != Some(state) {
            self.bluetooth = Some(state);
            self.emit(Notice::Bluetooth(state));
        }
        self.scanning = false;
        self.tick(now);
    }

    /// The adapter or bluetoothd went away: every device reports 1006 once, links and polls are gone.
    pub fn adapter_lost(&mut self, now: Instant) {
        self.earliest = None;
        let was_up = self.adapter_up();
        self.bluetooth = Some(BluetoothState::Unavailable);
        self.scanning = false;
        for d in self.devices.values_mut() {
            d.pending = None;
            d.attempt = 0;
            d.history_running = false;
            d.phase = match d.mode {
                Mode::Stream => Phase::StreamClosed { at: now },
                _ => Phase::Idle,
            };
            // Polls are due at once when the adapter is back; a passive device's silence counts anew.
            d.due = match d.mode {
                Mode::Passive => now + d.interval * PASSIVE_SILENCE_INTERVALS,
                _ => now,
            };
        }
        if was_up {
            self.emit(Notice::Bluetooth(BluetoothState::Unavailable));
            let macs: Vec<(Mac, Option<Model>)> =
                self.devices.iter().map(|(m, d)| (*m, d.model)).collect();
            for (mac, model) in macs {
                self.failed(mac, model, LinkError::AdapterUnavailable);
            }
        }
    }

    /// Time passed: start scans, polls and streams that are due, retry, expire, forget.
    pub fn tick(&mut self, now: Instant) {
        self.earliest = None;
        if self.stopping {
            return;
        }
        self.scan_windows(now);
        self.cluster_step(now);
        if self.adapter_up() {
            self.forget(now);
            let macs: Vec<Mac> = self.devices.keys().copied().collect();
            for mac in macs {
                self.advance(mac, now);
            }
            self.start_queued(now);
        }
        self.steer_discovery();
    }

    /// A device was heard. Classifies it (once, for devices that are not targets), announces monitors,
    /// adopts confirmed ones (`auto_configure`), takes passive readings from fresh advertisements.
    pub fn heard(&mut self, h: Heard, now: Instant) {
        if self.stopping {
            return;
        }
        let mac = h.mac;
        // A target whose model is known and that was announced in this window needs no classification
        // (it costs up to one AES decryption per model).
        let settled = self
            .devices
            .get(&mac)
            .is_some_and(|d| d.model.is_some() && self.announced.contains(&mac));
        let identity = if settled {
            None
        } else {
            self.identify(&h, now)
        };
        if let Some(id) = identity
            && self.announced.insert(mac)
        {
            self.emit(Notice::Seen(Sighting {
                mac,
                name: h.name.clone(),
                model: Some(id.model),
                confirmed: id.confirmed(),
                rssi: h.rssi,
                service_uuids: h.service_uuids.clone(),
                manufacturer_data: h.manufacturer.clone(),
                at: h.at,
            }));
        }
        let mut changed = false;
        if !self.devices.contains_key(&mac)
            && let Some(id) = identity
        {
            changed = self.maybe_adopt(mac, id, now);
        }
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        // An advert moves a device's deadlines only later (its silence check, its forgetting), unless it
        // is the first one heard (forgetting starts to count) or it changes a phase (below).
        if d.last_heard.is_none() {
            self.earliest = None;
        }
        // BlueZ lists devices it remembers from earlier scans too; only an RSSI (set while the current
        // discovery receives the device) or a change signal shows the device is on the air now.
        if h.rssi.is_some() || h.fresh {
            d.last_heard = Some(now);
            d.seen_at = Some(h.at);
        }
        if h.rssi.is_some() {
            d.rssi = h.rssi;
        }
        if d.model.is_none()
            && let Some(id) = identity.filter(|i| i.confirmed())
        {
            d.model = Some(id.model);
        }
        if let Phase::Finding { .. } = d.phase {
            d.phase = Phase::Queued { since: now };
            changed = true;
        }
        if let Some(rssi) = h.rssi
            && self.cluster.is_some()
        {
            self.cluster_heard(mac, rssi);
        }
        if self
            .devices
            .get(&mac)
            .is_some_and(|d| d.mode == Mode::Passive)
        {
            self.passive_advert(h, now);
        }
        // Most adverts change no phase: only then is the fleet-wide work (slots, scanning) redone.
        if changed {
            self.earliest = None;
            self.start_queued(now);
            self.steer_discovery();
        }
    }

    /// A poll attempt ended.
    pub fn poll_done(&mut self, mac: Mac, outcome: PollOutcome, now: Instant) {
        self.earliest = None;
        let Some(d) = self.devices.get_mut(&mac) else {
            // Removed by a reload while the poll ran: its frames would be a ghost's.
            self.tick(now);
            return;
        };
        if d.phase != Phase::Connected {
            self.tick(now);
            return;
        }
        if d.model.is_none() {
            d.model = outcome.model;
        }
        let model = d.model;
        let frames = outcome.frames;
        if let Some(h) = outcome.history {
            self.history_read(mac, &h, now);
        }
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        match outcome.result {
            Ok(()) => {
                d.last_emit = Some(now);
                self.end_cycle(mac, now);
                for f in frames {
                    self.out.push(Action::Emit(BleEvent::Frame(f)));
                }
            }
            Err(LinkError::AdapterUnavailable) => {
                // The radio reports the loss itself (adapter_lost); nothing to say per device.
                self.end_cycle(mac, now);
            }
            Err(LinkError::BadData(_)) if !frames.is_empty() => {
                // The decode stage reports the rejected frames (1005) and counts them.
                self.end_cycle(mac, now);
                for f in frames {
                    self.out.push(Action::Emit(BleEvent::Frame(f)));
                }
            }
            Err(LinkError::NotFound) if d.attempt < ATTEMPTS => {
                // BlueZ no longer knows the device (it forgot it, or lost its cache): find it again.
                let timeout = secs(self.config.bluetooth.connection_timeout);
                d.last_heard = None;
                d.attempt += 1;
                d.phase = Phase::Finding {
                    until: now + timeout,
                };
            }
            Err(e) => {
                let retryable = !matches!(e, LinkError::NotFound | LinkError::BadData(_));
                if retryable && d.attempt < ATTEMPTS {
                    let pause = RETRY_PAUSE.saturating_mul(1 << (d.attempt - 1).min(8));
                    d.phase = Phase::Retry { at: now + pause };
                } else {
                    self.end_cycle(mac, now);
                    self.failed(mac, model, e);
                }
            }
        }
        self.tick(now);
    }

    /// A new configuration (SIGHUP): only devices whose settings changed have their links reopened; devices
    /// removed from the configuration are never polled or adopted again in this run. The configuration then
    /// travels down the pipeline.
    pub fn reconfigure(&mut self, config: Arc<Config>, now: Instant) {
        self.earliest = None;
        let before: BTreeSet<Mac> = self
            .config
            .devices
            .iter()
            .map(|d| d.mac)
            .collect::<BTreeSet<_>>();
        let periodic_changed =
            config.discovery.periodic_interval != self.config.discovery.periodic_interval;
        self.config = Arc::clone(&config);
        for mac in &before {
            if !config.devices.iter().any(|d| d.mac == *mac) {
                self.removed.insert(*mac);
                self.known.insert(*mac);
                if let Some(d) = self.devices.remove(mac)
                    && d.mode == Mode::Stream
                    && d.holds_slot()
                {
                    self.out.push(Action::CloseStream { mac: *mac });
                }
            }
        }
        self.apply_config(&config, now);
        if periodic_changed {
            self.next_scan = self.periodic_after(now);
        }
        self.emit(Notice::Reconfigure(config));
        self.tick(now);
    }

    /// Stop: close every stream and the scan. Nothing is started afterwards.
    pub fn stop(&mut self) {
        self.earliest = None;
        self.stopping = true;
        let open: Vec<Mac> = self
            .devices
            .iter()
            .filter(|(_, d)| d.mode == Mode::Stream && d.holds_slot())
            .map(|(m, _)| *m)
            .collect();
        for mac in open {
            self.out.push(Action::CloseStream { mac });
        }
        if self.scanning {
            self.scanning = false;
            self.out.push(Action::StopScan);
        }
    }

    /// Connections held now (polls and open streams), for tests and the limit.
    pub fn connections(&self) -> usize {
        self.devices.values().filter(|d| d.holds_slot()).count()
    }

    /// Whether the gateway reads `mac` (configured or auto-configured).
    pub fn is_target(&self, mac: Mac) -> bool {
        self.devices.contains_key(&mac)
    }

    /// Devices read now (configured and auto-configured), with their mode.
    #[cfg(test)]
    pub fn targets(&self) -> impl Iterator<Item = (Mac, Mode)> + '_ {
        self.devices.iter().map(|(m, d)| (*m, d.mode))
    }

    pub(super) fn emit(&mut self, n: Notice) {
        self.out.push(Action::Emit(BleEvent::Notice(n)));
    }

    pub(super) fn failed(&mut self, mac: Mac, model: Option<Model>, error: LinkError) {
        self.emit(Notice::PollFailed { mac, model, error });
    }

    /// Bring the device table in line with `config` (configured devices win over auto-configured ones).
    pub(super) fn apply_config(&mut self, config: &Config, now: Instant) {
        for c in &config.devices {
            let mode = c.mode.unwrap_or(config.defaults.mode);
            let interval = secs(c.poll_interval.unwrap_or(config.defaults.poll_interval));
            let model = c.model();
            match self.devices.get_mut(&c.mac) {
                Some(d) => {
                    let old = settings(d);
                    d.auto = false;
                    d.model = model.or(d.model);
                    d.mode = mode;
                    d.interval = interval;
                    if settings(d) != old {
                        let was_streaming = old.1 == Mode::Stream && d.holds_slot();
                        if was_streaming {
                            self.out.push(Action::CloseStream { mac: c.mac });
                            d.history_running = false;
                        }
                        if !(d.phase == Phase::Connected && old.1 == Mode::Poll) {
                            let fresh = Dev::new(d.model, mode, interval, false, now);
                            d.phase = fresh.phase;
                            d.due = fresh.due;
                            d.pending = None;
                        }
                    }
                }
                None => {
                    let mut d = Dev::new(model, mode, interval, false, now);
                    d.held = self.cluster.is_none();
                    self.devices.insert(c.mac, d);
                }
            }
            self.known.insert(c.mac);
        }
    }

    /// Move one device's cycle on at `now`.
    pub(super) fn advance(&mut self, mac: Mac, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        if !d.held {
            return;
        }
        if let Some(t) = d.last_emit
            && d.pending.is_some()
            && now >= t + d.interval
        {
            d.last_emit = Some(now);
            let f = d.pending.take();
            self.out.extend(f.map(|f| Action::Emit(BleEvent::Frame(f))));
        }
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        let timeout = secs(self.config.bluetooth.connection_timeout);
        match (d.mode, d.phase.clone()) {
            (Mode::Poll, Phase::Idle) if now >= d.due => {
                d.attempt = 1;
                d.cycle_started = now;
                d.phase = find_or_queue(d, now, timeout);
            }
            (Mode::Passive, Phase::Idle) if now >= d.due => {
                // No usable broadcast for several intervals: say why instead of staying silent.
                let error = if d.heard_recently(now) {
                    LinkError::NoBroadcast
                } else {
                    LinkError::NotFound
                };
                d.due = now + d.interval * PASSIVE_SILENCE_INTERVALS;
                let model = d.model;
                self.failed(mac, model, error);
            }
            (_, Phase::Finding { until }) if now >= until => {
                let model = d.model;
                if d.mode == Mode::Stream {
                    d.phase = Phase::StreamClosed {
                        at: now + d.stream_retry,
                    };
                    d.stream_retry = (d.stream_retry * 2).min(STREAM_RETRY_CAP);
                } else {
                    self.end_cycle(mac, now);
                }
                self.failed(mac, model, LinkError::NotFound);
            }
            (_, Phase::Retry { at }) if now >= at => {
                d.attempt += 1;
                d.phase = find_or_queue(d, now, timeout);
            }
            (Mode::Stream, Phase::StreamClosed { at }) if now >= at => {
                d.phase = find_or_queue(d, now, timeout);
            }
            _ => {}
        }
    }

    /// Give free connection slots to queued devices, longest-waiting first.
    pub(super) fn start_queued(&mut self, now: Instant) {
        let limit = self.config.bluetooth.max_concurrent_connections as usize;
        let mut queued: Vec<(Instant, Mac)> = self
            .devices
            .iter()
            .filter_map(|(m, d)| match d.phase {
                Phase::Queued { since } => Some((since, *m)),
                _ => None,
            })
            .collect();
        queued.sort();
        for (_, mac) in queued {
            if self.connections() >= limit {
                return;
            }
            let Some(d) = self.devices.get_mut(&mac) else {
                continue;
            };
            if !d.heard_recently(now) {
                // Not heard for a while: BlueZ may have forgotten it again.
                let timeout = secs(self.config.bluetooth.connection_timeout);
                d.phase = Phase::Finding {
                    until: now + timeout,
                };
                continue;
            }
            d.phase = Phase::Connected;
            let action = match d.mode {
                Mode::Stream => Action::OpenStream {
                    mac,
                    model: d.model,
                    interval: d.interval,
                },
                _ => Action::Poll {
                    mac,
                    model: d.model,
                    history: history_ask(d, &self.config, now),
                },
            };
            self.out.push(action);
        }
    }

    pub(super) fn end_cycle(&mut self, mac: Mac, now: Instant) {
        if let Some(d) = self.devices.get_mut(&mac) {
            d.attempt = 0;
            d.phase = Phase::Idle;
            d.due = (d.cycle_started + d.interval).max(now + MIN_GAP);
        }
    }
}

#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod tests;
