//! Vehicle summaries and health (SPEC §2.3): pure functions of the devices' latest state.

use crate::messages::{SummaryDevice, SummaryOut};
use chrono::{DateTime, Utc};

/// Round to 2 decimals (SPEC §2: floats are rounded to 2 decimals).
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A device's contribution to the health score: 0 when unreachable or without a reading (neither a
/// voltage nor a SoC: an iBeacon reading has only the SoC), else SoC/100, or 1.0 when the model reports
/// no SoC.
fn device_score(d: &SummaryDevice) -> f64 {
    if !d.connected || (d.voltage.is_none() && d.state_of_charge.is_none()) {
        return 0.0;
    }
    d.state_of_charge.map_or(1.0, |s| s / 100.0)
}

/// `excellent` ≥ 0.8, `good` ≥ 0.6, `fair` ≥ 0.4, else `poor`.
pub fn health_label(score: f64) -> &'static str {
    match score {
        s if s >= 0.8 => "excellent",
        s if s >= 0.6 => "good",
        s if s >= 0.4 => "fair",
        _ => "poor",
    }
}

/// Build the summary of one vehicle. Health and score are `None` (published as `null`) when no verdict
/// can be given: the vehicle has no devices, or one of them is still pending (not tried in this run), so
/// that a gateway start does not publish a false `poor` before the first readings.
pub fn summarize(
    vehicle_id: &str,
    name: &str,
    devices: Vec<SummaryDevice>,
    total_capacity: f64,
    at: DateTime<Utc>,
) -> SummaryOut {
    let voltages: Vec<f64> = devices.iter().filter_map(|d| d.voltage).collect();
    let average_voltage = (!voltages.is_empty())
        .then(|| round2(voltages.iter().sum::<f64>() / voltages.len() as f64));
    let score = (!devices.is_empty() && !devices.iter().any(|d| d.pending))
        .then(|| round2(devices.iter().map(device_score).sum::<f64>() / devices.len() as f64));
    SummaryOut {
        vehicle_id: vehicle_id.to_string(),
        name: name.to_string(),
        at,
        total_devices: devices.len(),
        connected_devices: devices.iter().filter(|d| d.connected).count(),
        average_voltage,
        total_capacity: round2(total_capacity),
        overall_health: score.map(health_label),
        health_score: score,
        devices,
    }
}

/// Whether two summaries differ in anything but their timestamps (SPEC §2.3 caching rule).
pub fn content_differs(a: &SummaryOut, b: &SummaryOut) -> bool {
    let strip = |s: &SummaryOut| {
        let mut s = s.clone();
        s.at = DateTime::<Utc>::MIN_UTC;
        for d in &mut s.devices {
            d.last_reading = None;
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8, connected: bool, voltage: Option<f64>, soc: Option<f64>) -> SummaryDevice {
        SummaryDevice {
            mac: crate::mac::Mac([0, 0, 0, 0, 0, n]),
            name: format!("d{n}"),
            model: None,
            connected,
            voltage,
            state_of_charge: soc,
            temperature: None,
            last_reading: Some(Utc::now()),
            pending: false,
        }
    }

    #[test]
    fn spec_example_shape() {
        let s = summarize(
            "my_vehicle",
            "My Vehicle",
            vec![
                dev(1, true, Some(12.6), Some(85.0)),
                dev(2, true, Some(12.2), Some(50.0)),
                dev(3, false, None, None),
            ],
            300.0,
            Utc::now(),
        );
        assert_eq!(s.total_devices, 3);
        assert_eq!(s.connected_devices, 2);
        assert_eq!(s.average_voltage, Some(12.4));
        assert_eq!(s.health_score, Some(0.45));
        assert_eq!(s.overall_health, Some("fair"));
    }

    #[test]
    fn no_soc_counts_as_full_and_unreachable_as_zero() {
        let s = summarize(
            "v",
            "v",
            vec![dev(1, true, Some(12.0), None)],
            0.0,
            Utc::now(),
        );
        assert_eq!(
            (s.health_score, s.overall_health),
            (Some(1.0), Some("excellent"))
        );
        let s = summarize(
            "v",
            "v",
            vec![dev(1, false, Some(12.0), Some(90.0))],
            0.0,
            Utc::now(),
        );
        assert_eq!(
            (s.health_score, s.overall_health),
            (Some(0.0), Some("poor"))
        );
    }

    #[test]
    fn an_ibeacon_reading_counts_its_soc_but_not_in_the_average_voltage() {
        let s = summarize(
            "v",
            "v",
            vec![
                dev(1, true, Some(12.6), Some(80.0)),
                dev(2, true, None, Some(60.0)),
            ],
            0.0,
            Utc::now(),
        );
        assert_eq!(s.average_voltage, Some(12.6));
        assert_eq!(
            (s.health_score, s.overall_health),
            (Some(0.7), Some("good"))
        );
        let s = summarize(
            "v",
            "v",
            vec![dev(1, true, None, Some(60.0))],
            0.0,
            Utc::now(),
        );
        assert_eq!((s.average_voltage, s.health_score), (None, Some(0.6)));
    }

    #[test]
    fn thresholds_and_empty_vehicle() {
        assert_eq!(health_label(0.8), "excellent");
        assert_eq!(health_label(0.79), "good");
        assert_eq!(health_label(0.6), "good");
        assert_eq!(health_label(0.4), "fair");
        assert_eq!(health_label(0.39), "poor");
        let s = summarize("v", "v", vec![], 0.0, Utc::now());
        assert_eq!(
            (s.overall_health, s.health_score, s.average_voltage),
            (None, None, None)
        );
    }

    #[test]
    fn no_verdict_while_a_device_is_pending() {
        let mut waiting = dev(2, false, None, None);
        waiting.pending = true;
        let s = summarize(
            "v",
            "v",
            vec![dev(1, true, Some(12.6), Some(90.0)), waiting.clone()],
            0.0,
            Utc::now(),
        );
        assert_eq!((s.overall_health, s.health_score), (None, None));
        assert_eq!(
            s.average_voltage,
            Some(12.6),
            "what is known is still shown"
        );
        waiting.pending = false;
        let s = summarize(
            "v",
            "v",
            vec![dev(1, true, Some(12.6), Some(90.0)), waiting],
            0.0,
            Utc::now(),
        );
        assert_eq!(
            (s.overall_health, s.health_score),
            (Some("fair"), Some(0.45)),
            "a failed first attempt scores 0"
        );
    }

    #[test]
    fn timestamps_alone_are_no_change() {
        let a = summarize(
            "v",
            "v",
            vec![dev(1, true, Some(12.0), None)],
            0.0,
            Utc::now(),
        );
        let mut b = a.clone();
        b.at = Utc::now() + chrono::Duration::seconds(5);
        b.devices[0].last_reading = None;
        assert!(!content_differs(&a, &b));
        b.devices[0].voltage = Some(12.1);
        assert!(content_differs(&a, &b));
    }
}
