//! `battery-hawk`: the command line (SPEC §4). Thin: parse the arguments and hand each command over —
//! the long-running ones (`run`, `demo`) to [`service`], the one-shot ones (`scan`, `read`, `decode`,
//! `history`, `check-config`) to [`oneshot`]. `anyhow` lives in this binary only.

#[cfg(feature = "demo")]
mod demo;
mod oneshot;
mod service;

use anyhow::{Result, anyhow};
use battery_hawk::config::{self, Config, Level, LogTarget, Logging};
use battery_hawk::devices::Model;
use battery_hawk::logging;
use clap::{Parser, Subcommand};
#[cfg(feature = "demo")]
use demo::run_demo;
use oneshot::{check_config, decode, history, read, scan};
use service::run;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
    #[cfg(feature = "demo")]
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

/// Caps glibc's malloc at two arenas; called first, before any thread is started. glibc gives each
/// thread that meets a locked arena one of its own (up to 8 per core), and each keeps its own free lists
/// and up to 128 KiB of free top: with the pipeline's five threads that was about 230 KiB more resident
/// memory at 200 monitors than two arenas shared by all. Sharing costs no measurable CPU (each thread's
/// tcache serves most small allocations without the arena lock); one arena did (about 10 % more CPU per
/// reading at 2,000 readings/s). musl (OpenWrt) has no arenas.
#[cfg(target_env = "gnu")]
fn cap_malloc_arenas() {
    // SAFETY: mallopt only sets a parameter of the allocator; no other thread exists yet. Its result is
    // not checked: it fails only for an unknown parameter, and the cap saves memory, nothing else.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
}

#[cfg(not(target_env = "gnu"))]
fn cap_malloc_arenas() {}

fn main() -> ExitCode {
    cap_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        #[cfg(feature = "demo")]
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

pub(crate) fn load(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow!("configuration: {e}"))
}

/// The configuration at `path`, or the defaults when the default file is not there (for `scan`/`read`).
pub(crate) fn load_or_default(path: &Path) -> Result<Config> {
    if path == Path::new(config::DEFAULT_PATH) && !path.exists() {
        return Ok(Config::default());
    }
    load(path)
}

/// Log to stderr for the one-shot commands.
pub(crate) fn quiet_logging(config: &Config) -> Result<()> {
    // Warnings and errors, unless the configuration asks for more (`logging.level = "debug"` shows what
    // a `read` or `scan` did on the air).
    let level = match config.logging.level {
        Level::Debug | Level::Trace => config.logging.level,
        _ => Level::Warn,
    };
    logging::init(&Logging {
        level,
        target: LogTarget::Stderr,
    })?;
    Ok(())
}

pub(crate) fn model_arg(name: Option<&str>) -> Result<Option<Model>> {
    name.map(|n| {
        Model::by_name(n)
            .ok_or_else(|| anyhow!("--type {n}: not a supported model ({})", Model::all_names()))
    })
    .transpose()
}
