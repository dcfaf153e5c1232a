//! The `demo` command (cargo feature `demo`, on by default; router builds leave it out): simulated monitors
//! on the simulated air → the whole pipeline → an in-process broker → every message printed. Zero
//! set-up: the configuration is built here and the state lives in a temporary directory.

use crate::service::{signals, supervise};
use anyhow::{Result, anyhow};
use battery_hawk::config::{
    Backend, Config, DeviceConf, Level, LogTarget, Logging, Mode, VehicleConf,
};
use battery_hawk::pipeline::Pipeline;
use battery_hawk::{logging, mqtt};
use crossbeam_channel::bounded;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn run_demo(port: u16, duration: Option<Duration>) -> Result<ExitCode> {
    logging::init(&Logging {
        level: Level::Info,
        target: LogTarget::Stderr,
    })?;
    let state_dir = std::env::temp_dir().join(format!("battery-hawk-demo-{}", std::process::id()));
    let config = config(port, state_dir.clone());
    mqtt::demo::start_broker(port).map_err(|e| anyhow!(e))?;
    let (stop_viewer, viewer_stop) = bounded(1);
    let viewer = mqtt::demo::print_messages(
        port,
        &config.mqtt.topic_prefix,
        config.mqtt.qos,
        viewer_stop,
    )?;
    eprintln!(
        "battery-hawk demo: broker on 127.0.0.1:{port}, 3 simulated monitors; {}",
        duration.map_or("Ctrl-C to stop".to_string(), |d| format!(
            "stopping after {} s",
            d.as_secs()
        ))
    );
    let signals = signals()?;
    let pipeline = Pipeline::start(Arc::new(config))?;
    let code = supervise(pipeline, &signals.1, None, duration, signals.0)?;
    std::thread::sleep(Duration::from_millis(500));
    let _ = stop_viewer.send(());
    let _ = viewer.join();
    let _ = std::fs::remove_dir_all(state_dir);
    Ok(code)
}

/// The demo's gateway: two vehicles, one monitor of each model, polled every second; one passive BM2.
fn config(port: u16, state_dir: std::path::PathBuf) -> Config {
    let mut c = Config::default();
    c.gateway.id = "demo".into();
    c.gateway.state_dir = state_dir;
    c.logging.target = LogTarget::Stderr;
    c.mqtt.broker = "127.0.0.1".into();
    c.mqtt.port = port;
    c.mqtt.status_interval = 10;
    c.mqtt.timeout = 5;
    c.bluetooth.backend = Backend::Simulated;
    // Two links at once and short timeouts, so a simulated failure (5 %) costs the demo seconds, not half
    // a minute.
    c.bluetooth.max_concurrent_connections = 2;
    c.bluetooth.connection_timeout = 3;
    c.defaults.poll_interval = 1;
    c.simulation.failure_rate = 0.05;
    c.vehicles = vec![
        VehicleConf {
            id: "camper".into(),
            name: Some("Camper Van".into()),
        },
        VehicleConf {
            id: "boat".into(),
            name: Some("Sailing Boat".into()),
        },
    ];
    let device = |mac: &str, model: &str, name: &str, vehicle: &str, ah: f64, mode| DeviceConf {
        mac: mac.parse().unwrap_or(battery_hawk::mac::Mac([0; 6])),
        device_type: Some(model.into()),
        name: Some(name.into()),
        vehicle: Some(vehicle.into()),
        capacity_ah: Some(ah),
        poll_interval: None,
        mode: Some(mode),
        gateway: None,
    };
    c.devices = vec![
        device(
            "38:3B:26:B5:30:AB",
            "BM6",
            "Starter",
            "camper",
            70.0,
            Mode::Poll,
        ),
        device(
            "38:3B:26:B5:30:AC",
            "BM7",
            "Leisure",
            "camper",
            100.0,
            Mode::Poll,
        ),
        device(
            "50:54:7B:22:2F:20",
            "BM2",
            "House Bank",
            "boat",
            200.0,
            Mode::Passive,
        ),
    ];
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_config_is_valid() {
        let c = super::config(1884, std::env::temp_dir());
        c.validate().unwrap();
        assert_eq!(c.devices.len(), 3);
    }
}
