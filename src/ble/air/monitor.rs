//! One simulated monitor's values: a slow, plausible random walk of voltage (SoC follows it, temperature
//! wanders), encoded and encrypted exactly as the model's hardware does (SPEC §5), so that everything
//! downstream of the radio runs for real. A device without `type` is played as a BM6.

use crate::config::DeviceConf;
use crate::devices::history::simulate;
use crate::devices::{self, Measurement, Model};
use crate::mac::Mac;

/// Model a device without `type` is played as.
const DEFAULT_MODEL: &str = "BM6";

pub(super) struct Monitor {
    pub model: Model,
    pub rng: fastrand::Rng,
    state: Measurement,
}

impl Monitor {
    pub fn new(d: &DeviceConf) -> Monitor {
        let model = d
            .model()
            .or_else(|| Model::by_name(DEFAULT_MODEL))
            .unwrap_or(Model(devices::ALL[0]));
        let mut rng = fastrand::Rng::with_seed(simulate::seed(d.mac));
        let voltage = 12.3 + rng.f64() * 0.6;
        let mut m = Monitor {
            model,
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
    pub fn drift(&mut self) {
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
        let state = if v > 13.2 { "charging" } else { "not_charging" };
        if s.state.as_deref() != Some(state) {
            s.state = Some(state.to_string());
        }
        if s.counters.is_empty() {
            s.counters = vec![("rapid_acceleration", 0), ("rapid_deceleration", 0)];
        }
    }

    /// The encrypted GATT reply to a request (or a stream notification).
    pub fn gatt_frame(&self) -> [u8; 16] {
        devices::encrypt_frame(self.model, &self.model.encode_gatt(&self.state))
    }

    /// The encrypted advertisement frame, if the model broadcasts readings.
    pub fn advert_frame(&self, mac: Mac) -> Option<[u8; 16]> {
        let plain = self.model.encode_advert(&self.state, mac)?;
        Some(devices::encrypt_frame(self.model, &plain))
    }

    /// The iBeacon manufacturer value (company 76) carrying the SoC, if the model broadcasts one.
    pub fn ibeacon(&self) -> Option<Vec<u8>> {
        let soc = self
            .state
            .state_of_charge
            .unwrap_or(0.0)
            .round()
            .clamp(0.0, 100.0) as u8;
        devices::ibeacon_payload(self.model, soc)
    }

    /// The name the model advertises.
    pub fn advertised_name(&self) -> &'static str {
        self.model.advertised_names()[0]
    }
}
