//! TLS and authentication against a real mosquitto: certificates made by `openssl` per test, a password
//! file made by `mosquitto_passwd`. The gateway uses a TLS/authenticated listener; the test's subscriber
//! uses a plain anonymous one on the same broker.

mod common;

use common::{Gateway, Subscriber, TempDir, cpu_seconds, free_port};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

fn run(cmd: &str, args: &[&str], dir: &Path) {
    let ok = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd} {args:?} failed");
}

/// A CA, a server certificate for localhost/127.0.0.1 signed by it, a client certificate, and an
/// unrelated second CA.
fn make_pki(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ],
            dir,
        );
    }
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=battery-hawk")] {
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
            dir,
        );
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                &format!("{name}.crt"),
            ],
            dir,
        );
    }
    run(
        "mosquitto_passwd",
        &["-b", "-c", "passwd", "hawk", "s3cret-Pa55"],
        dir,
    );
}

struct Broker {
    plain: u16,
    secure: u16,
    child: Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mosquitto with a plain anonymous listener and a second one configured by `secure`.
fn broker(dir: &Path, secure: &str) -> Broker {
    let (plain, port) = (free_port(), free_port());
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings true\npersistence false\nuser root\nlog_dest file {}\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\n\
             listener {port} 127.0.0.1\n{secure}\n",
            dir.join("mosquitto.log").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Broker {
        plain,
        secure: port,
        child,
    }
}

fn gateway(dir: &Path, port: u16, mqtt: &str) -> Gateway {
    let state = dir.join("state");
    let config = format!(
        "[gateway]\nid = \"tls-gw\"\nstate_dir = \"{}\"\n[logging]\ntarget = \"stderr\"\nlevel = \"debug\"\n\
         [mqtt]\nbroker = \"localhost\"\nport = {port}\ntimeout = 3\n{mqtt}\n\
         [bluetooth]\nbackend = \"simulated\"\n[defaults]\npoll_interval = 1\n[simulation]\ninterval_ms = 200\n\
         [[device]]\nmac = \"AA:BB:CC:00:00:21\"\ntype = \"BM6\"\n",
        state.display()
    );
    Gateway::start(&config)
}

fn tls_listener(dir: &Path, extra: &str) -> String {
    format!(
        "cafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n{extra}",
        dir.display()
    )
}

/// The gateway's log after `d`, for failure cases.
fn log_after(gw: &mut Gateway, d: Duration) -> String {
    std::thread::sleep(d);
    gw.signal("TERM");
    gw.wait(T);
    gw.log()
}

#[test]
fn tls_with_the_right_ca_connects_and_the_wrong_ca_is_refused_clearly() {
    let pki = TempDir::new("pki");
    make_pki(pki.path());
    let b = broker(
        pki.path(),
        &tls_listener(pki.path(), "allow_anonymous true"),
    );
    let mut sub = Subscriber::connect(b.plain, "battery_hawk/#");
    let ca = pki.path().join("ca.crt");
    let good = gateway(
        pki.path(),
        b.secure,
        &format!("tls = true\nca_file = \"{}\"", ca.display()),
    );
    sub.wait_for(T, "a reading over TLS", |r| r.topic.ends_with("/reading"));
    drop(good);

    let other = pki.path().join("other-ca.crt");
    let mut bad = gateway(
        pki.path(),
        b.secure,
        &format!("tls = true\nca_file = \"{}\"", other.display()),
    );
    let log = log_after(&mut bad, Duration::from_secs(4));
    assert!(
        log.contains("unreachable") && log.to_lowercase().contains("certificate"),
        "{log}"
    );
    assert!(!log.contains("connected to the MQTT broker"), "{log}");
    let attempts = log.matches("reconnecting to the MQTT broker in").count();
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} attempts in 4 s: backoff not applied\n{log}"
    );
}

#[test]
fn a_client_certificate_is_required_and_accepted() {
    let pki = TempDir::new("pki");
    make_pki(pki.path());
    let listener = tls_listener(
        pki.path(),
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false",
    );
    let b = broker(pki.path(), &listener);
    let mut sub = Subscriber::connect(b.plain, "battery_hawk/#");
    let p = pki.path().display();
    let with_cert = format!(
        "tls = true\nca_file = \"{p}/ca.crt\"\nclient_cert = \"{p}/client.crt\"\nclient_key = \"{p}/client.key\""
    );
    let gw = gateway(pki.path(), b.secure, &with_cert);
    sub.wait_for(T, "a reading with a client certificate", |r| {
        r.topic.ends_with("/reading")
    });
    drop(gw);
    let mut without = gateway(
        pki.path(),
        b.secure,
        &format!("tls = true\nca_file = \"{p}/ca.crt\""),
    );
    let log = log_after(&mut without, Duration::from_secs(3));
    assert!(
        !log.contains("connected to the MQTT broker") && log.contains("unreachable"),
        "{log}"
    );
}

#[test]
fn username_and_password_from_a_file_and_the_password_is_never_shown() {
    let pki = TempDir::new("pki");
    make_pki(pki.path());
    let auth = format!(
        "allow_anonymous false\npassword_file {}/passwd",
        pki.path().display()
    );
    let b = broker(pki.path(), &auth);
    let mut sub = Subscriber::connect(b.plain, "battery_hawk/#");
    let pw = pki.path().join("mqtt-password");
    std::fs::write(&pw, "s3cret-Pa55\n").unwrap();
    let mqtt = format!("username = \"hawk\"\npassword_file = \"{}\"", pw.display());
    let mut gw = gateway(pki.path(), b.secure, &mqtt);
    sub.wait_for(T, "a reading with a password", |r| {
        r.topic.ends_with("/reading")
    });
    let log = log_after(&mut gw, Duration::from_millis(500));
    assert!(!log.contains("s3cret-Pa55"), "the password is in the log");

    let mut wrong = gateway(
        pki.path(),
        b.secure,
        "username = \"hawk\"\npassword = \"wrong-Pa55\"",
    );
    // Refused: a clear log line, backoff, no busy loop ...
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(wrong.child.id());
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_seconds(wrong.child.id()) - before;
    assert!(
        used < 0.5,
        "{used:.2} s CPU in 4 s while refused: a busy loop?"
    );
    let log = wrong.log();
    assert!(
        log.contains("not authorized") || log.contains("NotAuthorized"),
        "{log}"
    );
    assert!(!log.contains("connected to the MQTT broker"), "{log}");
    // ... and it recovers by itself once the broker accepts that password.
    run(
        "mosquitto_passwd",
        &["-b", "passwd", "hawk", "wrong-Pa55"],
        pki.path(),
    );
    let _ = Command::new("kill")
        .arg("-HUP")
        .arg(b.child.id().to_string())
        .status();
    sub.seen.clear();
    sub.wait_for(Duration::from_secs(40), "a reading after the fix", |r| {
        r.topic.ends_with("/reading")
    });
    let log = log_after(&mut wrong, Duration::from_millis(200));
    assert!(log.contains("connected to the MQTT broker"), "{log}");
    assert!(!log.contains("wrong-Pa55"), "the password is in the log");

    let check = Command::new(common::binary())
        .args(["check-config", "--config"])
        .arg(&wrong.config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && shown.contains("<redacted>") && !shown.contains("wrong-Pa55")
    );
}
