//! A mocked BlueZ for the real bluer code: a private `dbus-daemon` and python-dbusmock's `bluez5` template
//! extended by `tests/bluez/monitors.py`, which plays Leagend monitors described by a JSON scenario.
//! The gateway under test is a child process pointed at the bus with `DBUS_SYSTEM_BUS_ADDRESS`.

use super::TempDir;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct FakeBluez {
    pub address: String,
    dir: TempDir,
    daemon: Child,
    mock: Option<Child>,
}

const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=SOCKET</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/> <allow own="*"/>
    <allow send_type="method_call"/> <allow send_type="signal"/>
    <allow send_type="method_return"/> <allow send_type="error"/>
    <allow receive_type="method_call"/> <allow receive_type="signal"/>
    <allow receive_type="method_return"/> <allow receive_type="error"/>
  </policy>
</busconfig>
"#;

impl FakeBluez {
    /// Start a bus and the mock playing `scenario` (see `tests/bluez/monitors.py`).
    pub fn start(scenario: &Value) -> FakeBluez {
        let dir = TempDir::new("bluez");
        let socket = dir.path().join("system_bus_socket");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            BUS_CONFIG.replace("SOCKET", socket.to_str().unwrap()),
        )
        .unwrap();
        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (package dbus) is needed: run scripts/test.sh");
        let mut line = String::new();
        BufReader::new(daemon.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed {address:?}"
        );
        let scenario_path = dir.path().join("scenario.json");
        std::fs::write(&scenario_path, scenario.to_string()).unwrap();
        let mut me = FakeBluez {
            address,
            dir,
            daemon,
            mock: None,
        };
        me.start_mock();
        me
    }

    fn start_mock(&mut self) {
        let template = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bluez/monitors.py");
        let params = serde_json::json!({ "scenario": self.dir.path().join("scenario.json") });
        let log = std::fs::File::create(self.dir.path().join("mock.log")).unwrap();
        let mock = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--system", "--template", template, "-p"])
            .arg(params.to_string())
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("python3-dbusmock is needed: run scripts/test.sh");
        self.mock = Some(mock);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.has_owner("org.bluez") {
            assert!(
                Instant::now() < deadline,
                "the BlueZ mock did not start: {}",
                self.mock_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn mock_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mock.log")).unwrap_or_default()
    }

    fn has_owner(&self, name: &str) -> bool {
        let out = self.send(&[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            &format!("string:{name}"),
        ]);
        out.contains("boolean true")
    }

    fn send(&self, args: &[&str]) -> String {
        let out = Command::new("dbus-send")
            .args(["--system", "--print-reply"])
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Call a method of the mock on `/` (`org.bluez.Mock`), with dbus-send style arguments.
    pub fn mock_call(&self, method: &str, args: &[&str]) {
        let mut all = vec!["--dest=org.bluez", "/"];
        let m = format!("org.bluez.Mock.{method}");
        all.push(&m);
        all.extend_from_slice(args);
        self.send(&all);
    }

    /// How many times `method` was called on the device `mac`'s object.
    pub fn device_calls(&self, mac: &str, method: &str) -> usize {
        let path = format!("/org/bluez/hci0/dev_{}", mac.replace(':', "_"));
        let out = self.send(&[
            "--dest=org.bluez",
            &path,
            "org.freedesktop.DBus.Mock.GetMethodCalls",
            &format!("string:{method}"),
        ]);
        out.matches("struct {").count()
    }

    /// Run a one-shot `battery-hawk` command against this BlueZ, with a configuration file holding
    /// `config` appended after `args`.
    pub fn command(&self, config: &str, args: &[&str]) -> std::process::Output {
        let dir = TempDir::new("bluez-cli");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        Command::new(super::binary())
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .unwrap()
    }

    /// How many times `method` was called on the adapter `hci0`.
    pub fn adapter_calls(&self, method: &str) -> usize {
        let out = self.send(&[
            "--dest=org.bluez",
            "/org/bluez/hci0",
            "org.freedesktop.DBus.Mock.GetMethodCalls",
            &format!("string:{method}"),
        ]);
        out.matches("struct {").count()
    }

    /// How many property reads (`Get`/`GetAll`) of the device `mac` the mock answered.
    pub fn property_reads(&self, mac: &str) -> usize {
        let path = format!("/org/bluez/hci0/dev_{}", mac.replace(':', "_"));
        self.mock_log()
            .lines()
            .filter(|l| {
                let mut words = l.split_whitespace().skip(1);
                matches!(words.next(), Some("Get" | "GetAll"))
                    && words.next() == Some(path.as_str())
            })
            .count()
    }

    /// bluetoothd going away: the bus name disappears.
    pub fn stop_bluez(&mut self) {
        if let Some(mut m) = self.mock.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    /// bluetoothd coming back (with the same scenario).
    pub fn restart_bluez(&mut self) {
        self.stop_bluez();
        self.start_mock();
    }
}

impl Drop for FakeBluez {
    fn drop(&mut self) {
        self.stop_bluez();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
