//! `battery-hawk`: the command line (SPEC §4). Thin: parse, load config, start logging, hand over.

use anyhow::{Context, Result, anyhow, bail};
use battery_hawk::config::{self, Config, Level, LogTarget, Logging};
use battery_hawk::devices::{self, Decoded, Model, Source};
use battery_hawk::mac::Mac;
use battery_hawk::messages::{DecodedReading, FleetEvent, ReadingOut};
use battery_hawk::mqtt::payload::Renderer;
use battery_hawk::pipeline::Pipeline;
use battery_hawk::{demo, logging, mqtt};
use clap::{Parser, Subcommand};
use crossbeam_channel::{Receiver, bounded, select};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "battery-hawk",
    version,
    about = "Bluetooth LE battery monitor (BM2/BM6/BM7) to MQTT gateway",
    long_about = "Reads Leagend BM2, BM6 and BM7 12 V battery monitors through BlueZ and publishes \
                  readings, device status, vehicle summaries and system status to an MQTT broker.\n\
                  Configuration: /etc/battery-hawk/config.toml (see `check-config`); every key can be \
                  overridden with BATTERYHAWK_<SECTION>_<KEY>."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (SIGTERM/SIGINT: clean shutdown; SIGHUP: reload the configuration)
    Run {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Zero set-up demo: simulated monitors, the full pipeline, an in-process broker; prints every message
    Demo {
        /// Port of the in-process broker (127.0.0.1)
        #[arg(long, default_value_t = 1884)]
        port: u16,
        /// Stop after this many seconds (default: run until Ctrl-C)
        #[arg(long)]
        duration: Option<u64>,
    },
    /// List nearby BM2/BM6/BM7 monitors (through BlueZ)
    Scan {
        /// Seconds to scan
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Adapter to use (default: bluetooth.adapter of the configuration, else hci0)
        #[arg(long)]
        adapter: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Connect to one monitor once (through BlueZ) and print a reading
    Read {
        /// The monitor's address
        mac: String,
        /// Model: bm2, bm6 or bm7 (default: detected from its advertisement)
        #[arg(long = "type")]
        device_type: Option<String>,
        /// Print the reading as JSON (the MQTT reading payload)
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Decrypt and decode one 16-byte frame (hex); prints the reading as JSON
    Decode {
        /// Model: bm2, bm6 or bm7
        #[arg(long = "type")]
        device_type: String,
        /// The frame is an advertisement (manufacturer data rebuilt to 16 bytes); needs --mac
        #[arg(long, requires = "mac")]
        advertisement: bool,
        /// The sender's address (checked against the advertisement)
        #[arg(long)]
        mac: Option<String>,
        /// The encrypted frame, 32 hex digits
        hex: String,
    },
    /// Download a monitor's own log (voltage, SoC, temperature every 2 minutes) and print or draw it
    History {
        /// The monitor's address
        mac: String,
        /// Model: bm2, bm6 or bm7 (default: from the configuration, else detected from its advertisement)
        #[arg(long = "type")]
        device_type: Option<String>,
        /// Days back to read, 1-91 (default: history.initial_days of the configuration)
        #[arg(long)]
        days: Option<u32>,
        /// Print CSV (one line per record, oldest first)
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// Print JSON: the records, then every request and decrypted block (to check a BM2/BM7)
        #[arg(long)]
        json: bool,
        /// Also draw voltage and state of charge over time into this SVG file
        #[arg(long)]
        svg: Option<PathBuf>,
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate the configuration and print it with secrets redacted
    CheckConfig {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Demo { port, duration } => run_demo(port, duration.map(Duration::from_secs)),
        Command::Scan {
            duration,
            adapter,
            json,
            config,
        } => scan(&config, adapter, Duration::from_secs(duration), json),
        Command::Read {
            mac,
            device_type,
            json,
            config,
        } => read(&config, &mac, device_type.as_deref(), json),
        Command::Decode {
            device_type,
            advertisement,
            mac,
            hex,
        } => decode(&device_type, advertisement, mac.as_deref(), &hex),
        Command::History {
            mac,
            device_type,
            days,
            csv,
            json,
            svg,
            config,
        } => history(
            &config,
            &mac,
            device_type.as_deref(),
            days,
            (csv, json),
            svg.as_deref(),
        ),
        Command::CheckConfig { config } => check_config(&config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("battery-hawk: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow!("configuration: {e}"))
}

fn run(path: &Path) -> Result<ExitCode> {
    let config = load(path)?;
    logging::init(&config.logging)?;
    log::info!(
        "battery-hawk {} starting: gateway '{}', {} device(s), broker {}:{}",
        env!("CARGO_PKG_VERSION"),
        config.gateway.id,
        config.devices.len(),
        config.mqtt.broker,
        config.mqtt.port
    );
    let signals = signals()?;
    let pipeline = Pipeline::start(Arc::new(config))?;
    supervise(pipeline, &signals.1, Some(path), None, signals.0)
}

/// A thread that forwards SIGTERM, SIGINT and SIGHUP into a channel.
fn signals() -> Result<(signal_hook::iterator::Handle, Receiver<i32>)> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let handle = signals.handle();
    let (tx, rx) = bounded(8);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok((handle, rx))
}

/// Wait for a signal, the end of `duration`, or the pipeline failing; reload on SIGHUP.
fn supervise(
    pipeline: Pipeline,
    signals: &Receiver<i32>,
    config_path: Option<&Path>,
    duration: Option<Duration>,
    handle: signal_hook::iterator::Handle,
) -> Result<ExitCode> {
    let deadline = duration.map(|d| Instant::now() + d);
    let ended = pipeline.ended().clone();
    let code = loop {
        let wait = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        select! {
            recv(signals) -> sig => match sig {
                Ok(SIGHUP) => reload(&pipeline, config_path),
                Ok(sig) => {
                    let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                    log::info!("{name} received: stopping");
                    pipeline.stop(name);
                    break ExitCode::SUCCESS;
                }
                Err(_) => {
                    pipeline.stop("signal handling ended");
                    break ExitCode::FAILURE;
                }
            },
            recv(ended) -> _ => {
                log::error!("the pipeline stopped on its own; exiting");
                pipeline.stop("pipeline failure");
                break ExitCode::FAILURE;
            }
            default(wait) => {
                pipeline.stop("duration elapsed");
                break ExitCode::SUCCESS;
            }
        }
    };
    handle.close();
    Ok(code)
}

fn reload(pipeline: &Pipeline, path: Option<&Path>) {
    let Some(path) = path else {
        log::info!("SIGHUP: nothing to reload");
        return;
    };
    match Config::load(path) {
        Ok(config) => {
            log::info!("SIGHUP: configuration reloaded from {}", path.display());
            pipeline.reconfigure(Arc::new(config));
        }
        Err(e) => log::error!("SIGHUP: keeping the running configuration: {e}"),
    }
}

fn run_demo(port: u16, duration: Option<Duration>) -> Result<ExitCode> {
    logging::init(&Logging {
        level: Level::Info,
        target: LogTarget::Stderr,
    })?;
    let state_dir = std::env::temp_dir().join(format!("battery-hawk-demo-{}", std::process::id()));
    let config = demo::config(port, state_dir.clone());
    mqtt::demo::start_broker(port).map_err(|e| anyhow!(e))?;
    let (stop_viewer, viewer_stop) = bounded(1);
    let viewer = mqtt::demo::print_messages(
        port,
        &config.mqtt.topic_prefix,
        config.mqtt.qos,
        viewer_stop,
    )?;
    eprintln!(
        "battery-hawk demo: broker on 127.0.0.1:{port}, 3 simulated monitors; {}",
        duration.map_or("Ctrl-C to stop".to_string(), |d| format!(
            "stopping after {} s",
            d.as_secs()
        ))
    );
    let signals = signals()?;
    let pipeline = Pipeline::start(Arc::new(config))?;
    let code = supervise(pipeline, &signals.1, None, duration, signals.0)?;
    std::thread::sleep(Duration::from_millis(500));
    let _ = stop_viewer.send(());
    let _ = viewer.join();
    let _ = std::fs::remove_dir_all(state_dir);
    Ok(code)
}

fn decode(model: &str, advertisement: bool, mac: Option<&str>, hex: &str) -> Result<ExitCode> {
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

/// The configuration at `path`, or the defaults when the default file is not there (for `scan`/`read`).
fn load_or_default(path: &Path) -> Result<Config> {
    if path == Path::new(config::DEFAULT_PATH) && !path.exists() {
        return Ok(Config::default());
    }
    load(path)
}

/// Log warnings and errors to stderr for the one-shot commands.
fn quiet_logging() -> Result<()> {
    logging::init(&Logging {
        level: Level::Warn,
        target: LogTarget::Stderr,
    })?;
    Ok(())
}

fn model_arg(name: Option<&str>) -> Result<Option<Model>> {
    name.map(|n| {
        Model::by_name(n)
            .ok_or_else(|| anyhow!("--type {n}: not a supported model ({})", Model::all_names()))
    })
    .transpose()
}

fn scan(path: &Path, adapter: Option<String>, duration: Duration, json: bool) -> Result<ExitCode> {
    quiet_logging()?;
    let config = load_or_default(path)?;
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

fn read(path: &Path, mac: &str, device_type: Option<&str>, json: bool) -> Result<ExitCode> {
    quiet_logging()?;
    let config = load_or_default(path)?;
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
fn history(
    path: &Path,
    mac: &str,
    device_type: Option<&str>,
    days: Option<u32>,
    (csv, json): (bool, bool),
    svg: Option<&Path>,
) -> Result<ExitCode> {
    use battery_hawk::devices::history::records_for;
    use battery_hawk::mqtt::history::{LinkFacts, report};
    quiet_logging()?;
    let config = load_or_default(path)?;
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

fn check_config(path: &Path) -> Result<ExitCode> {
    let config = load(path)?;
    print!("{}", config.to_redacted_toml());
    eprintln!("{}: configuration is valid", path.display());
    Ok(ExitCode::SUCCESS)
}
