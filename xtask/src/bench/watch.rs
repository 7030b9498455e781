//! Row "watch: file save → reconcile started": `vmctl watch
//! --print-timings` on a one-VM diag lab (running), then `runs` editor-style
//! saves (a temporary file renamed over the lab file) that change only a
//! comment, so each pass is a no-op reconcile. The save's time is this
//! process's `CLOCK_MONOTONIC` just before the rename; watch's `timing`
//! line gives, on the same clock, its last file event, when the burst
//! settled (the debounce window, 100 ms by default, reported as its own
//! row) and when reconcile started and ended. No peer (absolute). The
//! ignored `measure` test in tests/watch.rs measures the other save kinds
//! (start, stop, restart) for docs/watch.md.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::BenchError;
use super::lab::lab_dir;

/// The row's samples, ms.
pub struct WatchSamples {
    /// Save (rename) → reconcile started.
    pub save_to_start: Vec<f64>,
    /// Last file event → settled: the debounce window as measured.
    pub debounce: Vec<f64>,
    /// Reconcile start → end (plan and a no-op apply).
    pub reconcile: Vec<f64>,
}

/// `CLOCK_MONOTONIC` now, ns: the clock watch's timing lines use.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `key=value` number of a `timing` line.
fn field(line: &str, key: &str) -> Option<u64> {
    crate::nested::check::field(line, key)?.parse().ok()
}

fn lab_text(i: usize) -> String {
    format!("// save {i}\nvm \"w0\" {{\n    os \"diag\"\n    memory \"64MiB\"\n}}\n")
}

/// SIGKILL and reap on drop.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn watch_row(vmctl_bin: &Path, work: &Path, runs: usize) -> Result<WatchSamples, BenchError> {
    let dir = lab_dir(work, "watch-bench", &lab_text(0))?;
    let file = dir.join("vmctl.kdl");
    let mut child = Command::new(vmctl_bin)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["watch", "--print-timings", "--drift-interval", "0", "-f"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            what: "vmctl watch".into(),
            source,
        })?;
    let stdout = child.stdout.take();
    let watch = Watch(child);
    let (tx, rx) = mpsc::channel::<String>();
    if let Some(out) = stdout {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    let next_timing = |trigger: &str| -> Result<String, BenchError> {
        loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
                BenchError::Run(format!("vmctl watch: no `{trigger}` pass in 60 s"))
            })?;
            if line.starts_with("timing ") && line.contains(&format!("trigger={trigger} ")) {
                return Ok(line);
            }
        }
    };
    let result = (|| {
        next_timing("startup")?;
        let mut s = WatchSamples {
            save_to_start: vec![],
            debounce: vec![],
            reconcile: vec![],
        };
        let tmp = dir.join(".vmctl.kdl.tmp");
        for i in 1..=runs {
            std::fs::write(&tmp, lab_text(i)).map_err(BenchError::io("writing the lab"))?;
            let saved = monotonic_ns();
            std::fs::rename(&tmp, &file).map_err(BenchError::io("saving the lab"))?;
            let line = next_timing("change")?;
            let get = |k: &str| {
                field(&line, k)
                    .ok_or_else(|| BenchError::Run(format!("timing line without {k}: {line}")))
            };
            let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
            let (last, settled) = (get("last_event_ns")?, get("settled_ns")?);
            let (start, end) = (get("reconcile_start_ns")?, get("reconcile_end_ns")?);
            s.save_to_start.push(ms(saved, start));
            s.debounce.push(ms(last, settled));
            s.reconcile.push(ms(start, end));
        }
        Ok(s)
    })();
    drop(watch);
    let destroyed = super::lab::vmctl(vmctl_bin, &dir, &["destroy", "--auto-approve"]);
    let s = result?;
    destroyed?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_fields_are_read() {
        let l = "timing trigger=change events=2 first_event_ns=7 last_event_ns=9 \
                 settled_ns=100 reconcile_start_ns=101 reconcile_end_ns=110";
        assert_eq!(field(l, "last_event_ns"), Some(9));
        assert_eq!(field(l, "reconcile_start_ns"), Some(101));
        assert_eq!(field(l, "event"), None);
        assert!(lab_text(3).starts_with("// save 3\n"));
    }
}
