//! One site shared by several simulated gateways (`simulation.site_dir`, SPEC §7 and §6): a monitor
//! accepts one central at a time, across every gateway process of the site, as a real BM6 does. Each
//! connected monitor is an exclusive `flock` on `{site_dir}/{mac}.lock`, held while the link lasts; a
//! second gateway's attempt finds it taken, fails as busy (1007) and is written to
//! `{site_dir}/collisions.log`, the record a test of "never two connections to one monitor" reads.
//! Must never: block (locks are tried, never waited for).

use crate::mac::Mac;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// The central slots this gateway holds on a shared site.
#[derive(Debug)]
pub struct Site {
    dir: PathBuf,
    gateway: String,
    held: HashMap<Mac, File>,
}

impl Site {
    /// `None` when `dir` is empty (a gateway alone on its air).
    pub fn new(dir: &str, gateway: &str) -> Option<Site> {
        (!dir.is_empty()).then(|| Site {
            dir: PathBuf::from(dir),
            gateway: gateway.to_string(),
            held: HashMap::new(),
        })
    }

    /// Take `mac`'s central slot; false (and a line in `collisions.log`) when another gateway holds it.
    /// A site directory that cannot be used is logged and does not stop the connection.
    pub fn connect(&mut self, mac: Mac) -> bool {
        if self.held.contains_key(&mac) {
            return true;
        }
        let path = self
            .dir
            .join(format!("{}.lock", mac.to_string().replace(':', "_")));
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                log::warn!("simulation.site_dir: cannot open {}: {e}", path.display());
                return true;
            }
        };
        // SAFETY: a valid open descriptor; LOCK_NB never blocks.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if taken {
            self.held.insert(mac, file);
        } else {
            self.collision(mac);
        }
        taken
    }

    /// Free `mac`'s central slot (closing the file drops the lock).
    pub fn disconnect(&mut self, mac: Mac) {
        self.held.remove(&mac);
    }

    /// Free every slot (stop).
    pub fn disconnect_all(&mut self) {
        self.held.clear();
    }

    fn collision(&self, mac: Mac) {
        let path = self.dir.join("collisions.log");
        let line = format!(
            "{} {} {mac}: another central is connected\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            self.gateway
        );
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            log::warn!("simulation.site_dir: cannot write {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitor_accepts_one_central_across_gateways_and_collisions_are_recorded() {
        let dir = std::env::temp_dir().join(format!("bh-site-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        let (mut a, mut b) = (Site::new(d, "a").unwrap(), Site::new(d, "b").unwrap());
        let m: Mac = "AA:BB:CC:DD:EE:01".parse().unwrap();
        assert!(a.connect(m));
        assert!(
            !b.connect(m),
            "flock is per open file: a second gateway is refused"
        );
        let log = std::fs::read_to_string(dir.join("collisions.log")).unwrap();
        assert!(
            log.contains(" b AA:BB:CC:DD:EE:01: another central"),
            "{log}"
        );
        a.disconnect(m);
        assert!(b.connect(m));
        assert!(Site::new("", "a").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
