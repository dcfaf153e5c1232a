//! The log sink behind the `log` facade: syslog (the `syslog` crate, so `journalctl -u` and OpenWrt's
//! `logread` show it) or stderr, chosen once at start-up.
//!
//! Our own modules log at `logging.level`; dependencies (rumqttc, rumqttd, …) only at warn and above unless
//! the level is `trace`. Must never: receive a secret (callers never format one).

use crate::config::{Level, LogTarget, Logging};
use log::{LevelFilter, Log, Metadata, Record};
use std::io::{IsTerminal, Write};
use std::path::Path;

const OWN_TARGET: &str = "battery_hawk";
/// The demo broker reports every span entry as an error-level log record: shown only at `trace`.
const QUIET_TARGET: &str = "rumqttd";

fn filter(level: Level) -> LevelFilter {
    match level {
        Level::Error => LevelFilter::Error,
        Level::Warn => LevelFilter::Warn,
        Level::Info => LevelFilter::Info,
        Level::Debug => LevelFilter::Debug,
        Level::Trace => LevelFilter::Trace,
    }
}

/// Wraps a sink with the per-crate level rule.
struct Filtered<L> {
    own: LevelFilter,
    inner: L,
}

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, m: &Metadata) -> bool {
        let limit = if m.target().starts_with(OWN_TARGET) || self.own == LevelFilter::Trace {
            self.own
        } else if m.target().starts_with(QUIET_TARGET) {
            LevelFilter::Off
        } else {
            LevelFilter::Warn.min(self.own)
        };
        m.level() <= limit
    }
    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            self.inner.log(r);
        }
    }
    fn flush(&self) {
        self.inner.flush();
    }
}

/// Plain lines on stderr: `2024-01-15T10:30:00.000Z INFO battery_hawk::mqtt: …`.
struct Stderr;

impl Log for Stderr {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, r: &Record) {
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} {:<5} {}: {}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            r.level(),
            r.target(),
            r.args()
        );
    }
    fn flush(&self) {}
}

/// Why logging could not be set up as configured.
#[derive(Debug)]
pub struct LoggingError(pub String);

impl std::fmt::Display for LoggingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoggingError {}

/// A sink writing RFC 3164 messages (facility daemon, tag `battery-hawk[pid]`) to the system log socket,
/// or to `socket` when given.
pub fn syslog_sink(socket: Option<&Path>) -> Result<syslog::BasicLogger, LoggingError> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "battery-hawk".into(),
        pid: std::process::id(),
    };
    let writer = match socket {
        Some(path) => syslog::unix_custom(formatter, path),
        None => syslog::unix(formatter),
    }
    .map_err(|e| LoggingError(format!("logging.target = syslog: {e}")))?;
    Ok(syslog::BasicLogger::new(writer))
}

/// Install the logger for `cfg`. `auto` means syslog when stderr is not a terminal and `/dev/log` exists.
pub fn init(cfg: &Logging) -> Result<(), LoggingError> {
    let use_syslog = match cfg.target {
        LogTarget::Syslog => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => !std::io::stderr().is_terminal() && Path::new("/dev/log").exists(),
    };
    let own = filter(cfg.level);
    let logger: Box<dyn Log> = if use_syslog {
        Box::new(Filtered {
            own,
            inner: syslog_sink(None)?,
        })
    } else {
        Box::new(Filtered { own, inner: Stderr })
    };
    log::set_boxed_logger(logger).map_err(|e| LoggingError(e.to_string()))?;
    log::set_max_level(own.max(LevelFilter::Warn));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn syslog_lines_reach_the_socket_with_our_tag_and_level() {
        let dir = std::env::temp_dir().join(format!("bh-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        // BasicLogger also honours the global maximum, which `init` sets.
        log::set_max_level(LevelFilter::Trace);
        let sink = Filtered {
            own: LevelFilter::Info,
            inner: syslog_sink(Some(&path)).unwrap(),
        };
        let record = |level, target: &'static str, text: &'static str| {
            sink.log(
                &Record::builder()
                    .level(level)
                    .target(target)
                    .args(format_args!("{text}"))
                    .build(),
            )
        };
        record(log::Level::Debug, "battery_hawk::mqtt", "not shown at info");
        record(
            log::Level::Info,
            "rumqttc::state",
            "dependency info is not shown",
        );
        record(log::Level::Warn, "battery_hawk::mqtt", "broker unreachable");
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]);
        // <28> = facility daemon (3) * 8 + warning (4).
        assert!(line.starts_with("<28>"), "{line}");
        assert!(
            line.contains(&format!("battery-hawk[{}]", std::process::id())),
            "{line}"
        );
        assert!(line.ends_with("broker unreachable"), "{line}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
