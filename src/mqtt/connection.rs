//! The broker connection: rumqttc options (TLS, credentials, last will) and the "mqtt-conn" loop.
//!
//! Owns: turning rumqttc's events into [`Net`] reports and the reconnect backoff. Must never: decide what
//! is sent, touch the outbox, or reconnect without waiting the backoff (rumqttc alone would spin).

use super::MqttError;
use super::link::{Link, Loss};
use super::payload::Renderer;
use crate::backoff::Backoff;
use crate::config::Config;
use crossbeam_channel::{Receiver, Sender, bounded, select};
use rumqttc::{
    Connection, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, StateError,
    TlsConfiguration, Transport,
};
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// Largest packet we send; bigger messages are refused before they reach the outbox (rumqttc would
/// drop the connection, and the queue with it).
pub const MAX_PACKET: usize = 256 * 1024;
/// Largest packet we accept from the broker. Larger than anything we subscribe to needs (Home
/// Assistant's status is a word), so a stray large retained message there is read and dropped rather
/// than closing the connection; anything larger still closes it once (see `Loss::IncomingTooLarge`).
pub const MAX_INCOMING: usize = 1024 * 1024;
/// Unacknowledged QoS ≥ 1 publishes on the wire.
pub const INFLIGHT: u16 = 100;
/// CA bundle used with `tls = true` and no `ca_file` (Debian's ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What the connection loop tells the outbox thread.
pub enum Net {
    /// CONNACK; `session`: the broker kept a session for us (never with a clean session), so it still
    /// has our retained state only if it was not restarted without persistence — we cannot tell, so
    /// without a session everything retained is published again.
    Connected { session: bool },
    /// Publishes written and acknowledged since the last report, in the order rumqttc gave them (see
    /// [`Reports`]).
    Progress(Vec<Progress>),
    /// A message on a topic we subscribed to (Home Assistant's status).
    Incoming { topic: String, payload: Vec<u8> },
    /// The connection is gone. The outbox requeues, then answers on `ack` so the loop can clear
    /// rumqttc's queues knowing nothing new was handed over meanwhile.
    Down {
        why: String,
        loss: Loss,
        /// How long the connection had been up (monotonic); `None`: it never got a CONNACK.
        uptime: Option<Duration>,
        ack: Sender<()>,
    },
}

/// What happened to one publish on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `Outgoing::Publish(pkid)`: written (packet id 0 for QoS 0).
    Written(u16),
    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for `pkid`.
    Acked(u16),
}

/// Acknowledgements gathered before they are reported while other publishes are still unacknowledged.
/// Far below the outbox's window (`INFLIGHT` + the request channel), so holding them never starves it.
pub const ACK_BATCH: usize = 32;

/// The progress gathered since the last report, and when it goes to the outbox thread. Each report wakes
/// that thread, so progress is reported once per burst: only when rumqttc holds no further event already
/// read (`idle`), and only if something in it changes the outbox — acknowledgements once every publish
/// written is acknowledged (the burst is over) or [`ACK_BATCH`] of them are waiting, or a QoS 0 publish
/// written (it leaves the outbox then). A written QoS ≥ 1 publish waits for its acknowledgement. (Holding
/// acknowledgements back for a time while others are in flight was tried: at a steady load something is
/// always in flight, so it starved the outbox's window and cut delivery to 60 % at 2000 readings/s.)
#[derive(Debug, Default)]
pub struct Reports {
    progress: Vec<Progress>,
    /// QoS ≥ 1 publishes written on this connection and not yet acknowledged.
    unacked: usize,
    /// Acknowledgements in `progress`.
    acks: usize,
    /// A QoS 0 publish written is in `progress`.
    urgent: bool,
}

impl Reports {
    pub fn note(&mut self, p: Progress) {
        match p {
            Progress::Written(0) => self.urgent = true,
            Progress::Written(_) => self.unacked += 1,
            Progress::Acked(_) => {
                self.unacked = self.unacked.saturating_sub(1);
                self.acks += 1;
            }
        }
        self.progress.push(p);
    }

    /// Whether the gathered progress is reported now (see [`Reports`]).
    pub fn due(&self, idle: bool) -> bool {
        idle && (self.urgent || (self.acks > 0 && (self.unacked == 0 || self.acks >= ACK_BATCH)))
    }

    pub fn is_empty(&self) -> bool {
        self.progress.is_empty()
    }

    /// The gathered progress, emptied.
    pub fn take(&mut self) -> Vec<Progress> {
        self.acks = 0;
        self.urgent = false;
        std::mem::take(&mut self.progress)
    }

    /// The connection is gone: nothing written on it will be acknowledged.
    pub fn lost(&mut self) {
        self.unacked = 0;
    }
}

fn read_file(key: &'static str, path: &str) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|e| MqttError::File(key, path.to_string(), e))
}

pub fn options(config: &Config, renderer: &Renderer) -> Result<MqttOptions, MqttError> {
    let m = &config.mqtt;
    let mut o = MqttOptions::new(config.client_id(), m.broker.clone(), m.port);
    o.set_keep_alive(Duration::from_secs(m.keepalive))
        .set_clean_session(true)
        .set_inflight(INFLIGHT)
        .set_max_packet_size(MAX_INCOMING, MAX_PACKET);
    let will = renderer.availability(false);
    o.set_last_will(LastWill::new(
        will.topic,
        will.payload,
        qos(will.qos.min(m.max_qos)),
        m.retain,
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

pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// How a connection ended, by the error's kind (never by its text).
fn classify(e: &ConnectionError) -> Loss {
    let closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        )
    };
    match e {
        ConnectionError::MqttState(StateError::ConnectionAborted) => Loss::Closed,
        ConnectionError::MqttState(
            StateError::Io(io) | StateError::Deserialization(rumqttc::mqttbytes::Error::Io(io)),
        )
        | ConnectionError::Io(io)
            if closed(io) =>
        {
            Loss::Closed
        }
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_),
        )) => Loss::IncomingTooLarge,
        _ => Loss::Unreachable,
    }
}

/// The connection loop: drive rumqttc, report events, back off after errors. Nothing else.
pub fn drive(connection: &mut Connection, tx: &Sender<Net>, stop: &Receiver<()>) {
    let mut link = Link::new(Backoff::broker());
    let mut progress = Reports::default();
    loop {
        let net = match connection.recv() {
            Err(_) => return,
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                link.connected(Instant::now());
                Some(Net::Connected {
                    session: ack.session_present,
                })
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                progress.note(Progress::Written(pkid));
                None
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                progress.note(Progress::Acked(ack.pkid));
                None
            }
            Ok(Ok(Event::Incoming(Packet::PubComp(comp)))) => {
                progress.note(Progress::Acked(comp.pkid));
                None
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => Some(Net::Incoming {
                topic: p.topic,
                payload: p.payload.to_vec(),
            }),
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                if !progress.is_empty() && tx.send(Net::Progress(progress.take())).is_err() {
                    return;
                }
                progress.lost();
                let (ack_tx, ack_rx) = bounded(1);
                let (uptime, delay) = link.lost(Instant::now());
                let down = Net::Down {
                    why: e.to_string(),
                    loss: classify(&e),
                    uptime,
                    ack: ack_tx,
                };
                if tx.send(down).is_err() || ack_rx.recv().is_err() {
                    return;
                }
                connection.eventloop.clean();
                connection.eventloop.pending.clear();
                // Events of the dead connection not yet handed out (the `Outgoing::Publish` of a batch
                // whose write failed): the outbox has requeued those messages, and a stale event after
                // the next CONNACK would be matched to the wrong message.
                connection.eventloop.state.events.clear();
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
        let idle = connection.eventloop.state.events.is_empty();
        if ((net.is_some() && !progress.is_empty()) || progress.due(idle))
            && tx.send(Net::Progress(progress.take())).is_err()
        {
            return;
        }
        if let Some(net) = net
            && tx.send(net).is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ACK_BATCH, Progress, Reports};

    #[test]
    fn progress_is_reported_once_per_burst_and_only_when_it_changes_the_outbox() {
        let mut r = Reports::default();
        assert!(!r.due(true), "nothing gathered");
        r.note(Progress::Written(7));
        r.note(Progress::Written(8));
        assert!(!r.due(true), "a QoS 1 publish waits for its ack");
        r.note(Progress::Acked(7));
        assert!(!r.due(true), "8 is still unacknowledged: the burst goes on");
        r.note(Progress::Acked(8));
        assert!(r.due(true), "every publish written is acknowledged");
        assert!(
            !r.due(false),
            "more events already read: report them together"
        );
        assert_eq!(r.take().len(), 4);
        assert!(!r.due(true) && r.is_empty());

        r.note(Progress::Written(0));
        assert!(r.due(true), "QoS 0 leaves the outbox when written");
        r.take();
    }

    #[test]
    fn a_steady_stream_reports_its_acknowledgements_in_batches() {
        let mut r = Reports::default();
        let mut reports = 0;
        // Always something in flight: publish n + 1 is written before n is acknowledged.
        r.note(Progress::Written(1));
        for n in 1..=10 * ACK_BATCH as u16 {
            r.note(Progress::Written(n + 1));
            r.note(Progress::Acked(n));
            if r.due(true) {
                let acks = r.take();
                let acks = acks.iter().filter(|p| matches!(p, Progress::Acked(_)));
                assert_eq!(acks.count(), ACK_BATCH);
                reports += 1;
            }
        }
        assert_eq!(reports, 10);
    }

    #[test]
    fn a_lost_connection_leaves_nothing_waiting_for_acknowledgements() {
        let mut r = Reports::default();
        r.note(Progress::Written(1));
        r.note(Progress::Written(2));
        r.note(Progress::Acked(1));
        r.take();
        r.lost();
        r.note(Progress::Written(1));
        r.note(Progress::Acked(1));
        assert!(
            r.due(true),
            "the publish of the dead connection is not waited for"
        );
    }
}
