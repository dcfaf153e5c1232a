//! Threads "mqtt" (the outbox) and "mqtt-conn" (rumqttc's blocking connection loop).
//!
//! Owns: topics ([`topics`]), payloads ([`payload`]), the outbox ([`outbox`]), the broker connection, the
//! last will, the reconnect backoff and the shutdown sequence. The connection loop does nothing but drive
//! rumqttc and report its events; the outbox thread alone decides what is sent. rumqttc's own pending
//! queue is emptied after every connection loss (the outbox resends, in order), so nothing is lost and
//! nothing is sent twice by both. Must never: block the stages upstream (its input is drained into the
//! bounded outbox at all times), call a blocking `publish`, spin while the broker is away, or log a secret.

pub mod demo;
pub mod history;
pub mod homeassistant;
pub mod outbox;
pub mod payload;
pub mod spool;
pub mod topics;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::messages::{Outbound, SystemSnapshot};
use crossbeam_channel::{Receiver, Sender, bounded, never, select};
use outbox::Outbox;
use payload::{LocalStatus, Message, Renderer};
use rumqttc::{
    Client, ClientError, Connection, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest packet we send or accept; bigger messages are refused before they reach the outbox
/// (rumqttc would drop the connection, and the queue with it).
const MAX_PACKET: usize = 256 * 1024;
/// Messages rumqttc may hold in its request channel.
const REQUEST_CHANNEL: usize = 10;
/// Unacknowledged QoS ≥ 1 publishes on the wire.
const INFLIGHT: u16 = 100;
/// Messages the outbox hands to rumqttc before waiting for them to be written.
const WINDOW: usize = INFLIGHT as usize + REQUEST_CHANNEL;
/// Messages taken from the pipeline per wake-up of the outbox thread.
const INPUT_BATCH: usize = 256;
/// Home Assistant drops discovery configs sent the instant it comes online; wait this long first.
const HA_GRACE: Duration = Duration::from_secs(2);
/// CA bundle used with `tls = true` and no `ca_file` (Debian's ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why the MQTT stage cannot start.
#[derive(Debug)]
pub enum MqttError {
    File(&'static str, String, std::io::Error),
    Spawn(std::io::Error),
}

impl std::fmt::Display for MqttError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MqttError::File(key, path, e) => write!(f, "{key}: cannot read {path}: {e}"),
            MqttError::Spawn(e) => write!(f, "cannot start the MQTT threads: {e}"),
        }
    }
}

impl std::error::Error for MqttError {}

/// What the connection loop tells the outbox thread.
enum Net {
    Connected,
    Written(u16),
    Acked(u16),
    /// A message on a topic we subscribed to (Home Assistant's status).
    Incoming {
        topic: String,
        payload: Vec<u8>,
    },
    /// The connection is gone. The outbox requeues, then answers on `ack` so the loop can clear
    /// rumqttc's queues knowing nothing new was handed over meanwhile.
    Down {
        why: String,
        ack: Sender<()>,
    },
}

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
/// when it receives `Outbound::Shutdown` (or its input closes).
pub fn spawn(
    config: &Config,
    rx: Receiver<Outbound>,
    started: Instant,
) -> Result<MqttStage, MqttError> {
    let renderer = Renderer::new(
        &config.mqtt.topic_prefix,
        &config.gateway.id,
        config.mqtt.qos,
    );
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
    let stage = OutboxStage {
        client,
        ha,
        reannounce_at: None,
        outbox: outbox(config),
        renderer,
        connected: false,
        snapshot: None,
        started,
        state_dir: config.gateway.state_dir.clone(),
        timeout: Duration::from_secs(config.mqtt.timeout),
        broker: format!("{}:{}", config.mqtt.broker, config.mqtt.port),
    };
    let (end_tx, ended) = bounded::<()>(0);
    let outbox = std::thread::Builder::new()
        .name("mqtt".into())
        .spawn(move || {
            let _end = end_tx;
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

fn read_file(key: &'static str, path: &str) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|e| MqttError::File(key, path.to_string(), e))
}

fn options(config: &Config, renderer: &Renderer) -> Result<MqttOptions, MqttError> {
    let m = &config.mqtt;
    let mut o = MqttOptions::new(config.client_id(), m.broker.clone(), m.port);
    o.set_keep_alive(Duration::from_secs(m.keepalive))
        .set_clean_session(true)
        .set_inflight(INFLIGHT)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let will = renderer.availability(false);
    o.set_last_will(LastWill::new(
        will.topic,
        will.payload,
        QoS::AtLeastOnce,
        true,
    ));
    if !m.username.is_empty() {
        o.set_credentials(m.username.clone(), m.password.0.clone());
    }
    if m.tls {
        let ca = if m.ca_file.is_empty() {
            read_file("mqtt.ca_file (default)", SYSTEM_CA_BUNDLE)?
        } else {
            read_file("mqtt.ca_file", &m.ca_file)?
        };
        let client_auth = if m.client_cert.is_empty() {
            None
        } else {
            Some((
                read_file("mqtt.client_cert", &m.client_cert)?,
                read_file("mqtt.client_key", &m.client_key)?,
            ))
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The connection loop: drive rumqttc, report events, back off after errors. Nothing else.
fn drive(connection: &mut Connection, tx: &Sender<Net>, stop: &Receiver<()>) {
    let mut backoff = Backoff::broker();
    loop {
        let net = match connection.recv() {
            Err(_) => return,
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                backoff.reset();
                Net::Connected
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => Net::Written(pkid),
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => Net::Acked(ack.pkid),
            Ok(Ok(Event::Incoming(Packet::PubComp(comp)))) => Net::Acked(comp.pkid),
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => Net::Incoming {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => {
                let (ack_tx, ack_rx) = bounded(1);
                let why = e.to_string();
                if tx.send(Net::Down { why, ack: ack_tx }).is_err() || ack_rx.recv().is_err() {
                    return;
                }
                connection.eventloop.clean();
                connection.eventloop.pending.clear();
                let delay = backoff.next_delay();
                log::info!(
                    "reconnecting to the MQTT broker in {:.1} s",
                    delay.as_secs_f64()
                );
                select! {
                    recv(stop) -> _ => return,
                    default(delay) => {}
                }
                continue;
            }
        };
        if tx.send(net).is_err() {
            return;
        }
    }
}

/// The outbox thread's state.
struct OutboxStage {
    client: Client,
    /// Home Assistant discovery, when enabled: an observer of what is published.
    ha: Option<homeassistant::HomeAssistant>,
    /// When to re-send discovery configs after Home Assistant came online.
    reannounce_at: Option<Instant>,
    outbox: Outbox,
    renderer: Renderer,
    connected: bool,
    snapshot: Option<SystemSnapshot>,
    started: Instant,
    state_dir: PathBuf,
    timeout: Duration,
    broker: String,
}

impl OutboxStage {
    fn run(mut self, rx: &Receiver<Outbound>, net: &Receiver<Net>) {
        let mut input = rx.clone();
        let mut deadline: Option<Instant> = None;
        // The shutdown sequence: each step is sent only after everything before it was acknowledged.
        let mut final_steps: Vec<Message> = Vec::new();
        let mut ever_down = false;
        loop {
            let sync_at = self.outbox.sync_spool(false);
            let wake = [deadline, self.reannounce_at, sync_at]
                .into_iter()
                .flatten()
                .min();
            let wait = wake.map(|d| d.saturating_duration_since(Instant::now()));
            select! {
                recv(input) -> out => {
                    // Take what else is waiting too (up to a batch), so a busy pipeline costs one
                    // wake-up and one pump per batch rather than per message.
                    let mut next = Some(out.unwrap_or_else(|_| Outbound::Shutdown { reason: "pipeline stopped".into() }));
                    let mut taken = 0;
                    while let Some(out) = next.take() {
                        if let Outbound::Shutdown { reason } = &out {
                            log::info!("shutting down ({reason}): flushing to the broker");
                            final_steps = vec![
                                self.renderer.availability(false),
                                self.renderer.shutdown(reason, chrono::Utc::now()),
                            ];
                            deadline = Some(Instant::now() + self.timeout);
                            input = never();
                            break;
                        }
                        self.accept(&out);
                        taken += 1;
                        if taken < INPUT_BATCH {
                            next = input.try_recv().ok();
                        }
                    }
                }
                recv(net) -> event => match event {
                    Ok(Net::Connected) => {
                        log::info!("connected to the MQTT broker at {}", self.broker);
                        self.connected = true;
                        self.outbox.connected();
                        if let Some(s) = &self.snapshot {
                            let status = self.renderer.system_status(s, &self.local_status());
                            self.outbox.push_front(status);
                        }
                        self.outbox.push_front(self.renderer.availability(true));
                        if let Some(ha) = &self.ha {
                            let topic = ha.status_topic().to_string();
                            if let Err(e) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
                                log::warn!("cannot subscribe to Home Assistant's status: {e}");
                            }
                        }
                    }
                    Ok(Net::Incoming { topic, payload }) => {
                        let from_ha = self.ha.as_ref().is_some_and(|h| h.status_topic() == topic);
                        if from_ha && payload == b"online" {
                            log::info!("Home Assistant is online: re-sending discovery in {HA_GRACE:?}");
                            self.reannounce_at = Some(Instant::now() + HA_GRACE);
                        }
                    }
                    Ok(Net::Written(pkid)) => self.outbox.written(pkid),
                    Ok(Net::Acked(pkid)) => self.outbox.acked(pkid),
                    Ok(Net::Down { why, ack }) => {
                        if self.connected || !ever_down {
                            log::warn!("MQTT broker {} unreachable: {why}", self.broker);
                        } else {
                            log::debug!("MQTT broker {} still unreachable: {why}", self.broker);
                        }
                        ever_down = true;
                        self.connected = false;
                        self.outbox.connection_lost();
                        let _ = ack.send(());
                    }
                    Err(_) => break,
                },
                default(wait.unwrap_or(Duration::MAX)) => {
                    let now = Instant::now();
                    if self.reannounce_at.is_some_and(|t| t <= now) {
                        self.reannounce_at = None;
                        let configs = self.ha.as_ref().map(|h| h.announce_all()).unwrap_or_default();
                        configs.into_iter().for_each(|m| self.push(m));
                    }
                    if deadline.is_some_and(|d| d <= now) {
                        break;
                    }
                }
            }
            self.pump();
            if deadline.is_some() && self.outbox.is_empty() {
                match final_steps.pop() {
                    Some(step) => {
                        self.push(step);
                        self.pump();
                    }
                    None => break,
                }
            }
        }
        if self.connected {
            let _ = self.client.try_disconnect();
        }
        let saved = self.outbox.spill();
        if saved > 0 {
            log::warn!(
                "broker unreachable at shutdown: {saved} reading(s) saved to the spool for the next start"
            );
        }
        self.outbox.sync_spool(true);
        if !self.outbox.is_empty() {
            log::warn!(
                "stopped with {} message(s) not acknowledged by the broker",
                self.outbox.len()
            );
        }
    }

    fn accept(&mut self, out: &Outbound) {
        if let Outbound::System(s) = out {
            self.snapshot = Some(s.clone());
        }
        // Discovery first: a config before the state it reads, an empty config before the state is
        // cleared (Home Assistant would otherwise render templates against an empty payload).
        let discovery = self.ha.as_mut().map(|h| h.observe(out)).unwrap_or_default();
        discovery.into_iter().for_each(|m| self.push(m));
        let msg = self.renderer.render(out, || self.local_status());
        self.push(msg);
    }

    fn push(&mut self, msg: Message) {
        if msg.payload.len() + msg.topic.len() + 16 > MAX_PACKET {
            log::error!(
                "message for {} is {} bytes, over the {MAX_PACKET}-byte limit: not sent",
                msg.topic,
                msg.payload.len()
            );
            return;
        }
        self.outbox.push(msg);
    }

    /// Hand queued messages to rumqttc without ever blocking.
    fn pump(&mut self) {
        while self.connected && self.outbox.outstanding() < WINDOW {
            let Some(m) = self.outbox.peek() else { return };
            let sent =
                self.client
                    .try_publish(m.topic.clone(), qos(m.qos), m.retain, m.payload.clone());
            match sent {
                Ok(()) => self.outbox.handed_over(),
                Err(ClientError::TryRequest(_) | ClientError::Request(_)) => return,
            }
        }
    }

    fn local_status(&self) -> LocalStatus {
        LocalStatus {
            uptime_seconds: self.started.elapsed().as_secs(),
            outbox_queued: self.outbox.len(),
            outbox_spooled: self.outbox.spooled() as usize,
            dropped_messages: self.outbox.dropped(),
            disk_usage_percent: disk_usage_percent(&self.state_dir),
            mqtt_connected: self.connected,
        }
    }
}

/// Used share of the file system holding `dir`, in percent.
fn disk_usage_percent(dir: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `s` a writable statvfs for the call's duration.
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 || s.f_blocks == 0 {
        return None;
    }
    let used = s.f_blocks.saturating_sub(s.f_bfree) as f64;
    let usable = used + s.f_bavail as f64;
    (usable > 0.0).then(|| used * 100.0 / usable)
}
