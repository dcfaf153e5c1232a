//! Several gateways, one fleet (SPEC §6), with real parts: three gateway processes on one simulated site
//! (each hears the same six monitors at its own RSSI; a monitor accepts one central across all of them,
//! `simulation.site_dir`) against a real mosquitto — then against two mosquittos joined by a bridge.
//!
//! Checked: every monitor gets exactly one owner and one reading stream; SIGKILL of an owner hands its
//! monitors over within 2 × keepalive + one poll interval with no reading published twice and no second
//! central ever connected (the site's `collisions.log` stays empty); restarting it settles ownership
//! back without flapping; a pinned monitor stays with its gateway; Home Assistant gets one config per
//! monitor, re-published by the new owner.

mod common;

use common::{Gateway, Mosquitto, Received, Subscriber, TempDir};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const MONITORS: [&str; 6] = [
    "AA:BB:CC:00:01:01",
    "AA:BB:CC:00:01:02",
    "AA:BB:CC:00:01:03",
    "AA:BB:CC:00:01:04",
    "AA:BB:CC:00:01:05",
    "AA:BB:CC:00:01:06",
];
/// How well each gateway hears each monitor (dBm). g1 is best for the first two (g2 next), g2 for the
/// next two, g3 for the last two (g1 next for the fifth). The sixth is pinned to g2.
const RSSI: [(&str, [i16; 6]); 3] = [
    ("g1", [-50, -50, -80, -80, -65, -80]),
    ("g2", [-65, -65, -50, -50, -80, -80]),
    ("g3", [-80, -80, -65, -65, -50, -50]),
];
const PINNED: (&str, &str) = (MONITORS[5], "g2");
const KEEPALIVE: u64 = 5;
const POLL: u64 = 2;
/// SPEC §6: a hand-over completes within 2 × keepalive + one poll interval.
const BOUND: Duration = Duration::from_secs(2 * KEEPALIVE + POLL);
/// Room for three gateways, a broker and the test on two shared cores.
const SLACK: Duration = Duration::from_secs(5);

fn config(gateway: &str, port: u16, state: &TempDir, site: &TempDir) -> String {
    config_without(gateway, port, state, site, &[])
}

/// The same, with the monitors in `gone` out of this gateway's range.
fn config_without(
    gateway: &str,
    port: u16,
    state: &TempDir,
    site: &TempDir,
    gone: &[&str],
) -> String {
    let mut rssi = RSSI.iter().find(|(g, _)| *g == gateway).unwrap().1;
    for (i, mac) in MONITORS.iter().enumerate() {
        if gone.contains(mac) {
            rssi[i] = -127;
        }
    }
    let mut text = format!(
        "[gateway]\nid = \"{gateway}\"\nstate_dir = \"{}\"\n\
         [logging]\nlevel = \"debug\"\ntarget = \"stderr\"\n\
         [mqtt]\nbroker = \"127.0.0.1\"\nport = {port}\ntimeout = 5\nkeepalive = {KEEPALIVE}\n\
         [bluetooth]\nbackend = \"simulated\"\nconnection_timeout = 2\nmax_concurrent_connections = 2\n\
         [discovery]\ninitial_scan = false\n\
         [cluster]\nenabled = true\nreport_interval = 2\n\
         [simulation]\ninterval_ms = 250\nsite_dir = \"{}\"\n",
        state.path().display(),
        site.path().display()
    );
    for (mac, r) in MONITORS.iter().zip(rssi) {
        text += &format!("[[simulation.monitor]]\nmac = \"{mac}\"\nrssi = {r}\n");
    }
    // One vehicle whose two monitors two different gateways serve (g1 and g2).
    text += "[[vehicle]]\nid = \"boat\"\n";
    for mac in MONITORS {
        text += &format!("[[device]]\nmac = \"{mac}\"\ntype = \"BM6\"\npoll_interval = {POLL}\n");
        if mac == MONITORS[0] || mac == MONITORS[2] {
            text += "vehicle = \"boat\"\n";
        }
        if mac == PINNED.0 {
            text += &format!("gateway = \"{}\"\n", PINNED.1);
        }
    }
    text
}

/// The owners the rule gives with every gateway online.
fn expected(online: &[&str]) -> BTreeMap<String, String> {
    MONITORS
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            let owner = if *mac == PINNED.0 && online.contains(&PINNED.1) {
                PINNED.1
            } else {
                RSSI.iter()
                    .filter(|(g, _)| online.contains(g))
                    .max_by_key(|(_, r)| r[i])
                    .unwrap()
                    .0
            };
            (mac.to_string(), owner.to_string())
        })
        .collect()
}

/// One gateway of the site, restartable with the same state directory.
struct Member {
    name: &'static str,
    port: u16,
    state: TempDir,
    gateway: Option<Gateway>,
}

impl Member {
    fn start(name: &'static str, port: u16, site: &TempDir) -> Member {
        let mut m = Member {
            name,
            port,
            state: TempDir::new("state"),
            gateway: None,
        };
        m.restart(site);
        m
    }

    fn restart(&mut self, site: &TempDir) {
        let text = config(self.name, self.port, &self.state, site);
        self.gateway = Some(Gateway::start(&text));
    }

    /// Reload (SIGHUP) with the monitors in `gone` out of range.
    fn lose(&mut self, site: &TempDir, gone: &[&str]) {
        let text = config_without(self.name, self.port, &self.state, site, gone);
        let g = self.gateway.as_ref().unwrap();
        g.rewrite_config(&text);
        g.signal("HUP");
    }

    fn kill(&mut self) {
        let g = self.gateway.as_mut().unwrap();
        g.child.kill().unwrap();
        g.child.wait().unwrap();
    }
}

/// What the broker says: the retained owner of each monitor (as last announced), readings.
struct View {
    sub: Subscriber,
}

impl View {
    fn new(port: u16) -> View {
        View {
            sub: Subscriber::connect(port, "#"),
        }
    }

    /// The owner topics' current values (an empty payload clears one).
    fn owners(&self) -> BTreeMap<String, String> {
        let mut owners = BTreeMap::new();
        for r in &self.sub.seen {
            let Some(mac) = owner_topic(r) else { continue };
            if r.payload.is_empty() {
                owners.remove(&mac);
            } else {
                owners.insert(mac, r.json()["gateway_id"].as_str().unwrap().to_string());
            }
        }
        owners
    }

    /// Wait until the owners are `want`; when that happened.
    fn settle(&mut self, want: &BTreeMap<String, String>, within: Duration, what: &str) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if &self.owners() == want {
                return self.sub.seen.last().map_or_else(Instant::now, |r| r.at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: owners {:?}, want {want:?}",
                self.owners()
            );
            if let Ok(r) = self
                .sub
                .rx
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                self.sub.seen.push(r);
            }
        }
    }

    /// Readings received after `since`: (mac, gateway, timestamp, when received).
    fn readings(&self, since: Instant) -> Vec<(String, String, String, Instant)> {
        self.sub
            .seen
            .iter()
            .filter(|r| r.at >= since && r.topic.ends_with("/reading"))
            .map(|r| {
                let j = r.json();
                (
                    j["device_id"].as_str().unwrap().to_string(),
                    j["gateway_id"].as_str().unwrap().to_string(),
                    j["timestamp"].as_str().unwrap().to_string(),
                    r.at,
                )
            })
            .collect()
    }

    /// The first reading of `mac` by `gateway` received after `since`.
    fn first_reading(
        &mut self,
        mac: &str,
        gateway: &str,
        since: Instant,
        within: Duration,
    ) -> Instant {
        let r = self
            .sub
            .wait_for(within, &format!("a reading of {mac} by {gateway}"), |r| {
                r.at >= since
                    && r.topic.ends_with(&format!("{mac}/reading"))
                    && r.json()["gateway_id"] == gateway
            });
        r.at
    }
}

fn owner_topic(r: &Received) -> Option<String> {
    let rest = r.topic.strip_prefix("battery_hawk/device/")?;
    rest.strip_suffix("/owner").map(str::to_string)
}

/// Every monitor read only by its owner, each reading once, at least `min` readings each.
fn one_stream_each(
    readings: &[(String, String, String, Instant)],
    owners: &BTreeMap<String, String>,
    min: usize,
) {
    for mac in MONITORS {
        let mine: Vec<_> = readings.iter().filter(|r| r.0 == mac).collect();
        assert!(mine.len() >= min, "{mac}: {} reading(s)", mine.len());
        let by: BTreeSet<&str> = mine.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(by, [owners[mac].as_str()].into(), "{mac} read by {by:?}");
        let stamps: BTreeSet<&str> = mine.iter().map(|r| r.2.as_str()).collect();
        assert_eq!(stamps.len(), mine.len(), "{mac}: a reading published twice");
    }
}

fn no_collisions(site: &TempDir) {
    let log = std::fs::read_to_string(site.path().join("collisions.log")).unwrap_or_default();
    assert!(log.is_empty(), "two centrals on one monitor:\n{log}");
}

#[test]
fn three_gateways_share_six_monitors_hand_over_on_sigkill_and_settle_back_without_flapping() {
    let broker = Mosquitto::start();
    let mut view = View::new(broker.port);
    let site = TempDir::new("site");
    let mut members: Vec<Member> = ["g1", "g2", "g3"]
        .into_iter()
        .map(|g| Member::start(g, broker.port, &site))
        .collect();
    let all = expected(&["g1", "g2", "g3"]);
    let settled = view.settle(&all, Duration::from_secs(60), "three gateways starting");
    view.sub.drain_for(Duration::from_secs(8));
    one_stream_each(&view.readings(settled), &all, 2);

    // The boat's summary (g1 serves its lowest MAC) lists the monitor g2 serves from g2's status.
    let summary = view
        .sub
        .wait_for(Duration::from_secs(10), "the boat's full summary", |r| {
            r.topic == "battery_hawk/vehicle/boat/summary" && r.json()["connected_devices"] == 2
        });
    let devices = summary.json()["devices"].as_array().unwrap().clone();
    assert_eq!(devices.len(), 2);
    assert!(
        devices.iter().all(|d| d["voltage"].is_number()),
        "{devices:?}"
    );

    // Home Assistant: one device config per monitor, by MAC, each naming its owner as via_device.
    let ha = |view: &View, mac: &str| -> Vec<serde_json::Value> {
        let object = format!("battery_hawk_{}", mac.replace(':', "").to_lowercase());
        view.sub
            .seen
            .iter()
            .filter(|r| {
                r.topic == format!("homeassistant/device/{object}/config") && !r.payload.is_empty()
            })
            .map(Received::json)
            .collect()
    };
    for mac in MONITORS {
        let configs = ha(&view, mac);
        let last = configs
            .last()
            .unwrap_or_else(|| panic!("no discovery config for {mac}"));
        assert_eq!(
            last["dev"]["via_device"],
            format!("battery_hawk_gateway_{}", all[mac]),
            "{mac}"
        );
    }

    // SIGKILL g1, the owner of the first two: g2 takes them (its last will tells everyone).
    let killed = Instant::now();
    members[0].kill();
    let after = expected(&["g2", "g3"]);
    view.settle(&after, BOUND + SLACK, "after SIGKILL of g1");
    for mac in &MONITORS[..2] {
        let first = view.first_reading(mac, "g2", killed, BOUND + SLACK);
        let took = first - killed;
        eprintln!(
            "hand-over of {mac} to g2: first reading {:.1} s after SIGKILL",
            took.as_secs_f64()
        );
        assert!(took <= BOUND + SLACK, "{mac}: {took:?}");
        let object = format!("battery_hawk_{}", mac.replace(':', "").to_lowercase());
        view.sub.wait_for(
            Duration::from_secs(10),
            "the new owner's discovery config",
            |r| {
                r.at >= killed
                    && r.topic == format!("homeassistant/device/{object}/config")
                    && r.json()["dev"]["via_device"] == "battery_hawk_gateway_g2"
            },
        );
    }
    view.sub.drain_for(Duration::from_secs(4));
    let readings = view.readings(killed);
    for mac in &MONITORS[..2] {
        let stamps: Vec<&str> = readings
            .iter()
            .filter(|r| r.0 == *mac)
            .map(|r| r.2.as_str())
            .collect();
        let unique: BTreeSet<&&str> = stamps.iter().collect();
        assert_eq!(
            unique.len(),
            stamps.len(),
            "{mac}: a reading published twice"
        );
    }
    no_collisions(&site);

    // g1 back: after two reports 15 dB better it gets its monitors back, and then nothing moves.
    let back = Instant::now();
    members[0].restart(&site);
    let returned = view.settle(&all, Duration::from_secs(30), "after g1 restarted");
    eprintln!(
        "g1 back: ownership settled {:.1} s after its restart",
        (returned - back).as_secs_f64()
    );
    view.sub.drain_for(Duration::from_secs(10));
    let claims: Vec<(String, String)> = view
        .sub
        .seen
        .iter()
        .filter(|r| r.at >= back && !r.payload.is_empty())
        .filter_map(|r| {
            Some((
                owner_topic(r)?,
                r.json()["gateway_id"].as_str()?.to_string(),
            ))
        })
        .collect();
    for mac in MONITORS {
        let mine: Vec<&str> = claims
            .iter()
            .filter(|c| c.0 == mac)
            .map(|c| c.1.as_str())
            .collect();
        let want: Vec<&str> = if MONITORS[..2].contains(&mac) {
            vec!["g1"]
        } else {
            vec![]
        };
        assert_eq!(
            mine, want,
            "{mac}: owner announcements after g1's restart (flapping?)"
        );
    }
    assert_eq!(
        view.owners()[PINNED.0],
        PINNED.1,
        "the pinned monitor stayed with its gateway"
    );
    one_stream_each(&view.readings(returned + Duration::from_secs(1)), &all, 2);
    no_collisions(&site);

    // g3 stops hearing the fifth monitor: it drops out of g3's reports after three of them (6 s), and
    // g1, next best, takes it.
    let lost = Instant::now();
    members[2].lose(&site, &[MONITORS[4]]);
    let mut moved = all.clone();
    moved.insert(MONITORS[4].to_string(), "g1".into());
    view.settle(
        &moved,
        Duration::from_secs(30),
        "after g3 stopped hearing the fifth monitor",
    );
    let first = view.first_reading(MONITORS[4], "g1", lost, Duration::from_secs(30));
    eprintln!(
        "hand-over of a monitor its owner stopped hearing: first reading {:.1} s later",
        (first - lost).as_secs_f64()
    );
    no_collisions(&site);
}

#[test]
fn gateways_on_two_bridged_brokers_converge_and_hand_over() {
    let main = Mosquitto::start();
    let bridged = Mosquitto::start_with(&format!(
        "connection site\naddress 127.0.0.1:{}\ntopic battery_hawk/# both 1\ntopic homeassistant/# both 1\n",
        main.port
    ));
    let mut on_main = View::new(main.port);
    let mut on_bridged = View::new(bridged.port);
    let site = TempDir::new("site");
    let mut members = [
        Member::start("g1", main.port, &site),
        Member::start("g2", main.port, &site),
        Member::start("g3", bridged.port, &site),
    ];
    let all = expected(&["g1", "g2", "g3"]);
    let settled = on_main.settle(&all, Duration::from_secs(60), "main broker");
    on_bridged.settle(&all, Duration::from_secs(30), "bridged broker");
    on_main.sub.drain_for(Duration::from_secs(8));
    one_stream_each(&on_main.readings(settled), &all, 2);

    // g3 (on the bridged broker) dies: its last will crosses the bridge, g1 takes the fifth monitor.
    let killed = Instant::now();
    members[2].kill();
    let after = expected(&["g1", "g2"]);
    on_main.settle(&after, BOUND + SLACK, "main broker after SIGKILL of g3");
    let first = on_main.first_reading(MONITORS[4], "g1", killed, BOUND + SLACK);
    eprintln!(
        "hand-over across the bridge: first reading {:.1} s after SIGKILL",
        (first - killed).as_secs_f64()
    );
    on_bridged.settle(
        &after,
        Duration::from_secs(10),
        "bridged broker after SIGKILL of g3",
    );
    no_collisions(&site);
}
