//! The state-directory lock (`<state>/lock`, an flock): held by apply, destroy
//! and each watch pass so two writers never interleave. A second writer waits
//! and says so, or gives up after `--lock-timeout`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LockError {
    #[error("cannot open the state lock {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another vmctl holds the state lock {path}; gave up after {waited:?}")]
    #[diagnostic(help(
        "wait for the other apply/destroy/watch to finish, or raise --lock-timeout"
    ))]
    Timeout { path: PathBuf, waited: Duration },
    #[error("cannot take the state lock {path}")]
    Flock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Held until dropped (closing the file releases the flock).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Take the exclusive lock, creating the state directory if needed (with
/// the one-time `.gitignore` hint inside a git work tree). Prints one line
/// to stderr when it has to wait.
pub fn acquire(state_dir: &Path, timeout: Option<Duration>) -> Result<StateLock, LockError> {
    let path = state_dir.join("lock");
    crate::gitignore_hint::create_state_dir(state_dir).map_err(|source| LockError::Open {
        path: path.clone(),
        source,
    })?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockError::Open {
            path: path.clone(),
            source,
        })?;
    let start = Instant::now();
    let mut said = false;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(StateLock { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.raw_os_error() != Some(libc::EINTR)
        {
            return Err(LockError::Flock { path, source: err });
        }
        if let Some(t) = timeout
            && start.elapsed() >= t
        {
            return Err(LockError::Timeout {
                path,
                waited: start.elapsed(),
            });
        }
        if !said {
            eprintln!(
                "waiting for the state lock {} (another vmctl is applying)...",
                path.display()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_times_out_then_succeeds_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), None).unwrap();
        let err = acquire(dir.path(), Some(Duration::from_millis(100))).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
        drop(first);
        acquire(dir.path(), Some(Duration::from_millis(100))).unwrap();
    }
}
