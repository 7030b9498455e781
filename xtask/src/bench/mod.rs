//! `cargo xtask bench [--quick] [--runs N]`: vmctl side by side with the
//! peer a user would pick instead, measured in the same run on the same
//! machine, interleaved (vmctl, peer, vmctl, peer, ...), each side reported
//! as median and min–max. Prints one table and writes
//! `target/bench/results.json` (`format_version` "1"). `--quick` runs every
//! row once with one or two samples, to check the harness works (`.ci/run`;
//! nothing asserts on times). What each row measures and what each peer is
//! given: docs/benchmarks.md.

mod apply;
mod boot;
mod copy;
mod hotadd;
mod inproc;
mod lab;
mod nested;
pub(crate) mod stats;
mod watch;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use boot::Vmm;
use stats::{Stats, ratio};

pub const USAGE: &str = "usage: cargo xtask bench [--quick] [--runs N] [--nested]

  --quick    every row once, 1-2 samples a side, debug build: checks the harness
  --runs N   samples per side for the boot and RSS rows (default 10; apply, copy and
             hot-add rows use N/2)
  --nested   instead of the table: the nested lab's row, a Debian boot to the guest
             agent's first report under vmctl vs QEMU microvm in the same L1 (N/2
             boots a side, interleaved; ~10 min); writes target/bench/results-nested.json

VMCTL_BENCH_DIR=DIR puts the copy row's 10 GiB disk on DIR's filesystem.

Needs /dev/kvm and qemu-system-x86_64 (Debian: apt-get install -y qemu-system-x86).
Writes target/bench/results.json; see docs/benchmarks.md.";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Missing(String),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Run(String),
}

impl BenchError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
        move |source| BenchError::Io { what, source }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub runs: usize,
    /// Internal: `--plan-inproc N`: only time N-VM no-op plans in this
    /// process and print the samples as JSON (the full run re-executes
    /// xtask in release for this row).
    pub plan_inproc: Option<usize>,
    /// `--nested`: only the nested lab's Debian boot row.
    pub nested: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            runs: 10,
            plan_inproc: None,
            nested: false,
        }
    }
}

pub fn parse(args: impl Iterator<Item = String>) -> Result<Options, BenchError> {
    let mut o = Options::default();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--nested" => o.nested = true,
            "--runs" => {
                o.runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n >= 1)
                    .ok_or_else(|| BenchError::Usage("--runs takes a number ≥ 1".into()))?;
            }
            "--plan-inproc" => {
                o.plan_inproc = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| BenchError::Usage("--plan-inproc takes a number".into()))?,
                );
            }
            other => return Err(BenchError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    if o.quick {
        o.runs = 1;
    }
    Ok(o)
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: String,
    pub measure: String,
    pub unit: String,
    pub vmctl_label: String,
    pub vmctl: Option<Stats>,
    pub peer_label: Option<String>,
    pub peer: Option<Stats>,
    /// vmctl's median / the peer's.
    pub ratio: Option<f64>,
}

impl Row {
    fn new(
        id: &str,
        measure: &str,
        unit: &str,
        vmctl: (&str, &[f64]),
        peer: Option<(&str, &[f64])>,
    ) -> Row {
        let a = Stats::of(vmctl.1);
        let b = peer.and_then(|p| Stats::of(p.1));
        Row {
            id: id.into(),
            measure: measure.into(),
            unit: unit.into(),
            vmctl_label: vmctl.0.into(),
            ratio: ratio(a.as_ref(), b.as_ref()),
            vmctl: a,
            peer_label: peer.map(|p| p.0.to_string()),
            peer: b,
        }
    }
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    format_version: &'static str,
    started_unix: u64,
    quick: bool,
    runs: usize,
    machine: Machine,
    rows: &'a [Row],
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
    loadavg_at_start: String,
    qemu: String,
}

pub fn main(opts: &Options) -> Result<bool, BenchError> {
    if let Some(n) = opts.plan_inproc {
        let samples = inproc::noop_plan(n, opts.runs)?;
        println!(
            "{}",
            serde_json::to_string(&samples).map_err(|e| BenchError::Run(e.to_string()))?
        );
        return Ok(true);
    }
    if !Path::new("/dev/kvm").exists() {
        return Err(BenchError::Missing("bench needs /dev/kvm".into()));
    }
    if opts.nested {
        return nested::main(opts);
    }
    let qemu_version = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .ok_or_else(|| {
            BenchError::Missing(
                "qemu-system-x86_64 not found: the peer VMM. Install it with \
                 `apt-get install -y qemu-system-x86` (.ci/run does)."
                    .into(),
            )
        })?;
    let root = workspace_root();
    let target = target_dir(&root);
    let vmctl = build_vmctl(&root, &target, !opts.quick)?;
    let out_dir = target.join("bench");
    let work = out_dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(BenchError::io("creating target/bench/work"))?;
    // The very same guest file for both VMMs.
    let kernel = work.join("diag.elf");
    std::fs::write(&kernel, vmctl_runtime::diag::KERNEL)
        .map_err(BenchError::io("writing diag.elf"))?;
    let machine = Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .into(),
        qemu: qemu_version,
    };
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    eprintln!(
        "bench: {} cpus, load {}, {}, vmctl {}",
        machine.cpus,
        machine.loadavg_at_start,
        machine.qemu,
        vmctl.display()
    );

    let mut rows = Vec::new();
    let runs = opts.runs;
    for mib in [128u64, 1024] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..runs {
            a.push(boot::boot_once(
                Vmm::Vmctl,
                &vmctl,
                &kernel,
                mib,
                &work,
                &format!("v{mib}-{i}"),
            )?);
            b.push(boot::boot_once(
                Vmm::Qemu,
                &vmctl,
                &kernel,
                mib,
                &work,
                &format!("q{mib}-{i}"),
            )?);
        }
        eprintln!("bench: boot {mib} MiB done ({runs} a side)");
        let col = |s: &[boot::BootSample], f: fn(&boot::BootSample) -> f64| -> Vec<f64> {
            s.iter().map(f).collect()
        };
        rows.push(Row::new(
            &format!("first_byte_{mib}"),
            &format!("process start → first guest byte on COM1 (diag, 1 vCPU, {mib} MiB)"),
            "ms",
            ("vmctl __vmm", &col(&a, |s| s.first_byte_ms)),
            Some(("QEMU microvm", &col(&b, |s| s.first_byte_ms))),
        ));
        rows.push(Row::new(
            &format!("rss_overhead_{mib}"),
            &format!("VMM RSS outside guest RAM, after diag's report ({mib} MiB VM)"),
            "MiB",
            ("vmctl __vmm", &col(&a, |s| s.rss_overhead_mib)),
            Some(("QEMU microvm", &col(&b, |s| s.rss_overhead_mib))),
        ));
        rows.push(Row::new(
            &format!("rss_total_{mib}"),
            &format!("VMM RSS in total, guest RAM touched included ({mib} MiB VM)"),
            "MiB",
            ("vmctl __vmm", &col(&a, |s| s.rss_total_mib)),
            Some(("QEMU microvm", &col(&b, |s| s.rss_total_mib))),
        ));
    }

    let apply_runs = if opts.quick { 1 } else { (runs / 2).max(1) };
    let counts: &[usize] = if opts.quick { &[1, 2] } else { &[1, 10, 50] };
    for &n in counts {
        // 50 VMs take ~15 s a side here: 3 samples keep the run in 10 min.
        let samples = if n >= 50 {
            apply_runs.min(3)
        } else {
            apply_runs
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..samples {
            a.push(apply::vmctl_apply(
                &vmctl,
                &work,
                n,
                &format!("apply{n}-{i}"),
            )?);
            b.push(apply::qemu_loop(
                &kernel,
                &work,
                n,
                &format!("qloop{n}-{i}"),
            )?);
        }
        eprintln!("bench: apply of {n} done ({samples} a side)");
        let wall = |s: &[lab::Timed]| s.iter().map(|t| t.wall_ms).collect::<Vec<_>>();
        let cpu = |s: &[lab::Timed]| s.iter().map(|t| t.cpu_ms).collect::<Vec<_>>();
        let per_vm = |s: &[lab::Timed]| s.iter().map(|t| t.wall_ms / n as f64).collect::<Vec<_>>();
        rows.push(Row::new(
            &format!("apply_{n}"),
            &format!("start {n} diag VM(s) of 128 MiB, wall"),
            "ms",
            ("vmctl apply", &wall(&a)),
            Some(("sh loop: qemu -daemonize", &wall(&b))),
        ));
        rows.push(Row::new(
            &format!("apply_{n}_cpu"),
            &format!(
                "start {n} diag VM(s), CPU (user+sys of the command and its waited-for children)"
            ),
            "ms",
            ("vmctl apply", &cpu(&a)),
            Some(("sh loop: qemu -daemonize", &cpu(&b))),
        ));
        rows.push(Row::new(
            &format!("apply_{n}_per_vm"),
            &format!("start {n} diag VM(s), wall per VM"),
            "ms",
            ("vmctl apply", &per_vm(&a)),
            Some(("sh loop: qemu -daemonize", &per_vm(&b))),
        ));
    }

    let noop_counts: &[usize] = if opts.quick { &[2] } else { &[10, 100] };
    for &n in noop_counts {
        let (plan, apply) = apply::noop(&vmctl, &work, n, apply_runs.max(3).min(runs))?;
        eprintln!("bench: no-op plan/apply of {n} done");
        rows.push(Row::new(
            &format!("noop_plan_{n}"),
            &format!("no-op `vmctl plan` of a {n}-VM lab, process wall"),
            "ms",
            ("vmctl plan", &plan),
            None,
        ));
        rows.push(Row::new(
            &format!("noop_apply_{n}"),
            &format!("no-op `vmctl apply` of a {n}-VM lab, process wall"),
            "ms",
            ("vmctl apply", &apply),
            None,
        ));
    }

    let plan_n = if opts.quick { 100 } else { 10_000 };
    let plan_samples = plan_inproc(&root, plan_n, runs, opts.quick)?;
    eprintln!("bench: in-process plan of {plan_n} done");
    rows.push(Row::new(
        &format!("inproc_plan_{plan_n}"),
        &format!(
            "no-op plan of a {plan_n}-VM lab, in process ({} build)",
            if opts.quick { "debug" } else { "release" }
        ),
        "ms",
        ("vmctl_planner::plan", &plan_samples),
        None,
    ));

    let copy = copy::copy_row(&vmctl, &work, apply_runs)?;
    eprintln!("bench: copy done ({apply_runs} a side)");
    let copy_measure = "copy of a 10 GiB disk holding 200 MiB";
    rows.push(Row::new(
        "copy_10g_cp",
        &format!("{copy_measure} (vs cp)"),
        "ms",
        ("vmctl backup (live)", &copy.backup),
        Some(("cp --sparse=always", &copy.cp)),
    ));
    rows.push(Row::new(
        "copy_10g_qemu_img",
        &format!("{copy_measure} (vs qemu-img)"),
        "ms",
        ("vmctl backup (live)", &copy.backup),
        Some(("qemu-img convert -O raw", &copy.qemu_img)),
    ));
    rows.push(Row::new(
        "copy_10g_paused",
        "guest paused during that backup",
        "ms",
        ("vmctl backup", &copy.paused),
        None,
    ));

    let w = watch::watch_row(&vmctl, &work, if opts.quick { 1 } else { runs })?;
    eprintln!("bench: watch done");
    rows.push(Row::new(
        "watch_save_to_reconcile",
        "watch: file save → reconcile started (no-op change)",
        "ms",
        ("vmctl watch", &w.save_to_start),
        None,
    ));
    rows.push(Row::new(
        "watch_debounce",
        "of which the debounce: last file event → settled (--debounce-ms 100)",
        "ms",
        ("vmctl watch", &w.debounce),
        None,
    ));
    rows.push(Row::new(
        "watch_reconcile",
        "then the no-op reconcile: start → end",
        "ms",
        ("vmctl watch", &w.reconcile),
        None,
    ));

    let (live, restart) = hotadd::hotadd_row(&vmctl, &work, apply_runs)?;
    eprintln!("bench: hot-add done ({apply_runs} a side)");
    rows.push(Row::new(
        "hotadd_vs_restart",
        "vCPUs 1 → 2 of a diag VM: apply until the guest reports 2",
        "ms",
        ("vmctl hot-add (live)", &live),
        Some(("vmctl restart (same change)", &restart)),
    ));

    print_table(&rows);
    let results = Results {
        format_version: "1",
        started_unix,
        quick: opts.quick,
        runs,
        machine,
        rows: &rows,
    };
    let json = serde_json::to_string_pretty(&results)
        .map_err(|e| BenchError::Run(format!("results.json: {e}")))?;
    let path = out_dir.join("results.json");
    std::fs::write(&path, json + "\n").map_err(BenchError::io("writing results.json"))?;
    let _ = std::fs::remove_dir_all(&work);
    println!("\nwrote {}", path.display());
    Ok(true)
}

/// Samples of the in-process no-op plan of an `n`-VM lab: in this process
/// for `--quick` (a debug build: it only checks the row works), otherwise
/// from xtask itself rebuilt and run in release, so the planner is measured
/// as vmctl ships it.
fn plan_inproc(root: &Path, n: usize, runs: usize, quick: bool) -> Result<Vec<f64>, BenchError> {
    if quick {
        return inproc::noop_plan(n, runs);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["run", "--quiet", "--release", "-p", "xtask", "--", "bench"])
        .args(["--runs", &runs.to_string(), "--plan-inproc", &n.to_string()])
        .output()
        .map_err(|source| BenchError::Spawn {
            what: "cargo run --release -p xtask".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::Run(format!(
            "xtask bench --plan-inproc: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::Run(format!("xtask bench --plan-inproc output: {e}")))
}

/// The table as markdown (docs/benchmarks.md takes it as printed).
pub fn render_table(rows: &[Row]) -> String {
    let mut t = String::from("| measure | vmctl | peer | vmctl / peer |\n|---|---|---|---|\n");
    for r in rows {
        let digits = 1;
        let a = r
            .vmctl
            .as_ref()
            .map(|s| format!("{} {}: {}", r.vmctl_label, r.unit, s.cell(digits)))
            .unwrap_or_else(|| "—".into());
        let b = match (&r.peer_label, &r.peer) {
            (Some(l), Some(s)) => format!("{l} {}: {}", r.unit, s.cell(digits)),
            _ => "— (absolute)".into(),
        };
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "—".into());
        t.push_str(&format!("| {} | {a} | {b} | {ratio} |\n", r.measure));
    }
    t
}

fn print_table(rows: &[Row]) {
    println!("\nmedian (min–max) of each side\n");
    print!("{}", render_table(rows));
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

/// `cargo build -p vmctl` (release unless `--quick`) and the binary's path.
fn build_vmctl(root: &Path, target: &Path, release: bool) -> Result<PathBuf, BenchError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--quiet", "-p", "vmctl", "--bin", "vmctl"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|source| BenchError::Spawn {
        what: "cargo build -p vmctl".into(),
        source,
    })?;
    if !status.success() {
        return Err(BenchError::Run(format!("cargo build -p vmctl: {status}")));
    }
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("vmctl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let p = |a: &[&str]| parse(a.iter().map(|s| s.to_string()));
        assert_eq!(p(&[]).unwrap().runs, 10);
        let q = p(&["--quick", "--runs", "7"]).unwrap();
        assert!(q.quick);
        assert_eq!(q.runs, 1, "--quick wins");
        assert_eq!(p(&["--runs", "4"]).unwrap().runs, 4);
        assert!(p(&["--runs", "0"]).is_err());
        assert!(p(&["--fast"]).is_err());
        assert_eq!(p(&["--plan-inproc", "100"]).unwrap().plan_inproc, Some(100));
        assert!(p(&["--plan-inproc"]).is_err());
    }

    #[test]
    fn table_has_one_line_per_row_and_ratios() {
        let rows = vec![
            Row::new(
                "a",
                "boot",
                "ms",
                ("vmctl", &[10.0, 12.0, 11.0]),
                Some(("qemu", &[40.0])),
            ),
            Row::new("b", "plan", "ms", ("vmctl plan", &[3.0]), None),
        ];
        let t = render_table(&rows);
        assert_eq!(t.lines().count(), 4);
        assert!(
            t.contains("| boot | vmctl ms: 11.0 (10.0–12.0) | qemu ms: 40.0 | 0.28 |"),
            "{t}"
        );
        assert!(
            t.contains("| plan | vmctl plan ms: 3.0 | — (absolute) | — |"),
            "{t}"
        );
    }
}
