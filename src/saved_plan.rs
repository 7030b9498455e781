//! The host side of saved plans: what only this machine can tell the
//! planner's [`vmctl_planner::saved`] model — the digest of `vmctl.lock`, a
//! VMM's start time from `/proc` — and reading/writing plan files with
//! errors that name the file. `plan --out`, `apply PLANFILE` and `show` use it.

use std::path::{Path, PathBuf};

use vmctl_planner::saved::{Basis, LockDigest, SavedPlan};
use vmctl_planner::{Capabilities, ObservedState};
use vmctl_spec::DesiredState;

/// This vmctl's version: a saved plan from another one is refused.
pub const VMCTL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a plan file cannot be read or written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanFileError {
    #[error("cannot read the saved plan {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the saved plan {path}")]
    #[diagnostic(help("make one with `vmctl plan --out FILE`"))]
    Invalid {
        path: PathBuf,
        #[source]
        source: vmctl_planner::saved::SavedPlanError,
    },
    #[error("cannot write the saved plan {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A saved plan whose basis changed: nothing was applied.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error(
    "the saved plan {} is stale; nothing was applied. Changed since it was made:\n{}",
    path.display(),
    changes.iter().map(|c| format!("  - {c}")).collect::<Vec<_>>().join("\n")
)]
#[diagnostic(help("make and review a new plan: `vmctl plan --out FILE`"))]
pub struct Stale {
    pub path: PathBuf,
    pub changes: Vec<String>,
}

/// Read and parse a plan file, and check its actions are what its basis
/// gives (an edited plan file is refused).
pub fn read(path: &Path) -> Result<(SavedPlan, vmctl_planner::Plan), PlanFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |source| PlanFileError::Invalid {
        path: path.to_path_buf(),
        source,
    };
    let saved = SavedPlan::parse(&text).map_err(invalid)?;
    let plan = saved.replan().map_err(invalid)?;
    Ok((saved, plan))
}

/// Write `saved` as pretty JSON (via a temporary file and a rename, so a
/// reader never sees half a plan).
pub fn write(path: &Path, saved: &SavedPlan) -> Result<(), PlanFileError> {
    let err = |source| PlanFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut text = serde_json::to_string_pretty(saved).map_err(|e| err(e.into()))?;
    text.push('\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// `vmctl.lock` beside the KDL file: its path and the digest of its bytes.
pub fn lock_digest(kdl_file: &Path) -> LockDigest {
    let path = crate::cmd::image::lock_path_for(kdl_file);
    let sha256 = std::fs::read(&path)
        .ok()
        .map(|b| vmctl_image::digest::sha256_hex(&b));
    LockDigest {
        path: std::path::absolute(&path).unwrap_or(path),
        sha256,
    }
}

/// A process's start time: field 22 of `/proc/PID/stat`, in clock ticks
/// since boot. With the pid it names one process for the life of the host.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count from the last ')'. Field 3 is the first after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The basis of a plan of `desired` (from `kdl_file`) against `observed`.
pub fn basis(
    desired: &DesiredState,
    kdl_file: &Path,
    caps: Capabilities,
    observed: &ObservedState,
) -> Basis {
    Basis::new(
        desired,
        lock_digest(kdl_file),
        caps,
        observed,
        process_start_time,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_read_and_a_missing_process_has_none() {
        let me = std::process::id();
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(me), process_start_time(me));
        // pid_max is at most 2^22: this pid cannot exist.
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }

    #[test]
    fn lock_digest_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let kdl = dir.path().join("vmctl.kdl");
        assert_eq!(lock_digest(&kdl).sha256, None);
        std::fs::write(dir.path().join("vmctl.lock"), "a").unwrap();
        let a = lock_digest(&kdl).sha256;
        std::fs::write(dir.path().join("vmctl.lock"), "b").unwrap();
        assert!(a.is_some() && a != lock_digest(&kdl).sha256);
    }
}
