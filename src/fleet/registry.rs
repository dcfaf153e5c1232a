//! The registry: what the gateway remembers across restarts, in `<state_dir>/registry.json`.
//!
//! Owns: known devices (first sighting, model, vehicle, whether auto-configured), auto-created vehicles and
//! the counter that numbers them (so "Vehicle N" ids never collide, even after deletions).
//! Must never: overwrite what the user set in the config (the fleet applies config on top), or lose the
//! file on a crash (written to a temporary file, synced, then renamed). Written only when it changes.

use crate::mac::Mac;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "registry.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Registry {
    pub devices: BTreeMap<Mac, KnownDevice>,
    pub vehicles: BTreeMap<String, KnownVehicle>,
    /// The number the next auto-created vehicle gets.
    pub next_vehicle: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct KnownDevice {
    /// When the device was first seen on the air (`None`: configured but never seen yet). A time from
    /// a wall clock not yet set (SPEC §3 "Clocks") is never written.
    #[serde(serialize_with = "sane_or_null")]
    pub first_seen: Option<DateTime<Utc>>,
    pub device_type: Option<String>,
    pub name: Option<String>,
    pub vehicle: Option<String>,
    /// Added by `discovery.auto_configure` (polled although the config does not list it).
    pub auto: bool,
    /// Where the last download of the monitor's own log ended (SPEC §5.7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::devices::history::Synced>,
}

fn sane_or_null<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    t.filter(|t| crate::mqtt::clock::is_sane(*t)).serialize(s)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct KnownVehicle {
    pub name: String,
}

/// Why the registry could not be stored.
#[derive(Debug)]
pub struct RegistryError(pub PathBuf, pub std::io::Error);

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write {}: {}", self.0.display(), self.1)
    }
}

impl Registry {
    /// Load from `state_dir`. A missing file is an empty registry; a corrupt one is moved aside (and
    /// logged) so the gateway still starts.
    pub fn load(state_dir: &Path) -> Registry {
        let path = state_dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Registry::default(),
            Err(e) => {
                log::error!(
                    "cannot read {}: {e}; starting with an empty registry",
                    path.display()
                );
                return Registry::default();
            }
        };
        match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                let aside = path.with_extension(format!("corrupt-{}", Utc::now().timestamp()));
                log::error!(
                    "{} is corrupt ({e}); moved to {} and starting with an empty registry",
                    path.display(),
                    aside.display()
                );
                if let Err(e) = std::fs::rename(&path, &aside) {
                    log::error!("cannot move {} aside: {e}", path.display());
                }
                Registry::default()
            }
        }
    }

    /// Store atomically in `state_dir` (created if missing).
    pub fn save(&self, state_dir: &Path) -> Result<(), RegistryError> {
        let path = state_dir.join(FILE);
        let tmp = state_dir.join(format!("{FILE}.tmp"));
        let err = |e| RegistryError(path.clone(), e);
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// Create a vehicle "Vehicle N" whose id (`vehicle_N`) is in neither the registry nor `taken`.
    pub fn new_vehicle(&mut self, taken: impl Fn(&str) -> bool) -> String {
        loop {
            self.next_vehicle += 1;
            let n = self.next_vehicle;
            let id = format!("vehicle_{n}");
            if !self.vehicles.contains_key(&id) && !taken(&id) {
                self.vehicles.insert(
                    id.clone(),
                    KnownVehicle {
                        name: format!("Vehicle {n}"),
                    },
                );
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bh-reg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = temp_dir("rt");
        let mut r = Registry::default();
        let mac: Mac = "AA:BB:CC:DD:EE:FF".parse().unwrap();
        let v = r.new_vehicle(|_| false);
        r.devices.insert(
            mac,
            KnownDevice {
                first_seen: Some(Utc::now()),
                vehicle: Some(v),
                auto: true,
                ..Default::default()
            },
        );
        r.save(&dir).unwrap();
        assert_eq!(Registry::load(&dir), r);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn vehicle_ids_never_collide_after_deletion_or_with_config() {
        let mut r = Registry::default();
        assert_eq!(r.new_vehicle(|_| false), "vehicle_1");
        assert_eq!(r.new_vehicle(|_| false), "vehicle_2");
        r.vehicles.remove("vehicle_2");
        assert_eq!(r.new_vehicle(|id| id == "vehicle_3"), "vehicle_4");
        assert_eq!(r.vehicles["vehicle_4"].name, "Vehicle 4");
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), "{ not json").unwrap();
        assert_eq!(Registry::load(&dir), Registry::default());
        let moved = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("corrupt-"));
        assert!(moved);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
