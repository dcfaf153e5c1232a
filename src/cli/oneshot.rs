//! The one-shot commands: `scan`, `read`, `decode`, `history` and `check-config` — each does one thing
//! through the library (BLE, decoders, renderers) and prints it. Must never: start the pipeline.

use crate::{load, load_or_default, model_arg, quiet_logging};
use anyhow::{Context, Result, anyhow, bail};
use battery_hawk::config::{self, Config};
use battery_hawk::devices::{self, Decoded, Model, Source};
use battery_hawk::mac::Mac;
use battery_hawk::messages::{DecodedReading, FleetEvent, ReadingOut};
use battery_hawk::mqtt::payload::Renderer;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub(crate) fn decode(
    model: &str,
    advertisement: bool,
    mac: Option<&str>,
    hex: &str,
) -> Result<ExitCode> {
    let model = Model::by_name(model).ok_or_else(|| {
        anyhow!(
            "--type {model}: not a supported model ({})",
            Model::all_names()
        )
    })?;
    let data = devices::parse_hex(hex).map_err(|e| anyhow!(e))?;
    let mac: Mac = match mac {
        Some(m) => m.parse().map_err(|e| anyhow!("--mac: {e}"))?,
        None => Mac([0; 6]),
    };
    let source = if advertisement {
        Source::Advertisement
    } else {
        Source::Gatt
    };
    let (plain, decoded) = devices::decode_frame(model, source, mac, &data)
        .map_err(|e| anyhow!("{model} frame {hex}: {e}"))?;
    let measurement = match decoded {
        Decoded::Reading(m) => m,
        Decoded::NotReading(kind) => bail!(
            "{model} frame {}: a {} frame, not a reading",
            devices::to_hex(&plain),
            kind.as_str()
        ),
    };
    let gateway = Config::default().gateway.id;
    let renderer = Renderer::new("battery_hawk", &gateway, 1);
    let message = renderer.reading(&ReadingOut {
        reading: DecodedReading {
            mac,
            model,
            source,
            measurement,
            plain,
            rssi: None,
            received_at: chrono::Utc::now(),
        },
        vehicle_id: None,
        capacity_ah: None,
    });
    println!("{}", String::from_utf8_lossy(&message.payload));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn scan(
    path: &Path,
    adapter: Option<String>,
    duration: Duration,
    json: bool,
) -> Result<ExitCode> {
    let config = load_or_default(path)?;
    quiet_logging(&config)?;
    let adapter = adapter.unwrap_or(config.bluetooth.adapter);
    let found = battery_hawk::ble::scan(&adapter, duration)?;
    let rows: Vec<_> = found
        .into_iter()
        .map(|s| {
            let m = s.model.and_then(|model| {
                let frame = devices::advert_reading(model, s.mac, &s.manufacturer_data)?;
                match devices::decode_frame(model, Source::Advertisement, s.mac, &frame) {
                    Ok((_, Decoded::Reading(m))) => Some(m),
                    _ => None,
                }
            });
            (s, m)
        })
        .collect();
    if json {
        println!(
            "{}",
            Renderer::new("battery_hawk", "", 1).scan_listing(&rows)
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<17}  {:<5}  {:<11}  {:>4}  {:>7}  {:>4}  NAME",
        "ADDRESS", "MODEL", "IDENTIFIED", "RSSI", "VOLTAGE", "SOC"
    );
    for (s, m) in &rows {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!(
            "{:<17}  {:<5}  {:<11}  {:>4}  {:>7}  {:>4}  {}",
            s.mac,
            s.model.map_or("?", |m| m.name()),
            if s.confirmed {
                "confirmed"
            } else {
                "unconfirmed"
            },
            opt(s.rssi.map(|r| r.to_string())),
            opt(m
                .as_ref()
                .and_then(|m| m.voltage)
                .map(|v| format!("{v:.2} V"))),
            opt(m
                .as_ref()
                .and_then(|m| m.state_of_charge)
                .map(|s| format!("{s:.0}%"))),
            s.name.as_deref().unwrap_or("")
        );
    }
    eprintln!(
        "{} monitor(s) found in {} s (unconfirmed: only the name and service suggest the model; a \
         successful `read` confirms it)",
        rows.len(),
        duration.as_secs()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn read(
    path: &Path,
    mac: &str,
    device_type: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let config = load_or_default(path)?;
    quiet_logging(&config)?;
    let mac: Mac = mac.parse().map_err(|e| anyhow!("{e}"))?;
    let model = model_arg(device_type)?.or_else(|| {
        config
            .devices
            .iter()
            .find(|d| d.mac == mac)
            .and_then(|d| d.model())
    });
    let frame = battery_hawk::ble::read(&config, mac, model)
        .map_err(|e| anyhow!("{mac}: error {}: {}", e.code(), e.message()))?;
    let reading = battery_hawk::decode::decode(frame)
        .events
        .into_iter()
        .find_map(|e| match e {
            FleetEvent::Reading(r) => Some(r),
            _ => None,
        });
    let Some(reading) = reading else {
        bail!("{mac}: error 1005: the monitor's frame did not decode");
    };
    if json {
        let renderer = Renderer::new("battery_hawk", &config.gateway.id, 1);
        let message = renderer.reading(&ReadingOut {
            reading,
            vehicle_id: None,
            capacity_ah: None,
        });
        println!("{}", String::from_utf8_lossy(&message.payload));
    } else {
        let m = &reading.measurement;
        let mut parts: Vec<String> = m.voltage.map(|v| format!("{v:.2} V")).into_iter().collect();
        parts.extend(m.state_of_charge.map(|s| format!("{s:.0} %")));
        parts.extend(m.temperature.map(|t| format!("{t:.0} °C")));
        parts.extend(m.state.clone());
        println!("{} {mac}: {}", reading.model, parts.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `battery-hawk history`: download once, print (text, CSV or JSON) and optionally draw; exit code 1 when
/// the read stopped early (what was read is still printed).
pub(crate) fn history(
    path: &Path,
    mac: &str,
    device_type: Option<&str>,
    days: Option<u32>,
    (csv, json): (bool, bool),
    svg: Option<&Path>,
) -> Result<ExitCode> {
    use battery_hawk::devices::history::records_for;
    use battery_hawk::mqtt::history::{LinkFacts, report};
    let config = load_or_default(path)?;
    quiet_logging(&config)?;
    let mac: Mac = mac.parse().map_err(|e| anyhow!("{e}"))?;
    let days = days.unwrap_or(config.history.initial_days);
    let max = config::History::MAX_DAYS;
    if !(1..=max).contains(&days) {
        bail!("--days {days}: allowed 1 to {max}");
    }
    let model = model_arg(device_type)?.or_else(|| {
        config
            .devices
            .iter()
            .find(|d| d.mac == mac)
            .and_then(|d| d.model())
    });
    let want = records_for(u64::from(days) * 86_400);
    let d = battery_hawk::ble::history(&config, mac, model, want, json)
        .map_err(|e| anyhow!("{mac}: error {}: {}", e.code(), e.message()))?;
    if !config.history.covers(d.model) {
        eprintln!(
            "note: {} history is not enabled in the configuration (history.models){}",
            d.model,
            if d.model.name() == "BM6" {
                ""
            } else {
                "; it is unverified on real units: check the records below against the live reading"
            }
        );
    }
    let h = &d.history;
    if json {
        let link = LinkFacts {
            mtu: d.mtu,
            read_time: d.read_time,
            link_held: d.link_held,
            failure: d.failure.clone(),
        };
        println!("{}", report(mac, h, &link));
    } else if csv {
        print!("{}", battery_hawk::history_report::csv(h));
    } else {
        print!("{}", battery_hawk::history_report::text(h));
    }
    if let Some(file) = svg {
        let title = format!("{} {mac}", d.model);
        let doc = battery_hawk::history_report::svg(h, &title)?;
        std::fs::write(file, doc).with_context(|| format!("writing {}", file.display()))?;
    }
    let secs = d.read_time.as_secs_f64();
    eprintln!(
        "{} {mac}: {} records in {:.2} s ({:.0} records/s), link held {:.2} s{}",
        d.model,
        h.records.len(),
        secs,
        if secs > 0.0 {
            h.records.len() as f64 / secs
        } else {
            0.0
        },
        d.link_held.as_secs_f64(),
        if h.log_end { ", whole log" } else { "" }
    );
    if let Some(why) = &d.failure {
        eprintln!("battery-hawk: {mac}: the read stopped early: {why}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn check_config(path: &Path) -> Result<ExitCode> {
    let config = load(path)?;
    print!("{}", config.to_redacted_toml());
    eprintln!("{}: configuration is valid", path.display());
    Ok(ExitCode::SUCCESS)
}
