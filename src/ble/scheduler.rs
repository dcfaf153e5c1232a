//! The BLE stage's decisions, without I/O: a plain state machine in the spirit of rumqttc's `MqttState`.
//!
//! Owns: when to scan, which monitor to connect to next (the poll queue, the connection limit, fairness,
//! retries with backoff), making sure BlueZ knows a monitor before connecting to it, passive throttling (at
//! most one reading per `poll_interval`, from the newest advertisement only), stream supervision,
//! auto-configuration (the only place that decides it) and the cache that makes foreign devices cheap.
//! Every input carries the current instant; every output is an [`Action`] for the radio loop, and
//! [`Scheduler::next_deadline`] says when to call [`Scheduler::tick`] next (always in the future, or `None`:
//! wait for an event). Must never: do I/O, read a clock (the radio stamps what it hears), decode a frame
//! (the decode stage does), or block.

use super::foreign::Foreign;
use crate::config::{Config, Mode};
use crate::devices::history::{History, Synced, day_batches, new_since};
use crate::devices::{self, Model, Source};
use crate::mac::Mac;
use crate::messages::{
    BleEvent, BluetoothState, HistoryOut, LinkError, Notice, RawFrame, Sighting,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
/// A polled monitor's own log is downloaded again (in the same connection, after the live reading) when
/// the last download is older than this: often enough that the 2-minute records fill every gap between
/// polls, rarely enough that the link (and the owner's phone app) is not held for it on every poll.
pub const HISTORY_GAP: Duration = Duration::from_secs(1800);
/// A passive device without a usable broadcast for this many poll intervals is reported (1003 or 1004).
pub const PASSIVE_SILENCE_INTERVALS: u32 = 3;

/// What the radio heard: a device's advertisement, with what BlueZ (or the simulated air) reports of it.
#[derive(Debug, Clone)]
pub struct Heard {
    pub mac: Mac,
    /// When it was received (wall clock, for the stamps of what it becomes: a reading, a sighting).
    pub at: chrono::DateTime<chrono::Utc>,
    pub name: Option<String>,
    pub service_uuids: Vec<String>,
    pub rssi: Option<i16>,
    /// Manufacturer data, company id → value.
    pub manufacturer: Vec<(u16, Vec<u8>)>,
    /// True when `manufacturer` was carried by a change received after the gateway started listening; false
    /// for a value read from BlueZ's cache (which may hold adverts from before the scan: never a reading).
    pub fresh: bool,
}

/// What the gateway remembers of earlier runs (the registry), for a new scheduler.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Auto-configured monitors: address and model.
    pub auto: Vec<(Mac, Option<Model>)>,
    /// Every address ever known: never auto-configured again.
    pub known: HashSet<Mac>,
    /// Where the last download of each monitor's own log ended.
    pub synced: HashMap<Mac, Synced>,
}

/// A request to download a monitor's own log after the live reading (SPEC §5.7).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryAsk {
    /// Where the last download ended (`None`: never synced: reach back `initial_days`).
    pub last: Option<Synced>,
    pub initial_days: u32,
}

/// How a poll ended: the frames to hand to the decode stage and the outcome.
#[derive(Debug, Clone)]
pub struct PollOutcome {
    /// The reading frame on success; on failure the frames that arrived but were no reading (so that the
    /// decode stage counts them as rejections).
    pub frames: Vec<RawFrame>,
    pub result: Result<(), LinkError>,
    /// The model the link used (it may have learned it from the advertisement).
    pub model: Option<Model>,
    /// The monitor's own log, when it was asked for (what was read before a failure, too).
    pub history: Option<History>,
}

impl Heard {
    /// `mac` heard at `at`, with nothing else known yet.
    pub fn new(mac: Mac, at: chrono::DateTime<chrono::Utc>) -> Heard {
        Heard {
            mac,
            at,
            name: None,
            service_uuids: Vec::new(),
            rssi: None,
            manufacturer: Vec::new(),
            fresh: false,
        }
    }
}

impl PollOutcome {
    /// A poll that ended in `error` with nothing received.
    pub fn failed(model: Option<Model>, error: LinkError) -> PollOutcome {
        PollOutcome {
            frames: Vec::new(),
            result: Err(error),
            model,
            history: None,
        }
    }
}

/// What the radio must do.
#[derive(Debug, Clone)]
pub enum Action {
    StartScan,
    StopScan,
    /// Connect, ask for one reading (and, with `history`, download the monitor's log in the same
    /// connection), disconnect: one attempt, ending in [`Scheduler::poll_done`].
    Poll {
        mac: Mac,
        model: Option<Model>,
        history: Option<HistoryAsk>,
    },
    /// Open a long-lived link that reports every notification through [`Scheduler::stream_frame`] and its end
    /// through [`Scheduler::stream_ended`].
    OpenStream {
        mac: Mac,
        model: Option<Model>,
        interval: Duration,
    },
    CloseStream {
        mac: Mac,
    },
    /// Hand this to the decode stage.
    Emit(BleEvent),
}

/// Where a monitor is in its cycle.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting for `due` (poll), or nothing to do (passive).
    Idle,
    /// Due, but BlueZ may have forgotten it: discovery runs until it is heard or `until` passes (1003).
    Finding { until: Instant },
    /// Heard and due: waiting for a connection slot (FIFO by `since`).
    Queued { since: Instant },
    /// A poll attempt or an open stream holds a connection slot.
    Connected,
    /// The attempt failed; the next one of the cycle waits until `at`.
    Retry { at: Instant },
    /// A stream link is closed; it is opened again at `at` (after being found).
    StreamClosed { at: Instant },
}

#[derive(Debug, Clone)]
struct Dev {
    model: Option<Model>,
    mode: Mode,
    interval: Duration,
    auto: bool,
    phase: Phase,
    /// Start of the next poll cycle (poll), or of the next passive silence check (passive).
    due: Instant,
    /// Attempt number within the current poll cycle (1-based; 0 between cycles).
    attempt: u32,
    cycle_started: Instant,
    last_heard: Option<Instant>,
    last_emit: Option<Instant>,
    /// The newest manufacturer data seen from this device (to tell a new advert from a repeated one).
    last_manufacturer: Vec<(u16, Vec<u8>)>,
    /// Passive: when the first fresh advert came, and the last one carrying an encrypted frame (a device
    /// that sends those is never published from its iBeacon).
    first_fresh: Option<Instant>,
    last_encrypted: Option<Instant>,
    /// A stream frame waiting for the end of the current interval (only the newest is kept).
    pending: Option<RawFrame>,
    stream_retry: Duration,
    rssi: Option<i16>,
    /// Where the last download of its own log ended, and when it was made (this run).
    synced: Option<Synced>,
    last_sync: Option<Instant>,
}

impl Dev {
    fn new(model: Option<Model>, mode: Mode, interval: Duration, auto: bool, now: Instant) -> Dev {
        Dev {
            model,
            mode,
            interval,
            auto,
            phase: if mode == Mode::Stream {
                Phase::StreamClosed { at: now }
            } else {
                Phase::Idle
            },
            due: if mode == Mode::Passive {
                now + interval * PASSIVE_SILENCE_INTERVALS
            } else {
                now
            },
            attempt: 0,
            cycle_started: now,
            last_heard: None,
            last_emit: None,
            last_manufacturer: Vec::new(),
            first_fresh: None,
            last_encrypted: None,
            pending: None,
            stream_retry: STREAM_RETRY_FIRST,
            rssi: None,
            synced: None,
            last_sync: None,
        }
    }

    fn heard_recently(&self, now: Instant) -> bool {
        self.last_heard
            .is_some_and(|t| now.saturating_duration_since(t) < FRESH)
    }

    fn holds_slot(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// This device's own next deadline, if it has one.
    fn deadline(&self) -> Option<Instant> {
        let pending = self
            .pending
            .as_ref()
            .and(self.last_emit)
            .map(|t| t + self.interval);
        let phase = match (&self.phase, self.mode) {
            (Phase::Idle, Mode::Poll | Mode::Passive) => Some(self.due),
            (Phase::Finding { until }, _) => Some(*until),
            (Phase::Retry { at }, _) | (Phase::StreamClosed { at }, _) => Some(*at),
            _ => None,
        };
        [pending, phase].into_iter().flatten().min()
    }
}

/// The settings of a device that, when changed by a reload, need its link reopened.
fn settings(d: &Dev) -> (Option<Model>, Mode, Duration) {
    (d.model, d.mode, d.interval)
}

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
    /// After [`Scheduler::stop`]: nothing starts any more.
    stopping: bool,
    out: Vec<Action>,
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
            stopping: false,
            out: Vec::new(),
            config: Arc::clone(&config),
        };
        let interval = secs(config.defaults.poll_interval);
        for (mac, model) in auto {
            let mut d = Dev::new(model, config.discovery.auto_mode, interval, true, now);
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
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// When [`Scheduler::tick`] has something to do next; `None`: only an event can change anything.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        let up = self.adapter_up();
        let scans = [self.next_scan, self.scan_until].into_iter().flatten();
        let devices = self
            .devices
            .values()
            .filter(|_| up)
            .filter_map(Dev::deadline);
        let forget = self.forget_deadlines();
        scans.chain(devices).chain(forget).min()
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
        if self.bluetooth != Some(state) {
            self.bluetooth = Some(state);
            self.emit(Notice::Bluetooth(state));
        }
        self.scanning = false;
        self.tick(now);
    }

    /// The adapter or bluetoothd went away: every device reports 1006 once, links and polls are gone.
    pub fn adapter_lost(&mut self, now: Instant) {
        let was_up = self.adapter_up();
        self.bluetooth = Some(BluetoothState::Unavailable);
        self.scanning = false;
        for d in self.devices.values_mut() {
            d.pending = None;
            d.attempt = 0;
            d.phase = match d.mode {
                Mode::Stream => Phase::StreamClosed { at: now },
                _ => Phase::Idle,
            };
            d.due = now;
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
        if self.stopping {
            return;
        }
        self.scan_windows(now);
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
        // BlueZ lists devices it remembers from earlier scans too; only an RSSI (set while the current
        // discovery receives the device) or a change signal shows the device is on the air now.
        if h.rssi.is_some() || h.fresh {
            d.last_heard = Some(now);
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
        if d.mode == Mode::Passive {
            self.passive_advert(mac, &h, now);
        }
        // Most adverts change no phase: only then is the fleet-wide work (slots, scanning) redone.
        if changed {
            self.start_queued(now);
            self.steer_discovery();
        }
    }

    /// A poll attempt ended.
    pub fn poll_done(&mut self, mac: Mac, outcome: PollOutcome, now: Instant) {
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

    /// A notification arrived on a stream link: the newest is handed on at most once per interval.
    pub fn stream_frame(&mut self, frame: RawFrame, now: Instant) {
        let Some(d) = self.devices.get_mut(&frame.mac) else {
            return;
        };
        if d.mode != Mode::Stream || d.phase != Phase::Connected {
            return;
        }
        d.stream_retry = STREAM_RETRY_FIRST;
        d.last_heard = Some(now);
        let free = d
            .last_emit
            .is_none_or(|t| now >= t + d.interval - slack(d.interval));
        if free {
            d.last_emit = Some(now);
            d.pending = None;
            self.out.push(Action::Emit(BleEvent::Frame(frame)));
        } else {
            d.pending = Some(frame);
        }
    }

    /// A stream link ended (dropped, refused, or its task failed): report it and open it again later.
    pub fn stream_ended(&mut self, mac: Mac, error: LinkError, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        if d.mode != Mode::Stream || d.phase != Phase::Connected {
            return;
        }
        let at = now + d.stream_retry;
        d.stream_retry = (d.stream_retry * 2).min(STREAM_RETRY_CAP);
        d.phase = Phase::StreamClosed { at };
        d.pending = None;
        let model = d.model;
        if error != LinkError::AdapterUnavailable && !self.stopping {
            self.failed(mac, model, error);
        }
        self.tick(now);
    }

    /// A new configuration (SIGHUP): only devices whose settings changed have their links reopened; devices
    /// removed from the configuration are never polled or adopted again in this run. The configuration then
    /// travels down the pipeline.
    pub fn reconfigure(&mut self, config: Arc<Config>, now: Instant) {
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

    // ----- internals -----

    fn emit(&mut self, n: Notice) {
        self.out.push(Action::Emit(BleEvent::Notice(n)));
    }

    fn failed(&mut self, mac: Mac, model: Option<Model>, error: LinkError) {
        self.emit(Notice::PollFailed { mac, model, error });
    }

    /// Bring the device table in line with `config` (configured devices win over auto-configured ones).
    fn apply_config(&mut self, config: &Config, now: Instant) {
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
                    self.devices
                        .insert(c.mac, Dev::new(model, mode, interval, false, now));
                }
            }
            self.known.insert(c.mac);
        }
    }

    fn identify(&mut self, h: &Heard, now: Instant) -> Option<devices::Identity> {
        let id = devices::classify(h.mac, h.name.as_deref(), &h.service_uuids, &h.manufacturer);
        if !self.devices.contains_key(&h.mac) {
            match id {
                None => self
                    .foreign
                    .remember(h.mac, now, super::foreign::FOREIGN_RECHECK),
                // A monitor we do not read: look at it again only now and then.
                Some(_) => self
                    .foreign
                    .remember(h.mac, now, super::foreign::MONITOR_RECHECK),
            }
        }
        id
    }

    /// Adopt a newly found monitor if the rules allow it; true if adopted.
    fn maybe_adopt(&mut self, mac: Mac, id: devices::Identity, now: Instant) -> bool {
        let d = &self.config.discovery;
        let autos = self.devices.values().filter(|d| d.auto).count();
        let adopt = d.auto_configure
            && id.confirmed()
            && !self.known.contains(&mac)
            && !self.removed.contains(&mac)
            && autos < d.max_auto_devices as usize;
        if !adopt {
            return false;
        }
        let mode = d.auto_mode;
        let interval = secs(self.config.defaults.poll_interval);
        log::info!(
            "adopting newly found {} {mac} ({})",
            id.model,
            mode.as_str()
        );
        self.known.insert(mac);
        self.devices
            .insert(mac, Dev::new(Some(id.model), mode, interval, true, now));
        self.emit(Notice::Adopted {
            mac,
            model: id.model,
            mode,
        });
        true
    }

    /// A passive device's advertisement: the newest encrypted frame (or, without one, the iBeacon) becomes
    /// a frame for the decode stage, at most once per interval. Only data carried by a change counts.
    fn passive_advert(&mut self, mac: Mac, h: &Heard, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        if h.manufacturer.is_empty() {
            return;
        }
        let previous = std::mem::replace(&mut d.last_manufacturer, h.manufacturer.clone());
        if !h.fresh {
            return;
        }
        let Some(model) = d.model else { return };
        let first_fresh = *d.first_fresh.get_or_insert(now);
        let newest = newest_entries(&previous, &h.manufacturer);
        let encrypted = newest
            .iter()
            .find_map(|(cid, v)| devices::advert_frame(*cid, v));
        if encrypted.is_some() {
            d.last_encrypted = Some(now);
        }
        // SPEC §5.4: the iBeacon (SoC only) serves a device whose broadcasts carry no encrypted frame:
        // none since it was first heard, for at least one interval (a BM2 alternates the two).
        let beacon_only =
            d.last_encrypted.is_none() && now >= first_fresh + d.interval.min(IBEACON_WAIT);
        let (source, data) = match encrypted {
            Some(frame) => (Source::Advertisement, frame.to_vec()),
            None if beacon_only => {
                let entries: Vec<(u16, Vec<u8>)> = newest.into_iter().cloned().collect();
                match devices::ibeacon_value(model, &entries) {
                    Some(v) => (Source::Ibeacon, v.to_vec()),
                    None => return,
                }
            }
            None => return,
        };
        if d.last_emit
            .is_some_and(|t| now < t + d.interval - slack(d.interval))
        {
            return;
        }
        d.last_emit = Some(now);
        d.due = now + d.interval * PASSIVE_SILENCE_INTERVALS;
        let event = BleEvent::Frame(RawFrame {
            mac,
            model,
            source,
            data,
            rssi: h.rssi,
            received_at: h.at,
        });
        self.out.push(Action::Emit(event));
    }

    /// Move one device's cycle on at `now`.
    fn advance(&mut self, mac: Mac, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
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
    fn start_queued(&mut self, now: Instant) {
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

    /// A download of `mac`'s log came back: publish what is new since the last one, oldest first, in
    /// batches of at most a day; remember where it ended.
    fn history_read(&mut self, mac: Mac, h: &History, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        let fresh = new_since(d.synced.as_ref(), h);
        d.last_sync = Some(now);
        if fresh.gap {
            log::info!("{mac}: its log does not continue the last download (reset or clock step)");
        }
        if let Some(next) = &fresh.next {
            d.synced = Some(next.clone());
        }
        let batches = day_batches(&fresh.records);
        let last = batches.len().saturating_sub(1);
        for (i, records) in batches.into_iter().enumerate() {
            let synced = if i == last { fresh.next.clone() } else { None };
            self.emit(Notice::History {
                out: HistoryOut { mac, records },
                synced,
            });
        }
    }

    fn end_cycle(&mut self, mac: Mac, now: Instant) {
        if let Some(d) = self.devices.get_mut(&mac) {
            d.attempt = 0;
            d.phase = Phase::Idle;
            d.due = (d.cycle_started + d.interval).max(now + MIN_GAP);
        }
    }

    /// Open and close scan windows (initial and periodic).
    fn scan_windows(&mut self, now: Instant) {
        if let Some(at) = self.next_scan
            && now >= at
        {
            self.scan_until = Some(now + secs(self.config.discovery.scan_duration));
            self.next_scan = self.periodic_after(now);
            self.announced.clear();
        }
        if let Some(end) = self.scan_until
            && now >= end
        {
            self.scan_until = None;
        }
    }

    fn periodic_after(&self, now: Instant) -> Option<Instant> {
        match self.config.discovery.periodic_interval {
            0 => None,
            s => Some(now + secs(s)),
        }
    }

    /// Discovery runs while a scan window is open, any device is passive, or any device is being found.
    fn steer_discovery(&mut self) {
        let wanted = self.adapter_up()
            && !self.stopping
            && (self.scan_until.is_some()
                || self
                    .devices
                    .values()
                    .any(|d| d.mode == Mode::Passive || matches!(d.phase, Phase::Finding { .. })));
        if wanted != self.scanning {
            self.scanning = wanted;
            self.out.push(if wanted {
                Action::StartScan
            } else {
                Action::StopScan
            });
        }
    }

    fn forget_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        let after = secs(self.config.discovery.forget_after);
        self.devices
            .values()
            .filter(|d| d.auto)
            .filter_map(move |d| d.last_heard.map(|t| t + after))
    }

    /// Auto-configured devices not heard for `forget_after` are forgotten (the fleet clears their state).
    fn forget(&mut self, now: Instant) {
        let after = secs(self.config.discovery.forget_after);
        let gone: Vec<Mac> = self
            .devices
            .iter()
            .filter(|(_, d)| d.auto && d.last_heard.is_some_and(|t| now >= t + after))
            .map(|(m, _)| *m)
            .collect();
        for mac in gone {
            if let Some(d) = self.devices.remove(&mac)
                && d.mode == Mode::Stream
                && d.holds_slot()
            {
                self.out.push(Action::CloseStream { mac });
            }
            log::info!("forgetting {mac}: not heard for {} s", after.as_secs());
            self.emit(Notice::Forgotten { mac });
        }
    }
}

/// Whether this poll also downloads the monitor's own log: a polled model the `[history]` section covers,
/// not downloaded for [`HISTORY_GAP`] in this run.
fn history_ask(d: &Dev, config: &Config, now: Instant) -> Option<HistoryAsk> {
    let model = d.model?;
    let due = d.last_sync.is_none_or(|t| now >= t + HISTORY_GAP);
    (d.mode == Mode::Poll && config.history.covers(model) && due).then(|| HistoryAsk {
        last: d.synced.clone(),
        initial_days: config.history.initial_days,
    })
}

/// Due now: connect at once if BlueZ surely still knows the device, else find it first.
fn find_or_queue(d: &Dev, now: Instant, timeout: Duration) -> Phase {
    if d.heard_recently(now) {
        Phase::Queued { since: now }
    } else {
        Phase::Finding {
            until: now + timeout,
        }
    }
}

/// The entries of `current` that are new or changed since `previous`; when nothing changed (the monitor
/// repeated its advert, and the change signal says it was received again) all of `current`.
fn newest_entries<'a>(
    previous: &[(u16, Vec<u8>)],
    current: &'a [(u16, Vec<u8>)],
) -> Vec<&'a (u16, Vec<u8>)> {
    let changed: Vec<&(u16, Vec<u8>)> = current
        .iter()
        .filter(|(cid, v)| !previous.iter().any(|(pc, pv)| pc == cid && pv == v))
        .collect();
    if changed.is_empty() {
        current.iter().collect()
    } else {
        changed
    }
}

/// How much earlier than a full interval after the last one a reading may be handed on: adverts and
/// notifications come at their own pace (about one a second), so "one per interval" compared exactly
/// would drop every other reading whenever an advert lands a hair before the interval is over.
fn slack(interval: Duration) -> Duration {
    interval / 20
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
