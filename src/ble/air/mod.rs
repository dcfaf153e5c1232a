//! The simulated air (`bluetooth.backend = "simulated"`, SPEC §7): a radio, not a shortcut. Every
//! `[[device]]` is played by a monitor of its model that advertises, accepts (or refuses) connections,
//! answers requests and streams notifications as SPEC §5 says, encrypted with the model's key; what it
//! does wrong is set per monitor by `[[simulation.monitor]]` (out of range, not connectable, busy, silent,
//! what it broadcasts) and drawn at random by `simulation.failure_rate`. Non-monitors advertise around it
//! (`simulation.foreign_advertisers`). The scheduler above it is the real one.
//!
//! What it models: advertising every `interval_ms` while a scan runs (an encrypted frame whose company id
//! changes with the ciphertext, alternating with the iBeacon), connection latency (200–600 ms), the
//! connection and data timeouts, one central per monitor, stream notifications every `interval_ms`, and
//! each monitor's own log (a record every 2 minutes, `history_days` of it at start), downloaded after a
//! poll's reading or on a stream link at the pace real units send it (`history.rs`; no live frames
//! meanwhile, HISTORY-NOTES §5.7.2).
//! What it does not: radio collisions, RSSI fading beyond a few dB, BlueZ caching or forgetting devices,
//! firmware quirks (the dbusmock and real-BlueZ harnesses cover those).
//! Must never: decide anything the scheduler decides, or decode a frame.

mod history;
mod monitor;
mod site;

use super::radio::{Radio, RadioEvent};
use super::scheduler::{Action, Heard, HistoryAsk, PollOutcome};
use crate::config::{Broadcasts, Config, OUT_OF_RANGE, SimMonitor};
use crate::devices::history::simulate::{self, SimLog};
use crate::devices::history::{History, records_to_ask};
use crate::devices::{APPLE, SERVICE_UUID, Source};
use crate::mac::Mac;
use crate::messages::{BluetoothState, LinkError, RawFrame};
use monitor::Monitor;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Connection set-up time: a uniform draw in this range (ms).
const CONNECT_MS: std::ops::Range<u64> = 200..600;
/// From the request to the reply notification (ms).
const REPLY_MS: u64 = 40;
/// The air's clock resolution: events are grouped into wake-ups this far apart.
const TICK: Duration = Duration::from_millis(10);
/// A foreign advertiser advertises this many times per `interval_ms`.
const FOREIGN_RATE: u32 = 2;

/// Something that will happen on the air at a given instant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// Monitor `mac` advertises (and schedules its next advert).
    Advert(Mac),
    /// Foreign advertiser `n` advertises.
    Foreign(u32),
    /// A poll of `mac` ends (generation, so that a reload or stop voids it).
    PollEnd(Mac, u64),
    /// The stream link to `mac` (generation) notifies, or fails to open.
    Stream(Mac, u64),
    /// A history download on the stream link to `mac` (generation) ends.
    StreamHistory(Mac, u64),
}

struct Played {
    monitor: Monitor,
    behaviour: SimMonitor,
    /// Alternates the encrypted frame and the iBeacon, as a BM2 does (the encrypted frame first).
    beacon_next: bool,
    /// The generation of the current link (poll or stream); 0 = none.
    link: u64,
    /// A stream link is open (connected).
    streaming: bool,
    /// The monitor's own log.
    log: SimLog,
    /// A history download runs on the stream link until then: no live notifications meanwhile.
    quiet_until: Option<Instant>,
}

pub struct Air {
    config: Arc<Config>,
    monitors: BTreeMap<Mac, Played>,
    queue: BinaryHeap<Reverse<(Instant, u64, Due)>>,
    seq: u64,
    generation: u64,
    scanning: bool,
    started: bool,
    /// The air has reported itself available.
    reported: bool,
    rng: fastrand::Rng,
    /// Poll outcomes waiting for their `PollEnd`, with how long their history download took.
    outcomes: HashMap<(Mac, u64), (PollOutcome, Duration)>,
    /// Stream-link history downloads waiting for their `StreamHistory`.
    histories: HashMap<(Mac, u64), History>,
    /// The origin of the [`TICK`] grid.
    epoch: Instant,
    /// The central slots shared with the other gateways of a site (`simulation.site_dir`).
    site: Option<site::Site>,
}

impl Air {
    pub fn new(config: Arc<Config>) -> Air {
        let mut air = Air {
            config: Arc::clone(&config),
            monitors: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            generation: 0,
            scanning: false,
            started: false,
            reported: false,
            rng: fastrand::Rng::with_seed(0x5eed),
            outcomes: HashMap::new(),
            histories: HashMap::new(),
            epoch: Instant::now(),
            site: site::Site::new(&config.simulation.site_dir, &config.gateway.id),
        };
        air.place(&config);
        air
    }

    /// (Re)place the monitors `config` names; a monitor that stays keeps its values.
    fn place(&mut self, config: &Config) {
        let mut old = std::mem::take(&mut self.monitors);
        let now = Instant::now();
        let interval = self.interval();
        for (i, d) in config.devices.iter().enumerate() {
            let behaviour = config
                .simulation
                .monitors
                .iter()
                .find(|m| m.mac == d.mac)
                .cloned()
                .unwrap_or(SimMonitor {
                    mac: d.mac,
                    ..SimMonitor::default()
                });
            let fresh = Monitor::new(d);
            let log = SimLog::new(
                simulate::seed(d.mac),
                chrono::Utc::now() - chrono::Duration::days(i64::from(behaviour.history_days)),
            );
            let played = match old.remove(&d.mac) {
                Some(p) if p.monitor.model == fresh.model => {
                    // The log stays unless its back-log was changed.
                    let log = if p.behaviour.history_days == behaviour.history_days {
                        p.log.clone()
                    } else {
                        log
                    };
                    Played {
                        behaviour,
                        log,
                        ..p
                    }
                }
                _ => {
                    // Spread the monitors' adverts over the interval, as a real fleet is.
                    let offset = interval.mul_f64(i as f64 / config.devices.len().max(1) as f64);
                    self.at(now + offset, Due::Advert(d.mac));
                    Played {
                        monitor: fresh,
                        behaviour,
                        beacon_next: true,
                        link: 0,
                        streaming: false,
                        log,
                        quiet_until: None,
                    }
                }
            };
            self.monitors.insert(d.mac, played);
        }
        if !self.started {
            self.started = true;
            let n = config.simulation.foreign_advertisers;
            let period = interval / FOREIGN_RATE;
            for i in 0..n {
                let offset = period.mul_f64(f64::from(i) / f64::from(n.max(1)));
                self.at(now + offset, Due::Foreign(i));
            }
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.config.simulation.interval_ms)
    }

    /// Schedule `what` at `when`, rounded up to the air's [`TICK`]: what falls in one tick happens in one
    /// wake-up of the thread (thousands of monitors would otherwise each cost a timer wake-up).
    fn at(&mut self, when: Instant, what: Due) {
        self.seq += 1;
        let since = when.saturating_duration_since(self.epoch);
        let ticks = since.as_micros().div_ceil(TICK.as_micros());
        let rounded = self.epoch + TICK * u32::try_from(ticks).unwrap_or(u32::MAX);
        self.queue.push(Reverse((rounded, self.seq, what)));
    }

    fn heard_monitor(&mut self, mac: Mac) -> Option<Heard> {
        let p = self.monitors.get_mut(&mac)?;
        if p.behaviour.rssi <= OUT_OF_RANGE {
            return None;
        }
        p.monitor.drift();
        let encrypted = match p.behaviour.broadcasts {
            Broadcasts::Encrypted => p.monitor.advert_frame(mac),
            _ => None,
        };
        let beacon = match p.behaviour.broadcasts {
            Broadcasts::None => None,
            _ => p.monitor.ibeacon(),
        };
        let entry = match (encrypted, beacon) {
            (Some(f), Some(b)) => {
                p.beacon_next = !p.beacon_next;
                if p.beacon_next {
                    Some((APPLE, b))
                } else {
                    Some((u16::from_le_bytes([f[0], f[1]]), f[2..].to_vec()))
                }
            }
            (Some(f), None) => Some((u16::from_le_bytes([f[0], f[1]]), f[2..].to_vec())),
            (None, Some(b)) => Some((APPLE, b)),
            (None, None) => None,
        };
        let rssi = p.behaviour.rssi + self.rng.i16(-3..=3);
        Some(Heard {
            mac,
            at: chrono::Utc::now(),
            name: Some(p.monitor.advertised_name().to_string()),
            service_uuids: vec![SERVICE_UUID.to_string()],
            rssi: Some(rssi.max(OUT_OF_RANGE + 1)),
            manufacturer: entry.into_iter().collect(),
            fresh: true,
        })
    }

    /// Start a poll (with a download of the log when `history` asks) or a stream link to `mac`: decide now
    /// how it ends and when.
    fn connect(&mut self, mac: Mac, stream: bool, history: Option<HistoryAsk>) {
        self.generation += 1;
        let generation = self.generation;
        let timeout = Duration::from_secs(self.config.bluetooth.connection_timeout);
        let wait = Duration::from_secs(self.config.bluetooth.data_wait_timeout);
        let latency = Duration::from_millis(self.rng.u64(CONNECT_MS));
        let fails = self.rng.f64() < self.config.simulation.failure_rate;
        let now = Instant::now();
        let Some(p) = self.monitors.get_mut(&mac) else {
            let outcome = PollOutcome::failed(None, LinkError::NotFound);
            self.outcomes
                .insert((mac, generation), (outcome, Duration::ZERO));
            self.at(now + latency, Due::PollEnd(mac, generation));
            return;
        };
        p.link = generation;
        let model = Some(p.monitor.model);
        let (after, result) = if p.behaviour.rssi <= OUT_OF_RANGE {
            (latency, Err(LinkError::NotFound))
        } else if !p.behaviour.connectable || fails {
            (timeout, Err(LinkError::Timeout))
        } else if p.behaviour.busy || self.site.as_mut().is_some_and(|s| !s.connect(mac)) {
            (latency, Err(LinkError::Busy))
        } else if !p.behaviour.answers {
            (latency + wait, Err(LinkError::NoData))
        } else {
            (latency + Duration::from_millis(REPLY_MS), Ok(()))
        };
        if stream {
            match result {
                Ok(()) => {
                    p.streaming = true;
                    self.at(now + after, Due::Stream(mac, generation));
                }
                Err(LinkError::NoData) => p.streaming = true,
                Err(e) => {
                    let outcome = PollOutcome::failed(model, e);
                    self.outcomes
                        .insert((mac, generation), (outcome, Duration::ZERO));
                    self.at(now + after, Due::Stream(mac, generation));
                }
            }
            return;
        }
        let mut took = Duration::ZERO;
        let outcome = match result {
            Ok(()) => {
                p.monitor.drift();
                // After the reading, in the same connection: the records the scheduler asked for.
                let history = history.map(|ask| {
                    let (h, t) = read_log(p, &ask, after);
                    took = t;
                    h
                });
                PollOutcome {
                    frames: vec![gatt(mac, p, &mut self.rng)],
                    result: Ok(()),
                    model,
                    history,
                }
            }
            Err(e) => PollOutcome::failed(model, e),
        };
        self.outcomes.insert((mac, generation), (outcome, took));
        self.at(now + after + took, Due::PollEnd(mac, generation));
    }

    /// Download the log on `mac`'s open stream link, between two live notifications.
    fn stream_history(&mut self, mac: Mac, ask: &HistoryAsk) {
        let now = Instant::now();
        let Some(p) = self.monitors.get_mut(&mac) else {
            return;
        };
        if p.link == 0 || !p.streaming {
            return;
        }
        let (h, took) = read_log(p, ask, Duration::ZERO);
        p.quiet_until = Some(now + took);
        let generation = p.link;
        self.histories.insert((mac, generation), h);
        self.at(now + took, Due::StreamHistory(mac, generation));
    }

    /// Turn one due item into an event, if it makes one.
    fn happen(&mut self, due: Due, when: Instant) -> Option<RadioEvent> {
        match due {
            Due::Advert(mac) => {
                if !self.monitors.contains_key(&mac) {
                    return None;
                }
                let next = when + self.interval();
                self.at(next, Due::Advert(mac));
                if !self.scanning {
                    return None;
                }
                self.heard_monitor(mac).map(RadioEvent::Heard)
            }
            Due::Foreign(n) => {
                if n >= self.config.simulation.foreign_advertisers {
                    return None;
                }
                let next = when + self.interval() / FOREIGN_RATE;
                self.at(next, Due::Foreign(n));
                self.scanning.then(|| RadioEvent::Advert(foreign_mac(n)))
            }
            Due::PollEnd(mac, generation) => {
                let (mut outcome, took) = self.outcomes.remove(&(mac, generation))?;
                // The reply arrived before the history download, which ends now with the poll.
                let replied =
                    chrono::Utc::now() - chrono::Duration::from_std(took).unwrap_or_default();
                for f in &mut outcome.frames {
                    f.received_at = replied;
                }
                if let Some(p) = self.monitors.get_mut(&mac)
                    && p.link == generation
                {
                    p.link = 0;
                    self.disconnect(mac);
                }
                Some(RadioEvent::PollDone(mac, outcome))
            }
            Due::Stream(mac, generation) => {
                if let Some((outcome, _)) = self.outcomes.remove(&(mac, generation)) {
                    self.disconnect(mac);
                    let error = outcome.result.err().unwrap_or(LinkError::NoData);
                    return Some(RadioEvent::StreamEnded(mac, error));
                }
                let interval = self.interval();
                let p = self.monitors.get_mut(&mac)?;
                if p.link != generation || !p.streaming {
                    return None;
                }
                if p.quiet_until.is_some_and(|t| when < t) {
                    // A history download holds the link: the 1 Hz stream pauses.
                    self.at(when + interval, Due::Stream(mac, generation));
                    return None;
                }
                p.monitor.drift();
                let frame = gatt(mac, p, &mut self.rng);
                self.at(when + interval, Due::Stream(mac, generation));
                Some(RadioEvent::StreamFrame(frame))
            }
            Due::StreamHistory(mac, generation) => {
                let h = self.histories.remove(&(mac, generation))?;
                let p = self.monitors.get_mut(&mac)?;
                if p.link != generation {
                    return None;
                }
                p.quiet_until = None;
                Some(RadioEvent::StreamHistory(mac, h))
            }
        }
    }
}

/// Play a download of `p`'s log for `ask`, starting `after` from now: what the read returns and how long
/// it holds the link.
fn read_log(p: &Played, ask: &HistoryAsk, after: Duration) -> (History, Duration) {
    let wall = chrono::Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
    let want = records_to_ask(ask.last.as_ref(), wall, ask.initial_days);
    let (h, took) = history::download(p.monitor.model, &p.log, want, wall);
    log::debug!(
        "{}: {} history record(s) of {want} asked for, read on the simulated air in {} ms",
        p.monitor.model,
        h.records.len(),
        took.as_millis()
    );
    (h, took)
}

fn gatt(mac: Mac, p: &Played, rng: &mut fastrand::Rng) -> RawFrame {
    RawFrame {
        mac,
        model: p.monitor.model,
        source: Source::Gatt,
        data: p.monitor.gatt_frame().to_vec(),
        rssi: Some(p.behaviour.rssi + rng.i16(-3..=3)),
        received_at: chrono::Utc::now(),
    }
}

/// The address of foreign advertiser `n` (locally administered, so never a real monitor's).
fn foreign_mac(n: u32) -> Mac {
    let b = n.to_be_bytes();
    Mac([0x06, 0xf0, b[0], b[1], b[2], b[3]])
}

impl Radio for Air {
    async fn next(&mut self) -> RadioEvent {
        if !self.started_reported() {
            return RadioEvent::Available(BluetoothState::Simulated);
        }
        loop {
            let Some(Reverse((when, _, _))) = self.queue.peek() else {
                return std::future::pending().await;
            };
            let when = *when;
            if when > Instant::now() {
                tokio::time::sleep_until(when).await;
            }
            let Some(Reverse((when, _, due))) = self.queue.pop() else {
                continue;
            };
            if let Some(event) = self.happen(due, when) {
                return event;
            }
        }
    }

    async fn details(&mut self, mac: Mac) -> Option<Heard> {
        if let Some(h) = self.heard_monitor(mac) {
            return Some(h);
        }
        // A phone or a watch: an Apple "nearby" advert, no name, no service.
        let n = u32::from_be_bytes([mac.0[2], mac.0[3], mac.0[4], mac.0[5]]);
        (mac.0[..2] == [0x06, 0xf0]).then(|| Heard {
            mac,
            at: chrono::Utc::now(),
            name: None,
            service_uuids: Vec::new(),
            rssi: Some(-80 + (n % 20) as i16),
            manufacturer: vec![(76, vec![0x10, 0x05, 0x01, 0x18, (n & 0xff) as u8])],
            fresh: false,
        })
    }

    async fn watch(&mut self, _mac: Mac) {
        // The air reports every advert of a monitor with its data already.
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::StartScan => self.scanning = true,
            Action::StopScan => self.scanning = false,
            Action::Poll { mac, history, .. } => self.connect(mac, false, history),
            Action::OpenStream { mac, .. } => self.connect(mac, true, None),
            Action::CloseStream { mac } => {
                if let Some(p) = self.monitors.get_mut(&mac) {
                    p.link = 0;
                    p.streaming = false;
                    p.quiet_until = None;
                }
                self.disconnect(mac);
            }
            Action::StreamHistory { mac, ask } => self.stream_history(mac, &ask),
            Action::Emit(_) => {}
        }
    }

    fn reconfigure(&mut self, config: &Arc<Config>) {
        self.config = Arc::clone(config);
        self.place(config);
    }

    async fn shutdown(&mut self) {
        for p in self.monitors.values_mut() {
            p.link = 0;
            p.streaming = false;
        }
        if let Some(s) = self.site.as_mut() {
            s.disconnect_all();
        }
        self.scanning = false;
    }
}

impl Air {
    /// The link to `mac` ended: free its central slot on a shared site.
    fn disconnect(&mut self, mac: Mac) {
        if let Some(s) = self.site.as_mut() {
            s.disconnect(mac);
        }
    }

    /// The air reports itself available once, first.
    fn started_reported(&mut self) -> bool {
        std::mem::replace(&mut self.reported, true)
    }
}
