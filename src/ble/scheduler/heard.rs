//! What an advertisement decides: which model a device is (once, for devices not read; foreign ones are
//! remembered and ignored), whether a newly found monitor is adopted, when an adopted one is forgotten,
//! and the passive reading it carries (the newest entry only; the iBeacon when there is no encrypted frame).

use super::device::slack;
use super::device::{Dev, secs};
use super::io::Action;
use super::{Heard, IBEACON_WAIT, PASSIVE_SILENCE_INTERVALS, Scheduler};
use crate::config::Mode;
use crate::devices::{self, Source};
use crate::mac::Mac;
use crate::messages::{BleEvent, Notice, RawFrame};
use std::time::Instant;

impl Scheduler {
    pub(super) fn identify(&mut self, h: &Heard, now: Instant) -> Option<devices::Identity> {
        let id = devices::classify(h.mac, h.name.as_deref(), &h.service_uuids, &h.manufacturer);
        if !self.devices.contains_key(&h.mac) {
            match id {
                None => self
                    .foreign
                    .remember(h.mac, now, crate::ble::foreign::FOREIGN_RECHECK),
                // A monitor we do not read: look at it again only now and then.
                Some(_) => self
                    .foreign
                    .remember(h.mac, now, crate::ble::foreign::MONITOR_RECHECK),
            }
        }
        id
    }

    /// Adopt a newly found monitor if the rules allow it; true if adopted.
    pub(super) fn maybe_adopt(&mut self, mac: Mac, id: devices::Identity, now: Instant) -> bool {
        let d = &self.config.discovery;
        let autos = self.devices.values().filter(|d| d.auto).count();
        let adopt = d.auto_configure
            && id.confirmed()
            && !self.known.contains(&mac)
            && !self.removed.contains(&mac)
            && autos < d.max_auto_devices as usize;
        if !adopt {
            return false;
        }
        let mode = d.auto_mode;
        let interval = secs(self.config.defaults.poll_interval);
        log::info!(
            "adopting newly found {} {mac} ({})",
            id.model,
            mode.as_str()
        );
        self.known.insert(mac);
        self.devices.insert(mac, {
            let mut d = Dev::new(Some(id.model), mode, interval, true, now);
            d.held = self.cluster.is_none();
            d
        });
        self.emit(Notice::Adopted {
            mac,
            model: id.model,
            mode,
        });
        true
    }

    /// A passive device's advertisement: the newest encrypted frame (or, without one, the iBeacon) becomes
    /// a frame for the decode stage, at most once per interval. Only data carried by a change counts.
    pub(super) fn passive_advert(&mut self, h: Heard, now: Instant) {
        let mac = h.mac;
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        if h.manufacturer.is_empty() {
            return;
        }
        let previous = std::mem::replace(&mut d.last_manufacturer, h.manufacturer);
        if !h.fresh {
            return;
        }
        let Some(model) = d.model else { return };
        let first_fresh = *d.first_fresh.get_or_insert(now);
        let newest = newest_entries(&previous, &d.last_manufacturer);
        let encrypted = newest
            .iter()
            .find_map(|(cid, v)| devices::advert_frame(*cid, v));
        if encrypted.is_some() {
            d.last_encrypted = Some(now);
        }
        // SPEC §5.4: the iBeacon (SoC only) serves a device whose broadcasts carry no encrypted frame:
        // none since it was first heard, for at least one interval (a BM2 alternates the two).
        let beacon_only =
            d.last_encrypted.is_none() && now >= first_fresh + d.interval.min(IBEACON_WAIT);
        let (source, data) = match encrypted {
            Some(frame) => (Source::Advertisement, frame.to_vec()),
            None if beacon_only => {
                let entries: Vec<(u16, Vec<u8>)> = newest.into_iter().cloned().collect();
                match devices::ibeacon_value(model, &entries) {
                    Some(v) => (Source::Ibeacon, v.to_vec()),
                    None => return,
                }
            }
            None => return,
        };
        if !d.held
            || d.last_emit
                .is_some_and(|t| now < t + d.interval - slack(d.interval))
        {
            return;
        }
        d.last_emit = Some(now);
        d.due = now + d.interval * PASSIVE_SILENCE_INTERVALS;
        let event = BleEvent::Frame(RawFrame {
            mac,
            model,
            source,
            data,
            rssi: h.rssi,
            received_at: h.at,
        });
        self.out.push(Action::Emit(event));
    }

    pub(super) fn forget_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        let after = secs(self.config.discovery.forget_after);
        self.devices
            .values()
            .filter(|d| d.auto)
            .filter_map(move |d| d.last_heard.map(|t| t + after))
    }

    /// Auto-configured devices not heard for `forget_after` are forgotten (the fleet clears their state).
    pub(super) fn forget(&mut self, now: Instant) {
        let after = secs(self.config.discovery.forget_after);
        let gone: Vec<Mac> = self
            .devices
            .iter()
            .filter(|(_, d)| d.auto && d.last_heard.is_some_and(|t| now >= t + after))
            .map(|(m, _)| *m)
            .collect();
        for mac in gone {
            if let Some(d) = self.devices.remove(&mac)
                && d.mode == Mode::Stream
                && d.holds_slot()
            {
                self.out.push(Action::CloseStream { mac });
            }
            log::info!("forgetting {mac}: not heard for {} s", after.as_secs());
            self.emit(Notice::Forgotten { mac });
        }
    }
}

/// The entries of `current` that are new or changed since `previous`; when nothing changed (the monitor
/// repeated its advert, and the change signal says it was received again) all of `current`.
fn newest_entries<'a>(
    previous: &[(u16, Vec<u8>)],
    current: &'a [(u16, Vec<u8>)],
) -> Vec<&'a (u16, Vec<u8>)> {
    let changed: Vec<&(u16, Vec<u8>)> = current
        .iter()
        .filter(|(cid, v)| !previous.iter().any(|(pc, pv)| pc == cid && pv == v))
        .collect();
    if changed.is_empty() {
        current.iter().collect()
    } else {
        changed
    }
}
