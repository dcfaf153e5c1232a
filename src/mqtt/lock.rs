//! The `state_dir` lock (SPEC §3): two gateways never share a state directory — the spool and the
//! registry would be written by both. The first process takes an exclusive `flock` on
//! `<state_dir>/battery-hawk.lock` (holding its pid, for the message) and keeps it until it exits; the
//! kernel releases it on any exit, even SIGKILL, so a stale file never blocks a start.
//! Must never: delete the lock file (another process may hold it), or block waiting for it.

use super::MqttError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Locks this process holds, by directory (a second start in the same process, e.g. a reload, is fine).
static HELD: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

/// Lock file name inside `state_dir`.
pub const LOCK_FILE: &str = "battery-hawk.lock";

/// Take `<dir>/battery-hawk.lock` for the rest of the process's life, or say which process has it.
pub fn lock_state_dir(dir: &Path) -> Result<(), MqttError> {
    let path = dir.join(LOCK_FILE);
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if held.iter().any(|(p, _)| *p == path) {
        return Ok(());
    }
    let io = |e: std::io::Error| MqttError::Locked(path.display().to_string(), e.to_string());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match try_lock(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let who = if pid.is_empty() {
                "another battery-hawk process".to_string()
            } else {
                format!("another battery-hawk process (pid {pid})")
            };
            return Err(MqttError::Locked(
                path.display().to_string(),
                format!(
                    "{who} uses gateway.state_dir {}; two gateways must not share one — give each its \
                     own gateway.state_dir (and its own mqtt.client_id)",
                    dir.display()
                ),
            ));
        }
        Err(e) => return Err(io(e)),
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(io)?;
    held.push((path, file));
    Ok(())
}

/// A non-blocking exclusive `flock` (the crate's MSRV predates `File::try_lock`).
fn try_lock(file: &File) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor we own for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_in_another_file_description_is_refused_with_the_holder_named() {
        let dir = std::env::temp_dir().join(format!("bh-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        lock_state_dir(&dir).unwrap();
        lock_state_dir(&dir).expect("the same process may ask again");
        let other = File::open(dir.join(LOCK_FILE)).unwrap();
        let e = try_lock(&other).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
    }
}
