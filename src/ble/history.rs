//! Downloading a monitor's own log over one connection: connect, subscribe to `fff4`, then only I/O for
//! the pure [`HistoryRead`] state machine (write what it says, feed it every notification, wake it at its
//! deadline), and always disconnect. Never sends anything but the history commands it is given.

use super::link::{address, characteristics, connect, link_error, model_of, resolved};
use crate::config::Config;
use crate::devices::Model;
use crate::devices::history::{
    History, HistoryFailure, HistoryRead, MIN_MTU, Protocol, ReadError, Step, Timing,
};
use crate::mac::Mac;
use crate::messages::LinkError;
use bluer::Device;
use bluer::gatt::WriteOp;
use bluer::gatt::remote::{Characteristic, CharacteristicWriteRequest};
use chrono::Utc;
use futures::{Stream, StreamExt};
use std::time::Duration;
use tokio::time::{Instant, sleep_until};

/// One finished download (complete or not).
#[derive(Debug, Clone)]
pub struct Download {
    pub model: Model,
    /// Everything accepted; when `failure` is set, only the part read before it.
    pub history: History,
    /// Why the read stopped early, if it did.
    pub failure: Option<String>,
    /// The ATT MTU BlueZ reported for `fff4`.
    pub mtu: Option<u16>,
    /// From the first history write to the end of the read.
    pub read_time: Duration,
    /// From the start of the connection attempt until the disconnect returned.
    pub link_held: Duration,
}

/// Connect to `mac` and download at most `want` records (`keep_raw`: keep every decrypted block).
pub(super) async fn download(
    config: &Config,
    mac: Mac,
    model: Option<Model>,
    want: u32,
    keep_raw: bool,
) -> Result<Download, LinkError> {
    let (_session, adapter) = super::bluez::open_known(config, mac).await?;
    let device = adapter.device(address(mac)).map_err(|e| link_error(&e))?;
    let model = match model {
        Some(m) => m,
        None => model_of(&device, mac).await.ok_or_else(|| {
            LinkError::BadData("model unknown: give --type or set `type` for this device".into())
        })?,
    };
    let began = Instant::now();
    let result = session(&device, model, config, want, keep_raw).await;
    if let Err(e) = device.disconnect().await {
        log::debug!("{mac}: disconnect: {e}");
    }
    let link_held = began.elapsed();
    let (mtu, read_time, outcome) = result?;
    let (history, failure) = match outcome {
        Ok(h) => (h, None),
        Err(HistoryFailure { error, partial }) => (partial, Some(error.to_string())),
    };
    Ok(Download {
        model,
        history,
        failure,
        mtu,
        read_time,
        link_held,
    })
}

type Outcome = (Option<u16>, Duration, Result<History, HistoryFailure>);

/// Connect, check the MTU, subscribe, and run the read to its end. The caller disconnects.
async fn session(
    device: &Device,
    model: Model,
    config: &Config,
    want: u32,
    keep_raw: bool,
) -> Result<Outcome, LinkError> {
    let limit = Duration::from_secs(config.bluetooth.connection_timeout);
    connect(device, limit).await?;
    resolved(device, limit).await?;
    let (write, notify) = characteristics(device).await?;
    let mtu = att_mtu(&notify, model).await?;
    // Subscribe before the first write: a reply during StartNotify would otherwise be lost.
    let mut values = Box::pin(notify.notify().await.map_err(|e| link_error(&e))?);
    let (took, result) = drive(&write, &mut values, model, want, keep_raw).await;
    Ok((mtu, took, result))
}

/// The ATT MTU of `fff4` (bluer reports BlueZ's `MTU` property minus 5, its write workaround; added back
/// here), or an error when a BM6/BM7 history read would need bigger notifications than it allows.
pub(super) async fn att_mtu(
    notify: &Characteristic,
    model: Model,
) -> Result<Option<u16>, LinkError> {
    let mtu = notify
        .mtu()
        .await
        .ok()
        .and_then(|m| u16::try_from(m + 5).ok());
    log::debug!("{model}: ATT MTU {mtu:?}");
    if Protocol::of(model) == Protocol::Indexed && mtu.is_some_and(|m| m < MIN_MTU) {
        return Err(LinkError::Failed(format!(
            "ATT MTU {} is below the {MIN_MTU} that 160-byte history notifications need",
            mtu.unwrap_or_default()
        )));
    }
    Ok(mtu)
}

/// Run one history read to its end on a link that is up, `values` being the subscribed `fff4`
/// notifications (live frames among them are skipped). Returns how long it took and the read; a link
/// failure ends it with what was accepted before. Usable inside a poll or stream connection, after the
/// live reading.
pub(super) async fn drive<S>(
    write: &Characteristic,
    values: &mut S,
    model: Model,
    want: u32,
    keep_raw: bool,
) -> (Duration, Result<History, HistoryFailure>)
where
    S: Stream<Item = Vec<u8>> + Unpin,
{
    let req = CharacteristicWriteRequest {
        op_type: WriteOp::Request,
        ..Default::default()
    };
    let start = Instant::now();
    let (mut read, mut step) = HistoryRead::new(
        model,
        want,
        Utc::now(),
        Duration::ZERO,
        Timing::of(Protocol::of(model)),
        keep_raw,
    );
    loop {
        match step {
            Step::Write(frame) => {
                if let Err(e) = write.write_ext(&frame, &req).await {
                    let why = ReadError::Link(link_error(&e).message());
                    return (start.elapsed(), Err(read.abandon(why)));
                }
            }
            Step::Done(h) => return (start.elapsed(), Ok(h)),
            Step::Failed(f) => return (start.elapsed(), Err(f)),
            Step::Wait => {}
        }
        let Some(deadline) = read.deadline() else {
            let stalled = ReadError::Link("history read stalled".into());
            return (start.elapsed(), Err(read.abandon(stalled)));
        };
        step = tokio::select! {
            value = values.next() => match value {
                Some(bytes) => read.on_notification(&bytes, start.elapsed()),
                None => {
                    let lost = ReadError::Link("connection lost".into());
                    return (start.elapsed(), Err(read.abandon(lost)));
                }
            },
            () = sleep_until(start + deadline) => read.on_time(start.elapsed()),
        };
    }
}
