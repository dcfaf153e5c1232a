//! Property tests of the scheduler: for any sequence of events, no spin and no more connections than the
//! limit; a reachable monitor is read on time.

use super::*;
use crate::messages::ClusterFact;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// Inputs for the property test.
#[derive(Debug, Clone)]
enum Input {
    Wait(u64),
    Heard(usize),
    PollOk,
    PollFail(u8),
    StreamEnd(usize),
    Lost,
    Back,
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (0u64..120_000).prop_map(Input::Wait),
        (0usize..4).prop_map(Input::Heard),
        Just(Input::PollOk),
        (0u8..5).prop_map(Input::PollFail),
        (0usize..4).prop_map(Input::StreamEnd),
        Just(Input::Lost),
        Just(Input::Back),
    ]
}

const MACS: [&str; 4] = [A, B, "AA:BB:CC:00:00:03", "AA:BB:CC:00:00:04"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// For any sequence of events: the next deadline is in the future (or the scheduler waits for an
    /// event) and never later than one computed afresh (it is kept between adverts), never more
    /// connections than the limit, and a device that keeps answering is polled within its interval plus
    /// the time the others hold the slot.
    #[test]
    fn never_spins_and_never_exceeds_the_connection_limit(
        inputs in proptest::collection::vec(input(), 1..200),
        limit in 2u32..4,
        periodic in 0u64..3,
    ) {
        let t0 = Instant::now();
        let c = config(&format!(
            "[bluetooth]\nmax_concurrent_connections = {limit}\nconnection_timeout = 10\n\
             [discovery]\nperiodic_interval = {}\nscan_duration = 3\n\
             [[device]]\nmac = \"{}\"\ntype = \"BM6\"\npoll_interval = 30\n\
             [[device]]\nmac = \"{}\"\ntype = \"BM6\"\npoll_interval = 45\n\
             [[device]]\nmac = \"{}\"\ntype = \"BM2\"\nmode = \"passive\"\npoll_interval = 20\n\
             [[device]]\nmac = \"{}\"\ntype = \"BM2\"\nmode = \"stream\"\npoll_interval = 5\n",
            periodic * 100, MACS[0], MACS[1], MACS[2], MACS[3]
        ));
        let mut s = started(c, t0);
        let mut now = t0;
        let mut in_flight: Vec<Mac> = Vec::new();
        for i in inputs {
            match i {
                Input::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    s.tick(now);
                }
                Input::Heard(n) => s.heard(heard(MACS[n]), now),
                Input::PollOk => {
                    if let Some(m) = in_flight.pop() {
                        s.poll_done(m, ok(&m.to_string()), now);
                    }
                }
                Input::PollFail(k) => {
                    if let Some(m) = in_flight.pop() {
                        let e = [LinkError::Timeout, LinkError::NotFound, LinkError::Busy,
                                 LinkError::NoData, LinkError::Failed("x".into())][k as usize].clone();
                        s.poll_done(m, failed(e), now);
                    }
                }
                Input::StreamEnd(n) => s.stream_ended(mac(MACS[n]), LinkError::Timeout, now),
                Input::Lost => { in_flight.clear(); s.adapter_lost(now) }
                Input::Back => s.adapter_available(BluetoothState::Active, now),
            }
            for a in s.take_actions() {
                if let Action::Poll { mac, .. } = a {
                    in_flight.push(mac);
                }
            }
            prop_assert!(s.connections() <= limit as usize);
            let memo = s.next_deadline();
            if let Some(d) = memo {
                prop_assert!(d > now, "deadline {:?} not after now", d - t0);
            }
            // The kept deadline is never later than one computed afresh.
            if let Some(fresh) = s.compute_deadline() {
                prop_assert!(memo.is_some_and(|m| m <= fresh), "kept {memo:?} after {fresh:?}");
            }
        }
    }

    /// A reachable polled monitor that always answers is read within its interval plus the connection
    /// time of the others (here: every other device's poll takes 2 s).
    #[test]
    fn every_reachable_monitor_is_read_on_time(limit in 1u32..3, others in 0usize..3) {
        let t0 = Instant::now();
        let mut text = format!(
            "[bluetooth]\nmax_concurrent_connections = {limit}\n[discovery]\ninitial_scan = false\n"
        );
        for m in MACS.iter().take(others + 1) {
            text += &format!("[[device]]\nmac = \"{m}\"\ntype = \"BM6\"\npoll_interval = 30\n");
        }
        let mut s = started(config(&text), t0);
        let mut now = t0;
        let mut read_at: BTreeMap<Mac, Vec<Instant>> = BTreeMap::new();
        let mut in_flight: Vec<(Instant, Mac)> = Vec::new();
        while now < t0 + Duration::from_secs(300) {
            for m in MACS.iter().take(others + 1) {
                s.heard(heard(m), now);
            }
            for a in s.take_actions() {
                if let Action::Poll { mac, .. } = a {
                    in_flight.push((now + Duration::from_secs(2), mac));
                }
            }
            in_flight.sort();
            let next_done = in_flight.first().map(|(t, _)| *t);
            let next = [s.next_deadline(), next_done, Some(now + Duration::from_secs(5))]
                .into_iter().flatten().min().unwrap();
            now = next;
            if let Some((t, m)) = in_flight.first().copied() && t <= now {
                in_flight.remove(0);
                s.poll_done(m, ok(&m.to_string()), now);
                read_at.entry(m).or_default().push(now);
            }
            s.tick(now);
        }
        let bound = Duration::from_secs(30) + Duration::from_secs(2) * (others as u32 + 1);
        for (m, times) in read_at {
            for w in times.windows(2) {
                prop_assert!(w[1] - w[0] <= bound, "{m}: {:?} between reads", w[1] - w[0]);
            }
        }
    }

    /// In a cluster, for any sequence of facts and events: no spin; a poll or stream is only started for
    /// a monitor this gateway holds, and never while the owner topic names another online gateway;
    /// takes and releases alternate per monitor.
    #[test]
    fn a_cluster_member_never_spins_and_connects_only_to_what_it_holds(
        inputs in proptest::collection::vec(cluster_input(), 1..200),
    ) {
        let t0 = Instant::now();
        let mut text = "[gateway]\nid = \"me\"\n[cluster]\nenabled = true\nreport_interval = 5\n\
                        [bluetooth]\nmax_concurrent_connections = 2\n\
                        [discovery]\ninitial_scan = false\n".to_string();
        for (i, m) in MACS.iter().enumerate() {
            let mode = ["poll", "poll", "passive", "stream"][i];
            text += &format!("[[device]]\nmac = \"{m}\"\ntype = \"BM2\"\nmode = \"{mode}\"\npoll_interval = 10\n");
        }
        let mut s = started(config(&text), t0);
        let mut now = t0;
        let mut in_flight: Vec<Mac> = Vec::new();
        let mut online: BTreeSet<&str> = BTreeSet::new();
        let mut owner: BTreeMap<Mac, &str> = BTreeMap::new();
        let mut held: BTreeSet<Mac> = BTreeSet::new();
        for i in inputs {
            match i {
                ClusterInput::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    s.tick(now);
                }
                ClusterInput::Heard(n, rssi) => s.heard(Heard { rssi: Some(rssi), ..heard(MACS[n]) }, now),
                ClusterInput::PollOk => {
                    if let Some(m) = in_flight.pop() {
                        s.poll_done(m, ok(&m.to_string()), now);
                    }
                }
                ClusterInput::Broker(up) => {
                    if !up {
                        in_flight.clear();
                    }
                    s.cluster_fact(ClusterFact::Broker { connected: up }, now);
                }
                ClusterInput::Online(g, up) => {
                    let g = OTHERS[g];
                    if up { online.insert(g); } else { online.remove(g); }
                    s.cluster_fact(ClusterFact::Availability { gateway: g.into(), online: up }, now);
                }
                ClusterInput::Hears(g, rssi) => {
                    let monitors = MACS.iter().zip(rssi).filter(|(_, r)| *r > -100).map(|(m, r)| (mac(m), r)).collect();
                    s.cluster_fact(ClusterFact::Hears { gateway: OTHERS[g].into(), monitors }, now);
                }
                ClusterInput::Owner(n, g) => {
                    let gateway = g.map(|g| OTHERS[g]);
                    match gateway {
                        Some(g) => { owner.insert(mac(MACS[n]), g); }
                        None => { owner.remove(&mac(MACS[n])); }
                    }
                    s.cluster_fact(ClusterFact::Owner { mac: mac(MACS[n]), gateway: gateway.map(str::to_string) }, now);
                }
            }
            for a in s.take_actions() {
                match a {
                    Action::Poll { mac, .. } | Action::OpenStream { mac, .. } => {
                        prop_assert!(s.held().contains(&mac), "{mac} connected while not held");
                        let other = owner.get(&mac).filter(|g| online.contains(*g));
                        prop_assert!(other.is_none(), "{mac} connected while {other:?} announced it");
                        if matches!(a, Action::Poll { .. }) {
                            in_flight.push(mac);
                        }
                    }
                    Action::Emit(BleEvent::Notice(Notice::Owner { mac, held: h, clear, .. })) => {
                        // A claim may be repeated (the topic was cleared under it); a release only follows
                        // a claim.
                        prop_assert!(h || held.contains(&mac), "{} released while not held", mac);
                        // What the broker's owner topic says once our announcement reached it.
                        if h {
                            held.insert(mac);
                            owner.insert(mac, "me");
                        } else {
                            held.remove(&mac);
                            if clear {
                                owner.remove(&mac);
                            }
                        }
                    }
                    _ => {}
                }
            }
            let memo = s.next_deadline();
            if let Some(d) = memo {
                prop_assert!(d > now, "deadline {:?} not after now", d - t0);
            }
            if let Some(fresh) = s.compute_deadline() {
                prop_assert!(memo.is_some_and(|m| m <= fresh), "kept {memo:?} after {fresh:?}");
            }
        }
    }
}

const OTHERS: [&str; 2] = ["alpha", "zulu"];

#[derive(Debug, Clone)]
enum ClusterInput {
    Wait(u64),
    Heard(usize, i16),
    PollOk,
    Broker(bool),
    Online(usize, bool),
    Hears(usize, [i16; 4]),
    Owner(usize, Option<usize>),
}

fn cluster_input() -> impl Strategy<Value = ClusterInput> {
    prop_oneof![
        (0u64..20_000).prop_map(ClusterInput::Wait),
        (0usize..4, -100i16..-40).prop_map(|(n, r)| ClusterInput::Heard(n, r)),
        Just(ClusterInput::PollOk),
        any::<bool>().prop_map(ClusterInput::Broker),
        (0usize..2, any::<bool>()).prop_map(|(g, up)| ClusterInput::Online(g, up)),
        (
            0usize..2,
            [-110i16..-40, -110i16..-40, -110i16..-40, -110i16..-40]
        )
            .prop_map(|(g, r)| ClusterInput::Hears(g, r)),
        (0usize..4, proptest::option::of(0usize..2)).prop_map(|(n, g)| ClusterInput::Owner(n, g)),
    ]
}
