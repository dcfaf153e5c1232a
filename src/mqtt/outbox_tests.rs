//! Tests of the outbox: ordering, acks, coalescing, the full-memory policy, poison handling.
use super::*;

fn msg(topic: &str, kind: Kind, qos: u8) -> Message {
    Message {
        topic: topic.into(),
        payload: topic.as_bytes().to_vec(),
        qos,
        retain: kind == Kind::State,
        kind,
    }
}

/// Hand everything over and write it with consecutive packet ids starting at `first`.
fn send_all(o: &mut Outbox, first: u16) -> Vec<String> {
    let mut sent = Vec::new();
    let mut pkid = first;
    while let Some(m) = o.peek() {
        sent.push(m.topic.clone());
        o.handed_over();
        o.written(pkid);
        pkid += 1;
    }
    sent
}

#[test]
fn per_reading_warnings_are_throttled() {
    let mut t = Throttle::default();
    assert_eq!(t.note(), Some(1), "the first is logged at once");
    assert!((0..1000).all(|_| t.note().is_none()));
    t.last = Some(Instant::now() - Throttle::EVERY);
    assert_eq!(t.note(), Some(1001), "then with the count since");
}

#[test]
fn a_message_leaves_only_when_acked() {
    let mut o = Outbox::new(10, 3);
    o.push(msg("r1", Kind::Reading, 1));
    o.push(msg("r2", Kind::Reading, 1));
    assert_eq!(send_all(&mut o, 1), ["r1", "r2"]);
    assert_eq!(o.len(), 2);
    o.acked(1);
    assert_eq!(o.len(), 1);
    o.acked(2);
    assert!(o.is_empty());
}

#[test]
fn qos0_leaves_when_written() {
    let mut o = Outbox::new(10, 3);
    o.push(msg("r", Kind::Reading, 0));
    send_all(&mut o, 0);
    assert!(o.is_empty());
}

#[test]
fn unacked_messages_are_resent_in_order_after_reconnect() {
    let mut o = Outbox::new(10, 3);
    for t in ["r1", "r2", "r3"] {
        o.push(msg(t, Kind::Reading, 1));
    }
    assert_eq!(send_all(&mut o, 1), ["r1", "r2", "r3"]);
    o.acked(2);
    o.push(msg("r4", Kind::Reading, 1));
    o.connection_lost(true);
    assert_eq!(send_all(&mut o, 1), ["r1", "r3", "r4"]);
}

#[test]
fn handed_but_unwritten_messages_are_requeued_too() {
    let mut o = Outbox::new(10, 3);
    o.push(msg("r1", Kind::Reading, 1));
    o.push(msg("r2", Kind::Reading, 1));
    o.peek();
    o.handed_over();
    o.connection_lost(true);
    assert_eq!(send_all(&mut o, 1), ["r1", "r2"]);
}

#[test]
fn retained_state_is_coalesced_per_topic() {
    let mut o = Outbox::new(10, 3);
    o.push(msg("s", Kind::State, 1));
    o.push(msg("r", Kind::Reading, 1));
    let mut newer = msg("s", Kind::State, 1);
    newer.payload = b"newer".to_vec();
    o.push(newer);
    let mut seen = Vec::new();
    while let Some(m) = o.peek() {
        seen.push(m.payload.clone());
        o.handed_over();
    }
    // The newer state took the older one's place; the older was never sent.
    assert_eq!(seen, [b"newer".to_vec(), b"r".to_vec()]);
}

#[test]
fn a_stale_state_in_flight_is_not_resent_over_a_newer_one() {
    let mut o = Outbox::new(10, 3);
    o.push(msg("s", Kind::State, 1));
    send_all(&mut o, 1);
    let mut newer = msg("s", Kind::State, 1);
    newer.payload = b"newer".to_vec();
    o.push(newer);
    o.connection_lost(false);
    let mut seen = Vec::new();
    while let Some(m) = o.peek() {
        seen.push(m.payload.clone());
        o.handed_over();
    }
    assert_eq!(seen, [b"newer".to_vec()]);
}

#[test]
fn a_long_outage_does_not_pile_up_states() {
    let mut o = Outbox::new(10, 3);
    for i in 0..1000 {
        let mut s = msg("status", Kind::State, 1);
        s.payload = format!("{i}").into_bytes();
        o.push(s);
    }
    assert_eq!(o.len(), 1);
    assert_eq!(o.peek().unwrap().payload, b"999");
}

#[test]
fn priority_messages_go_first() {
    let mut o = Outbox::new(10, 3);
    o.push(msg("r1", Kind::Reading, 1));
    o.push_front(msg("online", Kind::State, 1));
    assert_eq!(send_all(&mut o, 1), ["online", "r1"]);
}

#[test]
fn full_outbox_drops_the_oldest_reading_not_state() {
    let mut o = Outbox::new(3, 3);
    o.push(msg("s", Kind::State, 1));
    o.push(msg("r1", Kind::Reading, 1));
    o.push(msg("r2", Kind::Reading, 1));
    o.push(msg("r3", Kind::Reading, 1));
    assert_eq!(o.dropped(), 1);
    assert_eq!(send_all(&mut o, 1), ["s", "r2", "r3"]);
}

#[test]
fn a_message_that_keeps_killing_the_connection_is_found_given_up_and_not_recreated() {
    let mut o = Outbox::new(10, 2);
    o.push(msg("r0", Kind::Reading, 1));
    o.push(msg("poison", Kind::State, 2));
    o.push(msg("r1", Kind::Reading, 1));
    send_all(&mut o, 1);
    assert_eq!(
        o.connection_lost(true),
        InFlight::Several,
        "three in flight: no single suspect"
    );
    assert_eq!(o.window(100), 1, "so they are re-sent one at a time");
    let one = |o: &mut Outbox, pkid| {
        assert!(o.outstanding() < o.window(100));
        let t = o.peek().unwrap().topic.clone();
        o.handed_over();
        o.written(pkid);
        t
    };
    assert_eq!(one(&mut o, 1), "r0");
    o.acked(1);
    assert_eq!(one(&mut o, 2), "poison");
    assert_eq!(o.outstanding(), 1);
    let suspect = o.connection_lost(true);
    assert_eq!(
        suspect,
        InFlight::One(Suspect {
            qos: 2,
            retain: true
        })
    );
    assert_eq!(one(&mut o, 1), "poison");
    o.connection_lost(true);
    assert_eq!(o.dropped(), 1, "given up after 2 attempts");
    assert_eq!(one(&mut o, 1), "r1", "the reading behind it is not blocked");
    o.acked(1);
    assert_eq!(o.window(100), 100, "back to the full window");
    o.push_front(msg("poison", Kind::State, 2));
    assert!(o.is_empty(), "the same message is not created again");
    assert_eq!(o.dropped(), 2);
    o.push(msg("poison", Kind::State, 1));
    assert_eq!(o.len(), 1, "at another QoS it is tried");
}

#[test]
fn network_failures_charge_nothing() {
    let mut o = Outbox::new(10, 1);
    o.push(msg("r1", Kind::Reading, 1));
    send_all(&mut o, 1);
    o.connection_lost(false);
    assert_eq!(o.len(), 1);
    assert_eq!(o.dropped(), 0);
}

#[test]
fn a_full_outbox_spills_readings_to_the_spool_also_while_connected() {
    let d = std::env::temp_dir().join(format!("bh-outbox-spill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let mut o = Outbox::new(2, 3).with_spool(Spool::open(&d, 1).unwrap());
    o.connected();
    for i in 0..5 {
        o.push(msg(&format!("r{i}"), Kind::Reading, 1));
    }
    assert_eq!((o.len(), o.spooled(), o.dropped()), (2, 3, 0));
    assert_eq!(
        send_all(&mut o, 1),
        ["r0", "r1", "r2", "r3", "r4"],
        "in order"
    );
    std::fs::remove_dir_all(d).unwrap();
}
