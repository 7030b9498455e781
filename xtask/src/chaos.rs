//! `cargo xtask chaos`: issue 18's chaos test of vmctl across hosts, a
//! bounded mode outside `cargo test`. Against a real 3-member etcd, three
//! SSH namespace "hosts" and diag VMs on this machine's /dev/kvm, it injects
//! four faults into `vmctl apply` (see [`scenarios`]), re-applies until
//! `vmctl plan --detailed-exitcode` says the lab converged, and after every
//! run checks the invariants ([`invariants`]): no VM lost, none duplicated,
//! every guest reporting, the etcd records where the VMs are. Convergence by
//! re-running apply is the contract; nothing here retries inside vmctl.
//!
//! Output: a line per run, a summary table, and `target/chaos/results.json`
//! (`format_version` "1"); the exit status is non-zero if any invariant or
//! scenario check failed. The logs of every vmctl run are kept in
//! `target/chaos/run/logs/`.

mod env;
mod invariants;
mod proc;
mod scenarios;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::crash::scenario::Rng;

pub const USAGE: &str = "usage: cargo xtask chaos [--runs N] [--seed S] [--quick]

  --runs N     runs of each scenario (default 5)
  --seed S     the seed of the random fault points (default: from the clock; printed)
  --quick      one run of each scenario (CI)

Scenarios: kill-apply (SIGKILL apply at a random point), kill-etcd-leader,
etcd-quorum-lost (two of three etcd members SIGKILLed mid-apply), link-cut
(a host's link down mid-apply), stop-coordinator (SIGSTOP past the lease, a
second apply takes over, SIGCONT), kill-move (SIGKILL `vmctl move` at a random
point). Needs root, /dev/kvm, etcd,
sshd, ssh, socat and ip. Results: target/chaos/results.json.";

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not finish within {secs} s (killed)")]
    Hung { what: String, secs: u64 },
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub seed: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 5,
            seed: None,
        }
    }
}

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, ChaosError> {
    let mut o = Options::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) if n >= 1 => o.runs = n,
                _ => return Err(ChaosError::Usage("--runs needs a number (>= 1)".into())),
            },
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => o.seed = Some(s),
                None => return Err(ChaosError::Usage("--seed needs a number".into())),
            },
            "--quick" => o.runs = 1,
            other => return Err(ChaosError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(o)
}

/// One scenario's figures over its runs.
#[derive(Debug, Default)]
struct Row {
    name: &'static str,
    runs: usize,
    faults: usize,
    converged: usize,
    attempts: Vec<usize>,
    lost: usize,
    duplicated: usize,
    failures: Vec<String>,
}

pub fn run(opts: &Options) -> Result<bool, ChaosError> {
    let started = Instant::now();
    if !Path::new("/dev/kvm").exists() {
        return Err(ChaosError::Setup("no /dev/kvm".into()));
    }
    let vmctl = crate::crash::build_vmctl().map_err(|e| ChaosError::Setup(e.to_string()))?;
    let target = vmctl
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let out_dir = target.join("chaos");
    let dir = out_dir.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            % 1_000_000
    });
    println!(
        "chaos: seed {seed}, {} run(s) of each of {} scenarios, vmctl {}",
        opts.runs,
        scenarios::NAMES.len(),
        vmctl.display()
    );
    let mut env = env::Env::start(&vmctl, &dir)?;
    println!(
        "chaos: etcd on {}, hosts {}; lab in {}",
        env.etcd.endpoints().join(","),
        env.hosts
            .hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        dir.display()
    );
    let t = Instant::now();
    let first = env.converge()?;
    let check = invariants::check(&mut env)?;
    match first {
        Ok(n) if check.ok() => println!(
            "chaos: the lab converged in {n} apply(s), {:.1} s; invariants hold",
            t.elapsed().as_secs_f64()
        ),
        other => {
            return Err(ChaosError::Setup(format!(
                "the lab does not converge without faults ({other:?}): {:?}",
                check.problems
            )));
        }
    }

    let mut rows = Vec::new();
    for (i, name) in scenarios::NAMES.iter().enumerate() {
        let mut row = Row {
            name,
            ..Row::default()
        };
        for k in 0..opts.runs {
            let mut rng = Rng::new(seed ^ ((i as u64 + 1) << 32) ^ (k as u64 + 1));
            let t = Instant::now();
            row.runs += 1;
            let r = match scenarios::run(name, &mut env, &mut rng) {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!("{name} run {}: harness: {e}", k + 1);
                    println!("  {msg}");
                    row.failures.push(msg);
                    continue;
                }
            };
            row.faults += r.faults;
            if let Some(n) = r.attempts {
                row.converged += 1;
                row.attempts.push(n);
            }
            row.lost += r.check.lost;
            row.duplicated += r.check.duplicated;
            let ok = r.problems.is_empty() && r.check.ok() && r.attempts.is_some();
            println!(
                "  {name} run {}: {}; converged in {} apply(s); lost {}, duplicated {}; {:.1} s {}",
                k + 1,
                r.fault,
                r.attempts.map_or("-".to_string(), |n| n.to_string()),
                r.check.lost,
                r.check.duplicated,
                t.elapsed().as_secs_f64(),
                if ok { "OK" } else { "FAILED" }
            );
            for p in r.problems.iter().chain(&r.check.problems) {
                println!("    {p}");
                row.failures.push(format!("{name} run {}: {p}", k + 1));
            }
        }
        rows.push(row);
    }
    let wall = started.elapsed();
    print_table(&rows, seed, wall);
    let ok = rows.iter().all(|r| r.failures.is_empty());
    write_results(&out_dir, &rows, seed, opts, wall, ok)?;
    drop(env);
    Ok(ok)
}

fn print_table(rows: &[Row], seed: u64, wall: Duration) {
    println!(
        "\n{:<18} {:>4} {:>7} {:>9} {:>14} {:>5} {:>10}",
        "scenario", "runs", "faults", "converged", "attempts(max)", "lost", "duplicated"
    );
    for r in rows {
        println!(
            "{:<18} {:>4} {:>7} {:>9} {:>14} {:>5} {:>10}",
            r.name,
            r.runs,
            r.faults,
            format!("{}/{}", r.converged, r.runs),
            format!(
                "{} ({})",
                r.attempts.iter().sum::<usize>(),
                r.attempts.iter().max().copied().unwrap_or(0)
            ),
            r.lost,
            r.duplicated
        );
    }
    let failures: usize = rows.iter().map(|r| r.failures.len()).sum();
    println!(
        "\nchaos: seed {seed}, {:.0} s wall, {failures} failure(s){}",
        wall.as_secs_f64(),
        if failures > 0 {
            format!("; replay: cargo xtask chaos --seed {seed}")
        } else {
            String::new()
        }
    );
}

fn write_results(
    out_dir: &Path,
    rows: &[Row],
    seed: u64,
    opts: &Options,
    wall: Duration,
    ok: bool,
) -> Result<(), ChaosError> {
    let doc = json!({
        "format_version": "1",
        "seed": seed,
        "runs": opts.runs,
        "wall_secs": wall.as_secs_f64(),
        "ok": ok,
        "scenarios": rows.iter().map(|r| json!({
            "name": r.name,
            "runs": r.runs,
            "faults": r.faults,
            "converged": r.converged,
            "attempts": r.attempts,
            "vms_lost": r.lost,
            "vms_duplicated": r.duplicated,
            "failures": r.failures,
        })).collect::<Vec<_>>(),
    });
    let path = out_dir.join("results.json");
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    std::fs::write(&path, text + "\n").map_err(|source| ChaosError::Io { path, source })?;
    println!(
        "chaos: results in {}",
        out_dir.join("results.json").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> impl Iterator<Item = String> {
        a.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn options_parse_and_bad_ones_are_refused() {
        let o = parse(args(&[])).unwrap();
        assert_eq!((o.runs, o.seed), (5, None));
        let o = parse(args(&["--quick", "--seed", "42"])).unwrap();
        assert_eq!((o.runs, o.seed), (1, Some(42)));
        assert_eq!(parse(args(&["--runs", "3"])).unwrap().runs, 3);
        for bad in [&["--runs", "0"][..], &["--seed"], &["--what"]] {
            assert!(
                matches!(parse(args(bad)), Err(ChaosError::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_usage_names_every_scenario() {
        let words: Vec<&str> = USAGE
            .split(|c: char| c.is_whitespace() || c == ',' || c == '(')
            .collect();
        for name in scenarios::NAMES {
            assert!(words.contains(&name), "{name} is missing from USAGE");
        }
    }

    #[test]
    fn every_flip_of_the_lab_has_work_of_each_kind() {
        let [a, b] = env::VERSIONS;
        let names = |v: &[env::Vm]| v.iter().map(|x| x.name).collect::<Vec<_>>();
        let (na, nb) = (names(a), names(b));
        assert!(na.iter().any(|n| !nb.contains(n)), "a VM goes");
        assert!(nb.iter().any(|n| !na.contains(n)), "a VM comes");
        assert!(
            a.iter()
                .any(|x| b.iter().any(|y| y.name == x.name && y != x)),
            "a VM changes"
        );
        assert!(a.len() >= 5 && b.len() >= 5);
    }
}
