//! Thread "mqtt": the outbox stage. Takes the pipeline's `Outbound` values, renders them, keeps them in
//! the [`Outbox`] and hands them to rumqttc without ever blocking; runs the shutdown sequence.
//!
//! Owns: what is sent and when. Must never: block the stages upstream (its input is drained into the
//! bounded outbox at all times), call a blocking `publish`, or do network I/O itself.

use super::clock::{self, Held};
use super::connection::{MAX_INCOMING, MAX_PACKET, Net, Progress, qos};
use super::homeassistant;
use super::incoming::{self, Incoming};
use super::link::{Diagnosis, Finding, IN_A_ROW, Loss};
use super::outbox::Outbox;
use super::payload::{self, LocalStatus, Message, Renderer};
use super::{HA_GRACE, INPUT_BATCH, WINDOW};
use crate::ble::FactSender;
use crate::config::Config;
use crate::messages::{ClusterFact, FleetEvent, Outbound, SystemSnapshot};
use chrono::Utc;
use crossbeam_channel::{Receiver, Sender, TrySendError, never, select};
use rumqttc::{Client, ClientError, QoS};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest payload accepted on Home Assistant's status topic (`online` / `offline`).
const MAX_HA_STATUS: usize = 64;

/// The outbox thread's state.
pub struct OutboxStage {
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
    /// Whether a connection was ever lost (the first loss is a warning, repeats while down are debug).
    ever_down: bool,
    diagnosis: Diagnosis,
    client_id: String,
    will_retained: bool,
    /// A message too large for us arrived: Home Assistant's status is no longer subscribed.
    ha_status_off: bool,
    ha_status_oversize_logged: bool,
    /// `mqtt.max_qos`, `mqtt.retain`.
    max_qos: u8,
    retain: bool,
    /// Without retain: how often, and when next, the current state is published again.
    refresh_every: Duration,
    refresh_at: Option<Instant>,
    /// Values waiting for a sane wall clock, at most `clock_wait`.
    held: Held,
    clock_wait: Duration,
    /// The newest retained device status / vehicle summary per topic, for [`Self::republish_retained`].
    retained: BTreeMap<String, Message>,
    /// With `[cluster]`: where the other gateways' facts go (the BLE stage's ownership rule, SPEC §6),
    /// and the monitors' statuses (the fleet's vehicle summaries; never blocking: a full channel drops
    /// one, the next status of that monitor replaces it).
    cluster: Option<(FactSender, Sender<FleetEvent>)>,
    /// A malformed cluster message was logged (once per run; later ones at debug).
    cluster_bad_logged: bool,
}

impl OutboxStage {
    pub fn new(
        config: &Config,
        client: Client,
        ha: Option<homeassistant::HomeAssistant>,
        outbox: Outbox,
        renderer: Renderer,
        started: Instant,
    ) -> OutboxStage {
        OutboxStage {
            client,
            ha,
            reannounce_at: None,
            outbox,
            renderer,
            connected: false,
            snapshot: None,
            started,
            state_dir: config.gateway.state_dir.clone(),
            timeout: Duration::from_secs(config.mqtt.timeout),
            broker: format!("{}:{}", config.mqtt.broker, config.mqtt.port),
            retained: BTreeMap::new(),
            ever_down: false,
            diagnosis: Diagnosis::default(),
            client_id: config.client_id(),
            will_retained: config.mqtt.retain,
            ha_status_off: false,
            ha_status_oversize_logged: false,
            max_qos: config.mqtt.max_qos,
            retain: config.mqtt.retain,
            refresh_every: Duration::from_secs(config.mqtt.status_interval),
            held: Held::new(
                Duration::from_secs(config.gateway.clock_wait),
                config.mqtt.outbox_capacity,
                started,
            ),
            clock_wait: Duration::from_secs(config.gateway.clock_wait),
            refresh_at: (!config.mqtt.retain)
                .then(|| Instant::now() + Duration::from_secs(config.mqtt.status_interval)),
            cluster: None,
            cluster_bad_logged: false,
        }
    }

    /// Take part in a cluster (SPEC §6): subscribe to the other gateways' facts at every connection and
    /// hand them, and the connection's state, to `facts`.
    pub fn with_cluster(mut self, facts: FactSender, fleet: Sender<FleetEvent>) -> OutboxStage {
        self.cluster = Some((facts, fleet));
        self
    }

    pub fn run(mut self, rx: &Receiver<Outbound>, net: &Receiver<Net>) {
        let mut input = rx.clone();
        let mut deadline: Option<Instant> = None;
        // The shutdown sequence: each step is sent only after everything before it was acknowledged.
        let mut final_steps: Vec<Message> = Vec::new();
        loop {
            let sync_at = self.outbox.sync_spool(false);
            let held_at = self.held.next_check();
            let wake = [
                deadline,
                self.reannounce_at,
                sync_at,
                self.refresh_at,
                held_at,
            ]
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
                            self.release_held(true);
                            final_steps = vec![
                                self.renderer.availability(false),
                                self.renderer.shutdown(reason, self.wall_now()),
                            ];
                            deadline = Some(Instant::now() + self.timeout);
                            input = never();
                            break;
                        }
                        self.receive(out);
                        taken += 1;
                        if taken < INPUT_BATCH {
                            next = input.try_recv().ok();
                        }
                    }
                }
                recv(net) -> event => match event {
                    Ok(event) => self.on_net(event),
                    Err(_) => break,
                },
                default(wait.unwrap_or(Duration::MAX)) => {}
            }
            // Timers are checked after every wake-up, not only on a timeout: a busy input must not
            // starve them.
            let now = Instant::now();
            if self.reannounce_at.is_some_and(|t| t <= now) {
                self.reannounce_at = None;
                let configs = self
                    .ha
                    .as_ref()
                    .map(|h| h.announce_all())
                    .unwrap_or_default();
                configs.into_iter().for_each(|m| self.push(m));
            }
            if held_at.is_some_and(|t| t <= now) {
                self.release_held(false);
            }
            if self.refresh_at.is_some_and(|t| t <= now) {
                self.refresh_at = Some(now + self.refresh_every);
                let states: Vec<Message> = self.retained.values().cloned().collect();
                states.into_iter().for_each(|m| self.push(m));
            }
            if deadline.is_some_and(|d| d <= now) {
                break;
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

    /// The wall clock, or a stand-in while it is not set (see `clock`).
    fn wall_now(&self) -> chrono::DateTime<Utc> {
        let now = Utc::now();
        if clock::is_sane(now) {
            now
        } else {
            clock::stand_in(Instant::now(), self.started)
        }
    }

    /// Take one value from the pipeline: publish it, or hold it while the wall clock is not sane.
    fn receive(&mut self, mut out: Outbound) {
        let wall = Utc::now();
        if !self.held.wants(&out, wall) {
            self.held.correct(&mut out);
            self.accept(&out, true);
            return;
        }
        if self.held.is_empty() {
            log::warn!(
                "the wall clock says {} (before {}): holding messages until it is set, at most {} s",
                payload::timestamp(wall),
                payload::timestamp(clock::not_before()),
                self.clock_wait.as_secs()
            );
        }
        if let Some(old) = self.held.hold(out, Instant::now(), wall) {
            self.accept(&old, false);
        }
    }

    /// Publish what the hold lets go (`all`: everything, at shutdown).
    fn release_held(&mut self, all: bool) {
        let out = self.held.release(Instant::now(), Utc::now(), all);
        if out.is_empty() {
            return;
        }
        let valid = out.iter().filter(|(_, v)| *v).count();
        if valid > 0 {
            log::info!(
                "the wall clock is set: {valid} held message(s) stamped from the monotonic clock"
            );
        }
        if valid < out.len() {
            log::warn!(
                "{} held message(s) published with a wall clock still not set: stand-in times \
                 (extra.clock_valid: false)",
                out.len() - valid
            );
        }
        for (o, valid) in out {
            self.accept(&o, valid);
        }
    }

    /// Render and queue `out`; `clock_valid: false` marks its `extra` (readings, device statuses).
    fn accept(&mut self, out: &Outbound, clock_valid: bool) {
        if let Outbound::System(s) = out {
            self.snapshot = Some(s.clone());
        }
        // Discovery first: a config before the state it reads, an empty config before the state is
        // cleared (Home Assistant would otherwise render templates against an empty payload).
        let discovery = self.ha.as_mut().map(|h| h.observe(out)).unwrap_or_default();
        discovery.into_iter().for_each(|m| self.push(m));
        if let Outbound::Owner(o) = out
            && o.claim.is_none()
        {
            // Another gateway serves it now: its status is no longer ours to restore.
            self.retained.remove(&self.renderer.topics.status(o.mac));
            if !o.clear {
                return;
            }
        }
        let mut msg = self.renderer.render(out, || self.local_status());
        if !clock_valid {
            clock_invalid(&mut msg.payload);
        }
        if matches!(
            out,
            Outbound::DeviceStatus(_)
                | Outbound::Summary(_)
                | Outbound::Removed(_)
                | Outbound::Hears(_)
                | Outbound::Owner(_)
        ) {
            self.remember(&msg);
        }
        self.push(msg);
    }

    /// One report from the connection loop.
    fn on_net(&mut self, event: Net) {
        match event {
            Net::Connected { session } => self.on_connected(session),
            Net::Incoming { topic, payload } => self.on_incoming(&topic, &payload),
            Net::Progress(progress) => {
                for p in progress {
                    match p {
                        Progress::Written(pkid) => self.outbox.written(pkid),
                        Progress::Acked(pkid) => {
                            if let Some(kind) = self.outbox.acked(pkid) {
                                self.diagnosis.accepted(&kind);
                            }
                        }
                    }
                }
            }
            Net::Down {
                why,
                loss,
                uptime,
                ack,
            } => {
                if self.connected || !self.ever_down {
                    log::warn!("MQTT broker {} unreachable: {why}", self.broker);
                } else {
                    log::debug!("MQTT broker {} still unreachable: {why}", self.broker);
                }
                self.ever_down = true;
                self.connected = false;
                if let Some((facts, _)) = &self.cluster {
                    facts.send(ClusterFact::Broker { connected: false });
                    self.forget_served();
                }
                let in_flight = self.outbox.connection_lost(loss == Loss::Closed);
                let _ = ack.send(());
                if loss == Loss::IncomingTooLarge && !self.ha_status_off {
                    self.ha_status_off = true;
                    log::warn!(
                        "the broker sent a message larger than {MAX_INCOMING} bytes (probably a retained \
                         message on Home Assistant's status topic): no longer subscribing to it; \
                         discovery configs are still re-sent at every connection"
                    );
                }
                let finding = self
                    .diagnosis
                    .lost(loss, uptime, &in_flight, self.will_retained);
                if let Some(f) = finding {
                    self.report(f);
                }
            }
        }
    }

    fn on_connected(&mut self, session: bool) {
        log::info!("connected to the MQTT broker at {}", self.broker);
        self.connected = true;
        self.outbox.connected();
        if !session {
            self.republish_retained();
        }
        if let Some(s) = &self.snapshot {
            let status = self.renderer.system_status(s, &self.local_status());
            self.push_front(status);
        }
        self.push_front(self.renderer.availability(true));
        if let Some(ha) = self.ha.as_ref().filter(|_| !self.ha_status_off) {
            let topic = ha.status_topic().to_string();
            if let Err(e) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
                log::warn!("cannot subscribe to Home Assistant's status: {e}");
            }
        }
        if let Some((facts, _)) = &self.cluster {
            for filter in self.renderer.topics.cluster_subscriptions() {
                if let Err(e) = self.client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    log::warn!("cannot subscribe to {filter}: {e}");
                }
            }
            facts.send(ClusterFact::Broker { connected: true });
        }
    }

    fn on_incoming(&mut self, topic: &str, payload: &[u8]) {
        if let Some((facts, fleet)) = &self.cluster
            && let Some(message) = incoming::parse(&self.renderer.topics, topic, payload)
        {
            match message {
                Ok(Incoming::Fact(fact)) => facts.send(fact),
                Ok(Incoming::Status(status)) => {
                    if let Err(TrySendError::Full(_)) = fleet.try_send(FleetEvent::Remote(status)) {
                        log::debug!("fleet busy: a status read on {topic} was dropped");
                    }
                }
                Err(why) if !self.cluster_bad_logged => {
                    self.cluster_bad_logged = true;
                    log::warn!(
                        "ignoring a malformed cluster message on {topic}: {why} (further ones are \
                         logged at debug)"
                    );
                }
                Err(why) => log::debug!("ignoring a malformed cluster message on {topic}: {why}"),
            }
            return;
        }
        if self.ha.as_ref().is_none_or(|h| h.status_topic() != topic) {
            return;
        }
        if payload.len() > MAX_HA_STATUS {
            if !self.ha_status_oversize_logged {
                self.ha_status_oversize_logged = true;
                log::warn!(
                    "ignoring a {}-byte message on {topic} (Home Assistant's status is `online` or \
                     `offline`); further ones are ignored silently",
                    payload.len()
                );
            }
            return;
        }
        if payload == b"online" {
            log::info!("Home Assistant is online: re-sending discovery in {HA_GRACE:?}");
            self.reannounce_at = Some(Instant::now() + HA_GRACE);
        }
    }

    /// Say once per run what a run of short-lived connections probably means, and what copes.
    fn report(&self, finding: Finding) {
        match finding {
            Finding::TakeOver => log::error!(
                "the MQTT broker {} closed the connection right after accepting it {IN_A_ROW} times in \
                 a row: another client is probably connected with our client id '{}' (a second gateway, \
                 a copied configuration, a test run beside the service); give each one its own \
                 mqtt.client_id (or gateway.id). Backing off meanwhile",
                self.broker,
                self.client_id
            ),
            Finding::NoQos2 { retained } => log::error!(
                "the MQTT broker {} closed the connection right after a QoS 2 publish {IN_A_ROW} times \
                 in a row: it probably does not accept QoS 2 (as AWS IoT, Azure IoT Hub or mosquitto \
                 with max_qos 1): set mqtt.max_qos = 1{}",
                self.broker,
                if retained {
                    " (or, if it has no retained messages either, mqtt.retain = false)"
                } else {
                    ""
                }
            ),
            Finding::NoRetain => log::error!(
                "the MQTT broker {} closed the connection right after a retained publish (or at CONNECT, \
                 our last will being retained) {IN_A_ROW} times in a row: it probably does not support \
                 retained messages (as mosquitto with retain_available false): set mqtt.retain = false",
                self.broker
            ),
        }
    }

    /// Keep the newest device status and vehicle summary per topic (availability and system status are
    /// rebuilt at connect; an empty payload clears its topic and is forgotten).
    fn remember(&mut self, msg: &Message) {
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
        } else {
            self.retained.insert(msg.topic.clone(), msg.clone());
        }
    }

    /// With `[cluster]`: losing the broker makes the BLE stage let go of every monitor at once (SPEC §6),
    /// and another gateway may serve them before we are back. What we published for them — owner
    /// claims, device statuses, vehicle summaries and their discovery configs — is then no longer ours
    /// to re-publish at the next connection: that would overwrite the new owner's claim, its status
    /// and Home Assistant's `via_device`. Taking a monitor again announces it afresh.
    fn forget_served(&mut self) {
        let hears = self.renderer.topics.hears();
        self.retained.retain(|topic, _| *topic == hears);
        if let Some(h) = self.ha.as_mut() {
            h.forget_served();
        }
    }

    /// The broker has no session for us, so it may have forgotten every retained message (restarted
    /// without persistence): queue all retained state we own ahead of the backlog — every device
    /// status, every vehicle summary and every discovery config — whether or not it changed since.
    /// Availability and system status are queued in front of these by the caller.
    fn republish_retained(&mut self) {
        // Without retain, discovery configs go out on Home Assistant's birth only (SPEC §3).
        let configs = match &self.ha {
            Some(h) if self.retain => h.announce_all(),
            _ => Vec::new(),
        };
        let states: Vec<Message> = self.retained.values().cloned().collect();
        let count = states.len() + configs.len();
        for m in states.into_iter().chain(configs).rev() {
            self.push_front(m);
        }
        log::debug!("no session on the broker: re-publishing {count} retained message(s)");
    }

    /// `mqtt.max_qos` and `mqtt.retain` applied to a message about to be queued.
    fn limit(&self, mut msg: Message) -> Message {
        msg.qos = msg.qos.min(self.max_qos);
        msg.retain &= self.retain;
        msg
    }

    /// Queue `msg` ahead of everything (availability, system status and retained state at connect).
    fn push_front(&mut self, msg: Message) {
        let msg = self.limit(msg);
        if msg.payload.len() + msg.topic.len() + 16 <= MAX_PACKET {
            self.outbox.push_front(msg);
        }
    }

    fn push(&mut self, msg: Message) {
        let msg = self.limit(msg);
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
        while self.connected && self.outbox.outstanding() < self.outbox.window(WINDOW) {
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

/// Add `"clock_valid": false` to the payload's `extra` object, if it has one (rare: a clock never set).
fn clock_invalid(payload: &mut Vec<u8>) {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    if let Some(extra) = v
        .get_mut("extra")
        .and_then(serde_json::Value::as_object_mut)
    {
        extra.insert("clock_valid".into(), false.into());
        if let Ok(p) = serde_json::to_vec(&v) {
            *payload = p;
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

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
