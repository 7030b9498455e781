//! Rows "`apply` of N diag VMs" (vs a shell loop starting QEMU microvm the
//! same way) and "no-op `plan` / `apply` of a 10 / 100-VM lab" (absolute).
//! `vmctl apply` returns once every VMM answers `status` (docs/runtime.md);
//! the peer loop runs `qemu-system-x86_64 ... -daemonize`, which returns once
//! QEMU has set the VM up and detached: both stop at "started", neither waits
//! for the guest. Each start is measured as wall time and as the CPU time
//! (user + system) of the command and the children it waited for — the
//! detached VMMs' own CPU is not counted on either side. QEMU's guests get
//! `diag.halt`: without vmctl's idle port an idle diag spins its vCPU, and
//! fifty spinning guests on two cores would slow the loop by what the
//! guests do, not by what QEMU does (docs/benchmarks.md).

use std::path::Path;
use std::process::{Command, Stdio};

use super::BenchError;
use super::boot::{DIAG_CMDLINE, qemu_args};
use super::lab::{Timed, lab_dir, timed, vmctl, vmctl_timed};

/// A KDL lab of `n` diag VMs of 128 MiB.
pub fn lab_kdl(n: usize, autostart: bool) -> String {
    let mut kdl = String::new();
    for i in 0..n {
        kdl.push_str(&format!(
            "vm \"b{i}\" {{\n    os \"diag\"\n    memory \"128MiB\"\n"
        ));
        if !autostart {
            kdl.push_str("    autostart #false\n");
        }
        kdl.push_str("}\n");
    }
    kdl
}

/// `vmctl apply` of `n` fresh diag VMs, timed; then destroys them.
pub fn vmctl_apply(
    vmctl_bin: &Path,
    work: &Path,
    n: usize,
    tag: &str,
) -> Result<Timed, BenchError> {
    let dir = lab_dir(work, tag, &lab_kdl(n, true))?;
    let ms = vmctl_timed(vmctl_bin, &dir, &["apply", "--auto-approve"]);
    let destroyed = vmctl(vmctl_bin, &dir, &["destroy", "--auto-approve"]);
    let ms = ms?;
    destroyed?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ms)
}

/// A shell loop starting `n` QEMU microvm diag VMs (with `diag.halt`)
/// with `-daemonize`, timed; then kills them.
pub fn qemu_loop(kernel: &Path, work: &Path, n: usize, tag: &str) -> Result<Timed, BenchError> {
    let dir = lab_dir(work, tag, "")?;
    let cmdline = format!("{DIAG_CMDLINE} diag.halt");
    let args = qemu_args(kernel, 128, &cmdline)
        .into_iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "set -e; cd '{}'; for i in $(seq {n}); do \
         qemu-system-x86_64 {args} -serial file:console-$i.log -daemonize -pidfile $i.pid \
         2>>qemu.log; done",
        dir.display()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&script).stdin(Stdio::null());
    let (out, ms) = timed(&mut cmd, "sh (QEMU loop)")?;
    let status = out.status;
    kill_pidfiles(&dir, n);
    if !status.success() {
        return Err(BenchError::Run(format!(
            "the QEMU loop failed ({status}): {}",
            std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default()
        )));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ms)
}

/// SIGKILLs the daemonized QEMUs named in `dir/1.pid ..= n.pid` and waits
/// (bounded) until they are gone.
fn kill_pidfiles(dir: &Path, n: usize) {
    for i in 1..=n {
        let Some(pid) = std::fs::read_to_string(dir.join(format!("{i}.pid")))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p > 1)
        else {
            continue;
        };
        // SAFETY: kill(2) on a pid QEMU wrote for the process it became.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for _ in 0..500 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// A lab of `n` VMs with `autostart #false`, applied once; then `runs`
/// timed no-op `plan` and `apply` each, interleaved. Returns (plan ms,
/// apply ms) samples.
pub fn noop(
    vmctl_bin: &Path,
    work: &Path,
    n: usize,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let dir = lab_dir(work, &format!("noop-{n}"), &lab_kdl(n, false))?;
    vmctl(vmctl_bin, &dir, &["apply", "--auto-approve"])?;
    let (mut plan, mut apply) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        plan.push(vmctl(vmctl_bin, &dir, &["plan"])?);
        apply.push(vmctl(vmctl_bin, &dir, &["apply", "--auto-approve"])?);
    }
    vmctl(vmctl_bin, &dir, &["destroy", "--auto-approve"])?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((plan, apply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_of_n_diag_vms() {
        let kdl = lab_kdl(2, false);
        assert_eq!(kdl.matches("vm \"b").count(), 2);
        assert!(kdl.contains(
            "vm \"b1\" {\n    os \"diag\"\n    memory \"128MiB\"\n    autostart #false\n}\n"
        ));
        assert!(!lab_kdl(1, true).contains("autostart"));
    }
}
