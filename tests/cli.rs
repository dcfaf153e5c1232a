//! The command line as a user meets it: bad configurations, `check-config`, `decode`.

mod common;

use common::{TempDir, binary};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write `text` as a config and run `command --config` on it.
fn with_config(command: &str, text: &str) -> Output {
    let dir = TempDir::new("cli");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    run(&[command, "--config", path.to_str().unwrap()])
}

#[test]
fn each_malformed_config_fails_naming_the_key_or_line() {
    let cases = [
        (
            "unknown key",
            "[mqtt]\nbroker = \"x\"\nbrokr = \"y\"\n",
            vec!["line 3", "brokr"],
        ),
        (
            "bad MAC",
            "[[device]]\nmac = \"AA:BB:CC:DD:EE:GG\"\n",
            vec!["line 2", "AA:BB:CC:DD:EE:GG"],
        ),
        (
            "bad vehicle id",
            "[[vehicle]]\nid = \"my van!\"\n",
            vec!["vehicle", "my van!"],
        ),
        (
            "prefix with #",
            "[mqtt]\ntopic_prefix = \"bh/#\"\n",
            vec!["mqtt.topic_prefix", "#"],
        ),
        ("qos 3", "[mqtt]\nqos = 3\n", vec!["mqtt.qos"]),
        (
            "unreadable password_file",
            "[mqtt]\npassword_file = \"/nonexistent/secret\"\n",
            vec!["mqtt.password_file", "/nonexistent/secret"],
        ),
        ("TOML syntax error", "[mqtt\nbroker = 1\n", vec!["line 1"]),
    ];
    for (what, text, needles) in cases {
        for command in ["check-config", "run"] {
            let o = with_config(command, text);
            let err = stderr(&o);
            assert!(!o.status.success(), "{what}: {command} accepted it");
            assert_eq!(o.status.code(), Some(1), "{what}: {command}: {err}");
            for n in &needles {
                assert!(err.contains(n), "{what}: {command}: '{n}' not in: {err}");
            }
            assert!(!err.contains("panicked"), "{what}: {err}");
        }
    }
}

#[test]
fn missing_config_file_is_named() {
    let o = run(&["check-config", "--config", "/nonexistent/battery-hawk.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/battery-hawk.toml"));
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let dir = TempDir::new("cli-secret");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2-from-file\n").unwrap();
    let text = format!(
        "[mqtt]\nusername = \"bh\"\npassword = \"hunter2-inline\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let o = with_config("check-config", &text);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("topic_prefix = \"battery_hawk\""), "{out}");
    assert!(out.contains("<redacted>"));
    for secret in ["hunter2-from-file", "hunter2-inline"] {
        assert!(!out.contains(secret) && !stderr(&o).contains(secret));
    }
}

#[test]
fn shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/battery-hawk/config.toml");
    let o = run(&["check-config", "--config", example]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn decode_prints_a_reading_for_each_spec_vector() {
    let o = run(&[
        "decode",
        "--type",
        "bm6",
        "71543b749f6f614dd6333f21546f681d",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["voltage"].as_f64(), v["temperature"].as_f64()),
        (Some(12.7), Some(25.0))
    );
    assert_eq!(v["state_of_charge"], 80.0);
    assert_eq!(v["extra"]["state"], "not_charging");

    let o = run(&[
        "decode",
        "--type",
        "BM2",
        "--advertisement",
        "--mac",
        "50:54:7b:22:2f:20",
        "e18911ed76d18e5ba793d5574f205b61",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["voltage"].as_f64(), v["state_of_charge"].as_f64()),
        (Some(12.83), Some(93.0))
    );
    assert_eq!(v["extra"]["source"], "advertisement");
}

#[test]
fn decode_refuses_what_is_not_a_reading() {
    let cases = [
        (
            vec![
                "decode",
                "--type",
                "bm6",
                "8ae0358523fe154976de18fc102eb1d4",
            ],
            "echo",
        ),
        (
            vec![
                "decode",
                "--type",
                "bm6",
                "0df8721e454fa209648a87910814dad1",
            ],
            "version",
        ),
        (
            vec![
                "decode",
                "--type",
                "bm7",
                "71543b749f6f614dd6333f21546f681d",
            ],
            "does not decrypt",
        ),
        (vec!["decode", "--type", "bm6", "71543b74"], "4 bytes"),
        (vec!["decode", "--type", "bm6", "zz"], "not hex"),
        (
            vec![
                "decode",
                "--type",
                "bm9",
                "71543b749f6f614dd6333f21546f681d",
            ],
            "bm9",
        ),
        (
            vec![
                "decode",
                "--type",
                "bm6",
                "--advertisement",
                "--mac",
                "38:3B:26:B5:30:AC",
                "ee6e22884c11f151c1760465b2fe9003",
            ],
            "another device",
        ),
    ];
    for (args, needle) in cases {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
    let o = run(&[
        "decode",
        "--type",
        "bm6",
        "--advertisement",
        "ee6e22884c11f151c1760465b2fe9003",
    ]);
    assert!(
        !o.status.success(),
        "--advertisement without --mac must be refused"
    );
}
