//! One link to one monitor: a poll (connect, subscribe, ask, take the first valid reading, disconnect),
//! a long-lived `stream` link, and what a device advertises. Used by the adapter loop in `bluez.rs`;
//! every failure comes back as a SPEC §2.2 [`LinkError`], never as a panic.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::devices::{self, Decoded, Model, Source};
use crate::mac::Mac;
use crate::messages::{BleEvent, LinkError, Notice, RawFrame, Sighting};
use bluer::gatt::WriteOp;
use bluer::gatt::remote::{Characteristic, CharacteristicWriteRequest};
use bluer::{Adapter, Address, Device, ErrorKind, Uuid};
use chrono::Utc;
use crossbeam_channel::Sender;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout};

/// Attempts per poll before the device counts as unreachable until its next poll.
const ATTEMPTS: u32 = 3;
/// Pause between attempts of one poll (doubling).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often to look whether services were resolved after connecting.
const RESOLVE_CHECK: Duration = Duration::from_millis(50);

pub(super) fn link_error(e: &bluer::Error) -> LinkError {
    match &e.kind {
        ErrorKind::NotReady | ErrorKind::NotAvailable => LinkError::AdapterUnavailable,
        ErrorKind::DoesNotExist | ErrorKind::NotFound => LinkError::NotFound,
        ErrorKind::InProgress => LinkError::Busy,
        _ if e
            .message
            .contains("org.freedesktop.DBus.Error.ServiceUnknown")
            || e.message.contains("UnknownObject") =>
        {
            LinkError::AdapterUnavailable
        }
        _ => LinkError::Failed(format!("{}: {}", e.kind, e.message)),
    }
}

pub(super) fn address(mac: Mac) -> Address {
    Address(mac.0)
}

fn uuid(s: &str) -> Uuid {
    s.parse().unwrap_or_default()
}

/// A `stream` device: stay connected, publish at most one reading per poll interval (the newest),
/// reconnect with backoff when the link drops.
pub(super) struct StreamLink {
    pub adapter: Adapter,
    pub mac: Mac,
    pub model: Option<Model>,
    pub interval: Duration,
    pub config: Arc<Config>,
    pub tx: Sender<BleEvent>,
}

impl StreamLink {
    pub async fn run(self) {
        let mut backoff = Backoff::new(RETRY_PAUSE, Duration::from_secs(60));
        loop {
            let error = self.session(&mut backoff).await;
            if let Ok(device) = self.adapter.device(address(self.mac)) {
                let _ = device.disconnect().await;
            }
            log::info!("{}: stream ended: {}", self.mac, error.message());
            if error == LinkError::AdapterUnavailable {
                return;
            }
            let failed = Notice::PollFailed {
                mac: self.mac,
                model: self.model,
                error,
            };
            if self.tx.send(BleEvent::Notice(failed)).is_err() {
                return;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// One connection's life; returns why it ended.
    async fn session(&self, backoff: &mut Backoff) -> LinkError {
        let mac = self.mac;
        let device = match self.adapter.device(address(mac)) {
            Ok(d) => d,
            Err(e) => return link_error(&e),
        };
        if !self
            .adapter
            .device_addresses()
            .await
            .is_ok_and(|a| a.contains(&address(mac)))
        {
            return LinkError::NotFound;
        }
        let Some(model) = self.model.or(sighting(&device, mac).await.model) else {
            return LinkError::BadData("model unknown: set `type` for this device".into());
        };
        let limit = Duration::from_secs(self.config.bluetooth.connection_timeout);
        if let Err(e) = connect(&device, limit).await {
            return e;
        }
        let resolved = timeout(limit, async {
            while !device.is_services_resolved().await.unwrap_or(false) {
                tokio::time::sleep(RESOLVE_CHECK).await;
            }
        });
        if resolved.await.is_err() {
            return LinkError::Timeout;
        }
        let (write, notify) = match characteristics(&device).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut values = match notify.notify().await {
            Ok(v) => Box::pin(v),
            Err(e) => return link_error(&e),
        };
        let mut tick = tokio::time::interval(self.interval);
        let mut newest: Option<Vec<u8>> = None;
        let mut next_publish = Instant::now();
        loop {
            tokio::select! {
                value = values.next() => {
                    let Some(v) = value else { return LinkError::Failed("connection lost".into()) };
                    if !matches!(devices::decode_frame(model, Source::Gatt, mac, &v), Ok((_, Decoded::Reading(_)))) {
                        continue;
                    }
                    backoff.reset();
                    newest = Some(v);
                }
                _ = tick.tick() => {
                    if let Some(request) = model.gatt_request() {
                        let req = CharacteristicWriteRequest { op_type: WriteOp::Request, ..Default::default() };
                        if let Err(e) = write.write_ext(&devices::encrypt_frame(model, &request), &req).await {
                            return link_error(&e);
                        }
                    }
                }
            }
            if Instant::now() >= next_publish
                && let Some(frame) = newest.take()
            {
                next_publish = Instant::now() + self.interval;
                let rssi = device.rssi().await.ok().flatten();
                let event = BleEvent::Frame(RawFrame {
                    mac,
                    model,
                    source: Source::Gatt,
                    data: frame,
                    rssi,
                    received_at: Utc::now(),
                });
                if self.tx.send(event).is_err() {
                    return LinkError::Failed("pipeline stopped".into());
                }
            }
        }
    }
}

/// What a device advertises, classified.
pub(super) async fn sighting(device: &Device, mac: Mac) -> Sighting {
    let name = device.name().await.ok().flatten();
    let rssi = device.rssi().await.ok().flatten();
    let mut manufacturer_data: Vec<(u16, Vec<u8>)> = device
        .manufacturer_data()
        .await
        .ok()
        .flatten()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    manufacturer_data.sort();
    let service_uuids = device
        .uuids()
        .await
        .ok()
        .flatten()
        .map(|u| u.iter().map(Uuid::to_string).collect())
        .unwrap_or_default();
    Sighting {
        mac,
        model: devices::classify(mac, name.as_deref(), &manufacturer_data),
        name,
        rssi,
        service_uuids,
        manufacturer_data,
        at: Utc::now(),
    }
}

/// One poll with retries: connect, subscribe, request, take the first valid reading, always disconnect.
pub(super) async fn poll(
    adapter: &Adapter,
    mac: Mac,
    model: Option<Model>,
    config: &Config,
) -> (Option<Model>, Result<(Vec<u8>, Option<i16>), LinkError>) {
    let known = match adapter.device_addresses().await {
        Ok(list) => list.contains(&address(mac)),
        Err(e) => return (model, Err(link_error(&e))),
    };
    if !known {
        return (model, Err(LinkError::NotFound));
    }
    let device = match adapter.device(address(mac)) {
        Ok(d) => d,
        Err(e) => return (model, Err(link_error(&e))),
    };
    let model = match model {
        Some(m) => m,
        None => match sighting(&device, mac).await.model {
            Some(m) => m,
            None => {
                let why = "model unknown: set `type` for this device".to_string();
                return (None, Err(LinkError::BadData(why)));
            }
        },
    };
    let mut pause = RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        let result = attempt_once(&device, mac, model, config).await;
        if let Err(e) = device.disconnect().await {
            log::debug!("{mac}: disconnect: {e}");
        }
        match result {
            Ok(frame) => {
                let rssi = device.rssi().await.ok().flatten();
                return (Some(model), Ok((frame, rssi)));
            }
            Err(e)
                if attempt >= ATTEMPTS
                    || matches!(e, LinkError::NotFound | LinkError::AdapterUnavailable) =>
            {
                return (Some(model), Err(e));
            }
            Err(e) => {
                log::debug!("{model} {mac}: attempt {attempt} failed: {}", e.message());
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

async fn attempt_once(
    device: &Device,
    mac: Mac,
    model: Model,
    config: &Config,
) -> Result<Vec<u8>, LinkError> {
    let conn_timeout = Duration::from_secs(config.bluetooth.connection_timeout);
    let data_wait = Duration::from_secs(config.bluetooth.data_wait_timeout);
    connect(device, conn_timeout).await?;
    timeout(conn_timeout, async {
        while !device
            .is_services_resolved()
            .await
            .map_err(|e| link_error(&e))?
        {
            tokio::time::sleep(RESOLVE_CHECK).await;
        }
        Ok::<(), LinkError>(())
    })
    .await
    .map_err(|_| LinkError::Timeout)??;
    let (write, notify) = characteristics(device).await?;
    // Subscribe before writing: a reply that arrives during StartNotify would otherwise be lost.
    let mut values = Box::pin(notify.notify().await.map_err(|e| link_error(&e))?);
    if let Some(request) = model.gatt_request() {
        let req = CharacteristicWriteRequest {
            op_type: WriteOp::Request,
            ..Default::default()
        };
        write
            .write_ext(&devices::encrypt_frame(model, &request), &req)
            .await
            .map_err(|e| link_error(&e))?;
    }
    let mut rejected: Option<String> = None;
    let wait = timeout(data_wait, async {
        while let Some(v) = values.next().await {
            match devices::decode_frame(model, Source::Gatt, mac, &v) {
                Ok((_, Decoded::Reading(_))) => return Some(v),
                Ok(_) => log::trace!("{model} {mac}: skipped an echo/version frame"),
                Err(e) => {
                    log::debug!("{model} {mac}: bad frame {}: {e}", devices::to_hex(&v));
                    rejected = Some(e.to_string());
                }
            }
        }
        None
    })
    .await;
    match wait {
        Ok(Some(frame)) => Ok(frame),
        _ => Err(rejected.map_or(LinkError::NoData, LinkError::BadData)),
    }
}

pub(super) async fn connect(device: &Device, limit: Duration) -> Result<(), LinkError> {
    if device.is_connected().await.unwrap_or(false) {
        // A stale connection (ours from before, or a crashed run): start clean.
        let _ = device.disconnect().await;
    }
    match timeout(limit, device.connect()).await {
        Err(_) => Err(LinkError::Timeout),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.kind == ErrorKind::AlreadyConnected => Ok(()),
        Ok(Err(e)) if e.kind == ErrorKind::InProgress => {
            let _ = device.disconnect().await;
            Err(LinkError::Busy)
        }
        Ok(Err(e)) => Err(link_error(&e)),
    }
}

/// The family's write (`fff3`) and notify (`fff4`) characteristics.
pub(super) async fn characteristics(
    device: &Device,
) -> Result<(Characteristic, Characteristic), LinkError> {
    let service_uuid = uuid(devices::SERVICE_UUID);
    let mut write = None;
    let mut notify = None;
    for service in device.services().await.map_err(|e| link_error(&e))? {
        if service.uuid().await.ok() != Some(service_uuid) {
            continue;
        }
        for c in service
            .characteristics()
            .await
            .map_err(|e| link_error(&e))?
        {
            match c.uuid().await.ok() {
                Some(u) if u == uuid(devices::WRITE_UUID) => write = Some(c),
                Some(u) if u == uuid(devices::NOTIFY_UUID) => notify = Some(c),
                _ => {}
            }
        }
    }
    match (write, notify) {
        (Some(w), Some(n)) => Ok((w, n)),
        _ => Err(LinkError::Failed(
            "the monitor has no fff0 service with fff3/fff4".into(),
        )),
    }
}
