//! The fleet's views: each active device (configured or auto-configured) as configured, the registry
//! filling gaps, and each vehicle's members — recomputed when the configuration or the registry's
//! assignments change, never per reading. Must never: publish anything (the state machine does).

use super::{Fleet, View};
use crate::devices::Model;
use crate::mac::Mac;
use std::collections::{BTreeMap, BTreeSet, HashMap};

impl Fleet {
    /// One active device's [`View`], from its configuration (`conf`) and what the registry knows of it.
    pub(super) fn view_of(&self, mac: Mac, conf: Option<&crate::config::DeviceConf>) -> View {
        let known = self.registry.devices.get(&mac);
        let model = conf
            .and_then(|c| c.model())
            .or_else(|| known.and_then(|k| k.device_type.as_deref().and_then(Model::by_name)));
        let name = conf
            .and_then(|c| c.name.clone())
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| default_name(model, mac));
        View {
            model,
            name,
            vehicle: conf
                .and_then(|c| c.vehicle.clone())
                .or_else(|| known.and_then(|k| k.vehicle.clone())),
            capacity: conf.and_then(|c| c.capacity_ah),
            mode: match conf {
                Some(c) => c.mode.unwrap_or(self.config.defaults.mode),
                None => self.config.discovery.auto_mode,
            },
            poll_interval: conf
                .and_then(|c| c.poll_interval)
                .unwrap_or(self.config.defaults.poll_interval),
        }
    }

    /// The registry learnt `mac`'s model or name (its first sighting): recompute its view alone — a
    /// sighting changes no vehicle's members. (Rebuilding every view here made the first readings of N
    /// monitors cost O(N²): with 20,000 simulated monitors the fleet thread managed ~105 readings/s.)
    pub(super) fn refresh_view(&mut self, mac: Mac) {
        if self.views.contains_key(&mac) {
            let view = self.view_of(mac, self.configured(&mac));
            self.views.insert(mac, view);
        }
    }

    /// Recompute every active device's [`View`] and each vehicle's members, after the config or the
    /// registry's assignments changed (rare), so that per-reading work does not grow with the fleet.
    pub(super) fn rebuild(&mut self) {
        let mut views = BTreeMap::new();
        let conf: HashMap<Mac, &crate::config::DeviceConf> =
            self.config.devices.iter().map(|d| (d.mac, d)).collect();
        let auto = self
            .registry
            .devices
            .iter()
            .filter(|(_, d)| d.auto)
            .map(|(m, _)| *m);
        let macs: BTreeSet<Mac> = conf.keys().copied().chain(auto).collect();
        for mac in macs {
            views.insert(mac, self.view_of(mac, conf.get(&mac).copied()));
        }
        let mut members: BTreeMap<String, Vec<Mac>> = self
            .config
            .vehicles
            .iter()
            .map(|v| (v.id.clone(), Vec::new()))
            .collect();
        for (mac, v) in &views {
            if let Some(id) = &v.vehicle {
                members.entry(id.clone()).or_default().push(*mac);
            }
        }
        self.views = views;
        self.members = members;
    }

    /// An active device (configured or auto-configured) as configured, the registry filling gaps.
    pub(super) fn view(&self, mac: &Mac) -> Option<&View> {
        self.views.get(mac)
    }
}

/// The name of a device the config leaves unnamed (or names with blanks): its model and the last three
/// bytes of its MAC, e.g. `BM6 DD:EE:FF`, so that two monitors of one model stay apart.
fn default_name(model: Option<Model>, mac: Mac) -> String {
    let text = mac.to_string();
    let tail = &text[text.len() - 8..];
    format!("{} {tail}", model.map_or("Monitor", |m| m.name()))
}
