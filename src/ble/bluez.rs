//! The BlueZ backend (`bluetooth.backend = "bluez"`), through bluer on the BLE thread's runtime.
//!
//! One loop owns the adapter: it (re)acquires BlueZ, scans (initially, periodically, and continuously while
//! any device is `passive`), schedules polls (at most `max_concurrent_connections` at once), keeps `stream`
//! devices connected, and turns every failure into a SPEC §2.2 code. When the adapter disappears, is powered
//! off or bluetoothd goes away, every device reports 1006 and the loop waits (with backoff, no spinning)
//! until BlueZ is back.

use super::link::{StreamLink, address, link_error, poll, sighting};
use super::{Command, Target};
use crate::backoff::Backoff;
use crate::config::{Config, Mode};
use crate::devices::{self, Model, Source};
use crate::mac::Mac;
use crate::messages::{BleEvent, BluetoothState, LinkError, Notice, RawFrame, Sighting};
use bluer::{Adapter, AdapterEvent, AdapterProperty, DiscoveryFilter, DiscoveryTransport, Session};
use chrono::Utc;
use crossbeam_channel::Sender;
use futures::{Stream, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

/// Bounds of the wait before trying to re-acquire a lost adapter.
const REACQUIRE_FIRST: Duration = Duration::from_secs(1);
const REACQUIRE_CAP: Duration = Duration::from_secs(30);

type Events = Pin<Box<dyn Stream<Item = AdapterEvent> + Send>>;

/// Why the adapter loop ended.
enum Exit {
    Stop,
    AdapterLost(String),
}

/// The BLE thread's loop for the BlueZ backend.
pub(super) async fn run(
    config: Arc<Config>,
    targets: BTreeMap<Mac, Target>,
    tx: Sender<BleEvent>,
    mut commands: Receiver<Command>,
) {
    let mut ctx = Ctx {
        config,
        targets,
        tx,
        state: None,
    };
    let mut backoff = Backoff::new(REACQUIRE_FIRST, REACQUIRE_CAP);
    loop {
        let why = match acquire(&ctx.config.bluetooth.adapter).await {
            Ok(adapter) => {
                backoff.reset();
                match ctx.with_adapter(&adapter, &mut commands).await {
                    Exit::Stop => return,
                    Exit::AdapterLost(why) => why,
                }
            }
            Err(why) => why,
        };
        ctx.unavailable(&why);
        let pause = backoff.next_delay();
        let wake = Instant::now() + pause;
        loop {
            tokio::select! {
                command = commands.recv() => if !ctx.command(command) { return },
                () = sleep_until(wake) => break,
            }
        }
    }
}

/// Connect to BlueZ and find a powered adapter.
async fn acquire(name: &str) -> Result<Adapter, String> {
    let session = Session::new()
        .await
        .map_err(|e| format!("cannot reach BlueZ over D-Bus: {e}"))?;
    let adapter = session
        .adapter(name)
        .map_err(|e| format!("adapter {name}: {e}"))?;
    match adapter.is_powered().await {
        Ok(true) => {
            // LE only, and every advertisement reported (passive readings need the repeats).
            let filter = DiscoveryFilter {
                transport: DiscoveryTransport::Le,
                duplicate_data: true,
                ..Default::default()
            };
            adapter
                .set_discovery_filter(filter)
                .await
                .map_err(|e| format!("adapter {name}: cannot set the discovery filter: {e}"))?;
            Ok(adapter)
        }
        Ok(false) => Err(format!("adapter {name} is powered off")),
        Err(e) => Err(format!("adapter {name} not found ({e})")),
    }
}

struct Ctx {
    config: Arc<Config>,
    targets: BTreeMap<Mac, Target>,
    tx: Sender<BleEvent>,
    /// The last Bluetooth state reported (reported again only on change).
    state: Option<BluetoothState>,
}

/// A poll's result: the valid encrypted frame and the RSSI, or why there is none.
type PollResult = (
    Mac,
    Option<Model>,
    Result<(Vec<u8>, Option<i16>), LinkError>,
);

impl Ctx {
    fn send(&self, e: BleEvent) {
        if self.tx.send(e).is_err() {
            log::debug!("decode stage gone; dropping a BLE event");
        }
    }

    fn report(&mut self, state: BluetoothState) {
        if self.state != Some(state) {
            self.state = Some(state);
            self.send(BleEvent::Notice(Notice::Bluetooth(state)));
        }
    }

    fn unavailable(&mut self, why: &str) {
        if self.state != Some(BluetoothState::Unavailable) {
            log::warn!("Bluetooth unavailable: {why}");
            self.report(BluetoothState::Unavailable);
            for (mac, t) in &self.targets {
                self.send(BleEvent::Notice(Notice::PollFailed {
                    mac: *mac,
                    model: t.model,
                    error: LinkError::AdapterUnavailable,
                }));
            }
        } else {
            log::debug!("Bluetooth still unavailable: {why}");
        }
    }

    /// Apply a command; false when the thread must stop.
    fn command(&mut self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Reconfigure(config)) => {
                let auto: Vec<(Mac, Target)> = self
                    .targets
                    .iter()
                    .filter(|(m, _)| !self.config.devices.iter().any(|d| d.mac == **m))
                    .map(|(m, t)| (*m, t.clone()))
                    .collect();
                self.targets = super::targets(&config, auto.into_iter());
                self.config = Arc::clone(&config);
                self.send(BleEvent::Notice(Notice::Reconfigure(config)));
                true
            }
            Some(Command::Stop { reason }) => {
                self.send(BleEvent::Notice(Notice::Stopping { reason }));
                false
            }
            None => false,
        }
    }

    async fn with_adapter(&mut self, adapter: &Adapter, commands: &mut Receiver<Command>) -> Exit {
        let mut adapter_events: Events = match adapter.events().await {
            Ok(s) => Box::pin(s),
            Err(e) => return Exit::AdapterLost(e.to_string()),
        };
        log::info!("using Bluetooth adapter {}", adapter.name());
        self.report(BluetoothState::Active);
        let now = Instant::now();
        let scan = Duration::from_secs(self.config.discovery.scan_duration);
        let mut discovery: Option<Events> = None;
        let mut scan_until: Option<Instant> = None;
        let mut next_scan = if self.config.discovery.initial_scan {
            now
        } else {
            now + Duration::from_secs(self.config.discovery.periodic_interval)
        };
        let first_poll = if self.config.discovery.initial_scan {
            now + scan
        } else {
            now
        };
        let mut due: HashMap<Mac, Instant> =
            self.targets.keys().map(|m| (*m, first_poll)).collect();
        let mut polls: JoinSet<PollResult> = JoinSet::new();
        let mut streams: JoinSet<()> = JoinSet::new();
        self.start_streams(adapter, &mut streams);
        let mut polling: HashSet<Mac> = HashSet::new();
        let mut announced: HashSet<Mac> = HashSet::new();
        let mut last_advert: HashMap<Mac, Instant> = HashMap::new();
        loop {
            let now = Instant::now();
            let passive = self.targets.values().any(|t| t.mode == Mode::Passive);
            if discovery.is_none() && (now >= next_scan || passive) {
                match adapter.discover_devices_with_changes().await {
                    Ok(s) => discovery = Some(Box::pin(s)),
                    Err(e) if link_error(&e) == LinkError::AdapterUnavailable => {
                        polls.abort_all();
                        streams.abort_all();
                        return Exit::AdapterLost(e.to_string());
                    }
                    Err(e) => log::warn!("cannot start a scan: {e}"),
                }
                if now >= next_scan {
                    scan_until = Some(now + scan);
                    next_scan = now + Duration::from_secs(self.config.discovery.periodic_interval);
                    announced.clear();
                }
            }
            if let Some(end) = scan_until
                && now >= end
            {
                scan_until = None;
                if !passive {
                    discovery = None;
                }
            }
            // Start due polls, oldest first, within the connection limit.
            let limit = self.config.bluetooth.max_concurrent_connections as usize;
            let mut ready: Vec<(Instant, Mac)> = due
                .iter()
                .filter(|(m, t)| **t <= now && !polling.contains(*m))
                .map(|(m, t)| (*t, *m))
                .collect();
            ready.sort();
            for (_, mac) in ready {
                if polling.len() >= limit {
                    break;
                }
                let Some(target) = self.targets.get(&mac).cloned() else {
                    due.remove(&mac);
                    continue;
                };
                if target.mode != Mode::Poll {
                    due.remove(&mac);
                    continue;
                }
                polling.insert(mac);
                due.insert(mac, now + target.poll_interval);
                let adapter = adapter.clone();
                let cfg = Arc::clone(&self.config);
                polls.spawn(async move {
                    let result = poll(&adapter, mac, target.model, &cfg).await;
                    (mac, result.0, result.1)
                });
            }
            let next_due = due
                .iter()
                .filter(|(m, _)| !polling.contains(*m))
                .map(|(_, t)| *t)
                .min();
            let mut wake = next_due
                .unwrap_or(now + Duration::from_secs(3600))
                .min(next_scan);
            if let Some(end) = scan_until {
                wake = wake.min(end);
            }
            tokio::select! {
                command = commands.recv() => {
                    if !self.command(command) {
                        polls.abort_all();
                        streams.abort_all();
                        return Exit::Stop;
                    }
                    streams.abort_all();
                    self.start_streams(adapter, &mut streams);
                    for mac in self.targets.keys() {
                        due.entry(*mac).or_insert(now);
                    }
                    due.retain(|m, _| self.targets.contains_key(m));
                }
                event = adapter_events.next() => match event {
                    None => {
                        polls.abort_all();
                        streams.abort_all();
                        return Exit::AdapterLost("the adapter was removed".into());
                    }
                    Some(AdapterEvent::PropertyChanged(AdapterProperty::Powered(false))) => {
                        polls.abort_all();
                        streams.abort_all();
                        return Exit::AdapterLost("the adapter was powered off".into());
                    }
                    Some(_) => {}
                },
                Some(event) = next_event(&mut discovery) => {
                    if let AdapterEvent::DeviceAdded(addr) = event {
                        let mac = Mac(addr.0);
                        self.heard(adapter, mac, &mut announced, &mut last_advert, &mut due).await;
                    }
                }
                Some(done) = polls.join_next(), if !polls.is_empty() => {
                    if let Ok((mac, model, result)) = done {
                        polling.remove(&mac);
                        match result {
                            Ok((data, rssi)) => self.frame(mac, model, Source::Gatt, data, rssi),
                            Err(LinkError::AdapterUnavailable) => {
                                polls.abort_all();
                                streams.abort_all();
                                return Exit::AdapterLost(format!("polling {mac}: adapter unavailable"));
                            }
                            Err(error) => self.send(BleEvent::Notice(Notice::PollFailed { mac, model, error })),
                        }
                    }
                }
                () = sleep_until(wake) => {}
            }
        }
    }

    /// One long-lived task per `stream` device.
    fn start_streams(&self, adapter: &Adapter, streams: &mut JoinSet<()>) {
        for (mac, t) in &self.targets {
            if t.mode == Mode::Stream {
                let link = StreamLink {
                    adapter: adapter.clone(),
                    mac: *mac,
                    model: t.model,
                    interval: t.poll_interval,
                    config: Arc::clone(&self.config),
                    tx: self.tx.clone(),
                };
                streams.spawn(link.run());
            }
        }
    }

    fn frame(
        &self,
        mac: Mac,
        model: Option<Model>,
        source: Source,
        data: Vec<u8>,
        rssi: Option<i16>,
    ) {
        let Some(model) = model else { return };
        self.send(BleEvent::Frame(RawFrame {
            mac,
            model,
            source,
            data,
            rssi,
            received_at: Utc::now(),
        }));
    }

    /// A device advertised (or changed): announce monitors once per scan, take passive readings, and
    /// auto-configure newly found monitors.
    async fn heard(
        &mut self,
        adapter: &Adapter,
        mac: Mac,
        announced: &mut HashSet<Mac>,
        last_advert: &mut HashMap<Mac, Instant>,
        due: &mut HashMap<Mac, Instant>,
    ) {
        let Ok(device) = adapter.device(address(mac)) else {
            return;
        };
        let sighting = sighting(&device, mac).await;
        let target = self.targets.get(&mac).cloned();
        let model = target.as_ref().and_then(|t| t.model).or(sighting.model);
        if sighting.model.is_some() && announced.insert(mac) {
            self.send(BleEvent::Notice(Notice::Seen(sighting.clone())));
            if target.is_none() && self.config.discovery.auto_configure {
                let t = Target {
                    model: sighting.model,
                    mode: self.config.defaults.mode,
                    poll_interval: Duration::from_secs(self.config.defaults.poll_interval),
                };
                log::info!(
                    "polling newly found {} {mac}",
                    sighting.model.map_or("?", |m| m.name())
                );
                self.targets.insert(mac, t);
                due.insert(mac, Instant::now());
            }
        }
        let Some(target) = self.targets.get(&mac) else {
            return;
        };
        if target.mode != Mode::Passive {
            return;
        }
        let Some(model) = model else { return };
        let now = Instant::now();
        if last_advert
            .get(&mac)
            .is_some_and(|t| now < *t + target.poll_interval)
        {
            return;
        }
        if let Some(frame) = devices::advert_reading(model, mac, &sighting.manufacturer_data) {
            last_advert.insert(mac, now);
            self.frame(
                mac,
                Some(model),
                Source::Advertisement,
                frame.to_vec(),
                sighting.rssi,
            );
        }
    }
}

async fn next_event(discovery: &mut Option<Events>) -> Option<AdapterEvent> {
    match discovery {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Scan for `duration` and return every monitor seen (for `battery-hawk scan`).
pub(super) async fn scan(adapter_name: &str, duration: Duration) -> Result<Vec<Sighting>, String> {
    let adapter = acquire(adapter_name).await?;
    let mut events = adapter
        .discover_devices_with_changes()
        .await
        .map_err(|e| format!("cannot scan: {e}"))?;
    let mut found: BTreeMap<Mac, Sighting> = BTreeMap::new();
    let end = Instant::now() + duration;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(AdapterEvent::DeviceAdded(addr)) => {
                    let mac = Mac(addr.0);
                    if let Ok(device) = adapter.device(addr) {
                        let s = sighting(&device, mac).await;
                        if s.model.is_some() {
                            found.insert(mac, s);
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            () = sleep_until(end) => break,
        }
    }
    Ok(found.into_values().collect())
}

/// Connect once and read one reading (for `battery-hawk read`).
pub(super) async fn read(
    config: &Config,
    mac: Mac,
    model: Option<Model>,
) -> Result<(Model, Vec<u8>, Option<i16>), LinkError> {
    let adapter = acquire(&config.bluetooth.adapter).await.map_err(|e| {
        log::error!("{e}");
        LinkError::AdapterUnavailable
    })?;
    let (model, result) = poll(&adapter, mac, model, config).await;
    let (data, rssi) = result?;
    model
        .map(|m| (m, data, rssi))
        .ok_or_else(|| LinkError::BadData("unknown model".into()))
}
