//! `cargo xtask crash`: the thorough crash-safety test (issue 15).
//!
//! `cargo test` keeps a small randomized kill test (tests/apply.rs); this
//! mode is the long one, too slow for every test run: many seeds, each a lab
//! of diag VMs on the real `/dev/kvm` driven through the real `vmctl`
//! binary. Every round declares a new desired state (create, copy, destroy,
//! restart, disk grow, CPU/memory hot-add, CPU hot-remove), SIGKILLs
//! `vmctl apply` while an action is in flight (proved from the journal, see
//! [`kill`]), and then requires one plain apply to converge: every declared
//! VM running exactly once with what its guest reports matching the file,
//! no orphan VMM, disks holding exactly the bytes they must (a copy equals
//! its source, a grown disk kept its old bytes), the next plan empty, and
//! the interrupted actions reported by that apply equal to those the
//! journal shows open.

mod kill;
pub(crate) mod scenario;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmctl_planner::ActionKind;

use kill::{Aim, Attempt, Durations};
use scenario::{Desired, MIB, Rng};

#[derive(Debug, thiserror::Error)]
pub enum CrashError {
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
    #[error("{what} did not finish within {secs} s")]
    Hung { what: String, secs: u64 },
    #[error("building vmctl failed ({0})")]
    Build(String),
    #[error("`vmctl {args}` printed no JSON: {text}")]
    NoJson { args: String, text: String },
    #[error("/dev/kvm is not usable here; the crash test needs real KVM")]
    NoKvm,
}

/// `cargo xtask crash` options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kills that must land inside actions, over all seeds.
    pub kills: usize,
    pub seeds: usize,
    /// Replay exactly this seed (all `kills` in it).
    pub seed: Option<u64>,
    /// Keep the lab directories (and, after a violation, the VMs running).
    pub keep: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kills: 100,
            seeds: 10,
            seed: None,
            keep: false,
        }
    }
}

/// Percent of kills aimed blindly (random delay from the start) instead of
/// at an action: they show how often naive timing misses.
const BLIND_PERCENT: u64 = 10;
/// Percent of in-action kills followed by a second killed apply before the
/// recovering one (a crash during recovery).
const DOUBLE_PERCENT: u64 = 25;
/// How long the lab may take to show the desired state after an apply.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the run counted.
#[derive(Debug, Default)]
struct Figures {
    seeds: Vec<u64>,
    rounds: usize,
    kills: usize,
    inside: usize,
    outside: usize,
    blind: usize,
    blind_inside: usize,
    double: usize,
    /// Applies that finished before they could be killed.
    finished_first: usize,
    /// Kills by the kind of action in flight (a kill with two actions in
    /// flight counts under both).
    by_kind: BTreeMap<&'static str, usize>,
    /// Freezes that found no action open (the apply was let go on).
    misses: u64,
    interrupted_reported: usize,
    lost: usize,
    duplicated: usize,
    orphans: usize,
    violations: Vec<String>,
}

/// A broken promise of crash safety, found after a round.
#[derive(Debug)]
struct Violation {
    lost: usize,
    duplicated: usize,
    orphans: usize,
    what: Vec<String>,
}

impl Violation {
    fn new() -> Violation {
        Violation {
            lost: 0,
            duplicated: 0,
            orphans: 0,
            what: Vec::new(),
        }
    }
    fn push(&mut self, s: String) {
        self.what.push(s);
    }
    fn is_empty(&self) -> bool {
        self.what.is_empty()
    }
}

pub fn run(opts: &Options) -> Result<bool, CrashError> {
    let start = Instant::now();
    if !vmctl_runtime::testing::kvm_usable() {
        return Err(CrashError::NoKvm);
    }
    let vmctl = build_vmctl()?;
    let seeds: Vec<u64> = match opts.seed {
        Some(s) => vec![s],
        None => {
            let base = vmctl_planner::journal::now_ms() % 1_000_000;
            (0..opts.seeds as u64).map(|i| base * 100 + i).collect()
        }
    };
    let per_seed = opts.kills.div_ceil(seeds.len().max(1));
    eprintln!(
        "crash: {} seed(s) × {per_seed} in-action kills, vmctl {}",
        seeds.len(),
        vmctl.display()
    );
    let mut fig = Figures::default();
    for &seed in &seeds {
        fig.seeds.push(seed);
        let lab = Lab::create(&vmctl, seed)?;
        let outcome = run_seed(&lab, seed, per_seed, &mut fig);
        let failed = !matches!(outcome, Ok(None));
        match outcome {
            Ok(None) => {}
            Ok(Some((round, v))) => {
                fig.lost += v.lost;
                fig.duplicated += v.duplicated;
                fig.orphans += v.orphans;
                let msg = format!(
                    "seed {seed} round {round}: {}\n  replay: cargo xtask crash --seed {seed} --kills {per_seed}\n  lab: {}",
                    v.what.join("\n  "),
                    lab.dir.display()
                );
                eprintln!("crash: VIOLATION {msg}");
                fig.violations.push(msg);
            }
            Err(e) => {
                let msg = format!(
                    "seed {seed}: harness error: {e}\n  replay: cargo xtask crash --seed {seed} --kills {per_seed}"
                );
                eprintln!("crash: {msg}");
                fig.violations.push(msg);
            }
        }
        lab.clean_up(opts.keep, failed);
    }
    print_figures(&fig, start.elapsed());
    Ok(fig.violations.is_empty())
}

/// `cargo build -p vmctl` (debug, like `cargo test` uses) and its path.
pub(crate) fn build_vmctl() -> Result<PathBuf, CrashError> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().map(Path::to_path_buf).unwrap_or(manifest);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "vmctl"])
        .status()
        .map_err(|source| CrashError::Spawn {
            what: "cargo build -p vmctl".into(),
            source,
        })?;
    if !status.success() {
        return Err(CrashError::Build(status.to_string()));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("debug").join("vmctl"))
}

/// One seed's lab: a temporary directory with the KDL file, the pattern
/// image, the state directory and the logs of every apply.
struct Lab {
    vmctl: PathBuf,
    dir: PathBuf,
}

impl Lab {
    fn create(vmctl: &Path, seed: u64) -> Result<Lab, CrashError> {
        let dir = std::env::temp_dir().join(format!("vmctl-crash-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| CrashError::Io {
            path: logs.clone(),
            source,
        })?;
        let pattern = dir.join("pattern.raw");
        std::fs::write(&pattern, scenario::pattern(seed)).map_err(|source| CrashError::Io {
            path: pattern,
            source,
        })?;
        Ok(Lab {
            vmctl: vmctl.to_path_buf(),
            dir,
        })
    }

    fn kdl(&self) -> PathBuf {
        self.dir.join("vmctl.kdl")
    }

    fn state(&self) -> PathBuf {
        self.dir.join(".vmctl")
    }

    fn write(&self, d: &Desired) -> Result<(), CrashError> {
        std::fs::write(self.kdl(), d.kdl()).map_err(|source| CrashError::Io {
            path: self.kdl(),
            source,
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.vmctl);
        c.args(args)
            .arg("-f")
            .arg(self.kdl())
            .env_remove("VMCTL_STATE_DIR")
            .stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Result<Output, CrashError> {
        self.cmd(args).output().map_err(|source| CrashError::Spawn {
            what: format!("vmctl {}", args.join(" ")),
            source,
        })
    }

    fn json(&self, args: &[&str]) -> Result<Value, CrashError> {
        let out = self.output(args)?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.find('{')
            .and_then(|i| serde_json::from_str(&text[i..]).ok())
            .ok_or_else(|| CrashError::NoJson {
                args: args.join(" "),
                text: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            })
    }

    /// The kinds of the actions `vmctl plan` would run now.
    fn planned_kinds(&self) -> Result<Vec<ActionKind>, CrashError> {
        let plan = self.json(&["plan", "--json"])?;
        Ok(plan["actions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| serde_json::from_value(x["kind"].clone()).ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A plain `vmctl apply --json` (bounded); its exit status, the actions
    /// it reported as interrupted, and its output.
    fn apply(&self, log: &Path) -> Result<(bool, BTreeSet<String>, String), CrashError> {
        let out = std::fs::File::create(log).map_err(|source| CrashError::Io {
            path: log.to_path_buf(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| CrashError::Io {
            path: log.to_path_buf(),
            source,
        })?;
        let mut child = self
            .cmd(&["apply", "--auto-approve", "--json"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| CrashError::Spawn {
                what: "vmctl apply".into(),
                source,
            })?;
        let deadline = Instant::now() + kill::APPLY_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CrashError::Hung {
                        what: format!("the recovering apply (log {})", log.display()),
                        secs: kill::APPLY_TIMEOUT.as_secs(),
                    });
                }
                Err(source) => {
                    return Err(CrashError::Spawn {
                        what: "waiting for vmctl apply".into(),
                        source,
                    });
                }
            }
        };
        let text = std::fs::read_to_string(log).map_err(|source| CrashError::Io {
            path: log.to_path_buf(),
            source,
        })?;
        let interrupted = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "interrupted")
            .filter_map(|v| v["action"].as_str().map(String::from))
            .collect();
        Ok((status.success(), interrupted, text))
    }

    /// Destroy the lab's VMs (unless `--keep` after a violation: left
    /// running for inspection) and SIGKILL any VMM of it that survived;
    /// remove the directory unless kept or a violation's logs are in it.
    fn clean_up(&self, keep: bool, failed: bool) {
        if keep && failed {
            eprintln!(
                "crash: kept {} with its VMs running; clean up with: {} destroy --auto-approve -f {}",
                self.dir.display(),
                self.vmctl.display(),
                self.kdl().display()
            );
            return;
        }
        let _ = self.output(&["destroy", "--auto-approve"]);
        for (_, pids) in vmm_processes(&self.state()) {
            for pid in pids {
                // SAFETY: kill(2) of a VMM this run started (its --vm-dir
                // is in this lab's own temporary directory).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if failed {
            eprintln!("crash: kept {} (logs/, journal)", self.dir.display());
        } else if !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Live (non-zombie) `__vmm` processes whose `--vm-dir` is in
/// `state/vms/`, by VM name.
fn vmm_processes(state: &Path) -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let vms = state.join("vms");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let proc = e.path();
        let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
        let state_char = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        if matches!(state_char, None | Some("Z") | Some("X")) {
            continue;
        }
        let cmd = std::fs::read(proc.join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if !args.contains(&b"__vmm".as_slice()) {
            continue;
        }
        let Some(dir) = args
            .windows(2)
            .find(|w| w[0] == b"--vm-dir")
            .map(|w| PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()))
        else {
            continue;
        };
        let dir = if dir.is_absolute() {
            dir
        } else {
            match std::fs::read_link(proc.join("cwd")) {
                Ok(cwd) => cwd.join(dir),
                Err(_) => continue,
            }
        };
        if let Ok(rest) = dir.strip_prefix(&vms) {
            let name = rest.to_string_lossy().trim_end_matches('/').to_string();
            out.entry(name).or_default().push(pid);
        }
    }
    out
}

/// Content models of the data disks, by VM name.
type Models = BTreeMap<&'static str, Vec<u8>>;

/// Run one seed: converge the first state, then rounds of kill + recover +
/// check until `target` kills landed inside actions. `Ok(Some)` is the
/// first violation (the round and what broke).
fn run_seed(
    lab: &Lab,
    seed: u64,
    target: usize,
    fig: &mut Figures,
) -> Result<Option<(usize, Violation)>, CrashError> {
    let pattern = scenario::pattern(seed);
    let mut srng = Rng::new(seed);
    let mut krng = Rng::new(seed ^ 0x6b69_6c6c);
    let mut desired = Desired::initial();
    let mut models: Models = BTreeMap::new();
    models.insert(
        "src",
        scenario::imported(&pattern, desired.src_disk_mib * MIB),
    );
    models.insert(
        "tmp",
        scenario::imported(&pattern, scenario::TMP_DISK_MIB * MIB),
    );
    lab.write(&desired)?;
    let (ok, _, text) = lab.apply(&lab.dir.join("logs/initial.log"))?;
    let v = converge(lab, &desired, &models, ok, &text)?;
    if !v.is_empty() {
        return Ok(Some((0, v)));
    }
    let mut durations = Durations::default();
    durations.learn(&kill::read_journal(&lab.state())?);
    let mut inside = 0usize;
    let mut round = 0usize;
    while inside < target && round < target * 3 {
        round += 1;
        fig.rounds += 1;
        let next = desired.next(&mut srng);
        write_markers(lab, &mut models, &mut srng)?;
        plan_models(&mut models, &desired, &next, &pattern);
        lab.write(&next)?;
        let kinds = lab.planned_kinds()?;
        let aim = if krng.chance(BLIND_PERCENT) {
            Aim::Blind {
                delay_ms: krng.below(300),
            }
        } else {
            Aim::Action(least_killed(&kinds, fig, &mut krng))
        };
        let log = lab.dir.join(format!("logs/round-{round}-kill.log"));
        let a = kill::attempt(
            &lab.vmctl,
            &lab.kdl(),
            &lab.state(),
            log,
            aim,
            &durations,
            &mut krng,
        )?;
        let mut line = format!("seed {seed} round {round:>2}: {}", describe(&a, aim));
        let landed = count(fig, &a, matches!(aim, Aim::Blind { .. }));
        inside += usize::from(landed);
        if landed && krng.chance(DOUBLE_PERCENT) {
            // Kill the apply that would have recovered, too.
            let log = lab.dir.join(format!("logs/round-{round}-kill2.log"));
            let b = kill::attempt(
                &lab.vmctl,
                &lab.kdl(),
                &lab.state(),
                log,
                Aim::Action(None),
                &durations,
                &mut krng,
            )?;
            if b.killed {
                fig.double += 1;
            }
            line.push_str(&format!("; again: {}", describe(&b, Aim::Action(None))));
            inside += usize::from(count(fig, &b, false));
        }
        // What the next apply must report as interrupted: the open actions
        // of the last apply that wrote to the journal.
        let journal = kill::read_journal(&lab.state())?;
        let expected: BTreeSet<String> = journal
            .last()
            .map(|last| {
                let id = last.apply_id.clone();
                let of_last: Vec<_> = journal
                    .iter()
                    .filter(|e| e.apply_id == id)
                    .cloned()
                    .collect();
                kill::open_actions(&of_last)
                    .into_iter()
                    .map(|e| e.action)
                    .collect()
            })
            .unwrap_or_default();
        let (ok, reported, text) = lab.apply(&lab.dir.join(format!("logs/round-{round}.log")))?;
        fig.interrupted_reported += reported.len();
        let mut v = converge(lab, &next, &models, ok, &text)?;
        if reported != expected {
            v.push(format!(
                "the recovering apply reported {reported:?} as interrupted; the journal has {expected:?} open"
            ));
        }
        eprintln!(
            "crash: {line} → recovered{}",
            if v.is_empty() { "" } else { " WITH VIOLATIONS" }
        );
        if !v.is_empty() {
            return Ok(Some((round, v)));
        }
        durations.learn(&kill::read_journal(&lab.state())?);
        desired = next;
    }
    if inside < target {
        fig.violations.push(format!(
            "seed {seed}: only {inside} of {target} kills landed inside actions in {round} rounds"
        ));
    }
    Ok(None)
}

/// Count an attempt into the figures; true if it was a kill inside an
/// action.
fn count(fig: &mut Figures, a: &Attempt, blind: bool) -> bool {
    fig.misses += u64::from(a.misses);
    if !a.killed {
        fig.finished_first += 1;
        return false;
    }
    fig.kills += 1;
    if blind {
        fig.blind += 1;
    }
    if a.in_flight.is_empty() {
        fig.outside += 1;
        return false;
    }
    fig.inside += 1;
    if blind {
        fig.blind_inside += 1;
    }
    let kinds: BTreeSet<&'static str> = a.in_flight.iter().map(|e| e.kind.label()).collect();
    for k in kinds {
        *fig.by_kind.entry(k).or_default() += 1;
    }
    true
}

/// The planned kind with the fewest in-action kills so far (ties at
/// random), so every kind gets its share.
fn least_killed(kinds: &[ActionKind], fig: &Figures, rng: &mut Rng) -> Option<ActionKind> {
    let uniq: BTreeSet<ActionKind> = kinds.iter().copied().collect();
    let least = uniq
        .iter()
        .map(|k| fig.by_kind.get(k.label()).copied().unwrap_or(0))
        .min()?;
    let ties: Vec<ActionKind> = uniq
        .into_iter()
        .filter(|k| fig.by_kind.get(k.label()).copied().unwrap_or(0) == least)
        .collect();
    ties.get(rng.below(ties.len() as u64) as usize).copied()
}

fn describe(a: &Attempt, aim: Aim) -> String {
    let aim = match aim {
        Aim::Blind { delay_ms } => format!("blind {delay_ms} ms"),
        Aim::Action(Some(k)) => format!("aimed at {}", k.label()),
        Aim::Action(None) => "aimed at any action".into(),
    };
    if !a.killed {
        return format!(
            "apply {} finished before the kill ({aim}, {})",
            a.pid,
            a.exit.map(|s| s.to_string()).unwrap_or_default()
        );
    }
    if a.in_flight.is_empty() {
        return format!("apply {} killed outside any action ({aim})", a.pid);
    }
    let open: Vec<&str> = a.in_flight.iter().map(|e| e.action.as_str()).collect();
    format!(
        "apply {} killed inside {} ({aim}{})",
        a.pid,
        open.join(" + "),
        if a.misses > 0 {
            format!(", {} freeze(s) between actions", a.misses)
        } else {
            String::new()
        }
    )
}

/// Write markers into every existing data disk through its host file (the
/// lab converged, so nothing else touches the files).
fn write_markers(lab: &Lab, models: &mut Models, rng: &mut Rng) -> Result<(), CrashError> {
    use std::os::unix::fs::FileExt;
    for (vm, model) in models.iter_mut() {
        let path = disk_path(lab, vm);
        let ms = scenario::markers(model.len() as u64, rng);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| CrashError::Io {
                path: path.clone(),
                source,
            })?;
        for m in &ms {
            f.write_all_at(&m.bytes, m.offset)
                .map_err(|source| CrashError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
        f.sync_all().map_err(|source| CrashError::Io {
            path: path.clone(),
            source,
        })?;
        scenario::apply_markers(model, &ms);
    }
    Ok(())
}

fn disk_path(lab: &Lab, vm: &str) -> PathBuf {
    lab.state()
        .join("vms")
        .join(vm)
        .join("disks")
        .join("data.raw")
}

/// The content every data disk must have once `next` is applied after
/// `prev`: a grown disk keeps its bytes and reads zeros beyond; a new copy
/// is its source now; a new `tmp` is the pattern; a removed VM has none.
fn plan_models(models: &mut Models, prev: &Desired, next: &Desired, pattern: &[u8]) {
    let size = (next.src_disk_mib * MIB) as usize;
    if let Some(src) = models.get_mut("src") {
        src.resize(size, 0);
    }
    match (prev.with_copy, next.with_copy) {
        (false, true) => {
            let copy = models.get("src").cloned().unwrap_or_default();
            models.insert("cp", copy);
        }
        (true, true) => {
            if let Some(cp) = models.get_mut("cp") {
                cp.resize(size, 0);
            }
        }
        _ => {
            models.remove("cp");
        }
    }
    match (prev.with_tmp, next.with_tmp) {
        (false, true) => {
            models.insert(
                "tmp",
                scenario::imported(pattern, scenario::TMP_DISK_MIB * MIB),
            );
        }
        (true, true) => {}
        _ => {
            models.remove("tmp");
        }
    }
}

/// After an apply: wait (bounded) for the guests to show `d`, then check
/// processes, disks, and that nothing is left to do.
fn converge(
    lab: &Lab,
    d: &Desired,
    models: &Models,
    apply_ok: bool,
    apply_text: &str,
) -> Result<Violation, CrashError> {
    let mut v = Violation::new();
    if !apply_ok {
        let tail: Vec<&str> = apply_text.lines().rev().take(15).collect();
        v.push(format!(
            "the recovering apply failed:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let status = loop {
        let st = lab.json(&["status", "--json"])?;
        let problems = status_problems(&st, d, models);
        if problems.is_empty() {
            break st;
        }
        if Instant::now() >= deadline {
            for p in &problems {
                if p.starts_with("lost") {
                    v.lost += 1;
                }
                if p.starts_with("duplicated") {
                    v.duplicated += 1;
                }
                v.push(p.clone());
            }
            v.push(format!("last status: {st}"));
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(150));
    };

    // One VMM per declared VM — the one status names — and none other.
    let procs = vmm_processes(&lab.state());
    for e in d.expect() {
        let pids = procs.get(e.name).cloned().unwrap_or_default();
        let recorded = vm_of(&status, e.name)["pid"].as_i64();
        match pids.len() {
            0 => {
                v.lost += 1;
                v.push(format!("lost VM {}: no VMM process", e.name));
            }
            1 if recorded == Some(i64::from(pids[0])) => {}
            1 => v.push(format!(
                "{}: VMM pid {} but status says {recorded:?}",
                e.name, pids[0]
            )),
            _ => {
                v.duplicated += 1;
                v.push(format!("duplicated VM {}: VMMs {pids:?}", e.name));
            }
        }
    }
    let declared: BTreeSet<&str> = d.expect().iter().map(|e| e.name).collect();
    for (name, pids) in &procs {
        if !declared.contains(name.as_str()) {
            v.orphans += pids.len();
            v.push(format!("orphan VMM(s) {pids:?} of undeclared VM {name}"));
        }
    }

    // Every byte of every data disk, through the host file.
    for (vm, model) in models {
        let path = disk_path(lab, vm);
        match std::fs::read(&path) {
            Ok(bytes) if bytes == *model => {}
            Ok(bytes) => {
                let at = bytes
                    .iter()
                    .zip(model.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(bytes.len().min(model.len()));
                v.push(format!(
                    "{vm}: disk {} has {} bytes, first difference from the expected {} bytes at offset {at}",
                    path.display(),
                    bytes.len(),
                    model.len()
                ));
            }
            Err(e) => v.push(format!("{vm}: disk {}: {e}", path.display())),
        }
    }

    let plan = lab.output(&["plan", "--detailed-exitcode"])?;
    if plan.status.code() != Some(0) {
        v.push(format!(
            "not converged, plan says:\n{}{}",
            String::from_utf8_lossy(&plan.stdout),
            String::from_utf8_lossy(&plan.stderr)
        ));
    }
    Ok(v)
}

fn vm_of<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["vms"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == name))
        .unwrap_or(&Value::Null)
}

/// What in `status --json` still differs from `d` (empty: converged).
fn status_problems(st: &Value, d: &Desired, models: &Models) -> Vec<String> {
    let mut p = Vec::new();
    let listed: Vec<&str> = st["vms"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    let want = d.expect();
    for name in &listed {
        if listed.iter().filter(|n| *n == name).count() > 1 {
            p.push(format!("duplicated VM {name} in status"));
        }
        if !want.iter().any(|e| e.name == *name) {
            p.push(format!("VM {name} is not declared but still listed"));
        }
    }
    for e in &want {
        let vm = vm_of(st, e.name);
        if vm.is_null() {
            p.push(format!("lost VM {}: not in status", e.name));
            continue;
        }
        if vm["state"] != "running" {
            p.push(format!("lost VM {}: state {}", e.name, vm["state"]));
            continue;
        }
        let g = &vm["guest"];
        if g["cpus"] != e.cpus || g["memory_mib"] != e.memory_mib {
            p.push(format!(
                "{}: guest reports {} cpus / {} MiB, want {} / {}",
                e.name, g["cpus"], g["memory_mib"], e.cpus, e.memory_mib
            ));
        }
        if let Some(mib) = e.disk_mib {
            let disk = &g["disks"][0];
            let want_sum = models
                .get(e.name)
                .and_then(|m| m.get(..512))
                .map(scenario::fnv1a)
                .unwrap_or_default();
            if disk["size_bytes"] != mib * MIB || disk["sector0_fnv1a"] != want_sum.as_str() {
                p.push(format!(
                    "{}: guest sees disk {} bytes sector0 {}, want {} bytes sector0 {want_sum}",
                    e.name,
                    disk["size_bytes"],
                    disk["sector0_fnv1a"],
                    mib * MIB
                ));
            }
        }
    }
    p
}

fn print_figures(f: &Figures, took: Duration) {
    let kinds: Vec<String> = f.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("crash: figures");
    println!(
        "  seeds                 {} ({})",
        f.seeds.len(),
        f.seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  rounds                {}", f.rounds);
    println!(
        "  kills                 {} (inside an action {}, outside {}; {} of them blind, {} of those inside)",
        f.kills, f.inside, f.outside, f.blind, f.blind_inside
    );
    println!("  double kills          {}", f.double);
    println!("  applies done before the kill {}", f.finished_first);
    println!("  freezes between actions {}", f.misses);
    println!("  inside kills by kind  {}", kinds.join(", "));
    println!(
        "  interrupted actions reported by the recovering apply {}",
        f.interrupted_reported
    );
    println!(
        "  lost VMs {}, duplicated VMs {}, orphan VMMs {}",
        f.lost, f.duplicated, f.orphans
    );
    println!("  violations            {}", f.violations.len());
    for v in &f.violations {
        println!("    {v}");
    }
    println!("  time                  {:.0} s", took.as_secs_f64());
}
