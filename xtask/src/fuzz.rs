//! `cargo xtask fuzz`: builds the libFuzzer targets in `fuzz/` with stable
//! rustc and runs them (docs/fuzzing.md).
//!
//! Why not `cargo fuzz`: it wants nightly for its default sanitizer and is
//! one more tool to install; the coverage instrumentation libFuzzer needs is
//! plain stable codegen flags (the ones cargo-fuzz passes), and libFuzzer
//! itself comes with the `libfuzzer-sys` crate. So CI needs only a C++
//! compiler for that crate.
//!
//! `--smoke` runs every target for a bounded time from the committed seeds
//! in a scratch corpus and fails on any crash, leak, timeout or OOM; a
//! campaign (`TARGET --time SECS`) keeps its corpus in
//! `fuzz/target/corpus/TARGET` across runs. Crash inputs land in
//! `fuzz/artifacts/TARGET/` (ignored by git: a crash becomes a unit test in
//! the crate that was wrong, not a committed file).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub const USAGE: &str = "usage: cargo xtask fuzz --smoke [--time SECS]
       cargo xtask fuzz TARGET [--time SECS] [--asan]
       cargo xtask fuzz --list | --build [--asan]

  --smoke        build, then run every target SECS (default 15) from its seeds; fail on any crash
  TARGET         a campaign on one target for SECS (default 600), corpus kept in
                 fuzz/target/corpus/TARGET; crash inputs in fuzz/artifacts/TARGET/
  --list         the targets (fuzz/fuzz_targets/*.rs)
  --build        only build the instrumented targets
  --asan         with AddressSanitizer: needs the nightly toolchain (rustup), builds
                 into fuzz/target/asan; for campaigns, not for CI";

/// The instrumentation cargo-fuzz passes (without a sanitizer), all stable.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
];

/// Variables of the outer `cargo run` that must not steer the inner build.
const STRIP_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC",
    "RUSTUP_TOOLCHAIN",
];

#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FuzzError {
    let what = what.into();
    move |source| FuzzError::Io { what, source }
}

/// Which run: the smoke test of every target, or a campaign on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Smoke {
        secs: u64,
    },
    Campaign {
        target: String,
        secs: u64,
        asan: bool,
    },
    List,
    Build {
        asan: bool,
    },
}

pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Mode, FuzzError> {
    let mut smoke = false;
    let mut list = false;
    let mut build = false;
    let mut asan = false;
    let mut target = None;
    let mut secs = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--list" => list = true,
            "--build" => build = true,
            "--asan" => asan = true,
            "--time" => match args.next().and_then(|s| s.parse::<u64>().ok()) {
                Some(t) if t >= 1 => secs = Some(t),
                _ => return Err(FuzzError::Usage("--time needs a number of seconds".into())),
            },
            t if !t.starts_with('-') && target.is_none() => target = Some(t.to_string()),
            other => return Err(FuzzError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    match (smoke, list, build, target) {
        (true, false, false, None) if !asan => Ok(Mode::Smoke {
            secs: secs.unwrap_or(15),
        }),
        (false, true, false, None) => Ok(Mode::List),
        (false, false, true, None) => Ok(Mode::Build { asan }),
        (false, false, false, Some(target)) => Ok(Mode::Campaign {
            target,
            secs: secs.unwrap_or(600),
            asan,
        }),
        _ => Err(FuzzError::Usage(
            "give one of --smoke, --list, --build or a TARGET".into(),
        )),
    }
}

/// The repository root (xtask lives one level down).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The targets: the file stems of fuzz/fuzz_targets/*.rs, sorted.
pub fn targets(root: &Path) -> Result<Vec<String>, FuzzError> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))? {
        let path = entry
            .map_err(io(format!("listing {}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn host_triple() -> Result<String, FuzzError> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(io("running rustc -vV"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or_else(|| FuzzError::Failed("rustc -vV printed no host triple".into()))
}

/// Build every target; returns the directory holding the binaries. An
/// explicit `--target` keeps the flags off build scripts and proc macros.
/// With `asan`, nightly's AddressSanitizer too, in its own target dir.
fn build(root: &Path, asan: bool) -> Result<PathBuf, FuzzError> {
    let triple = host_triple()?;
    let started = Instant::now();
    let mut flags = RUSTFLAGS.to_vec();
    let mut cmd = if asan {
        flags.push("-Zsanitizer=address");
        // The rustup proxy picks the toolchain from `+nightly`.
        let mut c = Command::new("cargo");
        c.arg("+nightly");
        c
    } else {
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
    };
    let target_dir = if asan {
        root.join("fuzz/target/asan")
    } else {
        root.join("fuzz/target")
    };
    eprintln!(
        "fuzz: building the targets (release, libFuzzer coverage{}, {triple})",
        if asan { ", AddressSanitizer" } else { "" }
    );
    for v in STRIP_VARS {
        cmd.env_remove(v);
    }
    let status = cmd
        .current_dir(root)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--release", "--bins", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        .args(["--target", &triple])
        .status()
        .map_err(io("running cargo build for fuzz/"))?;
    if !status.success() {
        return Err(FuzzError::Failed(format!(
            "building the fuzz targets failed ({status})"
        )));
    }
    eprintln!(
        "fuzz: built in {:.0} s",
        started.elapsed().as_secs_f64().ceil()
    );
    Ok(target_dir.join(triple).join("release"))
}

/// What one run reported (libFuzzer's final stats and last status line).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    pub execs: u64,
    pub execs_per_sec: u64,
    pub cov: u64,
    pub ft: u64,
    pub corpus: u64,
    pub secs: u64,
    pub crashed: bool,
    pub artifact: Option<String>,
}

/// Read libFuzzer's output: `stat::number_of_executed_units: N`,
/// `stat::average_exec_per_sec: N` and the last `#N ... cov: C ft: F corp: K/...`.
pub fn parse_log(log: &str) -> Figures {
    let mut f = Figures::default();
    let num = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
    for line in log.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            f.execs = num(v);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            f.execs_per_sec = num(v);
        } else if line.starts_with('#') {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                match w {
                    "cov:" => f.cov = words.next().map_or(0, num),
                    "ft:" => f.ft = words.next().map_or(0, num),
                    "corp:" => {
                        f.corpus = words
                            .next()
                            .and_then(|c| c.split('/').next())
                            .map_or(0, num)
                    }
                    _ => {}
                }
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            f.artifact = Some(path.trim().to_string());
        }
    }
    f
}

/// Run `target` for `secs` with `corpus` as its working corpus (the seeds
/// are read as a second, read-only directory). The log goes to
/// fuzz/target/logs/TARGET.KIND.log.
fn run(
    root: &Path,
    bin_dir: &Path,
    target: &str,
    secs: u64,
    corpus: &Path,
    kind: &str,
) -> Result<Figures, FuzzError> {
    let seeds = root.join("fuzz/corpus").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    let logs = root.join("fuzz/target/logs");
    for d in [corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    let log_path = logs.join(format!("{target}.{kind}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
    let started = Instant::now();
    let status = Command::new(bin_dir.join(target))
        .arg(corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={secs}"))
        // One input running 10 s is a hang: a finding like a crash.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .map_err(io(format!("running fuzz target {target}")))?;
    let text = std::fs::read_to_string(&log_path)
        .map_err(io(format!("reading {}", log_path.display())))?;
    let mut f = parse_log(&text);
    f.secs = started.elapsed().as_secs();
    f.crashed = !status.success();
    if f.crashed {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("--- {target}: last lines of {}", log_path.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    Ok(f)
}

fn figures_line(target: &str, f: &Figures) -> String {
    format!(
        "{target:<16} {:>6} s {:>12} execs {:>8} exec/s  cov {:>5}  ft {:>6}  corpus {:>5}  {}",
        f.secs,
        f.execs,
        f.execs_per_sec,
        f.cov,
        f.ft,
        f.corpus,
        match (&f.crashed, &f.artifact) {
            (false, _) => "ok".to_string(),
            (true, Some(a)) => format!("CRASH {a}"),
            (true, None) => "FAILED (see the log)".to_string(),
        }
    )
}

pub fn main(args: impl Iterator<Item = String>) -> Result<bool, FuzzError> {
    let mode = parse_args(args)?;
    let root = root();
    let all = targets(&root)?;
    match mode {
        Mode::List => {
            for t in &all {
                println!("{t}");
            }
            Ok(true)
        }
        Mode::Build { asan } => build(&root, asan).map(|_| true),
        Mode::Smoke { secs } => {
            let started = Instant::now();
            let bin_dir = build(&root, false)?;
            let mut ok = true;
            for t in &all {
                // A scratch corpus: the smoke run starts from the seeds alone.
                let corpus = root.join("fuzz/target/smoke-corpus").join(t);
                let _ = std::fs::remove_dir_all(&corpus);
                let f = run(&root, &bin_dir, t, secs, &corpus, "smoke")?;
                println!("{}", figures_line(t, &f));
                ok &= !f.crashed;
            }
            println!(
                "fuzz smoke: {} targets, {} s in all: {}",
                all.len(),
                started.elapsed().as_secs(),
                if ok { "no crash" } else { "FAILED" }
            );
            Ok(ok)
        }
        Mode::Campaign { target, secs, asan } => {
            if !all.contains(&target) {
                return Err(FuzzError::Usage(format!(
                    "no fuzz target {target:?} (there are: {})",
                    all.join(", ")
                )));
            }
            let bin_dir = build(&root, asan)?;
            let corpus = root.join("fuzz/target/corpus").join(&target);
            let kind = if asan { "campaign-asan" } else { "campaign" };
            let f = run(&root, &bin_dir, &target, secs, &corpus, kind)?;
            println!("{}", figures_line(&target, &f));
            Ok(!f.crashed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> {
        s.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(args("--smoke")).unwrap(),
            Mode::Smoke { secs: 15 }
        );
        assert_eq!(
            parse_args(args("--smoke --time 5")).unwrap(),
            Mode::Smoke { secs: 5 }
        );
        assert_eq!(
            parse_args(args("kdl_resolve --time 900")).unwrap(),
            Mode::Campaign {
                target: "kdl_resolve".into(),
                secs: 900,
                asan: false
            }
        );
        assert_eq!(
            parse_args(args("--build --asan")).unwrap(),
            Mode::Build { asan: true }
        );
        assert!(parse_args(args("--smoke --asan")).is_err());
        assert!(parse_args(args("")).is_err());
        assert!(parse_args(args("--smoke kdl_resolve")).is_err());
        assert!(parse_args(args("--time 0 --smoke")).is_err());
    }

    #[test]
    fn libfuzzer_output_is_read() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 5/6b exec/s: 0 rss: 40Mb\n\
                   #4096\tpulse  cov: 100 ft: 200 corp: 30/1Kb lim: 4 exec/s: 2048 rss: 41Mb\n\
                   #5000\tDONE   cov: 120 ft: 250 corp: 35/2Kb lim: 4 exec/s: 2500 rss: 41Mb\n\
                   Done 5000 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 5000\nstat::average_exec_per_sec:     2500\n";
        let f = parse_log(log);
        assert_eq!((f.execs, f.execs_per_sec), (5000, 2500));
        assert_eq!((f.cov, f.ft, f.corpus), (120, 250, 35));
        assert_eq!(f.artifact, None);
        let f = parse_log(
            "==1== ERROR: libFuzzer: deadly signal\nTest unit written to fuzz/artifacts/x/crash-ab\n",
        );
        assert_eq!(f.artifact.as_deref(), Some("fuzz/artifacts/x/crash-ab"));
    }

    #[test]
    fn every_target_is_listed() {
        let t = targets(&root()).unwrap();
        for name in [
            "control_socket",
            "hostrpc_server",
            "kdl_resolve",
            "virtio_blk",
            "virtio_mmio",
            "virtio_net",
            "virtqueue",
        ] {
            assert!(t.iter().any(|x| x == name), "{name} in {t:?}");
        }
    }
}
