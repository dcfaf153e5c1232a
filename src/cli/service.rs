//! The long-running commands: `run` (the gateway as the service runs it) and `demo`. Owns the supervision:
//! signals (SIGTERM/SIGINT stop cleanly, SIGHUP reloads the configuration), a pipeline that stops on its
//! own, the demo's duration. Must never: decide anything about monitors or MQTT (the pipeline does).

use crate::load;
use anyhow::{Context, Result};
use battery_hawk::config::Config;
use battery_hawk::logging;
use battery_hawk::pipeline::Pipeline;

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
pub(crate) fn signals() -> Result<(signal_hook::iterator::Handle, Receiver<i32>)> {
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
pub(crate) fn supervise(
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
