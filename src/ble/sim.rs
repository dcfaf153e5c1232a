//! Simulated monitors (`bluetooth.backend = "simulated"`): every `[[device]]` is played by a monitor of its
//! model that encrypts its frames with the model's key, exactly as the hardware does, so decoding,
//! aggregation and publishing downstream run for real.
//!
//! Values drift slowly and plausibly (a random walk of voltage; SoC follows voltage; temperature wanders).
//! Every `simulation.interval_ms` each device produces one frame — a GATT reply for `poll`/`stream`, an
//! advertisement for `passive` — or, with probability `simulation.failure_rate`, a poll timeout (1001).
//! A device without `type` is played as a BM6.

use super::Command;
use crate::config::{Config, DeviceConf, Mode};
use crate::devices::{self, Measurement, Model, Source};
use crate::mac::Mac;
use crate::messages::{BleEvent, LinkError, Notice, RawFrame, Sighting};
use chrono::Utc;
use crossbeam_channel::Sender;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

/// Model a device without `type` is played as.
const DEFAULT_MODEL: &str = "BM6";

struct Monitor {
    model: Model,
    mode: Mode,
    name: Option<String>,
    rng: fastrand::Rng,
    state: Measurement,
}

impl Monitor {
    fn new(d: &DeviceConf, default_mode: Mode) -> Monitor {
        let model = d
            .model()
            .or_else(|| Model::by_name(DEFAULT_MODEL))
            .unwrap_or(Model(devices::ALL[0]));
        let seed = d
            .mac
            .0
            .iter()
            .fold(0u64, |a, b| a.wrapping_mul(257).wrapping_add(u64::from(*b)));
        let mut rng = fastrand::Rng::with_seed(seed);
        let voltage = 12.3 + rng.f64() * 0.6;
        let mut m = Monitor {
            model,
            mode: d.mode.unwrap_or(default_mode),
            name: d.name.clone(),
            state: Measurement {
                voltage: Some(voltage),
                temperature: model
                    .measures_temperature()
                    .then(|| 15.0 + rng.f64() * 10.0),
                ..Measurement::default()
            },
            rng,
        };
        m.settle();
        m
    }

    /// One step of the random walk.
    fn drift(&mut self) {
        let s = &mut self.state;
        let step = (self.rng.f64() - 0.5) * 0.02;
        s.voltage = s.voltage.map(|v| (v + step).clamp(11.6, 13.6));
        if let Some(t) = s.temperature.as_mut() {
            *t = (*t + (self.rng.f64() - 0.5) * 0.4).clamp(-10.0, 40.0);
        }
        if self.rng.f64() < 0.01 {
            let which = if self.rng.bool() { 0 } else { 1 };
            if let Some(c) = s.counters.get_mut(which) {
                c.1 += 1;
            }
        }
        self.settle();
    }

    /// Derive SoC, state and counters from the voltage, as the monitor would.
    fn settle(&mut self) {
        let s = &mut self.state;
        let v = (s.voltage.unwrap_or(12.6) * 100.0).round() / 100.0;
        s.voltage = Some(v);
        s.temperature = s.temperature.map(f64::round);
        s.state_of_charge = Some(((v - 11.8) / 1.0 * 100.0).clamp(0.0, 100.0).round());
        s.state = Some(if v > 13.2 { "charging" } else { "not_charging" }.to_string());
        if s.counters.is_empty() {
            s.counters = vec![("rapid_acceleration", 0), ("rapid_deceleration", 0)];
        }
    }

    /// The encrypted frame the monitor sends now, and where it comes from.
    fn frame(&self, mac: Mac) -> Option<(Source, [u8; 16])> {
        let plain = if self.mode == Mode::Passive {
            (
                Source::Advertisement,
                self.model.encode_advert(&self.state, mac)?,
            )
        } else {
            (Source::Gatt, self.model.encode_gatt(&self.state))
        };
        Some((plain.0, devices::encrypt_frame(self.model, &plain.1)))
    }

    fn rssi(&mut self) -> i16 {
        -55 - self.rng.i16(0..30)
    }

    /// What a scan would report for this monitor.
    fn sighting(&mut self, mac: Mac) -> Sighting {
        let mut manufacturer_data = Vec::new();
        let soc = self.state.state_of_charge.unwrap_or(0.0) as u8;
        if let Some(beacon) = devices::ibeacon_payload(self.model, soc) {
            manufacturer_data.push((devices::APPLE, beacon));
        }
        if let Some(plain) = self.model.encode_advert(&self.state, mac) {
            let f = devices::encrypt_frame(self.model, &plain);
            manufacturer_data.push((u16::from_le_bytes([f[0], f[1]]), f[2..].to_vec()));
        }
        Sighting {
            mac,
            name: Some(
                self.name
                    .clone()
                    .unwrap_or_else(|| self.model.advertised_names()[0].to_string()),
            ),
            model: Some(self.model),
            rssi: Some(self.rssi()),
            service_uuids: vec![devices::SERVICE_UUID.to_string()],
            manufacturer_data,
            at: Utc::now(),
        }
    }
}

fn monitors(config: &Config, keep: &mut BTreeMap<Mac, Monitor>) -> BTreeMap<Mac, Monitor> {
    config
        .devices
        .iter()
        .map(|d| {
            let fresh = Monitor::new(d, config.defaults.mode);
            let m = match keep.remove(&d.mac) {
                Some(old) if old.model == fresh.model => Monitor {
                    mode: fresh.mode,
                    name: fresh.name,
                    ..old
                },
                _ => fresh,
            };
            (d.mac, m)
        })
        .collect()
}

/// Shortest time slot the monitors are spread over.
const MIN_SLOT_MS: u64 = 10;

/// The tick and the number of slots that spread `monitors` evenly over `interval_ms`, as real monitors,
/// polled one after the other, are (all at once would be a burst no real fleet makes): monitor `i` is
/// produced in slot `i % slots`, slots are at least [`MIN_SLOT_MS`] long.
fn schedule(interval_ms: u64, monitors: usize) -> (tokio::time::Interval, usize) {
    let slots = slots(interval_ms, monitors);
    let mut tick = tokio::time::interval(Duration::from_micros(interval_ms * 1000 / slots));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    (tick, slots as usize)
}

fn slots(interval_ms: u64, monitors: usize) -> u64 {
    (interval_ms / MIN_SLOT_MS).clamp(1, monitors.max(1) as u64)
}

/// Play the configured monitors until told to stop.
pub(super) async fn run(
    config: Arc<Config>,
    tx: Sender<BleEvent>,
    mut commands: Receiver<Command>,
) {
    let mut config = config;
    let mut fleet = monitors(&config, &mut BTreeMap::new());
    let send = |e: BleEvent| tx.send(e).is_ok();
    for (mac, m) in fleet.iter_mut() {
        if !send(BleEvent::Notice(Notice::Seen(m.sighting(*mac)))) {
            return;
        }
    }
    let (mut tick, mut slots) = schedule(config.simulation.interval_ms, fleet.len());
    let mut slot = 0;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Reconfigure(new)) => {
                    let before = (config.simulation.interval_ms, fleet.len());
                    config = new;
                    let mut old = std::mem::take(&mut fleet);
                    fleet = monitors(&config, &mut old);
                    if (config.simulation.interval_ms, fleet.len()) != before {
                        (tick, slots) = schedule(config.simulation.interval_ms, fleet.len());
                        slot = 0;
                    }
                    if !send(BleEvent::Notice(Notice::Reconfigure(Arc::clone(&config)))) {
                        return;
                    }
                    for (mac, m) in fleet.iter_mut() {
                        send(BleEvent::Notice(Notice::Seen(m.sighting(*mac))));
                    }
                }
                Some(Command::Stop { reason }) => {
                    send(BleEvent::Notice(Notice::Stopping { reason }));
                    return;
                }
                None => return,
            },
            _ = tick.tick() => {
                for (mac, m) in fleet.iter_mut().skip(slot).step_by(slots) {
                    if !send(produce(*mac, m, config.simulation.failure_rate)) {
                        return;
                    }
                }
                slot = (slot + 1) % slots;
            }
        }
    }
}

/// One poll of one simulated monitor.
fn produce(mac: Mac, m: &mut Monitor, failure_rate: f64) -> BleEvent {
    m.drift();
    if m.rng.f64() < failure_rate {
        return BleEvent::Notice(Notice::PollFailed {
            mac,
            model: Some(m.model),
            error: LinkError::Timeout,
        });
    }
    match m.frame(mac) {
        Some((source, data)) => BleEvent::Frame(RawFrame {
            mac,
            model: m.model,
            source,
            data: data.to_vec(),
            rssi: Some(m.rssi()),
            received_at: Utc::now(),
        }),
        None => BleEvent::Notice(Notice::PollFailed {
            mac,
            model: Some(m.model),
            error: LinkError::NoData,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::messages::FleetEvent;

    #[test]
    fn monitors_are_spread_over_the_interval() {
        assert_eq!(
            slots(1000, 200),
            100,
            "200 monitors per second: 2 every 10 ms"
        );
        assert_eq!(slots(1000, 3), 3);
        assert_eq!(slots(300_000, 10), 10);
        assert_eq!(slots(10, 1000), 1, "no slot shorter than 10 ms");
        assert_eq!(slots(5, 0), 1);
    }

    fn device(mac: &str, model: &str, mode: Mode) -> DeviceConf {
        DeviceConf {
            mac: mac.parse().unwrap(),
            device_type: Some(model.into()),
            name: None,
            vehicle: None,
            capacity_ah: None,
            poll_interval: None,
            mode: Some(mode),
        }
    }

    #[test]
    fn every_model_and_mode_decodes_through_the_real_decoder() {
        for (model, mode) in [
            ("BM2", Mode::Poll),
            ("BM6", Mode::Poll),
            ("BM7", Mode::Stream),
            ("BM2", Mode::Passive),
            ("BM6", Mode::Passive),
        ] {
            let d = device("11:22:33:44:55:66", model, mode);
            let mut m = Monitor::new(&d, Mode::Poll);
            for _ in 0..200 {
                let BleEvent::Frame(frame) = produce(d.mac, &mut m, 0.0) else {
                    panic!("no frame");
                };
                let Some(FleetEvent::Reading(r)) = decode(frame).events.pop() else {
                    panic!("{model} {mode:?} frame did not decode");
                };
                assert!((11.5..=13.7).contains(&r.measurement.voltage.unwrap()));
                assert_eq!(r.model.name(), model);
            }
        }
    }

    #[test]
    fn failure_rate_one_always_times_out() {
        let d = device("11:22:33:44:55:66", "BM6", Mode::Poll);
        let mut m = Monitor::new(&d, Mode::Poll);
        let e = produce(d.mac, &mut m, 1.0);
        assert!(matches!(
            e,
            BleEvent::Notice(Notice::PollFailed {
                error: LinkError::Timeout,
                ..
            })
        ));
    }

    #[test]
    fn sighting_advert_identifies_the_model() {
        for model in ["BM2", "BM6"] {
            let d = device("38:3B:26:B5:30:AB", model, Mode::Poll);
            let mut m = Monitor::new(&d, Mode::Poll);
            let s = m.sighting(d.mac);
            let (cid, rest) = s.manufacturer_data.iter().find(|(c, _)| *c != 76).unwrap();
            let mut frame = cid.to_le_bytes().to_vec();
            frame.extend(rest);
            assert_eq!(
                devices::identify_by_advert(d.mac, &frame).unwrap().name(),
                model
            );
        }
    }
}
