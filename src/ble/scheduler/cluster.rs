//! Several gateways, one fleet (SPEC §6): which monitors this gateway may connect to, decided from the
//! retained facts every gateway reads on the broker, without any protocol of our own.
//!
//! Owns: the facts (gateways online, each gateway's latest two `hears` reports, the retained owner of each
//! monitor), the ownership rule, this gateway's own reports, and the hand-over: a gateway *takes* a
//! monitor only when the rule names it and the retained owner is nobody, itself, or a gateway that is
//! offline; it *lets go* when the rule names another gateway (or another online gateway announced
//! itself), and only after its link to the monitor closed does it clear the retained owner. So the next
//! owner connects only after the previous one disconnected, or after the previous one's last will: never
//! two centrals on one monitor. Must never: do I/O, read a clock, or let a device be connected to while
//! not held.
//!
//! The rule (the same on every gateway, from the same facts): the `[[device]] gateway` pin if that gateway
//! is online; else, among the online gateways whose latest report lists the monitor, the current owner,
//! unless another is better by at least [`HYSTERESIS_DB`] in its last two reports; else the best RSSI, ties
//! to the lowest gateway id.

use super::Scheduler;
use super::device::Phase;
use super::io::Action;
use crate::config::{Config, Mode};
use crate::mac::Mac;
use crate::messages::{ClusterFact, HeardMonitor, Notice};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How much better (dB) a challenger must be, in two consecutive reports, to take a monitor from its owner.
pub const HYSTERESIS_DB: i16 = 6;
/// After the broker connection comes up: time for the retained facts to arrive before taking anything.
pub const SETTLE: Duration = Duration::from_secs(2);
/// The first report goes out this long after the start (time to hear the monitors' advertisements).
pub const FIRST_REPORT: Duration = Duration::from_secs(5);
/// A newly heard monitor is reported early, at most this often.
pub const EARLY_REPORT_GAP: Duration = Duration::from_secs(5);
/// A monitor not heard for this many report intervals is no longer reported as heard.
pub const HEARD_REPORTS: u32 = 3;
/// Weight of a new advertisement's RSSI in the smoothed value (exponential moving average).
pub const RSSI_WEIGHT: f32 = 0.25;

/// A gateway's two latest reports: smoothed RSSI per monitor.
#[derive(Debug, Clone, Default)]
struct Reports {
    latest: BTreeMap<Mac, i16>,
    previous: Option<BTreeMap<Mac, i16>>,
}

impl Reports {
    fn push(&mut self, report: BTreeMap<Mac, i16>) {
        self.previous = Some(std::mem::replace(&mut self.latest, report));
    }
}

/// The cluster facts and this gateway's part in them. See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    me: String,
    every: Duration,
    /// The broker connection is up.
    broker_up: bool,
    /// Until then, the retained facts of a new broker connection may still be arriving: nothing is taken.
    settling_until: Option<Instant>,
    /// The other gateways online, since when (an offline one is dropped with its reports: back online, it
    /// reports afresh).
    online: BTreeMap<String, Instant>,
    others: BTreeMap<String, Reports>,
    mine: Reports,
    /// The retained `P/device/{mac}/owner` as last read (or as this gateway last set it).
    owners: BTreeMap<Mac, String>,
    next_report: Instant,
    last_report: Option<Instant>,
    /// A monitor heard that the latest own report does not list: report early.
    early: bool,
    /// Set by each step from [`Cluster::waiting_for_reports`]: nothing is taken before it.
    reports_due: Option<Instant>,
}

impl Cluster {
    /// `None` unless `[cluster] enabled`.
    pub fn new(config: &Config, now: Instant) -> Option<Cluster> {
        config.cluster.enabled.then(|| Cluster {
            me: config.gateway.id.clone(),
            every: Duration::from_secs(config.cluster.report_interval),
            broker_up: false,
            settling_until: None,
            online: BTreeMap::new(),
            others: BTreeMap::new(),
            mine: Reports::default(),
            owners: BTreeMap::new(),
            next_report: now
                + FIRST_REPORT.min(Duration::from_secs(config.cluster.report_interval)),
            last_report: None,
            early: false,
            reports_due: None,
        })
    }

    /// Take in one fact read from the broker. Facts about this gateway itself are its own echo: only the
    /// owner topic is taken from them (it confirms or contradicts what this gateway announced).
    pub fn fact(&mut self, fact: ClusterFact, now: Instant) {
        match fact {
            ClusterFact::Broker { connected } => {
                self.broker_up = connected;
                self.settling_until = connected.then_some(now + SETTLE);
            }
            ClusterFact::Availability { gateway, online } if gateway != self.me => {
                if online {
                    self.online.entry(gateway).or_insert(now);
                } else {
                    self.online.remove(&gateway);
                    self.others.remove(&gateway);
                }
            }
            ClusterFact::Hears { gateway, monitors } if gateway != self.me => {
                self.others
                    .entry(gateway)
                    .or_default()
                    .push(monitors.into_iter().collect());
            }
            ClusterFact::Owner { mac, gateway } => match gateway {
                Some(g) => {
                    self.owners.insert(mac, g);
                }
                None => {
                    self.owners.remove(&mac);
                }
            },
            ClusterFact::Availability { .. } | ClusterFact::Hears { .. } => {}
        }
    }

    /// Whether `gateway` is online: this one while its broker connection is up, the others by their
    /// retained availability (unknown = offline).
    fn is_online(&self, gateway: &str) -> bool {
        if gateway == self.me {
            self.broker_up
        } else {
            self.online.contains_key(gateway)
        }
    }

    fn reports(&self, gateway: &str) -> Option<&Reports> {
        if gateway == self.me {
            Some(&self.mine)
        } else {
            self.others.get(gateway)
        }
    }

    /// The gateway the rule names for `mac` (see the module documentation); `None` when no online gateway
    /// hears it.
    pub fn rightful<'a>(&'a self, mac: Mac, pin: Option<&'a str>) -> Option<&'a str> {
        if let Some(p) = pin.filter(|p| self.is_online(p)) {
            return Some(p);
        }
        let mut candidates: Vec<(&str, i16)> = std::iter::once(self.me.as_str())
            .chain(self.others.keys().map(String::as_str))
            .filter(|g| self.is_online(g))
            .filter_map(|g| Some((g, *self.reports(g)?.latest.get(&mac)?)))
            .collect();
        // Best RSSI first, ties to the lowest id.
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let (best, _) = *candidates.first()?;
        let current = self
            .owners
            .get(&mac)
            .and_then(|o| candidates.iter().find(|(g, _)| *g == o.as_str()));
        match current {
            Some((owner, _)) if *owner != best && !self.better_twice(best, owner, mac) => {
                Some(owner)
            }
            _ => Some(best),
        }
    }

    /// `challenger` heard `mac` at least [`HYSTERESIS_DB`] better than `owner` in its last two reports.
    fn better_twice(&self, challenger: &str, owner: &str, mac: Mac) -> bool {
        let (Some(c), Some(o)) = (self.reports(challenger), self.reports(owner)) else {
            return false;
        };
        let Some(&o_latest) = o.latest.get(&mac) else {
            return true;
        };
        let o_previous = o
            .previous
            .as_ref()
            .and_then(|p| p.get(&mac).copied())
            .unwrap_or(o_latest);
        let c_previous = c.previous.as_ref().and_then(|p| p.get(&mac).copied());
        c.latest
            .get(&mac)
            .is_some_and(|&l| l >= o_latest.saturating_add(HYSTERESIS_DB))
            && c_previous.is_some_and(|p| p >= o_previous.saturating_add(HYSTERESIS_DB))
    }

    /// Until then, an online gateway that has not reported yet may still hear better than this one: the
    /// rule is not applied to take anything (`None`: every online gateway has reported, or was given
    /// [`HEARD_REPORTS`] intervals to and did not).
    fn waiting_for_reports(&self, now: Instant) -> Option<Instant> {
        let mine = self.last_report.is_none().then_some(self.next_report);
        let others = self
            .online
            .iter()
            .filter(|(g, _)| !self.others.contains_key(*g))
            .map(|(_, since)| *since + self.every * HEARD_REPORTS)
            .filter(|t| *t > now);
        mine.into_iter().chain(others).min()
    }

    /// Whether this gateway may take a monitor now: connected long enough for the retained facts to have
    /// arrived, every online gateway reported, and the retained owner is nobody, this gateway, or a
    /// gateway that is offline.
    fn may_take(&self, mac: Mac) -> bool {
        self.broker_up
            && self.settling_until.is_none()
            && self.reports_due.is_none()
            && self
                .owners
                .get(&mac)
                .is_none_or(|o| *o == self.me || !self.is_online(o))
    }

    /// Another online gateway announced itself as the owner of `mac`.
    fn taken_by_other(&self, mac: Mac) -> bool {
        self.owners
            .get(&mac)
            .is_some_and(|o| *o != self.me && self.is_online(o))
    }

    /// The next instant something is due: a report, an early report, the end of settling. Each is
    /// cleared or moved on when it passes, so this is never in the past after a step.
    fn deadline(&self) -> Instant {
        let settle = self.settling_until.or(self.reports_due);
        let early = self.early.then(|| {
            self.last_report
                .map_or(self.next_report, |t| t + EARLY_REPORT_GAP)
        });
        [Some(self.next_report), settle, early]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_report)
    }
}

impl Scheduler {
    /// A fact read from the broker (with `[cluster]`); facts for a gateway without a cluster are ignored.
    pub fn cluster_fact(&mut self, fact: ClusterFact, now: Instant) {
        if self.cluster.is_none() {
            return;
        }
        if fact == (ClusterFact::Broker { connected: false }) {
            // The broker may publish our last will at any moment: others may take our monitors, so we let
            // go of them at once — without clearing the owner topic (see `cluster_step`): a clearing
            // delivered later would undo a newer owner's claim.
            let held: Vec<Mac> = self
                .devices
                .iter()
                .filter(|(_, d)| d.held)
                .map(|(m, _)| *m)
                .collect();
            for mac in held {
                self.let_go(mac);
            }
        }
        if let Some(c) = self.cluster.as_mut() {
            c.fact(fact, now);
        }
        self.tick(now);
    }

    /// The cluster's next deadline (reports, the end of a settling period).
    pub(super) fn cluster_deadline(&self) -> Option<Instant> {
        self.cluster.as_ref().map(Cluster::deadline)
    }

    /// A monitor's advertisement was heard with `rssi`: smooth it, and report early a monitor that the
    /// latest report does not list.
    pub(super) fn cluster_heard(&mut self, mac: Mac, rssi: i16) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        let r = f32::from(rssi);
        d.rssi_avg = Some(d.rssi_avg.map_or(r, |a| a + RSSI_WEIGHT * (r - a)));
        if let Some(c) = self.cluster.as_mut()
            && !c.early
            && !c.mine.latest.contains_key(&mac)
        {
            c.early = true;
            // An early report is a deadline sooner than the one kept between adverts.
            self.earliest = None;
        }
    }

    /// Report, then take and let go of monitors as the rule says.
    pub(super) fn cluster_step(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.settling_until.is_some_and(|t| now >= t) {
            c.settling_until = None;
        }
        // The first report waits for [`FIRST_REPORT`] (time to hear every monitor once); after it, a newly
        // heard monitor is reported early.
        let early_due = c.early && c.last_report.is_some_and(|t| now >= t + EARLY_REPORT_GAP);
        if now >= c.next_report || early_due {
            self.report(now);
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.reports_due = c.waiting_for_reports(now);
        let c = &*c;
        let pins: BTreeMap<Mac, Option<String>> = self
            .config
            .devices
            .iter()
            .map(|d| (d.mac, d.gateway.clone()))
            .collect();
        let mut take = Vec::new();
        let mut give = Vec::new();
        let mut reclaim = Vec::new();
        for (mac, d) in &self.devices {
            let pin = pins.get(mac).cloned().flatten();
            let mine = c.rightful(*mac, pin.as_deref()) == Some(c.me.as_str());
            if d.held && (!mine || c.taken_by_other(*mac)) {
                give.push(*mac);
            } else if !d.held && !d.releasing && mine && c.may_take(*mac) {
                take.push(*mac);
            } else if d.held && !c.owners.contains_key(mac) && c.broker_up {
                // Held, but the owner topic was cleared (a stale release of another gateway delivered
                // late): announce again, so that nobody else takes it.
                reclaim.push(*mac);
            }
        }
        for mac in reclaim {
            self.announce(mac);
        }
        for mac in give {
            self.let_go(mac);
        }
        for mac in take {
            self.take(mac, now);
        }
        let released: Vec<Mac> = self
            .devices
            .iter()
            .filter(|(_, d)| d.releasing && !d.holds_slot())
            .map(|(m, _)| *m)
            .collect();
        for mac in released {
            if let Some(d) = self.devices.get_mut(&mac) {
                d.releasing = false;
            }
            // Clear the owner topic only if it still names this gateway (a claim another gateway made
            // meanwhile must stand), and only while connected (a clearing queued while the broker is
            // away would be delivered after our last will handed the monitor over).
            let clear = self.cluster.as_mut().is_some_and(|c| {
                let mine = c.broker_up && c.owners.get(&mac) == Some(&c.me);
                if mine {
                    c.owners.remove(&mac);
                }
                mine
            });
            self.emit(Notice::Owner {
                mac,
                held: false,
                rssi: None,
                clear,
            });
        }
    }

    /// Publish what this gateway hears: monitors heard within [`HEARD_REPORTS`] intervals, and those it
    /// holds a link to (a connected monitor does not advertise).
    fn report(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let window = c.every * HEARD_REPORTS;
        let heard: Vec<HeardMonitor> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.holds_slot()
                    || d.last_heard
                        .is_some_and(|t| now.saturating_duration_since(t) < window)
            })
            .filter_map(|(mac, d)| {
                Some(HeardMonitor {
                    mac: *mac,
                    rssi: d.rssi_avg?.round() as i16,
                    seen: d.seen_at?,
                })
            })
            .collect();
        c.mine.push(
            heard
                .iter()
                .map(|h| (h.mac, h.rssi))
                .collect::<BTreeMap<_, _>>(),
        );
        c.last_report = Some(now);
        c.next_report = now + c.every;
        c.early = false;
        self.emit(Notice::Hears(heard));
    }

    /// Start holding `mac`: announce it and read it from now on.
    fn take(&mut self, mac: Mac, now: Instant) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        d.held = true;
        d.attempt = 0;
        d.last_emit = None;
        match d.mode {
            Mode::Poll => {
                d.phase = Phase::Idle;
                d.due = now;
            }
            Mode::Passive => {
                d.phase = Phase::Idle;
                d.due = now + d.interval * super::PASSIVE_SILENCE_INTERVALS;
            }
            Mode::Stream => d.phase = Phase::StreamClosed { at: now },
        }
        log::info!("cluster: taking {mac}");
        self.announce(mac);
    }

    /// Announce on the owner topic that this gateway holds `mac`.
    fn announce(&mut self, mac: Mac) {
        let Some(d) = self.devices.get(&mac) else {
            return;
        };
        let rssi = d.rssi_avg.map(|r| r.round() as i16);
        if let Some(c) = self.cluster.as_mut() {
            c.owners.insert(mac, c.me.clone());
        }
        self.emit(Notice::Owner {
            mac,
            held: true,
            rssi,
            clear: false,
        });
    }

    /// Stop holding `mac`: nothing new starts; an open stream is closed; the release is announced once no
    /// link to it remains (a poll in flight ends first).
    fn let_go(&mut self, mac: Mac) {
        let Some(d) = self.devices.get_mut(&mac) else {
            return;
        };
        log::info!("cluster: letting go of {mac}");
        d.held = false;
        d.releasing = true;
        d.pending = None;
        match (&d.phase, d.mode) {
            (Phase::Connected, Mode::Stream) => {
                d.phase = Phase::Idle;
                d.history_running = false;
                self.out.push(Action::CloseStream { mac });
            }
            (Phase::Connected, _) => {}
            _ => d.phase = Phase::Idle,
        }
    }

    /// Devices this gateway holds now (tests).
    #[cfg(test)]
    pub fn held(&self) -> std::collections::BTreeSet<Mac> {
        self.devices
            .iter()
            .filter(|(_, d)| d.held)
            .map(|(m, _)| *m)
            .collect()
    }
}
