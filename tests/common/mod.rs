//! Test harness: a real mosquitto on a free loopback port, a real MQTT subscriber, and the real
//! `battery-hawk` binary with a config file written per test. Nothing here fakes a broker.

#![allow(dead_code)]

pub mod bluez;

use crossbeam_channel::{Receiver, unbounded};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory of its own. Named by process and a counter, and created with
    /// `create_dir`, so two tests starting in the same instant never share one (a time-based name did:
    /// two mosquittos then read one config file and one failed to listen).
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("bh-test-{tag}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return TempDir(p),
                // Left by an earlier process with the same pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create {}: {e}", p.display()),
            }
        }
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPU time (user + system) a process used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto_binary() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed: run scripts/test.sh, which installs it");
}

/// A mosquitto process with a config file of our own on `port`.
pub struct Mosquitto {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Keep sessions and queued messages across restarts (saved on a clean stop).
    persistent: bool,
    /// More lines for mosquitto.conf (limits a test wants the broker to have).
    extra: String,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Mosquitto {
        let dir = TempDir::new("mosquitto");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
            persistent: false,
            extra: String::new(),
        };
        m.restart();
        m
    }

    /// A broker whose mosquitto.conf ends with `extra` (e.g. `"max_qos 1\n"`), on a free port.
    pub fn start_with(extra: &str) -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: TempDir::new("mosquitto"),
            child: None,
            persistent: false,
            extra: extra.to_string(),
        };
        m.restart();
        m
    }

    /// mosquitto's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// A broker that keeps persistent sessions across (clean) restarts.
    pub fn start_persistent() -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: TempDir::new("mosquitto"),
            child: None,
            persistent: true,
            extra: String::new(),
        };
        m.restart();
        m
    }

    /// Stop the broker as an operator would (SIGTERM: it saves its persistent state).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// (Re)start the broker process on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence {}\npersistence_location {}/\n\
                 user root\nlog_dest file {}\nmax_queued_messages 1000000\nmax_inflight_messages 100\n{}",
                self.port,
                self.persistent,
                self.dir.path().display(),
                self.dir.path().join("mosquitto.log").display(),
                self.extra
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
            eprintln!("--- end of mosquitto's log ---\n{}", tail(&log, 30));
        }
        self.kill();
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One message as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{}: payload is not JSON ({e}): {:?}",
                self.topic,
                self.text()
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A real MQTT client subscribed to `filter` at QoS 2 (so each message arrives at its publish QoS).
pub struct Subscriber {
    pub rx: Receiver<Received>,
    pub seen: Vec<Received>,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        Subscriber::connect_as(port, filter, &format!("test-sub-{}", free_port()), true)
    }

    /// A subscriber with a persistent session (`clean_session = false`) under `id`: with a persistent
    /// broker it gets what was published while it was away, across broker restarts.
    ///
    /// It subscribes at QoS 1, so QoS 2 messages reach it as QoS 1: rumqttc forgets the QoS 2 publishes
    /// it received when the connection drops, so the PUBREL a resumed session re-sends for one of them
    /// is "unsolicited" and drops the connection again, for ever (seen in CI as a subscriber that went
    /// silent after a broker restart).
    pub fn persistent(port: u16, filter: &str, id: &str) -> Subscriber {
        Subscriber::connect_as(port, filter, id, false)
    }

    fn connect_as(port: u16, filter: &str, id: &str, clean: bool) -> Subscriber {
        let max_qos = if clean {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(o, 100);
        let (tx, rx) = unbounded();
        let (ready_tx, ready_rx) = unbounded();
        let filter = filter.to_string();
        let id = id.to_string();
        std::thread::spawn(move || {
            let mut last_error = String::new();
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client.subscribe(filter.clone(), max_qos).unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let r = Received {
                            topic: p.topic.clone(),
                            qos: p.qos as u8,
                            retain: p.retain,
                            payload: p.payload.to_vec(),
                            at: Instant::now(),
                        };
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let e = e.to_string();
                        if e != last_error {
                            eprintln!("test subscriber {id}: {e}");
                            last_error = e;
                        }
                        std::thread::sleep(Duration::from_millis(100))
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscriber did not get its SUBACK");
        Subscriber {
            rx,
            seen: Vec::new(),
        }
    }

    /// Collect messages until `pred` holds for one of them (returning it), failing after `timeout`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Received) -> bool,
    ) -> Received {
        if let Some(r) = self.seen.iter().find(|r| pred(r)) {
            return r.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(r) => {
                    self.seen.push(r.clone());
                    if pred(&r) {
                        return r;
                    }
                }
                Err(_) => panic!(
                    "timed out waiting for {what}; saw {} message(s): {:?}",
                    self.seen.len(),
                    self.seen.iter().map(|r| &r.topic).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Collect whatever arrives within `d`.
    pub fn drain_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(r) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(r);
        }
    }

    pub fn on(&self, topic: &str) -> Vec<&Received> {
        self.seen.iter().filter(|r| r.topic == topic).collect()
    }
}

/// The real gateway binary, `run` with a config written to a temporary directory.
pub struct Gateway {
    pub child: Child,
    pub dir: TempDir,
    pub config: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_battery-hawk")
}

/// A config for the simulated backend, logging to stderr, with `state_dir` inside `dir`, and `extra`
/// appended (more sections, vehicles and devices). Polled monitors are read every second (the scheduler
/// honours `poll_interval` on the simulated air too); connection attempts give up after 2 s.
pub fn sim_config(port: u16, state_dir: &Path, extra: &str) -> String {
    format!(
        "[gateway]\nid = \"test-gw\"\nstate_dir = \"{}\"\n\
         [logging]\nlevel = \"debug\"\ntarget = \"stderr\"\n\
         [mqtt]\nbroker = \"127.0.0.1\"\nport = {port}\ntimeout = 5\n\
         [bluetooth]\nbackend = \"simulated\"\nconnection_timeout = 2\n\
         [defaults]\npoll_interval = 1\n{extra}",
        state_dir.display()
    )
}

impl Gateway {
    pub fn start(config_text: &str) -> Gateway {
        Gateway::start_env(config_text, &[])
    }

    pub fn start_env(config_text: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = TempDir::new("gw");
        Gateway::start_in(dir, config_text, env)
    }

    pub fn start_in(dir: TempDir, config_text: &str, env: &[(&str, &str)]) -> Gateway {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("run").arg("--config").arg(&config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gateway");
        Gateway { child, dir, config }
    }

    /// How many times the gateway connected to the broker (from its log).
    pub fn connects(&self) -> usize {
        self.log()
            .matches("connected to the MQTT broker at")
            .count()
    }

    /// The reconnect delays the gateway announced in its log, in seconds, in order.
    pub fn delays(&self) -> Vec<f64> {
        self.log()
            .lines()
            .filter_map(|l| {
                l.split("reconnecting to the MQTT broker in ")
                    .nth(1)?
                    .strip_suffix(" s")?
                    .parse()
                    .ok()
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the process to exit; its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "gateway did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait for the shutdown event on `sub` and a clean exit; the last system status seen.
    pub fn stop_and_last_status(&mut self, sub: &mut Subscriber) -> Value {
        self.signal("TERM");
        sub.wait_for(Duration::from_secs(15), "shutdown event", |r| {
            r.topic.ends_with("/system/shutdown")
        });
        assert_eq!(
            self.wait(Duration::from_secs(15)),
            Some(0),
            "log:\n{}",
            self.log()
        );
        sub.seen
            .iter()
            .rfind(|r| r.topic.ends_with("/system/status"))
            .expect("a system status")
            .json()
    }

    pub fn rewrite_config(&self, text: &str) {
        let mut f = std::fs::File::create(&self.config).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- end of the gateway's log ---\n{}",
                tail(&self.log(), 60)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Topic → payload of every retained message a new subscriber to `filter` gets from the broker on `port`
/// (collected for `settle`).
pub fn retained(
    port: u16,
    filter: &str,
    settle: Duration,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut sub = Subscriber::connect(port, filter);
    sub.drain_for(settle);
    sub.seen
        .iter()
        .filter(|r| r.retain && !r.payload.is_empty())
        .map(|r| (r.topic.clone(), r.payload.clone()))
        .collect()
}
