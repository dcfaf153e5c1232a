//! Unit tests of configuration parsing, overrides and validation.

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    parse_env(text, &[])
}

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_toml(text, Path::new("test.toml"), env).map_err(|e| e.to_string())
}

#[test]
fn empty_file_gives_the_spec_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.mqtt.topic_prefix, "battery_hawk");
    assert_eq!(c.mqtt.qos, 1);
    assert_eq!(c.mqtt.status_interval, 60);
    assert_eq!(c.bluetooth.backend, Backend::Bluez);
    assert_eq!(c.defaults.mode, Mode::Poll);
    assert_eq!(c.defaults.poll_interval, 300);
    assert!(c.client_id().starts_with("battery-hawk-"));
}

#[test]
fn full_example_parses() {
    let c = parse(
        r#"
        [gateway]
        id = "garage"
        [mqtt]
        topic_prefix = "home/battery_hawk"
        [[vehicle]]
        id = "my_vehicle"
        name = "My Vehicle"
        [[device]]
        mac = "aa-bb-cc-dd-ee-ff"
        type = "bm6"
        vehicle = "my_vehicle"
        capacity_ah = 100
        "#,
    )
    .unwrap();
    assert_eq!(c.devices[0].mac.to_string(), "AA:BB:CC:DD:EE:FF");
    assert_eq!(c.devices[0].model().unwrap().name(), "BM6");
    assert_eq!(c.client_id(), "battery-hawk-garage");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = parse("[mqtt]\nbroker = \"x\"\ncolour = 3\n").unwrap_err();
    assert!(e.contains("line 3") && e.contains("colour"), "{e}");
    let e = parse("[mqtt]\nbroker = \"x\"\n[nonsense]\n").unwrap_err();
    assert!(e.contains("nonsense"), "{e}");
}

#[test]
fn syntax_error_names_the_line() {
    let e = parse("[mqtt]\nbroker = \n").unwrap_err();
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        ("[[device]]\nmac = \"AA:BB:CC:DD:EE\"\n", "AA:BB:CC:DD:EE"),
        ("[[vehicle]]\nid = \"my car\"\n", "my car"),
        ("[mqtt]\ntopic_prefix = \"a/#\"\n", "mqtt.topic_prefix"),
        ("[mqtt]\ntopic_prefix = \"/a\"\n", "mqtt.topic_prefix"),
        ("[mqtt]\ntopic_prefix = \"\"\n", "mqtt.topic_prefix"),
        ("[mqtt]\nqos = 3\n", "mqtt.qos"),
        ("[mqtt]\nmax_qos = 3\n", "mqtt.max_qos"),
        ("[mqtt]\ntopic_prefix = \"bh \"\n", "white space"),
        ("[mqtt]\ntopic_prefix = \" bh\"\n", "mqtt.topic_prefix"),
        (
            "[homeassistant]\ndiscovery_prefix = \"homeassistant\\t\"\n",
            "homeassistant.discovery_prefix",
        ),
        ("[mqtt]\nqos = -1\n", "qos"),
        (
            "[mqtt]\npassword_file = \"/nonexistent/pw\"\n",
            "mqtt.password_file",
        ),
        ("[logging]\nlevel = \"loud\"\n", "loud"),
        ("[defaults]\nmode = \"sometimes\"\n", "sometimes"),
        (
            "[[device]]\nmac = \"AA:BB:CC:DD:EE:FF\"\ntype = \"BM9\"\n",
            "BM9",
        ),
        (
            "[[device]]\nmac = \"AA:BB:CC:DD:EE:FF\"\nvehicle = \"boat\"\n",
            "boat",
        ),
        (
            "[[device]]\nmac = \"AA:BB:CC:DD:EE:FF\"\ntype = \"BM7\"\nmode = \"passive\"\n",
            "passive",
        ),
        (
            "[[device]]\nmac = \"AA:BB:CC:DD:EE:FF\"\n[[device]]\nmac = \"aa:bb:cc:dd:ee:ff\"\n",
            "twice",
        ),
        ("[simulation]\nfailure_rate = 2.0\n", "failure_rate"),
    ];
    for (text, needle) in cases {
        let e = parse(text).unwrap_err();
        assert!(e.contains(needle), "{text:?} gave {e:?}");
    }
}

#[test]
fn env_overrides_keys_with_underscores_and_types() {
    let c = parse_env(
        "[mqtt]\ntopic_prefix = \"a\"\n",
        &[
            ("BATTERYHAWK_MQTT_TOPIC_PREFIX", "home/bh"),
            ("BATTERYHAWK_MQTT_PORT", "1884"),
            ("BATTERYHAWK_MQTT_TLS", "true"),
            ("BATTERYHAWK_SIMULATION_FAILURE_RATE", "0.5"),
            ("BATTERYHAWK_BLUETOOTH_BACKEND", "simulated"),
            ("OTHER_VAR", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.mqtt.topic_prefix, "home/bh");
    assert_eq!(c.mqtt.port, 1884);
    assert!(c.mqtt.tls);
    assert_eq!(c.simulation.failure_rate, 0.5);
    assert_eq!(c.bluetooth.backend, Backend::Simulated);
}

#[test]
fn bad_env_overrides_name_the_variable() {
    for (var, value) in [
        ("BATTERYHAWK_MQTT_PORT", "lots"),
        ("BATTERYHAWK_MQTT_COLOUR", "red"),
        ("BATTERYHAWK_NOSECTION_KEY", "1"),
        ("BATTERYHAWK_BLUETOOTH_BACKEND", "carrier-pigeon"),
        ("BATTERYHAWK_MQTT_TOPIC_PREFIX", "a/+"),
        ("BATTERYHAWK_MQTT_TOPIC_PREFIX", "bh "),
        ("BATTERYHAWK_MQTT_MAX_QOS", "3"),
    ] {
        let e = parse_env("", &[(var, value)]).unwrap_err();
        let named = e.contains(var) || e.contains("topic_prefix") || e.contains("max_qos");
        assert!(named, "{var}={value} gave {e}");
    }
}

#[test]
fn password_is_read_from_file_and_never_printed() {
    let dir = std::env::temp_dir().join(format!("bh-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let text = format!(
        "[mqtt]\nusername = \"u\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.mqtt.password.0, "s3cret-pw");
    assert!(!format!("{c:?}").contains("s3cret-pw"));
    let shown = c.to_redacted_toml();
    assert!(!shown.contains("s3cret-pw") && shown.contains("<redacted>"));
    assert!(!format!("{c}").contains("s3cret-pw"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn prefix_rules() {
    for ok in ["battery_hawk", "home/battery_hawk", "a"] {
        assert!(validate_prefix(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a/", "/a", "a/+/b", "a#", "a\0b", "a//b"] {
        assert!(validate_prefix(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn redacted_toml_parses_back() {
    let c = parse(
        "[[vehicle]]\nid = \"v\"\n[[device]]\nmac = \"AA:BB:CC:DD:EE:FF\"\nvehicle = \"v\"\n",
    )
    .unwrap();
    let again = parse(&c.to_redacted_toml()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn history_defaults_and_bounds() {
    let c = parse("").unwrap();
    assert!(c.history.enabled);
    assert_eq!(c.history.initial_days, 7);
    assert_eq!(c.history.models, vec!["BM6".to_string()]);
    let bm6 = Model::by_name("BM6").unwrap();
    let bm2 = Model::by_name("BM2").unwrap();
    assert!(c.history.covers(bm6) && !c.history.covers(bm2));
    let c = parse("[history]\nmodels = [\"bm6\", \"BM2\"]\ninitial_days = 91\n").unwrap();
    assert!(c.history.covers(bm2));
    let off = parse("[history]\nenabled = false\n").unwrap();
    assert!(!off.history.covers(bm6));
    for (text, want) in [
        (
            "initial_days = 0",
            "history.initial_days = 0 (allowed: 1 to 91)",
        ),
        ("initial_days = 92", "history.initial_days = 92"),
        (
            "models = [\"BM9\"]",
            "history.models: \"BM9\" is not a supported model",
        ),
        (
            "models = [\"BM6\", \"bm6\"]",
            "history.models lists BM6 twice",
        ),
        ("days = 3", "unknown field `days`"),
    ] {
        let e = parse(&format!("[history]\n{text}\n")).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn history_models_from_the_environment() {
    let c = parse_env("", &[("BATTERYHAWK_HISTORY_MODELS", "BM6, BM7")]).unwrap();
    assert_eq!(c.history.models, vec!["BM6".to_string(), "BM7".to_string()]);
    let c = parse_env("", &[("BATTERYHAWK_HISTORY_INITIAL_DAYS", "3")]).unwrap();
    assert_eq!(c.history.initial_days, 3);
    let e = parse_env("", &[("BATTERYHAWK_HISTORY_MODELS", "BM6,XX")]).unwrap_err();
    assert!(e.contains("\"XX\" is not a supported model"), "{e}");
}

#[test]
fn every_interval_has_bounds_and_zero_periodic_interval_means_none() {
    let ok = parse("[discovery]\nperiodic_interval = 0\n").unwrap();
    assert_eq!(ok.discovery.periodic_interval, 0);
    for (text, key) in [
        (
            "[mqtt]\nstatus_interval = 100000000000\n",
            "mqtt.status_interval",
        ),
        ("[mqtt]\nkeepalive = 99999999\n", "mqtt.keepalive"),
        ("[mqtt]\ntimeout = 0\n", "mqtt.timeout"),
        (
            "[defaults]\npoll_interval = 9223372036854775807\n",
            "defaults.poll_interval",
        ),
        (
            "[discovery]\nperiodic_interval = 99999999999\n",
            "discovery.periodic_interval",
        ),
        ("[discovery]\nforget_after = 1\n", "discovery.forget_after"),
        (
            "[bluetooth]\nconnection_timeout = 100000\n",
            "bluetooth.connection_timeout",
        ),
        (
            "[bluetooth]\nmax_concurrent_connections = 0\n",
            "bluetooth.max_concurrent_connections",
        ),
        ("[simulation]\ninterval_ms = 1\n", "simulation.interval_ms"),
        (
            "[[device]]\nmac = \"AA:BB:CC:DD:EE:FF\"\npoll_interval = 999999999\n",
            "poll_interval",
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(key) && e.contains("allowed"), "{text}: {e}");
    }
}

#[test]
fn stream_devices_need_their_own_connection_slots() {
    let two = "[[device]]\nmac = \"AA:BB:CC:DD:EE:01\"\nmode = \"stream\"\n\
               [[device]]\nmac = \"AA:BB:CC:DD:EE:02\"\n";
    let e = parse(two).unwrap_err();
    assert!(
        e.contains("max_concurrent_connections") && e.contains("at least 2"),
        "{e}"
    );
    assert!(
        parse(&format!(
            "[bluetooth]\nmax_concurrent_connections = 2\n{two}"
        ))
        .is_ok()
    );
    let e = parse("[discovery]\nauto_mode = \"stream\"\n").unwrap_err();
    assert!(e.contains("auto_mode"), "{e}");
}

#[test]
fn a_simulated_monitor_plays_a_configured_device() {
    let e =
        parse("[[simulation.monitor]]\nmac = \"AA:BB:CC:DD:EE:01\"\nrssi = -127\n").unwrap_err();
    assert!(e.contains("no [[device]] has this mac"), "{e}");
    let ok = parse(
        "[[device]]\nmac = \"AA:BB:CC:DD:EE:01\"\n\
         [[simulation.monitor]]\nmac = \"AA:BB:CC:DD:EE:01\"\nrssi = -127\nbusy = true\n",
    )
    .unwrap();
    assert_eq!(ok.simulation.monitors[0].rssi, -127);
    assert_eq!(ok.simulation.monitors[0].history_days, 0);
    let dev = "[[device]]\nmac = \"AA:BB:CC:DD:EE:01\"\n[[simulation.monitor]]\nmac = \"AA:BB:CC:DD:EE:01\"\n";
    let three = parse(&format!("{dev}history_days = 3\n")).unwrap();
    assert_eq!(three.simulation.monitors[0].history_days, 3);
    let e = parse(&format!("{dev}history_days = 72\n")).unwrap_err();
    assert!(e.contains("history_days = 72 (allowed: 0 to 71)"), "{e}");
}

#[test]
fn cluster_settings_are_checked() {
    let device = "[[device]]\nmac = \"AA:BB:CC:DD:EE:FF\"\n";
    let e = parse(&format!("{device}gateway = \"garage\"\n")).unwrap_err();
    assert!(
        e.contains("gateway = \"garage\"") && e.contains("[cluster] enabled"),
        "{e}"
    );
    let cluster = "[cluster]\nenabled = true\n";
    let e = parse(&format!("{cluster}{device}gateway = \"a/b\"\n")).unwrap_err();
    assert!(e.contains("not a valid gateway id"), "{e}");
    let e = parse(&format!("[gateway]\nid = \"my gateway\"\n{cluster}")).unwrap_err();
    assert!(e.contains("gateway.id (with [cluster] enabled)"), "{e}");
    let e = parse(&format!("[mqtt]\nenabled = false\n{cluster}")).unwrap_err();
    assert!(e.contains("needs mqtt.enabled"), "{e}");
    let e = parse("[cluster]\nreport_interval = 1\n").unwrap_err();
    assert!(
        e.contains("cluster.report_interval = 1 is out of range"),
        "{e}"
    );
    let c = parse(&format!(
        "[gateway]\nid = \"garage.2\"\n{cluster}{device}gateway = \"house\"\n"
    ))
    .unwrap();
    assert_eq!(c.devices[0].gateway.as_deref(), Some("house"));
    assert_eq!(c.cluster.report_interval, 30);
}
