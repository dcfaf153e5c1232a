//! What `battery-hawk history` prints or draws from a downloaded log: a text table, CSV, and an SVG graph
//! of voltage and state of charge over time (plotters, SVG backend only). The JSON report lives with the
//! other JSON in `mqtt::history`. Pure: records in, text out; the caller writes files.

use crate::devices::history::{History, Record};
use crate::devices::to_hex;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use plotters::prelude::*;
use std::fmt::Write;

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.decimals$}"))
}

/// CSV with a header, one line per slot, oldest first: `index,timestamp,voltage,state_of_charge,
/// temperature,flags,raw_data,skipped` (values empty for a slot that is not a reading).
pub fn csv(h: &History) -> String {
    let mut out = String::from(
        "index,timestamp,voltage,state_of_charge,temperature,flags,raw_data,skipped\n",
    );
    for r in &h.records {
        let s = r.value.ok();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            r.index,
            time(r.timestamp),
            opt(s.map(|s| s.voltage), 2),
            opt(s.and_then(|s| s.state_of_charge), 0),
            opt(s.and_then(|s| s.temperature), 0),
            s.map_or(String::new(), |s| s.flags.to_string()),
            to_hex(&r.raw),
            r.value.err().map_or(String::new(), |e| e.to_string()),
        );
    }
    out
}

/// A table for people, oldest first.
pub fn text(h: &History) -> String {
    let mut out = String::from("TIME                  VOLTAGE   SOC  TEMP  FLAGS\n");
    for r in &h.records {
        let line = match r.value {
            Ok(s) => format!(
                "{:<20}  {:>5.2} V  {:>4}  {:>4}  {}",
                time(r.timestamp),
                s.voltage,
                s.state_of_charge.map_or("-".into(), |v| format!("{v:.0}%")),
                s.temperature.map_or("-".into(), |v| format!("{v:.0}°")),
                s.flags
            ),
            Err(e) => format!("{:<20}  ({e}: {})", time(r.timestamp), to_hex(&r.raw)),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Why no graph could be drawn.
#[derive(Debug)]
pub enum PlotError {
    /// No slot of the log is a reading.
    NothingToDraw,
    /// The plotting library refused (its message).
    Plot(String),
}

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlotError::NothingToDraw => f.write_str("the log holds no readings to draw"),
            PlotError::Plot(why) => write!(f, "cannot draw the graph: {why}"),
        }
    }
}

impl std::error::Error for PlotError {}

/// An SVG document (1000 × 500 px) of voltage (left axis, V) and, where the model logs it, state of
/// charge (right axis, %) over time; `title` goes on top.
pub fn svg(h: &History, title: &str) -> Result<String, PlotError> {
    let points: Vec<(&Record, f64, Option<f64>)> = h
        .records
        .iter()
        .filter_map(|r| r.value.ok().map(|s| (r, s.voltage, s.state_of_charge)))
        .collect();
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Err(PlotError::NothingToDraw);
    };
    let (mut from, mut to) = (first.0.timestamp, last.0.timestamp);
    if from == to {
        from -= Duration::minutes(2);
        to += Duration::minutes(2);
    }
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let pad = ((hi - lo) * 0.1).max(0.1);
    let (lo, hi) = (lo - pad, hi + pad);
    let span = to - from;
    let format = if span > Duration::days(2) {
        "%m-%d %H:%M"
    } else {
        "%d %H:%M"
    };
    let has_soc = points.iter().any(|p| p.2.is_some());
    let err = |e: &dyn std::fmt::Display| PlotError::Plot(e.to_string());
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .right_y_label_area_size(if has_soc { 60 } else { 0 })
            .build_cartesian_2d(from..to, lo..hi)
            .map_err(|e| err(&e))?
            .set_secondary_coord(from..to, 0f64..100f64);
        chart
            .configure_mesh()
            .x_labels(8)
            .x_label_formatter(&|t| t.format(format).to_string())
            .x_desc("time (UTC, ±2 min)")
            .y_desc("voltage (V)")
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .map_err(|e| err(&e))?;
        let voltage = points.iter().map(|p| (p.0.timestamp, p.1));
        chart
            .draw_series(LineSeries::new(voltage, BLUE.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("voltage (V)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        if has_soc {
            chart
                .configure_secondary_axes()
                .y_desc("state of charge (%)")
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|e| err(&e))?;
            let soc = points
                .iter()
                .filter_map(|p| p.2.map(|s| (p.0.timestamp, s)));
            chart
                .draw_secondary_series(LineSeries::new(soc, RED.mix(0.7)))
                .map_err(|e| err(&e))?
                .label("state of charge (%)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.7)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::history::{Sample, Skip, timestamp};
    use chrono::TimeZone;

    fn history(n: u32) -> History {
        let t = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
        let records = (0..n)
            .rev()
            .map(|k| Record {
                index: k,
                timestamp: timestamp(t, k),
                raw: [0, 0, 0, k as u8],
                value: if k == 3 {
                    Err(Skip::Zero)
                } else {
                    Ok(Sample {
                        voltage: 12.0 + f64::from(k % 50) / 100.0,
                        state_of_charge: Some(f64::from(50 + k % 40)),
                        temperature: Some(20.0),
                        flags: 0,
                    })
                },
            })
            .collect();
        History {
            model: "BM6",
            requested_at: t,
            records,
            log_end: true,
            shifts: 0,
            pages: vec![],
        }
    }

    #[test]
    fn csv_has_a_line_per_slot_oldest_first() {
        let c = csv(&history(5));
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[1], "4,2026-11-29T11:52:00Z,12.04,54,20,0,00000004,");
        assert_eq!(lines[2], "3,2026-11-29T11:54:00Z,,,,,00000003,zero record");
        assert!(text(&history(5)).contains("zero record"));
    }

    #[test]
    fn svg_is_a_document_with_both_curves() {
        let s = svg(&history(2160), "BM6 38:3B:26:B5:30:AB").unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("voltage (V)") && s.contains("state of charge (%)"));
        assert!(s.matches("<polyline").count() >= 2);
        assert!(svg(&history(1), "one").is_ok());
        let mut empty = history(0);
        empty.records.clear();
        assert!(matches!(svg(&empty, "x"), Err(PlotError::NothingToDraw)));
    }
}
