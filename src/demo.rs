//! The `demo` command: simulated monitors → the whole pipeline → an in-process broker → printed messages.
//! Zero set-up: the configuration is built here and the state lives in a temporary directory.

use crate::config::{Backend, Config, DeviceConf, LogTarget, Mode, VehicleConf};

/// The demo's gateway: two vehicles, one monitor of each model, polled every second; one passive BM2.
pub fn config(port: u16, state_dir: std::path::PathBuf) -> Config {
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
        mac: mac.parse().unwrap_or(crate::mac::Mac([0; 6])),
        device_type: Some(model.into()),
        name: Some(name.into()),
        vehicle: Some(vehicle.into()),
        capacity_ah: Some(ah),
        poll_interval: None,
        mode: Some(mode),
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
