//! One link to one monitor, through bluer: one poll attempt (connect, subscribe, ask, hand over the first
//! reading frame, disconnect), a long-lived `stream` link, and what a device advertises. Used by the BlueZ
//! radio in `bluez.rs`; retries, timing and throttling are the scheduler's. Every failure comes back as a
//! SPEC §2.2 [`LinkError`], classified by bluer's error kind (never by message text), never as a panic.

use super::scheduler::{Heard, HistoryAsk, PollOutcome};
use crate::config::Config;
use crate::devices::history::{History, records_to_ask};
use crate::devices::{self, DecodeError, Decoded, Model, Source};
use crate::mac::Mac;
use crate::messages::{LinkError, RawFrame};
use bluer::gatt::WriteOp;
use bluer::gatt::remote::{Characteristic, CharacteristicWriteRequest};
use bluer::{Adapter, Address, Device, ErrorKind, Uuid};
use chrono::Utc;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// How often to look whether services were resolved after connecting.
const RESOLVE_CHECK: Duration = Duration::from_millis(50);

/// D-Bus errors that mean bluetoothd (or the adapter object) is gone.
const BLUEZ_GONE: &[&str] = &[
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Disconnected",
];
/// The family of D-Bus errors the bus answers with when it tries to start a service that is gone and
/// cannot (bluetoothd killed on a machine whose bus activates it: `…Spawn.ChildExited`, `…Spawn.Failed`).
const BUS_SPAWN: &str = "org.freedesktop.DBus.Error.Spawn.";

/// SPEC §2.2 code for a bluer error, by its kind (and, for raw D-Bus errors, by the error's name).
pub(super) fn link_error(e: &bluer::Error) -> LinkError {
    use bluer::InternalErrorKind as Internal;
    match &e.kind {
        ErrorKind::NotReady | ErrorKind::NotAvailable => LinkError::AdapterUnavailable,
        ErrorKind::Internal(Internal::DBusConnectionLost) => LinkError::AdapterUnavailable,
        ErrorKind::Internal(Internal::DBus(name))
            if BLUEZ_GONE.contains(&name.as_str()) || name.starts_with(BUS_SPAWN) =>
        {
            LinkError::AdapterUnavailable
        }
        ErrorKind::DoesNotExist | ErrorKind::NotFound => LinkError::NotFound,
        ErrorKind::InProgress => LinkError::Busy,
        _ => LinkError::Failed(format!("{}: {}", e.kind, e.message)),
    }
}

pub(super) fn address(mac: Mac) -> Address {
    Address(mac.0)
}

fn uuid(s: &str) -> Uuid {
    s.parse().unwrap_or_default()
}

/// What a stream link reports while it lives.
#[derive(Debug)]
pub(super) enum StreamReport {
    /// A notification (the scheduler keeps the newest once per interval).
    Frame(RawFrame),
    /// A download of the monitor's own log ended (what was read; empty when the link cannot carry one).
    History(Mac, History),
}

/// A `stream` device's link: connect, subscribe, hand every notification over (the scheduler keeps the
/// newest once per interval), ask again every interval for models that need a request, and download the
/// monitor's own log in between when `asks` says so (SPEC §5.7; the live requests pause meanwhile);
/// returns why it ended (the scheduler reports it and opens the link again later). The caller disconnects.
pub(super) struct StreamLink {
    pub adapter: Adapter,
    pub mac: Mac,
    pub model: Option<Model>,
    pub interval: Duration,
    pub config: Arc<Config>,
    pub frames: tokio::sync::mpsc::Sender<StreamReport>,
    pub asks: tokio::sync::mpsc::Receiver<HistoryAsk>,
}

impl StreamLink {
    pub async fn run(mut self) -> LinkError {
        let mac = self.mac;
        let device = match known_device(&self.adapter, mac).await {
            Ok(d) => d,
            Err(e) => return e,
        };
        let Some(model) = self.model.or(model_of(&device, mac).await) else {
            return LinkError::BadData("model unknown: set `type` for this device".into());
        };
        let limit = Duration::from_secs(self.config.bluetooth.connection_timeout);
        if let Err(e) = connect(&device, limit).await {
            return e;
        }
        if let Err(e) = resolved(&device, limit).await {
            return e;
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
        // After a history download, the next live request waits a whole interval (no burst).
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                value = values.next() => {
                    let Some(data) = value else { return LinkError::Failed("connection lost".into()) };
                    if Notification::of(model, mac, &data) == Notification::Other {
                        log::trace!("{model} {mac}: skipped a non-reading notification");
                        continue;
                    }
                    let rssi = device.rssi().await.ok().flatten();
                    let frame = RawFrame { mac, model, source: Source::Gatt, data, rssi, received_at: Utc::now() };
                    if self.frames.send(StreamReport::Frame(frame)).await.is_err() {
                        return LinkError::Failed("the radio stopped".into());
                    }
                }
                Some(ask) = self.asks.recv() => {
                    let read = history_on_link(&write, &notify, &mut values, mac, model, ask).await;
                    if self.frames.send(StreamReport::History(mac, read)).await.is_err() {
                        return LinkError::Failed("the radio stopped".into());
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = request(&write, model).await {
                        return e;
                    }
                }
            }
        }
    }
}

/// What a device advertises, as BlueZ has it now (possibly cached from earlier scans; `rssi` is only set
/// while the current discovery receives the device).
pub(super) async fn details(device: &Device, mac: Mac) -> Heard {
    let name = device.name().await.ok().flatten();
    let rssi = device.rssi().await.ok().flatten();
    let manufacturer: Vec<(u16, Vec<u8>)> = device
        .manufacturer_data()
        .await
        .ok()
        .flatten()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let service_uuids = device
        .uuids()
        .await
        .ok()
        .flatten()
        .map(|u| u.iter().map(Uuid::to_string).collect())
        .unwrap_or_default();
    Heard {
        mac,
        at: Utc::now(),
        name,
        service_uuids,
        rssi,
        manufacturer,
        fresh: false,
    }
}

/// The model a device's advertisement shows, if any.
pub(super) async fn model_of(device: &Device, mac: Mac) -> Option<Model> {
    let h = details(device, mac).await;
    devices::classify(mac, h.name.as_deref(), &h.service_uuids, &h.manufacturer).map(|i| i.model)
}

/// The device object, if BlueZ knows `mac` now (it forgets unpaired devices ~30 s after a scan).
async fn known_device(adapter: &Adapter, mac: Mac) -> Result<Device, LinkError> {
    let known = adapter
        .device_addresses()
        .await
        .map_err(|e| link_error(&e))?
        .contains(&address(mac));
    if !known {
        return Err(LinkError::NotFound);
    }
    adapter.device(address(mac)).map_err(|e| link_error(&e))
}

/// Wait (bounded) until BlueZ resolved the device's services.
pub(super) async fn resolved(device: &Device, limit: Duration) -> Result<(), LinkError> {
    timeout(limit, async {
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
    .map_err(|_| LinkError::Timeout)?
}

/// Write the model's reading request to `fff3` (with response), if it needs one.
async fn request(write: &Characteristic, model: Model) -> Result<(), LinkError> {
    let Some(request) = model.gatt_request() else {
        return Ok(());
    };
    let req = CharacteristicWriteRequest {
        op_type: WriteOp::Request,
        ..Default::default()
    };
    write
        .write_ext(&devices::encrypt_frame(model, &request), &req)
        .await
        .map_err(|e| link_error(&e))
}

/// What a notification from `fff4` is to a link: a reading, a frame the decode stage rejects (handed over to
/// be counted), or something else (the echo of our request, a version reply), which links drop: on a
/// stream link an echo handed over took the reading's place in the scheduler's one-frame-per-interval
/// throttle, and readings stopped (the real-BlueZ scenario `history_stream` showed it: the BM6 echoes every
/// request just before it answers).
#[derive(Debug, PartialEq, Eq)]
enum Notification {
    Reading,
    Rejected,
    Other,
}

impl Notification {
    fn of(model: Model, mac: Mac, data: &[u8]) -> Notification {
        // A notification may carry several 16-byte blocks: it is a reading if one block is.
        let blocks = devices::decode_notification(model, Source::Gatt, mac, data);
        let reading = |b: &Result<(Vec<u8>, Decoded), DecodeError>| {
            matches!(
                b,
                Ok((_, Decoded::Reading(_))) | Err(DecodeError::OutOfRange { .. })
            )
        };
        if blocks.iter().any(reading) {
            Notification::Reading
        } else if blocks.iter().any(Result::is_err) {
            Notification::Rejected
        } else {
            Notification::Other
        }
    }
}

/// One poll attempt: connect, subscribe, request, wait for the first reading frame, always disconnect.
/// On failure, the frames that arrived but were no reading are handed over too (the decode stage counts
/// them); echo and other non-reading frames are not.
pub(super) async fn poll_once(
    adapter: &Adapter,
    mac: Mac,
    model: Option<Model>,
    config: &Config,
    history: Option<HistoryAsk>,
) -> PollOutcome {
    let outcome = |model, frames, result| PollOutcome {
        frames,
        result,
        model,
        history: None,
    };
    let device = match known_device(adapter, mac).await {
        Ok(d) => d,
        Err(e) => return outcome(model, Vec::new(), Err(e)),
    };
    let Some(model) = model.or(model_of(&device, mac).await) else {
        let why = "model unknown: set `type` for this device".to_string();
        return outcome(None, Vec::new(), Err(LinkError::BadData(why)));
    };
    let mut frames = Vec::new();
    let result = attempt(&device, mac, model, config, &mut frames, history).await;
    if let Err(e) = device.disconnect().await {
        log::debug!("{mac}: disconnect: {e}");
    }
    match result {
        Ok((frame, history)) => PollOutcome {
            history,
            ..outcome(Some(model), vec![frame], Ok(()))
        },
        Err(e) => outcome(Some(model), frames, Err(e)),
    }
}

async fn attempt(
    device: &Device,
    mac: Mac,
    model: Model,
    config: &Config,
    rejected: &mut Vec<RawFrame>,
    history: Option<HistoryAsk>,
) -> Result<(RawFrame, Option<History>), LinkError> {
    let conn_timeout = Duration::from_secs(config.bluetooth.connection_timeout);
    let data_wait = Duration::from_secs(config.bluetooth.data_wait_timeout);
    connect(device, conn_timeout).await?;
    resolved(device, conn_timeout).await?;
    let (write, notify) = characteristics(device).await?;
    // Subscribe before writing: a reply that arrives during StartNotify would otherwise be lost.
    let mut values = Box::pin(notify.notify().await.map_err(|e| link_error(&e))?);
    request(&write, model).await?;
    let rssi = device.rssi().await.ok().flatten();
    let frame = |data: Vec<u8>| RawFrame {
        mac,
        model,
        source: Source::Gatt,
        data,
        rssi,
        received_at: Utc::now(),
    };
    let wait = timeout(data_wait, async {
        while let Some(v) = values.next().await {
            // Stamped on arrival, not after the disconnect.
            let f = frame(v);
            match Notification::of(model, mac, &f.data) {
                Notification::Reading => return Some(f),
                Notification::Rejected => rejected.push(f),
                Notification::Other => {
                    log::trace!("{model} {mac}: skipped a non-reading notification");
                }
            }
        }
        None
    })
    .await;
    let frame = match wait {
        Ok(Some(frame)) => frame,
        _ if !rejected.is_empty() => return Err(LinkError::BadData("no valid reading".into())),
        _ => return Err(LinkError::NoData),
    };
    // The live reading is in hand; the monitor's own log follows in the same connection (SPEC §5.7).
    let Some(ask) = history else {
        return Ok((frame, None));
    };
    let read = history_on_link(&write, &notify, &mut values, mac, model, ask).await;
    Ok((frame, Some(read)))
}

/// Download the records `ask` wants on a link that is up and subscribed (`values`: the `fff4`
/// notifications). A link whose ATT MTU is too small for history notifications gets an empty read (the
/// scheduler then stops asking in this run); a failure keeps what was read before it.
async fn history_on_link<S>(
    write: &Characteristic,
    notify: &Characteristic,
    values: &mut S,
    mac: Mac,
    model: Model,
    ask: HistoryAsk,
) -> History
where
    S: futures::Stream<Item = Vec<u8>> + Unpin,
{
    let now = Utc::now();
    if let Err(e) = super::history::att_mtu(notify, model).await {
        log::info!("{model} {mac}: no history download: {}", e.message());
        return History::empty(model, now);
    }
    let want = records_to_ask(ask.last.as_ref(), now, ask.initial_days);
    let (took, read) = super::history::drive(write, values, model, want, false).await;
    let read = read.unwrap_or_else(|f| {
        log::info!("{model} {mac}: history download stopped: {}", f.error);
        f.partial
    });
    log::debug!(
        "{model} {mac}: {} history record(s) read in {} ms",
        read.records.len(),
        took.as_millis()
    );
    read
}

pub(super) async fn connect(device: &Device, limit: Duration) -> Result<(), LinkError> {
    if device.is_connected().await.unwrap_or(false) {
        // Another client of this BlueZ holds the link (a `read` beside the service, another program): the
        // monitor accepts one central, and breaking someone else's link is not ours to do.
        return Err(LinkError::Busy);
    }
    match timeout(limit, device.connect()).await {
        Err(_) => {
            let _ = device.disconnect().await;
            Err(LinkError::Timeout)
        }
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.kind == ErrorKind::AlreadyConnected => Ok(()),
        Ok(Err(e)) if e.kind == ErrorKind::InProgress => Err(LinkError::Busy),
        Ok(Err(e)) => {
            log::debug!("Connect failed: {:?}: {}", e.kind, e.message);
            Err(link_error(&e))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bluer::InternalErrorKind;

    fn error(kind: ErrorKind) -> bluer::Error {
        bluer::Error {
            kind,
            message: "a message no one parses".into(),
        }
    }

    fn dbus(name: &str) -> bluer::Error {
        error(ErrorKind::Internal(InternalErrorKind::DBus(name.into())))
    }

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn links_drop_echoes_and_hand_over_readings_and_rejections() {
        let bm6 = Model::by_name("BM6").unwrap();
        let mac: Mac = "C4:3B:26:B5:30:A6".parse().unwrap();
        // SPEC §5 test vector: 12.70 V, 25 °C, SoC 80.
        let reading = bytes("71543b749f6f614dd6333f21546f681d");
        assert_eq!(Notification::of(bm6, mac, &reading), Notification::Reading);
        // The echo of the reading request, as the Bumble BM6 of tests/realbluez sent it before each answer.
        let echo = bytes("8ae0358523fe154976de18fc102eb1d4");
        assert_eq!(Notification::of(bm6, mac, &echo), Notification::Other);
        // An echo and a reading in one notification is a reading.
        let both = [echo.clone(), reading].concat();
        assert_eq!(Notification::of(bm6, mac, &both), Notification::Reading);
        // A block that is neither (a truncated one) is the decode stage's to count.
        assert_eq!(
            Notification::of(bm6, mac, &echo[..7]),
            Notification::Rejected
        );
    }

    #[test]
    fn errors_are_classified_by_kind_and_bus_error_name() {
        assert_eq!(link_error(&error(ErrorKind::InProgress)), LinkError::Busy);
        assert_eq!(link_error(&error(ErrorKind::NotFound)), LinkError::NotFound);
        assert_eq!(
            link_error(&error(ErrorKind::NotReady)),
            LinkError::AdapterUnavailable
        );
        for gone in [
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NoReply",
            "org.freedesktop.DBus.Error.Spawn.ChildExited",
        ] {
            assert_eq!(
                link_error(&dbus(gone)),
                LinkError::AdapterUnavailable,
                "{gone}"
            );
        }
        assert!(matches!(
            link_error(&error(ErrorKind::Internal(
                InternalErrorKind::DBusConnectionLost
            ))),
            LinkError::AdapterUnavailable
        ));
        assert!(matches!(
            link_error(&error(ErrorKind::Failed)),
            LinkError::Failed(_)
        ));
    }
}
