//! Every topic the gateway publishes to (SPEC §1), built in this one place.

use crate::mac::Mac;

/// Topic builder for one prefix (validated by the config).
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
        }
    }

    pub fn reading(&self, mac: Mac) -> String {
        format!("{}/device/{mac}/reading", self.prefix)
    }
    pub fn status(&self, mac: Mac) -> String {
        format!("{}/device/{mac}/status", self.prefix)
    }
    /// Records from the monitor's own log (SPEC §1, §5.7).
    pub fn history(&self, mac: Mac) -> String {
        format!("{}/device/{mac}/history", self.prefix)
    }
    pub fn summary(&self, vehicle: &str) -> String {
        format!("{}/vehicle/{vehicle}/summary", self.prefix)
    }
    pub fn associated(&self, vehicle: &str) -> String {
        format!("{}/vehicle/{vehicle}/device_associated", self.prefix)
    }
    pub fn system_status(&self) -> String {
        format!("{}/system/status", self.prefix)
    }
    pub fn availability(&self) -> String {
        format!("{}/system/availability", self.prefix)
    }
    pub fn shutdown(&self) -> String {
        format!("{}/system/shutdown", self.prefix)
    }
    pub fn discovery(&self) -> String {
        format!("{}/discovery/found", self.prefix)
    }
    /// Filters covering everything the gateway publishes, each with the QoS SPEC §1 publishes it at
    /// (`data_qos` is `mqtt.qos`), for subscribers such as `demo`.
    pub fn subscriptions(&self, data_qos: u8) -> Vec<(String, u8)> {
        let p = &self.prefix;
        vec![
            (format!("{p}/device/#"), data_qos),
            (format!("{p}/vehicle/#"), data_qos),
            (format!("{p}/discovery/#"), data_qos),
            (self.availability(), 1),
            (self.system_status(), 2),
            (self.shutdown(), 2),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_topics() {
        let t = Topics::new("home/battery_hawk");
        let mac: Mac = "aa:bb:cc:dd:ee:ff".parse().unwrap();
        assert_eq!(
            t.reading(mac),
            "home/battery_hawk/device/AA:BB:CC:DD:EE:FF/reading"
        );
        assert_eq!(
            t.status(mac),
            "home/battery_hawk/device/AA:BB:CC:DD:EE:FF/status"
        );
        assert_eq!(t.summary("van"), "home/battery_hawk/vehicle/van/summary");
        assert_eq!(
            t.associated("van"),
            "home/battery_hawk/vehicle/van/device_associated"
        );
        assert_eq!(t.system_status(), "home/battery_hawk/system/status");
        assert_eq!(t.availability(), "home/battery_hawk/system/availability");
        assert_eq!(t.shutdown(), "home/battery_hawk/system/shutdown");
        assert_eq!(t.discovery(), "home/battery_hawk/discovery/found");
        let subs = t.subscriptions(0);
        assert_eq!(subs[0], ("home/battery_hawk/device/#".to_string(), 0));
        assert_eq!(subs[4], ("home/battery_hawk/system/status".to_string(), 2));
    }
}
