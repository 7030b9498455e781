//! Running vmctl on a lab directory (`DIR/vmctl.kdl`, state in
//! `DIR/state`) the way a user would, timed: wall time and the CPU time of
//! the command and the children it waited for. Shared by every row that
//! drives the `vmctl` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

/// Wall and CPU time of one timed command, ms.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub wall_ms: f64,
    pub cpu_ms: f64,
}

/// User + system CPU of this process's reaped children so far, ms.
pub fn children_cpu_ms() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage we own.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// Runs `cmd` to completion: its output, wall and CPU time.
pub fn timed(cmd: &mut Command, what: &str) -> Result<(std::process::Output, Timed), BenchError> {
    let cpu0 = children_cpu_ms();
    let t0 = Instant::now();
    let out = cmd.output().map_err(|source| BenchError::Spawn {
        what: what.into(),
        source,
    })?;
    let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let cpu_ms = children_cpu_ms() - cpu0;
    Ok((out, Timed { wall_ms, cpu_ms }))
}

/// Runs `vmctl --state-dir STATE ARGS -f LAB`, returns its wall time in ms.
pub fn vmctl(vmctl: &Path, dir: &Path, args: &[&str]) -> Result<f64, BenchError> {
    vmctl_timed(vmctl, dir, args).map(|t| t.wall_ms)
}

/// [`vmctl`] with its CPU time too.
pub fn vmctl_timed(vmctl: &Path, dir: &Path, args: &[&str]) -> Result<Timed, BenchError> {
    vmctl_output(vmctl, dir, args).map(|(_, t)| t)
}

/// [`vmctl_timed`] with its standard output.
pub fn vmctl_output(
    vmctl: &Path,
    dir: &Path,
    args: &[&str],
) -> Result<(String, Timed), BenchError> {
    let mut cmd = Command::new(vmctl);
    cmd.arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .arg("-f")
        .arg(dir.join("vmctl.kdl"))
        .stdin(Stdio::null());
    let (out, t) = timed(&mut cmd, &format!("vmctl {}", args.join(" ")))?;
    if !out.status.success() {
        return Err(BenchError::Run(format!(
            "vmctl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), t))
}

/// `work/tag/` holding `vmctl.kdl` with `kdl`.
pub fn lab_dir(work: &Path, tag: &str, kdl: &str) -> Result<PathBuf, BenchError> {
    let dir = work.join(tag);
    std::fs::create_dir_all(&dir).map_err(BenchError::io("creating a lab directory"))?;
    std::fs::write(dir.join("vmctl.kdl"), kdl).map_err(BenchError::io("writing vmctl.kdl"))?;
    Ok(dir)
}

/// `vmctl status --json`'s entry for VM `name` (`Null` when absent).
pub fn vm_status(
    vmctl_bin: &Path,
    dir: &Path,
    name: &str,
) -> Result<serde_json::Value, BenchError> {
    let (text, _) = vmctl_output(vmctl_bin, dir, &["status", "--json"])?;
    let start = text.find('{').unwrap_or(0);
    let v: serde_json::Value = serde_json::from_str(&text[start..])
        .map_err(|e| BenchError::Run(format!("status --json: {e}")))?;
    Ok(v["vms"]
        .as_array()
        .and_then(|vms| vms.iter().find(|v| v["name"] == name).cloned())
        .unwrap_or(serde_json::Value::Null))
}

/// Polls `status --json` (bounded: 60 s) until `check` holds for VM
/// `name`; `what` names the wait in the error.
pub fn wait_vm(
    vmctl_bin: &Path,
    dir: &Path,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = vm_status(vmctl_bin, dir, name)?;
        if check(&v) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Run(format!(
                "{name}: gave up waiting for {what}; last status: {v}"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
