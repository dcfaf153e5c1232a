//! The outbox: every message the gateway accepted, in order, until the broker acknowledged it (SPEC §3).
//!
//! Pure bookkeeping, no I/O: the MQTT thread feeds it messages, "handed to the client" marks, the client's
//! `Outgoing::Publish(pkid)` events (which come in hand-over order) and acks. On a lost connection every
//! unacknowledged message goes back to the queue in its original order. Retained state is coalesced: an
//! entry superseded by a newer one on the same topic is never sent (also with `mqtt.retain = false`,
//! when state is published without the retain flag). When full, the oldest reading goes
//! (counted in `dropped`). Must never: lose an unacknowledged QoS ≥ 1 message any other way, or reorder.

use super::link::{InFlight, Suspect};
use super::payload::{Kind, Message};
use super::spool::Spool;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    seq: i64,
    msg: Message,
    /// How many connections this entry was handed to that dropped before it was acknowledged.
    attempts: u32,
    /// The spool segment it was read back from (it is deleted once all its readings are acknowledged).
    spooled: Option<u64>,
}

#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    max_attempts: u32,
    next_seq: i64,
    next_priority_seq: i64,
    /// Not yet handed to the client, oldest first.
    queue: VecDeque<Entry>,
    /// Handed to the client, waiting for its `Outgoing::Publish(pkid)`.
    handed: VecDeque<Entry>,
    /// Written to the network, waiting for the broker's ack.
    inflight: HashMap<u16, Entry>,
    /// Retained topic → sequence number of its newest message.
    newest: HashMap<String, i64>,
    dropped: u64,
    /// Where readings go while the broker is away, the memory is full, or older readings are spooled.
    spool: Option<Spool>,
    connected: bool,
    /// Warnings that could come once per reading under overload, logged at most once a minute.
    drops: Throttle,
    spool_errors: Throttle,
    /// While set, messages up to this sequence number are re-sent one at a time.
    probe_until: Option<i64>,
    /// Topic → the message given up there because the broker kept closing the connection on it.
    poison: HashMap<String, Poison>,
}

#[derive(Debug)]
struct Poison {
    qos: u8,
    retain: bool,
    len: usize,
}

/// Counts events and says when to log them: the first at once, then at most once per [`Throttle::EVERY`]
/// with how many happened since (a flood of per-reading warnings would cost more than the readings).
#[derive(Debug, Default)]
struct Throttle {
    pending: u64,
    last: Option<Instant>,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(60);

    /// Count one event; `Some(count since the last log line)` when a line is due.
    fn note(&mut self) -> Option<u64> {
        self.pending += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.pending))
    }
}

/// Readings read back from the spool at a time.
const REPLAY_BATCH: usize = 100;

impl Outbox {
    /// `capacity` messages in memory; a message is given up after the broker closed the connection on it
    /// `max_attempts` times.
    pub fn new(capacity: usize, max_attempts: u32) -> Outbox {
        Outbox {
            capacity: capacity.max(1),
            max_attempts: max_attempts.max(1),
            next_seq: 1,
            next_priority_seq: 0,
            queue: VecDeque::new(),
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            newest: HashMap::new(),
            dropped: 0,
            spool: None,
            connected: false,
            drops: Throttle::default(),
            spool_errors: Throttle::default(),
            poison: HashMap::new(),
            probe_until: None,
        }
    }

    /// Use `spool` for readings that cannot wait in memory (see the module doc of `spool`).
    pub fn with_spool(mut self, spool: Spool) -> Outbox {
        self.spool = Some(spool);
        self
    }

    /// The broker connection is up: replay can start.
    pub fn connected(&mut self) {
        self.connected = true;
    }

    /// Try to put a reading in the spool; gives it back if there is no spool or it failed.
    fn spool_reading(&mut self, msg: Message) -> Option<Message> {
        let in_memory = self.queue.len() + self.handed.len() + self.inflight.len();
        let Some(spool) = self.spool.as_mut() else {
            return Some(msg);
        };
        let wanted = !self.connected || !spool.is_empty() || in_memory >= self.capacity;
        if !wanted {
            return Some(msg);
        }
        match spool.append(&msg) {
            Ok(()) => None,
            Err(e) => {
                if let Some(n) = self.spool_errors.note() {
                    log::error!("spool: cannot write ({e}); kept {n} reading(s) in memory instead");
                }
                Some(msg)
            }
        }
    }

    /// Accept a message at the back of the queue (a message like one given up as poison is dropped
    /// and counted instead).
    pub fn push(&mut self, msg: Message) {
        if self.refuse_poison(&msg) {
            return;
        }
        let msg = if msg.kind == Kind::Reading {
            match self.spool_reading(msg) {
                Some(m) => m,
                None => return,
            }
        } else {
            msg
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.len() >= self.capacity && !self.drop_oldest_reading() && msg.kind == Kind::Reading {
            self.dropped += 1;
            if let Some(n) = self.drops.note() {
                log::warn!(
                    "outbox full: dropped {n} reading(s), the latest for {}",
                    msg.topic
                );
            }
            return;
        }
        self.accept(seq, msg, false);
    }

    /// Accept a message ahead of everything queued (availability and status at connect).
    pub fn push_front(&mut self, msg: Message) {
        if self.refuse_poison(&msg) {
            return;
        }
        let seq = self.next_priority_seq;
        self.next_priority_seq -= 1;
        self.accept(seq, msg, true);
    }

    fn refuse_poison(&mut self, msg: &Message) -> bool {
        if !self.is_poison(msg) {
            return false;
        }
        self.dropped += 1;
        log::debug!(
            "not sending a message for {}: the broker refused one like it",
            msg.topic
        );
        true
    }

    fn accept(&mut self, seq: i64, msg: Message, front: bool) {
        if msg.kind == Kind::State {
            // A newer state replaces a queued older one in place, so the queue stays bounded by topics.
            if let Some(&old) = self.newest.get(&msg.topic)
                && let Ok(i) = self.queue.binary_search_by_key(&old, |e| e.seq)
            {
                self.queue[i].msg = msg;
                return;
            }
            self.newest.insert(msg.topic.clone(), seq);
        }
        let entry = Entry {
            seq,
            msg,
            attempts: 0,
            spooled: None,
        };
        if front {
            self.queue.push_front(entry);
        } else {
            self.queue.push_back(entry);
        }
    }

    fn drop_oldest_reading(&mut self) -> bool {
        match self.queue.iter().position(|e| e.msg.kind == Kind::Reading) {
            Some(i) => {
                if let Some(e) = self.queue.remove(i)
                    && let Some(n) = self.drops.note()
                {
                    log::warn!(
                        "outbox full: dropped the {n} oldest reading(s), the latest for {}",
                        e.msg.topic
                    );
                }
                self.dropped += 1;
                true
            }
            None => false,
        }
    }

    fn is_stale(&self, e: &Entry) -> bool {
        e.msg.kind == Kind::State && self.newest.get(&e.msg.topic) != Some(&e.seq)
    }

    /// The next message to hand to the client (superseded retained state is skipped and discarded).
    pub fn peek(&mut self) -> Option<&Message> {
        if self.queue.is_empty() && self.connected {
            self.replay();
        }
        while let Some(front) = self.queue.front() {
            if self.is_stale(front) {
                self.queue.pop_front();
            } else {
                break;
            }
        }
        self.queue.front().map(|e| &e.msg)
    }

    /// The message returned by [`Outbox::peek`] was accepted by the client.
    pub fn handed_over(&mut self) {
        if let Some(e) = self.queue.pop_front() {
            self.handed.push_back(e);
        }
    }

    /// How many messages are with the client and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.handed.len() + self.inflight.len()
    }

    /// The client wrote the oldest handed-over message with packet id `pkid` (0 for QoS 0).
    pub fn written(&mut self, pkid: u16) {
        let Some(e) = self.handed.pop_front() else {
            log::warn!("publish {pkid} written that the outbox did not hand over");
            return;
        };
        if e.msg.qos > 0 {
            self.inflight.insert(pkid, e);
        } else {
            self.forget(&e);
        }
    }

    /// The broker acknowledged `pkid` (PUBACK for QoS 1, PUBCOMP for QoS 2).
    /// Returns what kind of message it was (the broker evidently accepts such).
    pub fn acked(&mut self, pkid: u16) -> Option<Suspect> {
        let e = self.inflight.remove(&pkid)?;
        self.forget(&e);
        Some(Suspect {
            qos: e.msg.qos,
            retain: e.msg.retain,
        })
    }

    /// Read the next batch of spooled readings into the queue (they are older than anything new).
    fn replay(&mut self) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        for (msg, segment) in spool.read_batch(REPLAY_BATCH) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queue.push_back(Entry {
                seq,
                msg,
                attempts: 0,
                spooled: Some(segment),
            });
        }
    }

    fn forget(&mut self, e: &Entry) {
        if let (Some(segment), Some(spool)) = (e.spooled, self.spool.as_mut()) {
            spool.acked(segment);
        }
        if e.msg.kind == Kind::State && self.newest.get(&e.msg.topic) == Some(&e.seq) {
            self.newest.remove(&e.msg.topic);
        }
    }

    /// The connection dropped: everything unacknowledged goes back into the queue, in original order.
    ///
    /// `closed_by_broker`: the broker closed it (rather than the network failing), perhaps on a message
    /// it refuses. Acks cannot single that message out — a broker closing on a packet resets the
    /// connection, and the acks it sent for the packets before are lost with it — so:
    /// - with one message in flight, that one is the suspect: it is charged one attempt; after
    ///   `max_attempts` it is given up, counted, and remembered as poison, so the same message is never
    ///   created again (see [`Outbox::push`]);
    /// - with several, nobody is charged, and they are re-sent one at a time ([`Outbox::window`]
    ///   becomes 1 until all of them have left), so a next death has a single suspect.
    ///
    /// Returns what was in flight.
    pub fn connection_lost(&mut self, closed_by_broker: bool) -> InFlight {
        self.connected = false;
        let in_flight = self.inflight.len();
        let single = if in_flight == 1 {
            self.inflight.values().next().map(|e| e.seq)
        } else {
            None
        };
        if closed_by_broker && self.inflight.len() > 1 {
            let last = self
                .inflight
                .values()
                .chain(&self.handed)
                .map(|e| e.seq)
                .max();
            self.probe_until = self.probe_until.max(last);
        }
        let mut back: Vec<Entry> = self.handed.drain(..).collect();
        back.extend(self.inflight.drain().map(|(_, e)| e));
        back.sort_by_key(|e| e.seq);
        let mut suspect = None;
        for mut e in back.into_iter().rev() {
            if Some(e.seq) == single {
                suspect = Some(Suspect {
                    qos: e.msg.qos,
                    retain: e.msg.retain,
                });
                if closed_by_broker {
                    e.attempts += 1;
                }
                if e.attempts >= self.max_attempts {
                    self.give_up(&e);
                    continue;
                }
            }
            self.queue.push_front(e);
        }
        let mut all: Vec<Entry> = self.queue.drain(..).collect();
        all.sort_by_key(|e| e.seq);
        self.queue.extend(all);
        match suspect {
            Some(s) => InFlight::One(s),
            None if in_flight == 0 => InFlight::Nothing,
            None => InFlight::Several,
        }
    }

    /// How many messages may be with the client at once: `normal`, or 1 while the messages that were
    /// in flight when the broker closed the connection are re-sent (see [`Outbox::connection_lost`]).
    pub fn window(&mut self, normal: usize) -> usize {
        let Some(until) = self.probe_until else {
            return normal;
        };
        // The queue is in sequence order, so its front is its oldest.
        let pending = self
            .queue
            .front()
            .into_iter()
            .chain(&self.handed)
            .chain(self.inflight.values())
            .any(|e| e.seq <= until);
        if pending {
            1
        } else {
            self.probe_until = None;
            normal
        }
    }

    fn give_up(&mut self, e: &Entry) {
        self.dropped += 1;
        self.forget(e);
        log::warn!(
            "giving up on a message for {} ({} bytes, QoS {}{}): the broker closed the connection \
             each of the {} times it was sent",
            e.msg.topic,
            e.msg.payload.len(),
            e.msg.qos,
            if e.msg.retain { ", retained" } else { "" },
            e.attempts
        );
        if e.msg.kind == Kind::Reading {
            // Readings are never created again; only re-created state and events need remembering.
            return;
        }
        self.poison.insert(
            e.msg.topic.clone(),
            Poison {
                qos: e.msg.qos,
                retain: e.msg.retain,
                len: e.msg.payload.len(),
            },
        );
    }

    /// Whether `msg` is like one the broker kept refusing: same topic, QoS and retain flag, and at least
    /// as large.
    fn is_poison(&self, msg: &Message) -> bool {
        self.poison.get(&msg.topic).is_some_and(|p| {
            p.qos == msg.qos && p.retain == msg.retain && msg.payload.len() >= p.len
        })
    }

    /// Messages given up as poison so far (see [`Outbox::connection_lost`]).
    pub fn poisoned(&self) -> usize {
        self.poison.len()
    }

    /// Messages held in memory (queued, handed over or in flight).
    pub fn len(&self) -> usize {
        self.queue.len() + self.outstanding()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages given up (outbox or spool full, or failed too often).
    pub fn dropped(&self) -> u64 {
        self.dropped + self.spool.as_ref().map_or(0, Spool::dropped)
    }

    /// Readings waiting in the spool.
    pub fn spooled(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::len)
    }

    /// fsync the spool if a sync is due (`force`: now), and when the next one is due.
    pub fn sync_spool(&mut self, force: bool) -> Option<std::time::Instant> {
        let spool = self.spool.as_mut()?;
        spool.sync_due(force);
        spool.sync_deadline()
    }

    /// Stopping while the broker is unreachable: the readings still in memory go to the front of the
    /// spool (they are older than what is there), so the next start delivers them. Returns how many.
    pub fn spill(&mut self) -> usize {
        let Some(spool) = self.spool.as_mut() else {
            return 0;
        };
        let mut all: Vec<Entry> = self
            .handed
            .drain(..)
            .chain(self.inflight.drain().map(|(_, e)| e))
            .collect();
        all.extend(self.queue.drain(..));
        all.sort_by_key(|e| e.seq);
        let readings: Vec<Message> = all
            .into_iter()
            .filter(|e| e.msg.kind == Kind::Reading && e.spooled.is_none())
            .map(|e| e.msg)
            .collect();
        match spool.prepend(&readings) {
            Ok(()) => readings.len(),
            Err(e) => {
                log::error!(
                    "spool: cannot save {} reading(s) at shutdown: {e}",
                    readings.len()
                );
                0
            }
        }
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
