//! One watch per state directory. Two watches healing the same VMs would
//! restart each other's work and double every backoff, so a watch holds
//! `<state>/watch.lock` (an flock) for its whole life. This is separate from
//! the state lock, which each pass takes and releases, so `apply`, `destroy`
//! and `status` still work next to a running watch.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InstanceError {
    #[error("another `vmctl watch` (pid {pid}) is already watching the state directory {dir}")]
    #[diagnostic(help("stop it first, or give this one its own --state-dir"))]
    Busy { dir: PathBuf, pid: String },
    #[error("cannot take {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Held while watch runs; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct WatchLock {
    _file: File,
}

/// Take `<state_dir>/watch.lock` without waiting, creating the directory.
pub fn acquire(state_dir: &Path) -> Result<WatchLock, InstanceError> {
    let path = state_dir.join("watch.lock");
    let io_err = |source| InstanceError::Io {
        path: path.clone(),
        source,
    };
    crate::gitignore_hint::create_state_dir(state_dir).map_err(io_err)?;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(InstanceError::Busy {
                dir: state_dir.to_path_buf(),
                pid: if pid.is_empty() { "?" } else { pid }
                    .chars()
                    .take(20)
                    .collect(),
            });
        }
        return Err(io_err(err));
    }
    // Say who holds it, for the next one's error message.
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(WatchLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_watch_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = acquire(&state).unwrap();
        let err = acquire(&state).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, InstanceError::Busy { .. }), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        acquire(&state).unwrap();
    }
}
