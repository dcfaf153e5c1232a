//! Every topic the gateway publishes to (SPEC §1), built in this one place.

use crate::mac::Mac;

/// Topic builder for one prefix (validated by the config).
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    /// Where the system topics live: `P/system`, or `P/gateway/{gid}` in a cluster (SPEC §6).
    system: String,
}

/// A topic of another gateway of the cluster that the gateway subscribes to (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTopic {
    Availability(String),
    Hears(String),
    Owner(Mac),
    /// A monitor's retained status (possibly another gateway's), for vehicle summaries.
    Status(Mac),
}

impl Topics {
    /// The topics of a gateway on its own.
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
            system: format!("{prefix}/system"),
        }
    }

    /// The topics of gateway `gateway_id` in a cluster (SPEC §6): system topics under
    /// `P/gateway/{gid}/`, device and vehicle topics shared.
    pub fn cluster(prefix: &str, gateway_id: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
            system: format!("{prefix}/gateway/{gateway_id}"),
        }
    }

    /// The retained `hears` report of this gateway (cluster only).
    pub fn hears(&self) -> String {
        format!("{}/hears", self.system)
    }
    /// The retained owner announcement of a monitor (cluster only).
    pub fn owner(&self, mac: Mac) -> String {
        format!("{}/device/{mac}/owner", self.prefix)
    }
    /// What a gateway of a cluster subscribes to: every gateway's availability and `hears`, every
    /// monitor's owner (QoS 1: these are retained facts, a lost one would stall a hand-over).
    /// Every monitor's status too: the summary of a vehicle whose devices several gateways serve is
    /// made from them.
    pub fn cluster_subscriptions(&self) -> [String; 4] {
        let p = &self.prefix;
        [
            format!("{p}/gateway/+/availability"),
            format!("{p}/gateway/+/hears"),
            format!("{p}/device/+/owner"),
            format!("{p}/device/+/status"),
        ]
    }
    /// Which cluster fact `topic` carries, if any.
    pub fn parse_cluster(&self, topic: &str) -> Option<ClusterTopic> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["gateway", gid, "availability"] if !gid.is_empty() => {
                Some(ClusterTopic::Availability((*gid).to_string()))
            }
            ["gateway", gid, "hears"] if !gid.is_empty() => {
                Some(ClusterTopic::Hears((*gid).to_string()))
            }
            ["device", mac, "owner"] => mac.parse().ok().map(ClusterTopic::Owner),
            ["device", mac, "status"] => mac.parse().ok().map(ClusterTopic::Status),
            _ => None,
        }
    }

    /// `P/device/{mac}/{leaf}`, built in one allocation (two topics per reading).
    fn device(&self, mac: Mac, leaf: &str) -> String {
        use std::fmt::Write;
        let mut t = String::with_capacity(self.prefix.len() + "/device/".len() + 18 + leaf.len());
        t.push_str(&self.prefix);
        t.push_str("/device/");
        let _ = write!(t, "{mac}/");
        t.push_str(leaf);
        t
    }
    pub fn reading(&self, mac: Mac) -> String {
        self.device(mac, "reading")
    }
    pub fn status(&self, mac: Mac) -> String {
        self.device(mac, "status")
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
        format!("{}/status", self.system)
    }
    pub fn availability(&self) -> String {
        format!("{}/availability", self.system)
    }
    pub fn shutdown(&self) -> String {
        format!("{}/shutdown", self.system)
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

    #[test]
    fn cluster_topics_are_per_gateway_for_the_system_only() {
        let t = Topics::cluster("p", "garage");
        let mac: Mac = "aa:bb:cc:dd:ee:ff".parse().unwrap();
        assert_eq!(t.system_status(), "p/gateway/garage/status");
        assert_eq!(t.availability(), "p/gateway/garage/availability");
        assert_eq!(t.shutdown(), "p/gateway/garage/shutdown");
        assert_eq!(t.hears(), "p/gateway/garage/hears");
        assert_eq!(t.owner(mac), "p/device/AA:BB:CC:DD:EE:FF/owner");
        assert_eq!(t.status(mac), "p/device/AA:BB:CC:DD:EE:FF/status");
        assert_eq!(
            t.parse_cluster("p/gateway/house/availability"),
            Some(ClusterTopic::Availability("house".into()))
        );
        assert_eq!(
            t.parse_cluster("p/gateway/house/hears"),
            Some(ClusterTopic::Hears("house".into()))
        );
        assert_eq!(
            t.parse_cluster("p/device/AA:BB:CC:DD:EE:FF/owner"),
            Some(ClusterTopic::Owner(mac))
        );
        assert_eq!(
            t.parse_cluster("p/device/AA:BB:CC:DD:EE:FF/status"),
            Some(ClusterTopic::Status(mac))
        );
        for other in [
            "p/device/nonsense/owner",
            "p/gateway//hears",
            "p/gateway/house/status",
            "q/gateway/house/hears",
            "p/gateway/a/b/hears",
        ] {
            assert_eq!(t.parse_cluster(other), None, "{other}");
        }
    }
}
