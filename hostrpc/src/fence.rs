//! The host's fence: the highest fencing token any coordinator has shown
//! this host, in `<state-dir>/fence`, so that a coordinator that lost its
//! lock (paused, partitioned) cannot act here after a newer one has.
//!
//! A mutating call is admitted when its token is at least the recorded one;
//! a higher token is recorded (written atomically: temporary file, fsync,
//! rename, fsync of the directory) before the call acts. The check and the
//! write happen under a flock of `<state-dir>/fence.lock` (exclusive to
//! record a higher token), so every `host-rpc` process on the host agrees.
//! The admitted call then holds that lock *shared* until it is done: calls
//! with the current token run side by side, but a newer token cannot be
//! recorded while an older call is still acting, so once a newer
//! coordinator's first mutating call is admitted, no older call is running
//! and none can start.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a call was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("token {token} is fenced: this host has seen token {highest}")]
    Fenced { token: u64, highest: u64 },
    #[error("fence file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "fence file {path} is corrupt ({text:?}); every mutating call is refused until it is fixed"
    )]
    Corrupt { path: PathBuf, text: String },
}

/// The fence of one state directory.
#[derive(Debug, Clone)]
pub struct FenceStore {
    dir: PathBuf,
}

/// An admitted call: holds the fence lock shared until dropped.
#[derive(Debug)]
pub struct FenceGuard {
    _lock: File,
    /// The recorded token while this guard lives.
    pub highest: u64,
}

/// The longest fence file accepted (a u64 and a newline).
const MAX_FENCE_FILE: u64 = 64;

impl FenceStore {
    /// The fence of `state_dir` (nothing is created until a call is admitted).
    pub fn new(state_dir: &Path) -> Self {
        FenceStore {
            dir: state_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("fence")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("fence.lock")
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(io::Error) -> FenceError {
        move |source| FenceError::Io { path, source }
    }

    /// The highest token recorded (0 when none is).
    pub fn highest(&self) -> Result<u64, FenceError> {
        if !self.dir.is_dir() {
            return Ok(0);
        }
        let lock = self.open_lock()?;
        flock(&lock, libc::LOCK_SH).map_err(self.io(self.lock_path()))?;
        self.read()
    }

    /// Admit a mutating call carrying `token`: refused when a higher token
    /// was recorded; a higher one than recorded is recorded first (waiting
    /// for calls admitted under the older token to finish).
    pub fn admit(&self, token: u64) -> Result<FenceGuard, FenceError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(self.dir.clone()))?;
        let lock = self.open_lock()?;
        // The common case, the current token: shared, so calls of one
        // coordinator run side by side.
        flock(&lock, libc::LOCK_SH).map_err(self.io(self.lock_path()))?;
        let highest = self.read()?;
        if token < highest {
            return Err(FenceError::Fenced { token, highest });
        }
        if token > highest {
            flock(&lock, libc::LOCK_EX).map_err(self.io(self.lock_path()))?;
            // Linux converts a flock by dropping and retaking it: read again.
            let highest = self.read()?;
            if token < highest {
                return Err(FenceError::Fenced { token, highest });
            }
            if token > highest {
                self.write(token)?;
            }
            flock(&lock, libc::LOCK_SH).map_err(self.io(self.lock_path()))?;
        }
        // Under the shared lock no newer token can be recorded until this
        // guard is dropped.
        let highest = self.read()?;
        if token < highest {
            return Err(FenceError::Fenced { token, highest });
        }
        Ok(FenceGuard {
            _lock: lock,
            highest,
        })
    }

    fn open_lock(&self) -> Result<File, FenceError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path())
            .map_err(self.io(self.lock_path()))
    }

    /// The recorded token; the caller holds the lock.
    fn read(&self) -> Result<u64, FenceError> {
        use std::io::Read;
        let path = self.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(FenceError::Io { path, source: e }),
        };
        let mut text = String::new();
        if let Err(e) = file.take(MAX_FENCE_FILE).read_to_string(&mut text) {
            // Not UTF-8, or unreadable.
            return Err(FenceError::Corrupt {
                path,
                text: e.to_string(),
            });
        }
        text.trim()
            .parse::<u64>()
            .map_err(|_| FenceError::Corrupt { path, text })
    }

    /// Record `token`; the caller holds the lock exclusively.
    fn write(&self, token: u64) -> Result<(), FenceError> {
        let tmp = self.dir.join("fence.tmp");
        let mut f = File::create(&tmp).map_err(self.io(tmp.clone()))?;
        f.write_all(format!("{token}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(self.io(tmp.clone()))?;
        drop(f);
        std::fs::rename(&tmp, self.path()).map_err(self.io(self.path()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(self.dir.clone()))
    }
}

/// A blocking flock (retried on EINTR).
fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fenced(r: Result<FenceGuard, FenceError>) -> (u64, u64) {
        match r {
            Err(FenceError::Fenced { token, highest }) => (token, highest),
            other => panic!("expected fenced, got {other:?}"),
        }
    }

    #[test]
    fn lower_refused_equal_accepted_higher_recorded() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = d.path().join("state");
        let f = FenceStore::new(&state);
        // Nothing recorded, nothing created by reading.
        assert_eq!(f.highest().ok(), Some(0));
        assert!(!state.exists());
        assert!(f.admit(5).is_ok());
        assert_eq!(f.highest().ok(), Some(5));
        assert_eq!(
            std::fs::read_to_string(f.path()).ok().as_deref(),
            Some("5\n")
        );
        assert_eq!(fenced(f.admit(4)), (4, 5));
        assert!(f.admit(5).is_ok(), "equal is accepted");
        assert!(f.admit(9).is_ok());
        assert_eq!(f.highest().ok(), Some(9));
        assert_eq!(fenced(f.admit(5)), (5, 9));
        assert_eq!(fenced(f.admit(0)), (0, 9));
        assert!(!state.join("fence.tmp").exists());
    }

    #[test]
    fn two_stores_on_one_directory_agree() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = FenceStore::new(d.path());
        let b = FenceStore::new(d.path());
        assert!(a.admit(3).is_ok());
        assert_eq!(fenced(b.admit(2)), (2, 3));
        assert!(b.admit(7).is_ok());
        assert_eq!(fenced(a.admit(3)), (3, 7));
        assert_eq!(a.highest().ok(), Some(7));
    }

    /// Whether another process could take the fence lock exclusively now.
    fn lock_is_free(f: &FenceStore) -> bool {
        let Ok(file) = f.open_lock() else {
            return false;
        };
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    #[test]
    fn an_admitted_call_keeps_newer_tokens_out_until_it_is_done() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = FenceStore::new(d.path());
        let old = a.admit(1).unwrap_or_else(|e| panic!("{e}"));
        // Shared: a second call of the same token is admitted meanwhile...
        let same = a.admit(1);
        assert!(
            same.is_ok(),
            "a call with the same token is admitted alongside"
        );
        drop(same);
        // ...but nobody can take the lock to record a newer token.
        assert!(!lock_is_free(&a));
        let dir = d.path().to_path_buf();
        let t = std::thread::spawn(move || FenceStore::new(&dir).admit(2).map(|g| g.highest).ok());
        drop(old);
        assert_eq!(t.join().ok().flatten(), Some(2));
        assert!(lock_is_free(&a));
        assert_eq!(fenced(a.admit(1)), (1, 2));
    }

    #[test]
    fn a_corrupt_fence_refuses_everything() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = FenceStore::new(d.path());
        for junk in ["", "twelve\n", "-3\n", "99999999999999999999999\n"] {
            std::fs::write(f.path(), junk).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                matches!(f.admit(u64::MAX), Err(FenceError::Corrupt { .. })),
                "{junk:?}"
            );
        }
        std::fs::write(f.path(), vec![b'7'; 10_000]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(f.admit(1), Err(FenceError::Corrupt { .. })));
    }
}
