//! The fleet's state machine: devices, vehicles, associations, counters — pure logic, no threads or I/O.
//!
//! Every input is an event plus the current time; every output is a list of [`Outbound`] messages for the
//! MQTT stage. The config always wins over the registry; the registry fills in what the config leaves open.

use super::registry::{KnownDevice, Registry};
use super::summary::summarize;
use crate::config::{Config, Mode};
use crate::devices::Model;
use crate::mac::Mac;
use crate::messages::RemoteStatus;
use crate::messages::{
    AssociationOut, BluetoothState, DecodedReading, DeviceStatusOut, FleetEvent, HearsOut,
    LatestReading, LinkError, Notice, Outbound, ReadingOut, Removed, Sighting, SummaryDevice,
    SummaryOut, SystemSnapshot,
};
use crate::mqtt::clock::is_sane;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// What the gateway knows about one device right now.
#[derive(Debug, Default)]
struct Live {
    model: Option<Model>,
    reachable: bool,
    error: Option<(u16, String)>,
    consecutive_failures: u32,
    /// The latest accepted reading (its `capacity_ah` is filled in from the config when published).
    last: Option<LatestReading>,
    rssi: Option<i16>,
    /// A reading or a failure was seen in this run: the device is no longer pending. (A passive device
    /// never heard from is reported by the BLE scheduler after three poll intervals, SPEC §2.2.)
    attempted: bool,
}

/// A device as configured, with the registry filling the gaps.
#[derive(Debug, Clone)]
struct View {
    model: Option<Model>,
    name: String,
    vehicle: Option<String>,
    capacity: Option<f64>,
    mode: Mode,
    poll_interval: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    readings: u64,
    decode_errors: u64,
    connection_failures: u64,
}

pub struct Fleet {
    config: Arc<Config>,
    registry: Registry,
    registry_dirty: bool,
    live: BTreeMap<Mac, Live>,
    published: HashMap<String, SummaryOut>,
    /// Active devices as configured ([`Fleet::rebuild`]).
    views: BTreeMap<Mac, View>,
    /// Vehicle id → its active devices.
    members: BTreeMap<String, Vec<Mac>>,
    counters: Counters,
    bluetooth: BluetoothState,
    /// With `[cluster]`: the monitors this gateway holds (SPEC §6). Only their device status, and only the
    /// summaries of vehicles whose lowest-MAC device is held, are published here.
    held: BTreeSet<Mac>,
    /// With `[cluster]`: the latest retained status of each monitor another gateway serves, for the
    /// summaries this gateway publishes.
    remote: BTreeMap<Mac, RemoteStatus>,
}

impl Fleet {
    pub fn new(config: Arc<Config>, registry: Registry, bluetooth: BluetoothState) -> Fleet {
        let mut fleet = Fleet {
            config,
            registry,
            registry_dirty: false,
            live: BTreeMap::new(),
            published: HashMap::new(),
            views: BTreeMap::new(),
            members: BTreeMap::new(),
            counters: Counters::default(),
            bluetooth,
            held: BTreeSet::new(),
            remote: BTreeMap::new(),
        };
        fleet.rebuild();
        fleet
    }

    /// What to publish at start: associations the config makes, every vehicle's summary, system status.
    pub fn start(&mut self, now: DateTime<Utc>) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.reconcile(now, &mut out);
        for v in self.vehicle_ids() {
            self.refresh_summary(&v, now, &mut out);
        }
        out.push(Outbound::System(self.snapshot(now, true)));
        out
    }

    /// Apply one event.
    #[cfg(test)]
    pub fn handle(&mut self, event: FleetEvent, now: DateTime<Utc>) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.handle_into(event, now, &mut out);
        out
    }

    /// What `event` makes the fleet publish, appended to `out` (the fleet thread reuses one vector: a
    /// fresh one per reading was an allocation of four 320-byte messages, large enough to make glibc
    /// consolidate its fast bins every time).
    pub fn handle_into(&mut self, event: FleetEvent, now: DateTime<Utc>, out: &mut Vec<Outbound>) {
        match event {
            FleetEvent::Reading(r) => self.on_reading(r, now, out),
            FleetEvent::Rejected { mac, model, reason } => {
                self.counters.decode_errors += 1;
                self.live.entry(mac).or_default().model.get_or_insert(model);
                self.on_failure(mac, LinkError::BadData(reason.to_string()), now, out);
            }
            FleetEvent::Remote(status) => self.on_remote(status, now, out),
            FleetEvent::Notice(Notice::PollFailed { mac, model, error }) => {
                self.counters.connection_failures += 1;
                if let Some(m) = model {
                    self.live.entry(mac).or_default().model.get_or_insert(m);
                }
                self.on_failure(mac, error, now, out);
            }
            FleetEvent::Notice(Notice::Seen(s)) => self.on_seen(s, now, out),
            FleetEvent::Notice(Notice::Adopted { mac, model, mode }) => {
                self.on_adopted(mac, model, mode, now, out)
            }
            FleetEvent::Notice(Notice::Forgotten { mac }) => self.on_forgotten(mac, now, out),
            FleetEvent::Notice(Notice::History { out: batch, synced }) => {
                // History never touches the live state, the status or a summary (SPEC §5.7).
                if let Some(s) = synced {
                    let entry = self.registry.devices.entry(batch.mac).or_default();
                    if entry.history.as_ref() != Some(&s) {
                        entry.history = Some(s);
                        self.registry_dirty = true;
                    }
                }
                out.push(Outbound::History(batch));
            }
            FleetEvent::Notice(Notice::Hears(monitors)) => {
                out.push(Outbound::Hears(HearsOut { at: now, monitors }));
            }
            FleetEvent::Notice(Notice::Owner {
                mac,
                held,
                rssi,
                clear,
            }) => self.on_owner(mac, held, rssi, clear, now, out),
            FleetEvent::Notice(Notice::Bluetooth(state)) => {
                if state != self.bluetooth {
                    self.bluetooth = state;
                    out.push(Outbound::System(self.snapshot(now, true)));
                }
            }
            FleetEvent::Notice(Notice::Reconfigure(config)) => self.reconfigure(config, now, out),
            FleetEvent::Notice(Notice::Stopping { reason }) => {
                out.push(Outbound::System(self.snapshot(now, false)));
                out.push(Outbound::Shutdown { reason });
            }
        }
    }

    /// The fleet's part of the system status.
    pub fn snapshot(&self, now: DateTime<Utc>, running: bool) -> SystemSnapshot {
        let active = self.views.keys();
        SystemSnapshot {
            at: now,
            running,
            bluetooth: self.bluetooth,
            devices_total: self.views.len(),
            devices_connected: active
                .filter(|m| self.live.get(m).is_some_and(|l| l.reachable))
                .count(),
            readings: self.counters.readings,
            decode_errors: self.counters.decode_errors,
            connection_failures: self.counters.connection_failures,
        }
    }

    /// Whether the registry changed since the last call (the caller persists it).
    pub fn take_dirty_registry(&mut self) -> bool {
        std::mem::take(&mut self.registry_dirty)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn on_reading(&mut self, r: DecodedReading, now: DateTime<Utc>, out: &mut Vec<Outbound>) {
        self.counters.readings += 1;
        if self.mark_seen(r.mac, Some(r.model), None, r.received_at) {
            out.push(Outbound::Discovered(Sighting {
                mac: r.mac,
                name: None,
                model: Some(r.model),
                confirmed: true,
                rssi: r.rssi,
                service_uuids: Vec::new(),
                manufacturer_data: Vec::new(),
                at: r.received_at,
            }));
        }
        let live = self.live.entry(r.mac).or_default();
        live.model = Some(r.model);
        live.reachable = true;
        live.error = None;
        live.consecutive_failures = 0;
        live.attempted = true;
        live.last = Some(LatestReading {
            model: r.model,
            source: r.source,
            measurement: r.measurement.clone(),
            rssi: r.rssi,
            received_at: r.received_at,
            capacity_ah: None,
        });
        if r.rssi.is_some() {
            live.rssi = r.rssi;
        }
        let view = self.view(&r.mac);
        let (vehicle_id, capacity_ah) = view
            .as_ref()
            .map_or((None, None), |v| (v.vehicle.clone(), v.capacity));
        let mac = r.mac;
        out.push(Outbound::Reading(ReadingOut {
            reading: r,
            vehicle_id: vehicle_id.clone(),
            capacity_ah,
        }));
        self.publish_status(mac, now, out);
        if let Some(v) = vehicle_id {
            self.refresh_summary(&v, now, out);
        }
    }

    fn on_failure(
        &mut self,
        mac: Mac,
        error: LinkError,
        now: DateTime<Utc>,
        out: &mut Vec<Outbound>,
    ) {
        let live = self.live.entry(mac).or_default();
        live.reachable = false;
        live.attempted = true;
        live.error = Some((error.code(), error.message()));
        live.consecutive_failures = live.consecutive_failures.saturating_add(1);
        self.publish_status(mac, now, out);
        if let Some(v) = self.view(&mac).and_then(|v| v.vehicle.clone()) {
            self.refresh_summary(&v, now, out);
        }
    }

    /// A monitor was seen. Only a confirmed one (SPEC §5.3) enters the registry and is announced on
    /// `discovery/found`; auto-configuration is the BLE scheduler's decision ([`Notice::Adopted`]).
    fn on_seen(&mut self, s: Sighting, _now: DateTime<Utc>, out: &mut Vec<Outbound>) {
        let live = self.live.entry(s.mac).or_default();
        if s.rssi.is_some() {
            live.rssi = s.rssi;
        }
        if !s.confirmed {
            return;
        }
        if let Some(m) = s.model {
            live.model.get_or_insert(m);
        }
        if self.mark_seen(s.mac, s.model, s.name.clone(), s.at) {
            out.push(Outbound::Discovered(s));
        }
    }

    /// The BLE scheduler adopted a newly found monitor: give it a vehicle of its own.
    fn on_adopted(
        &mut self,
        mac: Mac,
        model: Model,
        mode: Mode,
        now: DateTime<Utc>,
        out: &mut Vec<Outbound>,
    ) {
        if self.configured(&mac).is_some() {
            return;
        }
        self.mark_seen(mac, Some(model), None, now);
        let config = Arc::clone(&self.config);
        let id = self
            .registry
            .new_vehicle(|id| config.vehicles.iter().any(|v| v.id == id));
        if let Some(d) = self.registry.devices.get_mut(&mac) {
            d.auto = true;
            d.vehicle = Some(id.clone());
        }
        self.registry_dirty = true;
        self.rebuild();
        log::info!(
            "auto-configured {mac} ({model}, {}) in new vehicle {id}",
            mode.as_str()
        );
        out.push(Outbound::Associated(AssociationOut {
            mac,
            vehicle_id: id.clone(),
            model: Some(model),
            new_vehicle: true,
            at: now,
        }));
        self.refresh_summary(&id, now, out);
        out.push(Outbound::System(self.snapshot(now, true)));
    }

    /// An auto-configured monitor was not heard for `discovery.forget_after`: it leaves the registry
    /// (heard again later, it is new again) and its retained state, and its vehicle if left empty, go.
    fn on_forgotten(&mut self, mac: Mac, now: DateTime<Utc>, out: &mut Vec<Outbound>) {
        if !self.registry.devices.get(&mac).is_some_and(|d| d.auto) {
            return;
        }
        let before = self.active();
        let vehicle = self.registry.devices.remove(&mac).and_then(|d| d.vehicle);
        if let Some(v) = vehicle
            && !self
                .registry
                .devices
                .values()
                .any(|d| d.vehicle.as_ref() == Some(&v))
            && !self.config.vehicles.iter().any(|c| c.id == v)
        {
            self.registry.vehicles.remove(&v);
        }
        self.registry_dirty = true;
        self.rebuild();
        self.drop_gone(before, now, out);
    }

    /// Record a sighting in the registry; true if this is the first time the device was ever seen.
    fn mark_seen(
        &mut self,
        mac: Mac,
        model: Option<Model>,
        name: Option<String>,
        now: DateTime<Utc>,
    ) -> bool {
        let entry = self.registry.devices.entry(mac).or_default();
        let first = entry.first_seen.is_none();
        // A first sighting stamped by a clock not yet set is corrected by the first sane one.
        let unset = entry.first_seen.is_some_and(|t| !is_sane(t)) && is_sane(now);
        if first || unset {
            entry.first_seen = Some(now);
        }
        let mut described = false;
        if entry.device_type.is_none()
            && let Some(m) = model
        {
            entry.device_type = Some(m.name().to_string());
            described = true;
        }
        if entry.name.is_none() && name.is_some() {
            entry.name = name;
            described = true;
        }
        self.registry_dirty |= first || unset || described;
        if described {
            self.refresh_view(mac);
        }
        first
    }

    fn reconfigure(&mut self, config: Arc<Config>, now: DateTime<Utc>, out: &mut Vec<Outbound>) {
        let before = self.active();
        self.config = config;
        self.reconcile(now, out);
        self.drop_gone(before, now, out);
    }

    /// The active devices and vehicles now (to compare after a change).
    fn active(&self) -> (BTreeSet<Mac>, BTreeSet<String>) {
        (self.views.keys().copied().collect(), self.vehicle_ids())
    }

    /// After the active set changed: clear what left, refresh every summary, publish the system status.
    fn drop_gone(
        &mut self,
        (devices_before, vehicles_before): (BTreeSet<Mac>, BTreeSet<String>),
        now: DateTime<Utc>,
        out: &mut Vec<Outbound>,
    ) {
        let views = &self.views;
        self.live.retain(|mac, _| views.contains_key(mac));
        for mac in devices_before
            .iter()
            .filter(|m| !self.views.contains_key(m))
        {
            // In a cluster, only the gateway serving it clears its state (another one may serve it).
            if self.serves(mac) {
                out.push(Outbound::Removed(Removed::Device(*mac)));
            }
        }
        let vehicles = self.vehicle_ids();
        for gone in vehicles_before.difference(&vehicles) {
            if self.published.remove(gone).is_some() || !self.config.cluster.enabled {
                out.push(Outbound::Removed(Removed::Vehicle(gone.clone())));
            }
        }
        for v in vehicles {
            self.refresh_summary(&v, now, out);
        }
        out.push(Outbound::System(self.snapshot(now, true)));
    }

    /// Apply the config's device → vehicle assignments to the registry, announcing each change.
    fn reconcile(&mut self, now: DateTime<Utc>, out: &mut Vec<Outbound>) {
        self.rebuild();
        let config = Arc::clone(&self.config);
        for d in &config.devices {
            let entry = self.registry.devices.entry(d.mac).or_insert_with(|| {
                self.registry_dirty = true;
                KnownDevice::default()
            });
            let Some(vehicle) = &d.vehicle else { continue };
            if entry.vehicle.as_ref() == Some(vehicle) {
                continue;
            }
            let old = entry.vehicle.replace(vehicle.clone());
            self.registry_dirty = true;
            let new_vehicle = !self.registry.vehicles.contains_key(vehicle);
            let name = config
                .vehicles
                .iter()
                .find(|v| &v.id == vehicle)
                .and_then(|v| v.name.clone())
                .unwrap_or_else(|| vehicle.clone());
            self.registry
                .vehicles
                .entry(vehicle.clone())
                .or_default()
                .name = name;
            out.push(Outbound::Associated(AssociationOut {
                mac: d.mac,
                vehicle_id: vehicle.clone(),
                model: d
                    .model()
                    .or_else(|| self.live.get(&d.mac).and_then(|l| l.model)),
                new_vehicle,
                at: now,
            }));
            self.rebuild();
            if let Some(old) = old {
                self.refresh_summary(&old, now, out);
            }
            self.refresh_summary(vehicle, now, out);
        }
    }

    fn configured(&self, mac: &Mac) -> Option<&crate::config::DeviceConf> {
        self.config.devices.iter().find(|d| &d.mac == mac)
    }

    fn status(&self, mac: Mac, now: DateTime<Utc>) -> DeviceStatusOut {
        let live = self.live.get(&mac);
        let view = self.view(&mac);
        DeviceStatusOut {
            mac,
            at: now,
            reachable: live.is_some_and(|l| l.reachable),
            model: view.and_then(|v| v.model).or(live.and_then(|l| l.model)),
            vehicle_id: view.and_then(|v| v.vehicle.clone()),
            error: live.and_then(|l| l.error.clone()),
            last_reading_at: live.and_then(|l| l.last.as_ref().map(|r| r.received_at)),
            rssi: live.and_then(|l| l.rssi),
            consecutive_failures: live.map_or(0, |l| l.consecutive_failures),
            mode: view.map_or(self.config.defaults.mode, |v| v.mode),
            name: view.map_or_else(|| mac.to_string(), |v| v.name.clone()),
            poll_interval: view.map_or(self.config.defaults.poll_interval, |v| v.poll_interval),
            reading: live.and_then(|l| l.last.clone()).map(|r| LatestReading {
                capacity_ah: view.and_then(|v| v.capacity),
                ..r
            }),
        }
    }

    /// Every vehicle: those the config defines and those an active device belongs to.
    fn vehicle_ids(&self) -> BTreeSet<String> {
        self.members.keys().cloned().collect()
    }

    /// Publish `vehicle`'s summary if its content changed since the last one published.
    fn refresh_summary(&mut self, vehicle: &str, now: DateTime<Utc>, out: &mut Vec<Outbound>) {
        let name = self
            .config
            .vehicles
            .iter()
            .find(|v| v.id == vehicle)
            .map(|v| v.name.clone().unwrap_or_else(|| v.id.clone()))
            .or_else(|| self.registry.vehicles.get(vehicle).map(|v| v.name.clone()))
            .unwrap_or_else(|| vehicle.to_string());
        let mut capacity = 0.0;
        let members = self.members.get(vehicle).map_or(&[][..], Vec::as_slice);
        // In a cluster, the owner of the vehicle's lowest-MAC device publishes its summary (SPEC §6);
        // devices served by other gateways come from their retained statuses.
        if self.config.cluster.enabled && members.first().is_none_or(|m| !self.held.contains(m)) {
            return;
        }
        let devices: Vec<SummaryDevice> = members
            .iter()
            .filter_map(|mac| {
                let view = self.view(mac)?;
                capacity += view.capacity.unwrap_or(0.0);
                let live = self.live.get(mac);
                let model = view.model.or(live.and_then(|l| l.model));
                if !self.serves(mac) {
                    // Served by another gateway: from its retained status, not tried until one came.
                    let r = self.remote.get(mac);
                    return Some(SummaryDevice {
                        mac: *mac,
                        name: view.name.clone(),
                        model,
                        connected: r.is_some_and(|r| r.connected),
                        voltage: r.and_then(|r| r.voltage),
                        state_of_charge: r.and_then(|r| r.state_of_charge),
                        temperature: r.and_then(|r| r.temperature),
                        last_reading: r.and_then(|r| r.last_reading),
                        pending: r.is_none(),
                    });
                }
                let last = live.and_then(|l| l.last.as_ref());
                Some(SummaryDevice {
                    mac: *mac,
                    name: view.name.clone(),
                    model,
                    connected: live.is_some_and(|l| l.reachable),
                    voltage: last.and_then(|r| r.measurement.voltage),
                    state_of_charge: last.and_then(|r| r.measurement.state_of_charge),
                    temperature: last.and_then(|r| r.measurement.temperature),
                    last_reading: last.map(|r| r.received_at),
                    pending: live.is_none_or(|l| !l.attempted),
                })
            })
            .collect();
        let summary = summarize(vehicle, &name, devices, capacity, now);
        let changed = self
            .published
            .get(vehicle)
            .is_none_or(|old| super::summary::content_differs(old, &summary));
        if changed {
            self.published.insert(vehicle.to_string(), summary.clone());
            out.push(Outbound::Summary(summary));
        }
    }
}

#[path = "cluster.rs"]
mod cluster;
#[path = "views.rs"]
mod views;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
