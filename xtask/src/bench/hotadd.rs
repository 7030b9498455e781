//! Row "vCPU 1 → 2, apply until the guest sees it: hot-add vs restart".
//! Two one-VM diag labs run side by side: one declares `cpus 1 max=2`, so
//! `cpus 2` is a live hot-add (planner's capability table: within the
//! hot-add max); the other declares `cpus 1` (max = boot value), so the
//! same `cpus 2` exceeds the max and is a restart. Each sample writes
//! `cpus 2`, runs `vmctl apply --auto-approve`, and polls `vmctl status
//! --json` until diag's own report says 2 CPUs; the wall time from the
//! apply's start to that report is the sample. The VM is then put back to
//! one vCPU (not timed). The two variants alternate.

use std::path::Path;
use std::time::Instant;

use super::BenchError;
use super::lab::{lab_dir, vmctl, wait_vm};

/// The lab text: one diag VM with `cpus` boot vCPUs and `max` as written.
fn lab_text(cpus: u32, max: Option<u32>) -> String {
    let max = max.map(|m| format!(" max={m}")).unwrap_or_default();
    format!("vm \"h0\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    cpus {cpus}{max}\n}}\n")
}

fn guest_cpus(v: &serde_json::Value) -> Option<u64> {
    v["guest"]["cpus"].as_u64()
}

/// One variant's lab: `max` Some(2) is the hot-add one, None the restart one.
struct Variant<'a> {
    dir: std::path::PathBuf,
    max: Option<u32>,
    vmctl: &'a Path,
}

impl Variant<'_> {
    fn set(&self, cpus: u32) -> Result<(), BenchError> {
        let max = self.max.map(|m| m.max(cpus));
        std::fs::write(self.dir.join("vmctl.kdl"), lab_text(cpus, max))
            .map_err(BenchError::io("writing the lab"))?;
        vmctl(self.vmctl, &self.dir, &["apply", "--auto-approve"])?;
        Ok(())
    }

    fn wait_cpus(&self, n: u64) -> Result<(), BenchError> {
        wait_vm(
            self.vmctl,
            &self.dir,
            "h0",
            "diag's report of its CPUs",
            |v| guest_cpus(v) == Some(n),
        )
    }

    /// One timed 1 → 2, then back to 1.
    fn sample(&self) -> Result<f64, BenchError> {
        let t0 = Instant::now();
        self.set(2)?;
        self.wait_cpus(2)?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.set(1)?;
        self.wait_cpus(1)?;
        Ok(ms)
    }
}

/// (hot-add ms, restart ms) samples, `runs` each.
pub fn hotadd_row(
    vmctl_bin: &Path,
    work: &Path,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let mut variants = Vec::new();
    for (tag, max) in [("hotadd-live", Some(2)), ("hotadd-restart", None)] {
        let v = Variant {
            dir: lab_dir(work, tag, &lab_text(1, max))?,
            max,
            vmctl: vmctl_bin,
        };
        v.set(1)?;
        variants.push(v);
    }
    let result = (|| {
        for v in &variants {
            v.wait_cpus(1)?;
        }
        let (mut live, mut restart) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            live.push(variants[0].sample()?);
            restart.push(variants[1].sample()?);
        }
        Ok((live, restart))
    })();
    for v in &variants {
        let _ = vmctl(vmctl_bin, &v.dir, &["destroy", "--auto-approve"]);
        if result.is_ok() {
            let _ = std::fs::remove_dir_all(&v.dir);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_labs_differ_only_in_the_max() {
        assert!(lab_text(1, Some(2)).contains("    cpus 1 max=2\n"));
        assert!(lab_text(2, None).contains("    cpus 2\n}"));
        assert_eq!(
            guest_cpus(&serde_json::json!({"guest": {"cpus": 2}})),
            Some(2)
        );
        assert_eq!(guest_cpus(&serde_json::Value::Null), None);
    }
}
