//! The state directory layout and the per-VM files in it: `vm.json` (the
//! record of what was applied, written atomically), the disks, the logs, and
//! the VMM's pid file, sockets and exit note.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmctl_spec::model::DiskSpec;

pub use vmctl_spec::state::{Desired, RECORD_FORMAT_VERSION, Record};

/// How the last VMM of a VM ended (`vmm.exit`), so a VM the guest powered
/// off reads as stopped rather than crashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitNote {
    /// `poweroff` (the guest), `shutdown` (requested), `crash`, `error`.
    pub reason: String,
    pub detail: String,
    pub code: i32,
}

impl ExitNote {
    pub fn is_clean(&self) -> bool {
        self.reason == "poweroff" || self.reason == "shutdown"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid VM record: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported format_version {version:?} (this vmctl reads \"1\")")]
    Version { path: PathBuf, version: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    pub path: PathBuf,
}

impl VmDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VmDir { path: path.into() }
    }
    pub fn record(&self) -> PathBuf {
        self.path.join("vm.json")
    }
    /// The VMM's input, resolved by the control plane (vmm::config).
    pub fn machine_config(&self) -> PathBuf {
        self.path.join("machine.json")
    }
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.path.join("vmm.pid")
    }
    pub fn api_sock(&self) -> PathBuf {
        self.path.join("api.sock")
    }
    /// Byte stream to COM1 (see docs/control-socket.md).
    pub fn console_sock(&self) -> PathBuf {
        self.path.join("console.sock")
    }
    /// The SSH host key the guest reported first (`host_key`).
    pub fn ssh_host_key(&self) -> PathBuf {
        self.path.join("ssh_host_key")
    }
    pub fn exit_note(&self) -> PathBuf {
        self.path.join("vmm.exit")
    }
    pub fn disks_dir(&self) -> PathBuf {
        self.path.join("disks")
    }
    /// Where a disk's file is: its `path`, else `disks/<name>.raw`.
    pub fn disk_path(&self, disk: &DiskSpec) -> PathBuf {
        match &disk.path {
            Some(p) => p.clone(),
            None => self.disks_dir().join(format!("{}.raw", disk.name)),
        }
    }

    pub fn read_record(&self) -> Result<Record, StateError> {
        let path = self.record();
        match self.read_record_if_exists()? {
            Some(rec) => Ok(rec),
            None => Err(StateError::Io {
                path,
                source: io::Error::from(io::ErrorKind::NotFound),
            }),
        }
    }

    /// The record, or `None` when there is none — also when the VM is being
    /// destroyed by someone else right now (its `vm.json` vanished after we
    /// saw it): listing every VM must not fail because one of them went away.
    pub fn read_record_if_exists(&self) -> Result<Option<Record>, StateError> {
        let path = self.record();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let rec: Record = serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        if rec.format_version != RECORD_FORMAT_VERSION {
            return Err(StateError::Version {
                path,
                version: rec.format_version,
            });
        }
        Ok(Some(rec))
    }

    pub fn write_record(&self, rec: &Record) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(rec).map_err(|e| StateError::Io {
            path: self.record(),
            source: io::Error::other(e),
        })?;
        bytes.push(b'\n');
        // The record holds the spec, and so the guest's `file` contents:
        // the VM owner's alone, like its disks.
        write_atomic_mode(&self.record(), &bytes, 0o600)
    }

    /// The pid in `vmm.pid`, if the file exists and holds one.
    pub fn read_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|&p: &i32| p > 0)
    }

    pub fn read_exit_note(&self) -> Option<ExitNote> {
        serde_json::from_str(&fs::read_to_string(self.exit_note()).ok()?).ok()
    }

    pub fn write_exit_note(&self, note: &ExitNote) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(note).unwrap_or_default();
        write_atomic(&self.exit_note(), &bytes)
    }
}

/// Write `bytes` to `path` atomically: temp file in the same directory,
/// fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] creating the file with `mode` (less the umask).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    write_renamed(path, bytes, mode, true)
}

/// Write `bytes` to `path` atomically (temp file, rename) but without the
/// two fsyncs: for files that mean nothing after a host crash or are
/// written afresh before every use — a VMM's `vmm.pid` (the process dies
/// with the host) and `machine.json` (resolved again before every start).
/// Readers still never see a partial file. The fsyncs cost a starting VM
/// about 4 ms of its critical path here (ext4, measured with `strace -T`).
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_renamed(path, bytes, 0o666, false)
}

fn write_renamed(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<(), StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call, not just per process: threads of one apply write
    // the same shared file (the diag kernel in the image cache) at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// A state directory: `vms/<name>/` per VM.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }
    pub fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }
    pub fn vm(&self, name: &str) -> VmDir {
        VmDir::new(self.vms_dir().join(name))
    }
    /// Names of the VMs that have a directory, sorted.
    pub fn vm_names(&self) -> Result<Vec<String>, StateError> {
        let dir = self.vms_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StateError::Io {
                    path: dir,
                    source: e,
                });
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join("vm.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmctl_spec::model::{DiskFormat, VmSpec};

    pub(crate) fn spec(name: &str) -> VmSpec {
        VmSpec {
            disks: vec![DiskSpec {
                name: "root".into(),
                size_bytes: 1 << 20,
                format: DiskFormat::Raw,
                path: None,
                source: None,
                source_format: None,
            }],
            ..VmSpec::diag(name)
        }
    }

    #[test]
    fn record_round_trips_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path());
        let rec = Record::new(spec("a"), Desired::Running);
        dir.write_record(&rec).unwrap();
        assert_eq!(dir.read_record().unwrap(), rec);
        let text = fs::read_to_string(dir.record()).unwrap();
        assert!(text.contains("\"desired\": \"running\""));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        assert_eq!(
            dir.disk_path(&rec.spec.disks[0]),
            tmp.path().join("disks/root.raw")
        );
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path());
        let mut rec = Record::new(spec("a"), Desired::Stopped);
        rec.format_version = "9".into();
        dir.write_record(&rec).unwrap();
        assert!(matches!(dir.read_record(), Err(StateError::Version { .. })));
    }
}
