//! Rows "process start → first guest byte on the serial port" and "VMM
//! RSS": the same diag ELF under `vmctl __vmm` (a VM directory with only a
//! `machine.json`, exactly what `Runtime::start` would spawn) and under
//! `qemu-system-x86_64 -M microvm -accel kvm`. Both write COM1 to a file that
//! the harness polls the same way (every 100 µs), so the two clocks stop
//! alike. RSS is read from `/proc/PID/smaps` once the guest has reported,
//! split into guest RAM (the mapping at least as large as the VM's memory)
//! and the rest, the VMM's own overhead.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmctl_runtime::vmm::config::{MACHINE_CONFIG_VERSION, MachineConfig};
use vmctl_runtime::vmm::irq::IrqMode;

use super::BenchError;

/// The diag command line vmctl gives `os "diag"` VMs; QEMU gets the same.
pub const DIAG_CMDLINE: &str = "console=ttyS0";
/// What diag prints once its first report is complete.
const REPORTED: &str = "diag: polling";
/// Longest wait for a guest byte or report before the run is an error.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_micros(100);

/// One boot of one VMM.
#[derive(Debug, Clone, Copy)]
pub struct BootSample {
    /// Spawn → first byte in the console file, ms.
    pub first_byte_ms: f64,
    /// Resident set of the whole process after the report, MiB.
    pub rss_total_mib: f64,
    /// Of that, outside the guest-RAM mapping, MiB.
    pub rss_overhead_mib: f64,
}

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Vmctl,
    Qemu,
}

/// Boots `kernel` with `mib` MiB under `vmm` in a fresh directory below
/// `work`, measures, kills it and removes the directory.
pub fn boot_once(
    vmm: Vmm,
    vmctl: &Path,
    kernel: &Path,
    mib: u64,
    work: &Path,
    tag: &str,
) -> Result<BootSample, BenchError> {
    let dir = work.join(tag);
    std::fs::create_dir_all(&dir).map_err(BenchError::io("creating a VM directory"))?;
    let console = dir.join("console.log");
    let log = dir.join("vmm.log");
    let mut cmd = match vmm {
        Vmm::Vmctl => {
            let cfg = MachineConfig {
                format_version: MACHINE_CONFIG_VERSION.into(),
                name: tag.into(),
                kernel: kernel.to_path_buf(),
                initrd: None,
                cmdline: DIAG_CMDLINE.into(),
                cpus: 1,
                max_cpus: 1,
                memory_mib: mib,
                max_memory_mib: mib,
                disks: Vec::new(),
                nics: Vec::new(),
                irq_mode: IrqMode::Polled,
                console_log: console.clone(),
                console_log_max_bytes: vmctl_runtime::devices::serial::CONSOLE_LOG_MAX,
            };
            std::fs::write(dir.join("machine.json"), cfg.to_json())
                .map_err(BenchError::io("writing machine.json"))?;
            let mut c = Command::new(vmctl);
            c.arg("__vmm").arg("--vm-dir").arg(&dir);
            c
        }
        Vmm::Qemu => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(qemu_args(kernel, mib, DIAG_CMDLINE))
                .arg("-serial")
                .arg(format!("file:{}", console.display()));
            c
        }
    };
    let out = File::create(&log).map_err(BenchError::io("creating vmm.log"))?;
    let err = out.try_clone().map_err(BenchError::io("vmm.log"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let t0 = Instant::now();
    let child = cmd.spawn().map_err(|source| BenchError::Spawn {
        what: format!("{vmm:?}"),
        source,
    })?;
    let mut child = Killed(child);
    let result = (|| {
        wait_console(&mut child.0, &console, &log, t0, |t| !t.is_empty())?;
        let first_byte_ms = t0.elapsed().as_secs_f64() * 1000.0;
        wait_console(&mut child.0, &console, &log, t0, |t| {
            String::from_utf8_lossy(t).contains(REPORTED)
        })?;
        let (total_kib, guest_kib) = rss_kib(child.0.id(), mib)?;
        Ok(BootSample {
            first_byte_ms,
            rss_total_mib: total_kib as f64 / 1024.0,
            rss_overhead_mib: total_kib.saturating_sub(guest_kib) as f64 / 1024.0,
        })
    })();
    drop(child);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// QEMU's arguments besides the serial port: the same guest, CPU count and
/// memory as vmctl's, no default devices, no firmware config beyond PVH.
pub fn qemu_args(kernel: &Path, mib: u64, cmdline: &str) -> Vec<String> {
    [
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-smp",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-m".into(),
        mib.to_string(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-append".into(),
        cmdline.into(),
    ])
    .collect()
}

/// SIGKILL and reap on drop, so no run leaves a VMM behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_console(
    child: &mut Child,
    console: &Path,
    log: &Path,
    t0: Instant,
    done: impl Fn(&[u8]) -> bool,
) -> Result<(), BenchError> {
    loop {
        if let Ok(bytes) = std::fs::read(console)
            && done(&bytes)
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Run(format!(
                "the VMM exited ({status}) before the guest got there; its log:\n{}",
                tail(log)
            )));
        }
        if t0.elapsed() > WAIT {
            return Err(BenchError::Run(format!(
                "no guest output after {WAIT:?}; the VMM's log:\n{}",
                tail(log)
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// (whole resident set, resident part of guest RAM) of `pid`, KiB.
fn rss_kib(pid: u32, guest_mib: u64) -> Result<(u64, u64), BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps"));
    let text = std::fs::read_to_string(&path).map_err(BenchError::io("reading smaps"))?;
    Ok(split_rss(&text, guest_mib << 10))
}

/// Sums `Rss:` over all mappings, and separately over mappings whose
/// `Size:` is at least `guest_kib` (guest RAM: nothing else a VMM maps is
/// that large for the sizes benchmarked).
pub fn split_rss(smaps: &str, guest_kib: u64) -> (u64, u64) {
    let (mut total, mut guest) = (0u64, 0u64);
    let mut size = 0u64;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "Size:" => size = kib,
            "Rss:" => {
                total += kib;
                if size >= guest_kib {
                    guest += kib;
                }
            }
            _ => {}
        }
    }
    (total, guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_split_from_the_rest() {
        let smaps = "\
55d0-55e0 r-xp 00000000 08:01 123 /usr/bin/qemu
Size:               4096 kB
Rss:                2048 kB
7f00-7f80 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:                1200 kB
7f90-7fa0 rw-p 00000000 00:00 0
Size:               8192 kB
Rss:                  16 kB
";
        assert_eq!(split_rss(smaps, 128 << 10), (3264, 1200));
        assert_eq!(split_rss("garbage\nRss: x kB\n", 1), (0, 0));
    }

    #[test]
    fn qemu_gets_the_same_guest() {
        let a = qemu_args(Path::new("/k/diag.elf"), 128, DIAG_CMDLINE).join(" ");
        assert!(a.contains("-M microvm -accel kvm"), "{a}");
        assert!(
            a.ends_with("-m 128 -kernel /k/diag.elf -append console=ttyS0"),
            "{a}"
        );
    }
}
