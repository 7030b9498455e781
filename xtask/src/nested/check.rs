//! Reading L1's serial log and judging it: every scenario step ran with the
//! exit code it must have, and every guest reported (and `vmctl status`
//! showed) what its declaration says.
//!
//! Memory tolerance: a Linux guest's `MemTotal` is the RAM it was given minus
//! what the kernel keeps for itself (its image, page tables, the crashkernel
//! and firmware reservations). We accept
//! `declared - max(64 MiB, 12% of declared) <= MemTotal <= declared`;
//! measured with the Debian 6.1 cloud kernel: 256 MiB gives ~217 MiB.

use std::collections::BTreeMap;

use serde_json::Value;
use vmctl_spec::{DesiredState, VmSpec};

/// Steps the L1 script must report, in order, with the exit code each must have.
pub const REQUIRED_STEPS: &[&str] = &[
    "l1-boot",
    "kvm",
    "validate",
    "image-cached",
    "apply",
    "guests-1",
    "plan-noop",
    "plan-change",
    "apply-change",
    "memory-changed",
    "graceful-poweroff",
    "guests-2",
    "plan-noop-2",
    "destroy",
    "no-vmm-left",
];

/// The lowest `MemTotal` (MiB) accepted for `declared_mib` of RAM.
pub fn memory_floor_mib(declared_mib: u64) -> u64 {
    declared_mib.saturating_sub((declared_mib * 12 / 100).max(64))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub rc: i64,
    pub want: i64,
    pub line: String,
}

/// Everything the markers in one serial log say.
#[derive(Debug, Default)]
pub struct Log {
    pub steps: Vec<Step>,
    /// (phase, vm) → the guest's own report (None: it never reported).
    pub guests: BTreeMap<(u32, String), Option<Value>>,
    /// phase → `vmctl status --json`.
    pub status: BTreeMap<u32, Option<Value>>,
    pub done: bool,
}

/// The value of `key=value` among a marker line's words.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The first line of an L1 (not L2) kernel panic or oops in L1's serial log:
/// L2 consoles only appear there as `@@LOG` lines.
pub fn l1_kernel_panic(serial: &str) -> Option<String> {
    serial
        .lines()
        .filter(|l| !l.contains("@@"))
        .find(|l| {
            l.contains("Kernel panic - not syncing")
                || l.contains("BUG: TASK stack guard page was hit")
                || l.contains("Oops:")
        })
        .map(|l| l.trim().to_string())
}

/// Why a run failed, most specific cause first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// L1's own kernel died: the emulated-SVM environment, not vmctl.
    L1Panic(String),
    /// An L2 guest's VMM ended with a crash note (`vmm.exit`).
    L2Crash { vm: String, detail: String },
    /// Guests never reported and no VMM left a crash note: they hung.
    L2Hang { vms: String, step: String },
    /// A scenario step failed (the first one, by name).
    Step(String),
    /// L1 did not finish within `--timeout`.
    Timeout,
    /// Anything else the verdict names (the first problem).
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::L1Panic(l) => write!(f, "L1 kernel panic of the emulator: {l}"),
            Failure::L2Crash { vm, detail } => write!(f, "L2 guest {vm} crashed: {detail}"),
            Failure::L2Hang { vms, step } => write!(
                f,
                "L2 guest(s) {vms} never reported in step {step} and did not crash (hung)"
            ),
            Failure::Step(s) => write!(f, "step {s} failed"),
            Failure::Timeout => write!(f, "L1 timed out"),
            Failure::Other(p) => write!(f, "{p}"),
        }
    }
}

/// The first L2 crash note in the `@@LOG <vm> vmm.exit: {json}` dumps:
/// (vm, detail).
pub fn l2_crash(serial: &str) -> Option<(String, String)> {
    serial.lines().find_map(|raw| {
        let line = raw.trim_end_matches('\r');
        let rest = &line[line.find("@@LOG ")? + "@@LOG ".len()..];
        let (vm, rest) = rest.split_once(' ')?;
        let json = rest.strip_prefix("vmm.exit: ")?;
        let v: Value = serde_json::from_str(json.trim()).ok()?;
        (v.get("reason")?.as_str()? == "crash").then(|| {
            (
                vm.to_string(),
                v.get("detail")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        })
    })
}

/// Classify a failed run (None when the verdict passed).
pub fn classify(serial: &str, log: &Log, verdict: &Verdict, timed_out: bool) -> Option<Failure> {
    if verdict.passed() && !timed_out {
        return None;
    }
    if let Some(p) = l1_kernel_panic(serial) {
        return Some(Failure::L1Panic(p));
    }
    if let Some((vm, detail)) = l2_crash(serial) {
        return Some(Failure::L2Crash { vm, detail });
    }
    if timed_out {
        return Some(Failure::Timeout);
    }
    if let Some(s) = log.steps.iter().find(|s| s.rc != s.want) {
        // `@@NESTED step=guests-1 rc=1 want=0 missing= beta`
        let missing = s
            .line
            .split_once("missing=")
            .map(|(_, m)| m.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|m| s.name.starts_with("guests-") && !m.is_empty());
        if let Some(vms) = missing {
            return Some(Failure::L2Hang {
                vms,
                step: s.name.clone(),
            });
        }
        return Some(Failure::Step(s.name.clone()));
    }
    let first = verdict
        .problems
        .first()
        .cloned()
        .or_else(|| {
            verdict.rows.iter().find_map(|r| {
                r.problems
                    .first()
                    .map(|p| format!("phase {} {}: {p}", r.phase, r.vm))
            })
        })
        .unwrap_or_else(|| "unknown".into());
    Some(Failure::Other(first))
}

/// Parse the markers out of a serial log (other lines are ignored).
pub fn parse(serial: &str) -> Log {
    let mut log = Log::default();
    for raw in serial.lines() {
        let line = raw.trim_end_matches('\r');
        let Some(at) = line.find("@@") else { continue };
        let line = &line[at..];
        if let Some(rest) = line.strip_prefix("@@NESTED ") {
            if rest.starts_with("done") {
                log.done = true;
                continue;
            }
            let (Some(name), Some(rc), Some(want)) =
                (field(rest, "step"), field(rest, "rc"), field(rest, "want"))
            else {
                continue;
            };
            log.steps.push(Step {
                name: name.to_string(),
                rc: rc.parse().unwrap_or(-1),
                want: want.parse().unwrap_or(0),
                line: rest.to_string(),
            });
        } else if let Some(rest) = line.strip_prefix("@@GUEST ") {
            let (Some(phase), Some(vm)) = (field(rest, "phase"), field(rest, "vm")) else {
                continue;
            };
            let json = rest
                .find('{')
                .and_then(|i| serde_json::from_str(&rest[i..]).ok());
            log.guests
                .insert((phase.parse().unwrap_or(0), vm.to_string()), json);
        } else if let Some(rest) = line.strip_prefix("@@STATUS ") {
            let Some(phase) = field(rest, "phase") else {
                continue;
            };
            let json = rest
                .find('{')
                .and_then(|i| serde_json::from_str(&rest[i..]).ok());
            log.status.insert(phase.parse().unwrap_or(0), json);
        }
    }
    log
}

/// One row of the declared-vs-reported table.
#[derive(Debug, Clone)]
pub struct Row {
    pub phase: u32,
    pub vm: String,
    pub declared: String,
    pub guest: String,
    pub status: String,
    pub problems: Vec<String>,
}

fn u(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

fn disks_of(v: Option<&Value>) -> Vec<u64> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|d| u(d.get("size_bytes"))).collect())
        .unwrap_or_default()
}

fn fmt_disks(sizes: &[u64]) -> String {
    if sizes.is_empty() {
        return "-".into();
    }
    sizes
        .iter()
        .map(|b| format!("{}M", b >> 20))
        .collect::<Vec<_>>()
        .join("+")
}

/// What a real `debian-12` guest must report beyond sizes: the OS, systemd
/// up, the declared hostname, users, packages and files (as its own dpkg
/// database and filesystem show them), and a root filesystem that fills
/// its declared disk.
pub fn check_debian_os(spec: &VmSpec, g: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let text = |k: &str| {
        g.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if !text("os").starts_with("Debian GNU/Linux 12") {
        problems.push(format!(
            "guest os {:?}, want Debian GNU/Linux 12",
            text("os")
        ));
    }
    let systemd = text("systemd");
    if systemd != "running" {
        problems.push(format!(
            "systemd is {systemd:?} (failed units: {})",
            g.get("failed_units")
                .map(Value::to_string)
                .unwrap_or_default()
        ));
    }
    let want_host = spec
        .config
        .hostname
        .clone()
        .unwrap_or_else(|| spec.name.clone());
    if text("hostname") != want_host {
        problems.push(format!(
            "guest hostname {:?}, declared {want_host:?}",
            text("hostname")
        ));
    }
    for p in &spec.packages {
        if g.pointer(&format!("/packages/{p}"))
            .and_then(Value::as_str)
            .is_none()
        {
            problems.push(format!("package {p} is not installed in the guest"));
        }
    }
    for f in &spec.config.files {
        let want = vmctl_image::digest::sha256_hex(f.content.as_bytes());
        let got = g
            .get("files")
            .and_then(|fs| fs.get(&f.path))
            .and_then(Value::as_str);
        if got != Some(want.as_str()) {
            problems.push(format!(
                "file {} in the guest: sha256 {got:?}, declared content {want}",
                f.path
            ));
        }
    }
    let users: Vec<&str> = g
        .get("users")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for u in &spec.config.users {
        if !users.contains(&u.name.as_str()) {
            problems.push(format!("user {} does not exist in the guest", u.name));
        }
    }
    // `df /` against the declared root disk: ext4 keeps a few % for itself.
    if let Some(root) = spec.disks.iter().find(|d| d.name == "root") {
        let fs = u(g.get("root_fs_bytes")).unwrap_or(0);
        if fs > root.size_bytes || fs < root.size_bytes / 100 * 92 {
            problems.push(format!(
                "guest df / is {} MiB, declared root disk {} MiB",
                fs >> 20,
                root.size_bytes >> 20
            ));
        }
    }
    problems
}

/// Compare one VM's declaration with its guest's report and its status entry.
/// `status: None` with `with_status` false skips the status checks (the
/// `--vmm-only` smoke run has no `vmctl status`).
pub fn check_vm(
    phase: u32,
    spec: &VmSpec,
    guest: Option<&Value>,
    status: Option<&Value>,
    with_status: bool,
) -> Row {
    let mut problems = Vec::new();
    let declared_disks: Vec<u64> = spec.disks.iter().map(|d| d.size_bytes).collect();
    let declared = format!(
        "{} cpu, {} MiB, {}",
        spec.cpus,
        spec.memory_mib,
        fmt_disks(&declared_disks)
    );
    let guest_text = match guest {
        None => {
            problems.push("the guest never reported".to_string());
            "-".to_string()
        }
        Some(g) => {
            let cpus = u(g.get("cpus"));
            let mib = u(g.get("memory_mib"));
            let disks = disks_of(g.get("disks"));
            if cpus != Some(u64::from(spec.cpus)) {
                problems.push(format!("guest nproc {cpus:?}, declared {}", spec.cpus));
            }
            // lscpu's view: one socket of `cpus` one-thread cores.
            let topo = g.get("topology").filter(|t| !t.is_null());
            let seen = topo.map(|t| {
                (
                    u(t.get("sockets")),
                    u(t.get("cores_per_socket")),
                    u(t.get("threads_per_core")),
                )
            });
            let want = (Some(1), Some(u64::from(spec.cpus)), Some(1));
            match seen {
                Some(s) if s == want => {}
                Some(s) => problems.push(format!(
                    "guest topology (sockets, cores/socket, threads/core) {s:?}, declared (1, {}, 1)",
                    spec.cpus
                )),
                None => problems.push("the guest reported no CPU topology".to_string()),
            }
            let floor = memory_floor_mib(spec.memory_mib);
            match mib {
                Some(m) if (floor..=spec.memory_mib).contains(&m) => {}
                other => problems.push(format!(
                    "guest MemTotal {other:?} MiB outside [{floor}, {}]",
                    spec.memory_mib
                )),
            }
            if disks != declared_disks {
                problems.push(format!(
                    "guest disks {} , declared {}",
                    fmt_disks(&disks),
                    fmt_disks(&declared_disks)
                ));
            }
            if spec.os == "debian-12" {
                problems.extend(check_debian_os(spec, g));
            }
            let topo_text = match seen {
                Some((s, c, t)) => format!(
                    " ({}s×{}c×{}t)",
                    s.map_or("?".into(), |v| v.to_string()),
                    c.map_or("?".into(), |v| v.to_string()),
                    t.map_or("?".into(), |v| v.to_string())
                ),
                None => String::new(),
            };
            format!(
                "{} cpu{topo_text}, {} MiB, {}",
                cpus.map_or("?".into(), |c| c.to_string()),
                mib.map_or("?".into(), |m| m.to_string()),
                fmt_disks(&disks)
            )
        }
    };
    let status_text = match status {
        None if !with_status => "(not checked)".to_string(),
        None => {
            problems.push("not in `vmctl status --json`".to_string());
            "-".to_string()
        }
        Some(s) => {
            let state = s.get("state").and_then(Value::as_str).unwrap_or("?");
            let cpus = u(s.get("cpus"));
            let mib = u(s.get("memory_mib"));
            if state != "running" {
                problems.push(format!("status state {state:?}, want \"running\""));
            }
            if cpus != Some(u64::from(spec.cpus)) {
                problems.push(format!("status cpus {cpus:?}, declared {}", spec.cpus));
            }
            if mib != Some(spec.memory_mib) {
                problems.push(format!(
                    "status memory_mib {mib:?}, declared {}",
                    spec.memory_mib
                ));
            }
            let sg = s.get("guest").filter(|g| !g.is_null());
            match (sg, guest) {
                (None, _) => problems.push("status.guest is null".to_string()),
                (Some(sg), Some(g)) => {
                    if u(sg.get("cpus")) != u(g.get("cpus"))
                        || u(sg.get("memory_mib")) != u(g.get("memory_mib"))
                    {
                        problems.push(format!(
                            "status.guest {sg} differs from the guest's own report"
                        ));
                    }
                }
                (Some(_), None) => {}
            }
            format!(
                "{state}, {} cpu, {} MiB",
                cpus.map_or("?".into(), |c| c.to_string()),
                mib.map_or("?".into(), |m| m.to_string())
            )
        }
    };
    Row {
        phase,
        vm: spec.name.clone(),
        declared,
        guest: guest_text,
        status: status_text,
        problems,
    }
}

/// The verdict on a whole run.
#[derive(Debug, Default)]
pub struct Verdict {
    pub rows: Vec<Row>,
    /// Problems outside the table (steps, missing markers).
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.rows.iter().all(|r| r.problems.is_empty())
    }
}

/// Steps of phase 3 (a disk of the changed VM grows), when it has a disk.
pub const GROW_STEPS: &[&str] = &[
    "plan-grow",
    "apply-grow",
    "disk-grown",
    "guests-3",
    "plan-noop-3",
];

/// Steps of phases 4 and 5 (a VM's vCPUs and memory hot-added, then a vCPU
/// hot-removed, all live: the VMM's pid must not change).
pub const HOT_STEPS: &[&str] = &[
    "plan-hot-add",
    "plan-hot-add-live",
    "apply-hot-add",
    "hot-added-cpus",
    "hot-added-memory",
    "hot-add-same-pid",
    "guests-4",
    "plan-noop-4",
    "plan-hot-remove",
    "apply-hot-remove",
    "hot-removed-cpus",
    "hot-remove-same-pid",
    "guests-5",
    "plan-noop-5",
];

/// Steps of the network phase (two debian-12 VMs on a lab network, see
/// l1-init.sh's `net_phase`), when the lab has such a pair.
pub const NET_STEPS: &[&str] = &[
    "nic-listener",
    "nic-client",
    "ssh-listener-hostname",
    "ssh-client-hostname",
    "ssh-system-running",
    "tcp-listening",
    "tcp-send",
    "tcp-received",
    "no-net-left",
];

/// Each of `steps` must have been reported with the exit code it wanted.
pub fn require_steps(log: &Log, steps: &[&str], v: &mut Verdict) {
    for name in steps {
        match log.steps.iter().find(|s| s.name == *name) {
            None => v.problems.push(format!("step {name}: never reported")),
            Some(s) if s.rc != s.want => v.problems.push(format!(
                "step {name}: exit code {}, want {} ({})",
                s.rc, s.want, s.line
            )),
            Some(_) => {}
        }
    }
}

/// Steps of the `--vmm-only` smoke run (no apply/plan/status: VMMs started
/// directly with `vmctl __vmm`).
pub const VMM_ONLY_STEPS: &[&str] = &["l1-boot", "kvm", "guests-1", "no-vmm-left"];

/// Judge `log` against the declarations before (`phase 1`) and after (`phase 2`)
/// the memory change. `vmm_only`: the smoke run's steps, no status checks.
pub fn judge(
    log: &Log,
    phases: &[(u32, &DesiredState)],
    vmm_only: bool,
    grow_phase: bool,
    hot_phases: bool,
) -> Verdict {
    let mut v = Verdict::default();
    let mut required: Vec<&str> = if vmm_only {
        VMM_ONLY_STEPS.to_vec()
    } else {
        REQUIRED_STEPS.to_vec()
    };
    if grow_phase && !vmm_only {
        required.extend_from_slice(GROW_STEPS);
    }
    if hot_phases && !vmm_only {
        required.extend_from_slice(HOT_STEPS);
    }
    require_steps(log, &required, &mut v);
    for s in &log.steps {
        if s.rc != s.want
            && !required.contains(&s.name.as_str())
            && !NET_STEPS.contains(&s.name.as_str())
        {
            v.problems.push(format!(
                "step {}: exit code {}, want {}",
                s.name, s.rc, s.want
            ));
        }
    }
    if !log.done {
        v.problems
            .push("L1 never printed `@@NESTED done` (crashed or timed out)".into());
    }
    for (phase, state) in phases {
        let status = log.status.get(phase).and_then(|s| s.as_ref());
        for spec in &state.vms {
            let guest = log
                .guests
                .get(&(*phase, spec.name.clone()))
                .and_then(|g| g.as_ref());
            let st = status
                .and_then(|s| s.get("vms"))
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .find(|e| e.get("name").and_then(Value::as_str) == Some(&spec.name))
                });
            v.rows.push(check_vm(*phase, spec, guest, st, !vmm_only));
        }
    }
    v
}

/// The table printed at the end of a run.
pub fn table(v: &Verdict) -> String {
    let header = [
        "phase".to_string(),
        "vm".into(),
        "declared".into(),
        "guest reports (nproc, MemTotal, disks)".into(),
        "vmctl status".into(),
        "ok".into(),
    ];
    let rows: Vec<[String; 6]> = v
        .rows
        .iter()
        .map(|r| {
            [
                r.phase.to_string(),
                r.vm.clone(),
                r.declared.clone(),
                r.guest.clone(),
                r.status.clone(),
                if r.problems.is_empty() {
                    "yes".into()
                } else {
                    "NO".into()
                },
            ]
        })
        .collect();
    let mut widths = [0usize; 6];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in &v.rows {
        for p in &r.problems {
            out.push_str(&format!("  phase {} {}: {p}\n", r.phase, r.vm));
        }
    }
    for p in &v.problems {
        out.push_str(&format!("  {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmctl_spec::{DiskFormat, DiskSpec};

    fn spec(name: &str, cpus: u32, mib: u64, disks: &[u64]) -> VmSpec {
        VmSpec {
            name: name.into(),
            os: "debian-12-minimal".into(),
            cpus,
            max_cpus: cpus,
            memory_mib: mib,
            max_memory_mib: mib,
            disks: disks
                .iter()
                .enumerate()
                .map(|(i, &b)| DiskSpec {
                    name: format!("d{i}"),
                    size_bytes: b,
                    format: DiskFormat::Raw,
                    path: None,
                    source: None,
                    source_format: None,
                })
                .collect(),
            depends_on: vec![],
            copy_from: None,
            cpu_weight: 100,
            autostart: true,
            image: None,
            ..VmSpec::diag("")
        }
    }

    #[test]
    fn a_debian_guest_must_show_its_os_configuration_and_root_size() {
        let mut s = spec("web", 2, 512, &[1 << 30]);
        s.os = "debian-12".into();
        s.disks[0].name = "root".into();
        s.packages = vec!["tree".into()];
        s.config.hostname = Some("www".into());
        s.config.files.push(vmctl_spec::model::FileSpec {
            path: "/etc/motd".into(),
            content: "lab 3\n".into(),
            mode: 0o644,
        });
        let motd = vmctl_image::digest::sha256_hex(b"lab 3\n");
        let good = serde_json::json!({"os": "Debian GNU/Linux 12 (bookworm)", "systemd": "running",
            "hostname": "www", "packages": {"tree": "2.1.0-1"}, "files": {"/etc/motd": motd},
            "users": [], "root_fs_bytes": 1038462976u64});
        assert_eq!(check_debian_os(&s, &good), Vec::<String>::new());
        let bad = serde_json::json!({"os": "Debian GNU/Linux 12 (bookworm)", "systemd": "degraded",
            "failed_units": ["ssh.service"], "hostname": "web", "packages": {"tree": null},
            "files": {"/etc/motd": null}, "users": [], "root_fs_bytes": 500u64 << 20});
        let problems = check_debian_os(&s, &bad).join("\n");
        for needle in [
            "degraded",
            "ssh.service",
            "hostname",
            "package tree",
            "/etc/motd",
            "df /",
        ] {
            assert!(problems.contains(needle), "{needle}: {problems}");
        }
    }

    #[test]
    fn l1_panics_are_told_from_l2_ones() {
        let l2 = "@@LOG a console.log: [ 1.0] Kernel panic - not syncing: x\n";
        assert_eq!(l1_kernel_panic(l2), None);
        let l1 = "[ 45.7] BUG: TASK stack guard page was hit at 0\n[ 46.1] Kernel panic - not syncing: y\n";
        assert_eq!(
            l1_kernel_panic(l1).as_deref(),
            Some("[ 45.7] BUG: TASK stack guard page was hit at 0")
        );
    }

    #[test]
    fn failures_are_classified() {
        let state = DesiredState {
            format_version: "1".into(),
            vms: vec![spec("a", 1, 256, &[])],
            images: vec![],
            networks: vec![],
            cluster: None,
            hosts: Vec::new(),
        };
        let crash = "@@NESTED step=apply rc=0 want=0\n@@NESTED step=guests-1 rc=1 want=0 missing= a\n\
            @@LOG a vmm.exit: {\"reason\":\"crash\",\"detail\":\"vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)\",\"code\":1}\n\
            @@LOG a vmm.exit: {\"reason\":\"shutdown\",\"detail\":\"\",\"code\":0}\n";
        let log = parse(crash);
        let v = judge(&log, &[(1, &state)], false, false, false);
        assert_eq!(
            classify(crash, &log, &v, false),
            Some(Failure::L2Crash {
                vm: "a".into(),
                detail: "vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)".into()
            })
        );
        let hang = "@@NESTED step=apply rc=0 want=0\n@@NESTED step=guests-1 rc=1 want=0 missing= beta\n\
            @@LOG beta vmm.log: INFO VMM exits reason=\"shutdown\"\n";
        let log = parse(hang);
        let v = judge(&log, &[(1, &state)], false, false, false);
        let f = classify(hang, &log, &v, false).unwrap();
        assert_eq!(
            f,
            Failure::L2Hang {
                vms: "beta".into(),
                step: "guests-1".into()
            }
        );
        assert!(f.to_string().contains("hung"), "{f}");
        let step = "@@NESTED step=validate rc=1 want=0\n";
        let log = parse(step);
        let v = judge(&log, &[(1, &state)], false, false, false);
        assert_eq!(
            classify(step, &log, &v, false),
            Some(Failure::Step("validate".into()))
        );
        assert_eq!(classify(step, &log, &v, true), Some(Failure::Timeout));
        let panic = "[ 9.1] Kernel panic - not syncing: Fatal exception\n";
        let log = parse(panic);
        let v = judge(&log, &[(1, &state)], false, false, false);
        let f = classify(panic, &log, &v, true).unwrap();
        assert!(matches!(f, Failure::L1Panic(_)));
        assert!(f.to_string().starts_with("L1 kernel panic of the emulator"));
        let missing = "@@NESTED step=l1-boot rc=0 want=0\n";
        let log = parse(missing);
        let v = judge(&log, &[(1, &state)], false, false, false);
        assert_eq!(
            classify(missing, &log, &v, false),
            Some(Failure::Other("step kvm: never reported".into()))
        );
    }

    #[test]
    fn tolerance() {
        assert_eq!(memory_floor_mib(256), 192);
        assert_eq!(memory_floor_mib(1024), 902);
        assert_eq!(memory_floor_mib(32), 0);
    }

    #[test]
    fn parses_markers_amid_console_noise() {
        let serial = "[ 1.0] boot\r\n@@NESTED step=apply rc=0 want=0\n  | x\n\
            @@GUEST phase=1 vm=a {\"agent\":\"debian-12\",\"cpus\":1,\"memory_mib\":217,\"topology\":{\"sockets\":1,\"cores_per_socket\":1,\"threads_per_core\":1},\"disks\":[{\"name\":\"vda\",\"size_bytes\":67108864}]}\n\
            @@GUEST phase=1 vm=b \n\
            @@STATUS phase=1 {\"format_version\":\"1\",\"vms\":[{\"name\":\"a\",\"state\":\"running\",\"cpus\":1,\"memory_mib\":256,\"guest\":{\"cpus\":1,\"memory_mib\":217}}]}\n\
            @@NESTED done failed=0\n";
        let log = parse(serial);
        assert!(log.done);
        assert_eq!(log.steps.len(), 1);
        assert!(log.guests[&(1, "a".into())].is_some());
        assert!(log.guests[&(1, "b".into())].is_none());
        let state = DesiredState {
            format_version: "1".into(),
            vms: vec![spec("a", 1, 256, &[64 << 20]), spec("b", 2, 512, &[])],
            images: vec![],
            networks: vec![],
            cluster: None,
            hosts: Vec::new(),
        };
        let v = judge(&log, &[(1, &state)], false, false, false);
        assert!(!v.passed());
        assert!(v.rows[0].problems.is_empty(), "{:?}", v.rows[0].problems);
        assert!(!v.rows[1].problems.is_empty());
        let t = table(&v);
        assert!(t.contains("1 cpu, 256 MiB, 64M"), "{t}");
        assert!(t.contains("step destroy: never reported"), "{t}");
    }

    #[test]
    fn mismatches_are_named() {
        let g: Value = serde_json::from_str(
            r#"{"cpus":2,"memory_mib":100,"disks":[{"name":"vda","size_bytes":1048576}]}"#,
        )
        .unwrap();
        let row = check_vm(1, &spec("a", 1, 256, &[2 << 20]), Some(&g), None, true);
        let all = row.problems.join("\n");
        assert!(all.contains("nproc"), "{all}");
        assert!(all.contains("MemTotal"), "{all}");
        assert!(all.contains("disks"), "{all}");
        assert!(all.contains("status"), "{all}");
        assert!(all.contains("no CPU topology"), "{all}");
    }

    #[test]
    fn topology_must_be_one_socket_of_one_thread_cores() {
        let g = |s: u64, c: u64, t: u64| -> Value {
            serde_json::json!({"cpus": 2, "memory_mib": 460,
                "topology": {"sockets": s, "cores_per_socket": c, "threads_per_core": t},
                "disks": []})
        };
        let spec = spec("a", 2, 512, &[]);
        let ok = check_vm(1, &spec, Some(&g(1, 2, 1)), None, false);
        assert!(ok.problems.is_empty(), "{:?}", ok.problems);
        assert!(ok.guest.contains("(1s×2c×1t)"), "{}", ok.guest);
        // What 6.1 KVM's CPUID gave before the fix: one core, two threads.
        let bad = check_vm(1, &spec, Some(&g(1, 1, 2)), None, false);
        assert!(
            bad.problems.join("").contains("topology"),
            "{:?}",
            bad.problems
        );
    }
}
