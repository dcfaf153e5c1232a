//! The fleet's part in a cluster (SPEC §6): which monitors this gateway publishes for, taking and letting
//! go of them, and the other gateways' statuses that complete a vehicle's summary. Must never: publish a
//! status for a monitor it does not hold.

use super::Fleet;
use crate::mac::Mac;
use crate::messages::{Outbound, OwnerClaim, OwnerOut, RemoteStatus};
use chrono::{DateTime, Utc};

impl Fleet {
    /// Whether this gateway publishes for `mac`: always on its own; in a cluster, while it holds it.
    pub(super) fn serves(&self, mac: &Mac) -> bool {
        !self.config.cluster.enabled || self.held.contains(mac)
    }

    pub(super) fn publish_status(&self, mac: Mac, now: DateTime<Utc>, out: &mut Vec<Outbound>) {
        if self.serves(&mac) {
            out.push(Outbound::DeviceStatus(self.status(mac, now)));
        }
    }

    /// Another gateway's status of a monitor (SPEC §6): kept for the summary of its vehicle, which is
    /// refreshed if this gateway publishes it. Our own statuses, echoed by the broker, are ignored.
    pub(super) fn on_remote(
        &mut self,
        status: RemoteStatus,
        now: DateTime<Utc>,
        out: &mut Vec<Outbound>,
    ) {
        let mac = status.mac;
        if self.serves(&mac) || !self.config.cluster.enabled {
            return;
        }
        if status.cleared {
            self.remote.remove(&mac);
        } else {
            self.remote.insert(mac, status);
        }
        if let Some(v) = self.view(&mac).and_then(|v| v.vehicle.clone()) {
            self.refresh_summary(&v, now, out);
        }
    }

    /// The BLE stage took (`held`) or let go of a monitor (SPEC §6): announce it on its owner topic, and
    /// take over or leave its vehicle's summary.
    pub(super) fn on_owner(
        &mut self,
        mac: Mac,
        held: bool,
        rssi: Option<i16>,
        clear: bool,
        now: DateTime<Utc>,
        out: &mut Vec<Outbound>,
    ) {
        if held {
            self.held.insert(mac);
            self.remote.remove(&mac);
            let claim = Some(OwnerClaim { rssi, since: now });
            out.push(Outbound::Owner(OwnerOut {
                mac,
                claim,
                clear: false,
            }));
        } else {
            self.held.remove(&mac);
            out.push(Outbound::Owner(OwnerOut {
                mac,
                claim: None,
                clear,
            }));
        }
        if let Some(v) = self.view(&mac).and_then(|v| v.vehicle.clone()) {
            // A new summary owner publishes at once; the one that left forgets what it published.
            self.published.remove(&v);
            self.refresh_summary(&v, now, out);
        }
    }
}
