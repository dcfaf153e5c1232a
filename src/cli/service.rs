//! The long-running commands: `run` (the gateway as the service runs it) and `demo`. Owns the supervision:
//! signals (SIGTERM/SIGINT stop cleanly, SIGHUP reloads the configuration), a pipeline that stops on its
//! own, the demo's duration. Must never: decide anything about monitors or MQTT (the pipeline does).

use crate::load;
use anyhow::{Context, Result, anyhow};
use battery_hawk::config::{Config, Level, LogTarget, Logging};
use battery_hawk::pipeline::Pipeline;
use battery_hawk::{demo, logging, mqtt};
use crossbeam_channel::{Receiver, bounded, select};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn run(path: &Path) -> Result<ExitCode> {
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

pub(crate) fn run_demo(port: u16, duration: Option<Duration>) -> Result<ExitCode> {
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
