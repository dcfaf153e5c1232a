//! Threads "mqtt" (the outbox stage, [`stage`]) and "mqtt-conn" (rumqttc's blocking connection loop,
//! [`connection`]); this file starts and joins them.
//!
//! Owns: topics ([`topics`]), payloads ([`payload`]), the outbox ([`outbox`]), the broker connection, the
//! last will, the reconnect backoff and the shutdown sequence. The connection loop does nothing but drive
//! rumqttc and report its events; the outbox thread alone decides what is sent. rumqttc's own pending
//! queue is emptied after every connection loss (the outbox resends, in order), so nothing is lost and
//! nothing is sent twice by both. Must never: block the stages upstream (its input is drained into the
//! bounded outbox at all times), call a blocking `publish`, spin while the broker is away, or log a secret.

pub mod clock;
mod connection;
#[cfg(feature = "demo")]
pub mod demo;
pub mod history;
pub mod homeassistant;
pub mod incoming;
mod link;
mod lock;
pub mod outbox;
pub mod payload;
pub mod spool;
mod stage;
pub mod topics;

use crate::config::Config;
use crate::messages::Outbound;
use connection::{INFLIGHT, drive, options};
use crossbeam_channel::{Receiver, bounded};
pub use lock::lock_state_dir;
use outbox::Outbox;
use payload::Renderer;
use rumqttc::Client;
use stage::OutboxStage;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages rumqttc may hold in its request channel. Room for a whole batch of the pipeline's output
/// (at 2,000 readings/s the fleet hands over ~60 messages at a time): with 10, the outbox could hand
/// over only 10 and then had to wait for an acknowledgement to wake it, so every burst was handed over
/// — and written — in slices of 10, one wake-up of each MQTT thread per slice. The channel allocates
/// only what it holds; messages in it are the outbox's (requeued when the connection drops).
const REQUEST_CHANNEL: usize = 128;
/// Messages the outbox hands to rumqttc before waiting for them to be written.
const WINDOW: usize = INFLIGHT as usize + REQUEST_CHANNEL;
/// Messages taken from the pipeline per wake-up of the outbox thread.
const INPUT_BATCH: usize = 256;
/// Home Assistant drops discovery configs sent the instant it comes online; wait this long first.
const HA_GRACE: Duration = Duration::from_secs(2);

/// Why the MQTT stage cannot start.
#[derive(Debug)]
pub enum MqttError {
    File(&'static str, String, std::io::Error),
    Spawn(std::io::Error),
    /// The `gateway.state_dir` lock file (path) could not be taken: why.
    Locked(String, String),
}

impl std::fmt::Display for MqttError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MqttError::File(key, path, e) => write!(f, "{key}: cannot read {path}: {e}"),
            MqttError::Spawn(e) => write!(f, "cannot start the MQTT threads: {e}"),
            MqttError::Locked(path, why) => write!(f, "cannot lock {path}: {why}"),
        }
    }
}

impl std::error::Error for MqttError {}

/// The running MQTT stage: join both threads with [`MqttStage::join`].
pub struct MqttStage {
    outbox: JoinHandle<()>,
    /// Disconnected once the outbox thread has ended, for whatever reason.
    pub ended: Receiver<()>,
    conn: Option<(JoinHandle<()>, Receiver<()>)>,
}

impl MqttStage {
    /// Wait for the outbox thread (it ends after the shutdown sequence), then for the connection loop
    /// (at most `grace`: a broker that stopped answering must not hold the process).
    pub fn join(self, grace: Duration) {
        if self.outbox.join().is_err() {
            log::error!("the mqtt thread panicked");
        }
        if let Some((conn, done)) = self.conn {
            if done.recv_timeout(grace).is_ok() || conn.is_finished() {
                let _ = conn.join();
            } else {
                log::warn!("the MQTT connection did not close within {grace:?}; leaving it");
            }
        }
    }
}

/// Start the MQTT stage: it publishes everything received on `rx` and runs the shutdown sequence
/// when it receives `Outbound::Shutdown` (or its input closes). With `[cluster]`, what the other
/// gateways publish goes to `cluster`: facts to the BLE thread, monitors' statuses to the fleet.
pub fn spawn(
    config: &Config,
    rx: Receiver<Outbound>,
    started: Instant,
    cluster: (
        crate::ble::FactSender,
        crossbeam_channel::Sender<crate::messages::FleetEvent>,
    ),
) -> Result<MqttStage, MqttError> {
    let renderer = Renderer::for_config(config);
    if !config.mqtt.enabled {
        log::warn!("mqtt.enabled = false: nothing will be published");
        let (end_tx, ended) = bounded::<()>(0);
        let outbox = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                let _end = end_tx;
                rx.iter()
                    .take_while(|o| !matches!(o, Outbound::Shutdown { .. }))
                    .for_each(drop);
            })
            .map_err(MqttError::Spawn)?;
        return Ok(MqttStage {
            outbox,
            ended,
            conn: None,
        });
    }
    let options = options(config, &renderer)?;
    let (client, mut connection) = Client::new(options, REQUEST_CHANNEL);
    connection
        .eventloop
        .network_options
        .set_connection_timeout(config.mqtt.timeout);
    let (net_tx, net_rx) = bounded(64);
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let (done_tx, done_rx) = bounded::<()>(1);
    let conn = std::thread::Builder::new()
        .name("mqtt-conn".into())
        .spawn(move || {
            crate::pipeline::batch_policy();
            drive(&mut connection, &net_tx, &stop_rx);
            let _ = done_tx.send(());
        })
        .map_err(MqttError::Spawn)?;
    let ha = config.homeassistant.enabled.then(|| {
        homeassistant::HomeAssistant::new(
            &config.homeassistant,
            renderer.topics.clone(),
            &config.gateway.id,
        )
    });
    let mut stage = OutboxStage::new(config, client, ha, outbox(config), renderer, started);
    if config.cluster.enabled {
        stage = stage.with_cluster(cluster.0, cluster.1);
    }
    let (end_tx, ended) = bounded::<()>(0);
    let outbox = std::thread::Builder::new()
        .name("mqtt".into())
        .spawn(move || {
            let _end = end_tx;
            crate::pipeline::batch_policy();
            stage.run(&rx, &net_rx);
            drop(stop_tx);
        })
        .map_err(MqttError::Spawn)?;
    Ok(MqttStage {
        outbox,
        ended,
        conn: Some((conn, done_rx)),
    })
}

/// The outbox, with the disk spool unless `mqtt.spool_max_mb = 0` (or the spool cannot be opened).
fn outbox(config: &Config) -> Outbox {
    let memory = Outbox::new(config.mqtt.outbox_capacity, config.mqtt.retries);
    if config.mqtt.spool_max_mb == 0 {
        return memory;
    }
    match spool::Spool::open(
        &config.gateway.state_dir.join("spool"),
        config.mqtt.spool_max_mb,
    ) {
        Ok(s) => memory.with_spool(s),
        Err(e) => {
            log::error!("{e}; readings are kept in memory only");
            memory
        }
    }
}
