//! The BlueZ radio (`bluetooth.backend = "bluez"`), through bluer on the BLE thread's runtime: I/O only.
//!
//! Owns: acquiring the adapter (and again, with backoff, after it or bluetoothd went away: a liveness probe
//! notices a bluetoothd killed without a word), the discovery session (LE, every advertisement), following
//! the devices the scheduler reads (their property changes carry the newest manufacturer data), the poll
//! and stream link tasks (a panicked task frees its slot), and closing every link at stop. Must never:
//! decide when or what to poll, retry, or throttle — the scheduler does.

use super::link::{StreamLink, StreamReport, address, details, link_error, poll_once};
use super::radio::{Radio, RadioEvent};
use super::scheduler::{Action, Heard, HistoryAsk, PollOutcome};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::mac::Mac;
use crate::messages::{BluetoothState, LinkError, RawFrame, Sighting};
use bluer::{
    Adapter, AdapterEvent, AdapterProperty, DeviceEvent, DeviceProperty, DiscoveryFilter,
    DiscoveryTransport, Session,
};
use futures::stream::SelectAll;
use futures::{Stream, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::{Instant, sleep_until};

/// Bounds of the wait before trying to re-acquire a lost adapter.
const REACQUIRE_FIRST: Duration = Duration::from_secs(1);
const REACQUIRE_CAP: Duration = Duration::from_secs(30);
/// How often the adapter is asked whether it is still there (bluetoothd killed with SIGKILL says nothing).
const PROBE: Duration = Duration::from_secs(10);
/// How long closing one link may take at stop or on a close.
const DISCONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Stream notifications buffered between the link tasks and the event loop.
const STREAM_BUFFER: usize = 64;

type Events<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

pub struct Bluez {
    config: Arc<Config>,
    adapter: Option<Adapter>,
    /// Keeps the D-Bus connection of `adapter` alive.
    _session: Option<Session>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    adapter_events: Option<Events<AdapterEvent>>,
    discovery: Option<Events<AdapterEvent>>,
    watches: SelectAll<Events<(Mac, DeviceEvent)>>,
    watched: HashSet<Mac>,
    polls: JoinSet<(Mac, PollOutcome)>,
    poll_tasks: HashMap<Id, Mac>,
    streams: JoinSet<(Mac, LinkError)>,
    stream_tasks: HashMap<Id, Mac>,
    stream_aborts: HashMap<Mac, AbortHandle>,
    /// Each open stream link's inbox for history downloads (one at a time: the scheduler waits for the
    /// report before it asks again).
    stream_asks: HashMap<Mac, tokio::sync::mpsc::Sender<HistoryAsk>>,
    frames_tx: tokio::sync::mpsc::Sender<StreamReport>,
    frames_rx: tokio::sync::mpsc::Receiver<StreamReport>,
    probe: tokio::time::Interval,
    /// Events produced while carrying out an action, reported by the next `next`.
    pending: Vec<RadioEvent>,
}

impl Bluez {
    pub fn new(config: Arc<Config>) -> Bluez {
        let (frames_tx, frames_rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let mut probe = tokio::time::interval(PROBE);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Bluez {
            config,
            adapter: None,
            _session: None,
            backoff: Backoff::new(REACQUIRE_FIRST, REACQUIRE_CAP),
            retry_at: None,
            adapter_events: None,
            discovery: None,
            watches: SelectAll::new(),
            watched: HashSet::new(),
            polls: JoinSet::new(),
            poll_tasks: HashMap::new(),
            streams: JoinSet::new(),
            stream_tasks: HashMap::new(),
            stream_aborts: HashMap::new(),
            stream_asks: HashMap::new(),
            frames_tx,
            frames_rx,
            probe,
            pending: Vec::new(),
        }
    }

    /// Give up the adapter: every link and the scan are gone with it; try again after a backoff.
    fn lose(&mut self, why: String) -> RadioEvent {
        self.adapter = None;
        self._session = None;
        self.adapter_events = None;
        self.discovery = None;
        self.watches = SelectAll::new();
        self.watched.clear();
        self.polls.abort_all();
        self.streams.abort_all();
        self.stream_aborts.clear();
        self.stream_asks.clear();
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        RadioEvent::Lost(why)
    }

    async fn acquire(&mut self) -> RadioEvent {
        if let Some(at) = self.retry_at {
            sleep_until(at).await;
        }
        let name = self.config.bluetooth.adapter.clone();
        let (session, adapter) = match acquire(&name).await {
            Ok(a) => a,
            Err(why) => return self.lose(why),
        };
        let events = match adapter.events().await {
            Ok(s) => s,
            Err(e) => return self.lose(format!("adapter {name}: {e}")),
        };
        // Our own links left by a process that died mid-poll would make every poll "busy": close them.
        for d in &self.config.devices {
            if let Ok(device) = adapter.device(address(d.mac))
                && device.is_connected().await.unwrap_or(false)
            {
                log::info!("{}: closing a link left from before", d.mac);
                let _ = tokio::time::timeout(DISCONNECT_LIMIT, device.disconnect()).await;
            }
        }
        log::info!("using Bluetooth adapter {name}");
        self.adapter_events = Some(Box::pin(events));
        self.adapter = Some(adapter);
        self._session = Some(session);
        self.backoff.reset();
        self.retry_at = None;
        self.probe.reset();
        RadioEvent::Available(BluetoothState::Active)
    }

    async fn close_stream(&mut self, mac: Mac) {
        self.stream_asks.remove(&mac);
        if let Some(handle) = self.stream_aborts.remove(&mac) {
            handle.abort();
        }
        self.disconnect(mac).await;
    }

    async fn disconnect(&self, mac: Mac) {
        if let Some(adapter) = &self.adapter
            && let Ok(device) = adapter.device(address(mac))
        {
            match tokio::time::timeout(DISCONNECT_LIMIT, device.disconnect()).await {
                Ok(Err(e)) => log::debug!("{mac}: disconnect: {e}"),
                Err(_) => log::warn!("{mac}: disconnect did not finish"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// Connect to BlueZ and find a powered adapter; set LE discovery with every advertisement reported.
async fn acquire(name: &str) -> Result<(Session, Adapter), String> {
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
            Ok((session, adapter))
        }
        Ok(false) => Err(format!("adapter {name} is powered off")),
        Err(e) => Err(format!("adapter {name} not found ({e})")),
    }
}

async fn next_of<T>(s: &mut Option<Events<T>>) -> Option<T> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Radio for Bluez {
    async fn next(&mut self) -> RadioEvent {
        if let Some(e) = self.pending.pop() {
            return e;
        }
        if self.adapter.is_none() {
            return self.acquire().await;
        }
        loop {
            tokio::select! {
                event = next_of(&mut self.adapter_events) => match event {
                    None => return self.lose("the adapter was removed".into()),
                    Some(AdapterEvent::PropertyChanged(AdapterProperty::Powered(false))) => {
                        return self.lose("the adapter was powered off".into());
                    }
                    Some(_) => {}
                },
                event = next_of(&mut self.discovery) => match event {
                    Some(AdapterEvent::DeviceAdded(addr)) => return RadioEvent::Advert(Mac(addr.0)),
                    Some(AdapterEvent::DeviceRemoved(addr)) => {
                        self.watched.remove(&Mac(addr.0));
                    }
                    Some(_) => {}
                    None => self.discovery = None,
                },
                Some((mac, event)) = self.watches.next(), if !self.watches.is_empty() => {
                    let DeviceEvent::PropertyChanged(property) = event;
                    let heard = match property {
                        DeviceProperty::ManufacturerData(map) => Heard {
                            manufacturer: map.into_iter().collect(),
                            fresh: true,
                            ..Heard::new(mac, chrono::Utc::now())
                        },
                        DeviceProperty::Rssi(rssi) => Heard {
                            rssi: Some(rssi),
                            ..Heard::new(mac, chrono::Utc::now())
                        },
                        _ => continue,
                    };
                    return RadioEvent::Heard(heard);
                }
                Some(done) = self.polls.join_next_with_id(), if !self.polls.is_empty() => {
                    return match done {
                        Ok((id, (mac, outcome))) => {
                            self.poll_tasks.remove(&id);
                            if outcome.result == Err(LinkError::AdapterUnavailable) {
                                return self.lose(format!("polling {mac}: bluetoothd or the adapter is gone"));
                            }
                            RadioEvent::PollDone(mac, outcome)
                        }
                        Err(e) => {
                            let Some(mac) = self.poll_tasks.remove(&e.id()) else { continue };
                            if e.is_panic() {
                                log::error!("{mac}: the poll task panicked; its connection slot is free again");
                            }
                            self.disconnect(mac).await;
                            let why = if e.is_panic() { "the poll task panicked" } else { "the poll was cancelled" };
                            RadioEvent::PollDone(mac, PollOutcome::failed(None, LinkError::Failed(why.into())))
                        }
                    };
                }
                Some(done) = self.streams.join_next_with_id(), if !self.streams.is_empty() => {
                    let (mac, error) = match done {
                        Ok((id, ended)) => {
                            self.stream_tasks.remove(&id);
                            ended
                        }
                        Err(e) => {
                            let Some(mac) = self.stream_tasks.remove(&e.id()) else { continue };
                            if e.is_cancelled() {
                                continue;
                            }
                            log::error!("{mac}: the stream task panicked");
                            (mac, LinkError::Failed("the stream task panicked".into()))
                        }
                    };
                    self.stream_aborts.remove(&mac);
                    self.stream_asks.remove(&mac);
                    self.disconnect(mac).await;
                    if error == LinkError::AdapterUnavailable {
                        return self.lose(format!("stream link to {mac}: adapter unavailable"));
                    }
                    return RadioEvent::StreamEnded(mac, error);
                }
                Some(report) = self.frames_rx.recv() => return match report {
                    StreamReport::Frame(frame) => RadioEvent::StreamFrame(frame),
                    StreamReport::History(mac, h) => RadioEvent::StreamHistory(mac, h),
                },
                _ = self.probe.tick() => {
                    if let Some(adapter) = &self.adapter
                        && let Err(e) = adapter.is_powered().await
                        && link_error(&e) == LinkError::AdapterUnavailable
                    {
                        return self.lose(format!("bluetoothd stopped answering: {e}"));
                    }
                }
            }
        }
    }

    async fn details(&mut self, mac: Mac) -> Option<Heard> {
        let device = self.adapter.as_ref()?.device(address(mac)).ok()?;
        Some(details(&device, mac).await)
    }

    async fn watch(&mut self, mac: Mac) {
        if self.watched.contains(&mac) {
            return;
        }
        let Some(adapter) = &self.adapter else { return };
        let Ok(device) = adapter.device(address(mac)) else {
            return;
        };
        match device.events().await {
            Ok(events) => {
                self.watched.insert(mac);
                self.watches.push(Box::pin(events.map(move |e| (mac, e))));
            }
            Err(e) => log::debug!("{mac}: cannot follow its adverts: {e}"),
        }
    }

    async fn act(&mut self, action: Action) {
        let Some(adapter) = self.adapter.clone() else {
            if let Action::Poll { mac, model, .. } = action {
                let outcome = PollOutcome::failed(model, LinkError::AdapterUnavailable);
                self.pending.push(RadioEvent::PollDone(mac, outcome));
            }
            return;
        };
        match action {
            Action::StartScan => match adapter.discover_devices().await {
                Ok(s) => self.discovery = Some(Box::pin(s)),
                Err(e) if link_error(&e) == LinkError::AdapterUnavailable => {
                    let lost = self.lose(format!("cannot scan: {e}"));
                    self.pending.push(lost);
                }
                Err(e) => self.pending.push(RadioEvent::ScanFailed(e.to_string())),
            },
            Action::StopScan => self.discovery = None,
            Action::Poll {
                mac,
                model,
                history,
            } => {
                let config = Arc::clone(&self.config);
                let handle = self.polls.spawn(async move {
                    (mac, poll_once(&adapter, mac, model, &config, history).await)
                });
                self.poll_tasks.insert(handle.id(), mac);
            }
            Action::OpenStream {
                mac,
                model,
                interval,
            } => {
                let (asks_tx, asks) = tokio::sync::mpsc::channel(1);
                let link = StreamLink {
                    adapter,
                    mac,
                    model,
                    interval,
                    config: Arc::clone(&self.config),
                    frames: self.frames_tx.clone(),
                    asks,
                };
                self.stream_asks.insert(mac, asks_tx);
                let handle = self.streams.spawn(async move { (mac, link.run().await) });
                self.stream_tasks.insert(handle.id(), mac);
                self.stream_aborts.insert(mac, handle);
            }
            Action::CloseStream { mac } => self.close_stream(mac).await,
            Action::StreamHistory { mac, ask } => {
                // No link (it just ended): the scheduler learns that from the link's end.
                let sent = self.stream_asks.get(&mac).map(|tx| tx.try_send(ask));
                if !matches!(sent, Some(Ok(()))) {
                    log::debug!("{mac}: no stream link to download its log on");
                }
            }
            Action::Emit(_) => {}
        }
    }

    fn reconfigure(&mut self, config: &Arc<Config>) {
        self.config = Arc::clone(config);
    }

    async fn shutdown(&mut self) {
        self.discovery = None;
        let streams: Vec<Mac> = self.stream_aborts.keys().copied().collect();
        for mac in streams {
            self.close_stream(mac).await;
        }
        let polling: Vec<Mac> = self.poll_tasks.values().copied().collect();
        self.polls.abort_all();
        for mac in polling {
            self.disconnect(mac).await;
        }
    }
}

/// Scan for `duration` and return every monitor seen, with the newest reading-bearing advert of each
/// (`battery-hawk scan`): confirmed ones and name-only (`unconfirmed`) ones.
pub(super) async fn scan(adapter_name: &str, duration: Duration) -> Result<Vec<Sighting>, String> {
    let (_session, adapter) = acquire(adapter_name).await?;
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
                    let Ok(device) = adapter.device(addr) else { continue };
                    let h = details(&device, mac).await;
                    let Some(id) = crate::devices::classify(mac, h.name.as_deref(), &h.service_uuids, &h.manufacturer) else {
                        continue;
                    };
                    let carries_reading = h
                        .manufacturer
                        .iter()
                        .any(|(cid, v)| crate::devices::advert_frame(*cid, v).is_some());
                    let entry = found.entry(mac).or_insert_with(|| Sighting {
                        mac,
                        name: None,
                        model: Some(id.model),
                        confirmed: false,
                        rssi: None,
                        service_uuids: Vec::new(),
                        manufacturer_data: Vec::new(),
                        at: chrono::Utc::now(),
                    });
                    entry.confirmed |= id.confirmed();
                    if id.confirmed() {
                        entry.model = Some(id.model);
                    }
                    entry.name = h.name.or(entry.name.take());
                    entry.rssi = h.rssi.or(entry.rssi);
                    entry.service_uuids = h.service_uuids;
                    // Keep the newest advert that carries a reading (a BM2 alternates with its iBeacon).
                    if carries_reading || entry.manufacturer_data.is_empty() {
                        entry.manufacturer_data = h.manufacturer;
                    }
                    entry.at = chrono::Utc::now();
                }
                Some(_) => {}
                None => break,
            },
            () = sleep_until(end) => break,
        }
    }
    Ok(found.into_values().collect())
}

/// For the one-shot commands (`read`, `history`): the adapter, once `mac` is on the air. A device BlueZ
/// does not know now (it forgets unpaired devices ~30 s after a scan) is looked for with a scan of up to
/// `bluetooth.connection_timeout`; not heard by then is 1003.
pub(super) async fn open_known(config: &Config, mac: Mac) -> Result<(Session, Adapter), LinkError> {
    let (session, adapter) = acquire(&config.bluetooth.adapter).await.map_err(|e| {
        log::error!("{e}");
        LinkError::AdapterUnavailable
    })?;
    let limit = Duration::from_secs(config.bluetooth.connection_timeout);
    let mut discovery = adapter
        .discover_devices_with_changes()
        .await
        .map_err(|e| link_error(&e))?;
    let found = tokio::time::timeout(limit, async {
        while let Some(event) = discovery.next().await {
            if let AdapterEvent::DeviceAdded(addr) = event
                && addr == address(mac)
                && let Ok(device) = adapter.device(addr)
                && device.rssi().await.ok().flatten().is_some()
            {
                return true;
            }
        }
        false
    })
    .await;
    drop(discovery);
    if matches!(found, Ok(true)) {
        Ok((session, adapter))
    } else {
        Err(LinkError::NotFound)
    }
}

/// Connect once and read one reading (for `battery-hawk read`).
pub(super) async fn read(
    config: &Config,
    mac: Mac,
    model: Option<crate::devices::Model>,
) -> Result<RawFrame, LinkError> {
    let (_session, adapter) = open_known(config, mac).await?;
    let outcome = poll_once(&adapter, mac, model, config, None).await;
    outcome.result?;
    outcome.frames.into_iter().next().ok_or(LinkError::NoData)
}
