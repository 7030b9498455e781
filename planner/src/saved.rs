//! Saved plans (`vmctl plan -out FILE`, `vmctl apply FILE`, `vmctl show FILE`).
//!
//! Why this module exists: in a git-driven workflow what gets applied must be
//! exactly what a reviewer saw. A saved plan therefore carries its *basis* —
//! everything the plan was computed from (the resolved desired state, the
//! `vmctl.lock` digest, the runtime's capabilities and, per VM, its record,
//! liveness, live sizes and VMM identity) — and the plan is a pure function
//! of that basis ([`SavedPlan::replan`]). `apply FILE` observes again, builds
//! the current basis and refuses, naming each difference ([`Staleness`]),
//! unless the two are equal; then the recomputed plan is the saved plan.
//! The guest's own report is not part of the basis: it changes every second
//! and the planner never reads it. docs/workflows.md documents the format.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vmctl_spec::DesiredState;

use crate::observed::{
    Capabilities, HostCapacity, Live, LiveDisk, ObservedNetwork, ObservedState, ObservedVm, Record,
    RunState,
};
use crate::plan::{Plan, PlanError};

/// The saved plan's own format version (independent of `--json` documents,
/// though it starts at the same "1").
pub const SAVED_FORMAT_VERSION: &str = "1";
/// The `kind` field: tells a saved plan from any other JSON file.
pub const SAVED_KIND: &str = "vmctl-saved-plan";

/// The saved-plan file, as written by `plan -out` and printed by `show --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    /// [`SAVED_FORMAT_VERSION`].
    pub format_version: String,
    /// Always [`SAVED_KIND`].
    pub kind: String,
    /// The vmctl that computed it; a different vmctl refuses to apply it.
    pub vmctl_version: String,
    /// Seconds since the epoch (informational only).
    pub created_unix: u64,
    /// The KDL file as given to `plan -f`.
    pub file: PathBuf,
    /// The state directory the plan was computed against (absolute).
    pub state_dir: PathBuf,
    /// Everything the plan was computed from (the fingerprint).
    pub basis: Basis,
    /// The plan itself: the `plan --json` document (for people and tools;
    /// `show`/`apply` check it is what the basis gives).
    pub plan: Value,
}

/// What a plan is computed from. Two equal bases give the same plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Basis {
    /// The resolved desired state (`validate --json`): comments and
    /// formatting of the file are not part of it.
    pub desired: DesiredState,
    /// `vmctl.lock` beside the KDL file.
    pub lock: LockDigest,
    /// What the runtime can change live on this host.
    pub capabilities: Capabilities,
    /// Every VM in the state directory, by name.
    pub vms: BTreeMap<String, VmBasis>,
    /// Every network with a record in the state directory: what was last
    /// applied and whether its bridge is there (docs/networking-hosts.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, ObservedNetwork>,
    /// The host's capacity the plan was checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostCapacity>,
}

/// The image pin file: its path and the SHA-256 of its bytes (`null`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockDigest {
    pub path: PathBuf,
    pub sha256: Option<String>,
}

/// One observed VM, as far as planning depends on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmBasis {
    /// `vm.json`: the configuration last applied.
    pub record: Record,
    /// running / paused / stopped / crashed.
    pub state: RunState,
    /// The VMM's process id, when there is a VMM.
    pub pid: Option<u32>,
    /// The VMM's start time (`/proc/PID/stat` field 22, clock ticks since
    /// boot): with `pid`, the VMM's identity — a pid reused by another
    /// process after a crash does not match.
    pub vmm_started: Option<u64>,
    /// What the VMM reports (`null` when it does not answer).
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disks: Vec<LiveDisk>,
}

impl Basis {
    /// The basis of `desired` against `observed`; `vmm_started` gives a
    /// process's start time (None: unknown).
    pub fn new(
        desired: &DesiredState,
        lock: LockDigest,
        capabilities: Capabilities,
        observed: &ObservedState,
        vmm_started: impl Fn(u32) -> Option<u64>,
    ) -> Basis {
        let vms = observed
            .vms
            .iter()
            .map(|(name, o)| {
                let v = VmBasis {
                    record: o.record.clone(),
                    state: o.live.state,
                    pid: o.live.pid,
                    vmm_started: o.live.pid.and_then(&vmm_started),
                    cpus: o.live.cpus,
                    memory_mib: o.live.memory_mib,
                    disks: o.live.disks.clone(),
                };
                (name.clone(), v)
            })
            .collect();
        Basis {
            desired: desired.clone(),
            lock,
            capabilities,
            vms,
            networks: observed.networks.clone(),
            host: observed.host,
        }
    }

    /// The observed state this basis stands for (no guest reports: the
    /// planner does not read them).
    pub fn observed(&self) -> ObservedState {
        let mut o = ObservedState::new();
        o.networks = self.networks.clone();
        o.host = self.host;
        for v in self.vms.values() {
            o.insert(ObservedVm {
                record: v.record.clone(),
                live: Live {
                    state: v.state,
                    pid: v.pid,
                    cpus: v.cpus,
                    memory_mib: v.memory_mib,
                    disks: v.disks.clone(),
                    // NIC counters change with every frame; the planner
                    // does not read them.
                    nics: Vec::new(),
                    guest: None,
                },
            });
        }
        o
    }

    /// The plan of this basis.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        crate::plan::plan(&self.desired, &self.observed(), &self.capabilities)
    }
}

/// Why a saved plan cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("not a vmctl saved plan: {0}")]
    NotAPlan(String),
    #[error(
        "saved plan format_version {found} is not supported (this vmctl reads {SAVED_FORMAT_VERSION})"
    )]
    Version { found: String },
    #[error("cannot recompute the saved plan: {0}")]
    Plan(#[from] PlanError),
    #[error(
        "the saved plan's actions are not what its basis gives (the file was edited or is corrupt)"
    )]
    Inconsistent,
}

impl SavedPlan {
    /// Save `basis`'s plan. The plan is computed from the basis itself, so
    /// the saved actions are by construction what `apply FILE` recomputes.
    pub fn new(
        vmctl_version: &str,
        created_unix: u64,
        file: PathBuf,
        state_dir: PathBuf,
        basis: Basis,
    ) -> Result<(SavedPlan, Plan), PlanError> {
        let plan = basis.plan()?;
        let saved = SavedPlan {
            format_version: SAVED_FORMAT_VERSION.to_string(),
            kind: SAVED_KIND.to_string(),
            vmctl_version: vmctl_version.to_string(),
            created_unix,
            file,
            state_dir,
            basis,
            plan: crate::render::json(&plan),
        };
        Ok((saved, plan))
    }

    /// Parse a saved plan; checks kind and version, not consistency.
    pub fn parse(text: &str) -> Result<SavedPlan, SavedPlanError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| SavedPlanError::NotAPlan(e.to_string()))?;
        if v.get("kind").and_then(Value::as_str) != Some(SAVED_KIND) {
            return Err(SavedPlanError::NotAPlan(format!(
                "no \"kind\": \"{SAVED_KIND}\""
            )));
        }
        let found = v
            .get("format_version")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if found != SAVED_FORMAT_VERSION {
            return Err(SavedPlanError::Version { found });
        }
        serde_json::from_value(v).map_err(|e| SavedPlanError::NotAPlan(e.to_string()))
    }

    /// The plan, recomputed from the basis and checked against the saved
    /// actions.
    pub fn replan(&self) -> Result<Plan, SavedPlanError> {
        let plan = self.basis.plan()?;
        if crate::render::json(&plan) != self.plan {
            return Err(SavedPlanError::Inconsistent);
        }
        Ok(plan)
    }

    /// Everything that differs between this plan's basis (and vmctl) and
    /// `now`; empty means the plan is current.
    pub fn staleness(&self, vmctl_version: &str, now: &Basis) -> Vec<Staleness> {
        let mut out = Vec::new();
        if self.vmctl_version != vmctl_version {
            out.push(Staleness::Version {
                saved: self.vmctl_version.clone(),
                now: vmctl_version.to_string(),
            });
        }
        out.extend(desired_changes(
            &self.file,
            &self.basis.desired,
            &now.desired,
        ));
        let (was, is) = (&self.basis, now);
        if was.lock != is.lock {
            out.push(Staleness::Lock {
                path: is.lock.path.clone(),
            });
        }
        if was.capabilities != is.capabilities {
            out.push(Staleness::Capabilities);
        }
        for (name, old) in &was.vms {
            match is.vms.get(name) {
                None => out.push(Staleness::VmGone { vm: name.clone() }),
                Some(new) => out.extend(vm_changes(name, old, new)),
            }
        }
        for name in is.vms.keys() {
            if !was.vms.contains_key(name) {
                out.push(Staleness::VmAppeared { vm: name.clone() });
            }
        }
        let names: std::collections::BTreeSet<&String> =
            was.networks.keys().chain(is.networks.keys()).collect();
        for name in names {
            if was.networks.get(name) != is.networks.get(name) {
                out.push(Staleness::Network {
                    network: name.clone(),
                    was: was.networks.get(name).map(network_word),
                    now: is.networks.get(name).map(network_word),
                });
            }
        }
        out
    }
}

/// One thing that changed since a plan was saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staleness {
    /// Another vmctl version computed the plan.
    Version { saved: String, now: String },
    /// The KDL file now resolves to something else (`what`: the VMs and
    /// fields that differ).
    File { file: PathBuf, what: Vec<String> },
    /// `vmctl.lock` changed, appeared or vanished.
    Lock { path: PathBuf },
    /// The runtime's live capabilities on this host differ.
    Capabilities,
    /// A VM the plan saw is no longer in the state directory.
    VmGone { vm: String },
    /// A VM appeared in the state directory (someone applied).
    VmAppeared { vm: String },
    /// The VMM the plan saw is gone and the VM crashed.
    Crashed { vm: String, pid: Option<u32> },
    /// The VM's run state changed otherwise.
    State {
        vm: String,
        was: RunState,
        now: RunState,
    },
    /// A different VMM process runs the VM now (it was restarted).
    Vmm {
        vm: String,
        was: Option<u32>,
        now: Option<u32>,
    },
    /// The configuration last applied (`vm.json`) changed: someone applied.
    Record { vm: String, fields: Vec<String> },
    /// What the running VM reports (vCPUs, memory, disk sizes) changed.
    Live { vm: String, what: Vec<String> },
    /// A network's record or its bridge changed (made, removed, re-addressed).
    Network {
        network: String,
        was: Option<&'static str>,
        now: Option<&'static str>,
    },
}

/// How a network looked, in one word, for a staleness message.
fn network_word(n: &ObservedNetwork) -> &'static str {
    if n.present {
        "present"
    } else {
        "recorded, bridge missing"
    }
}

impl fmt::Display for Staleness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Staleness::Version { saved, now } => write!(
                f,
                "vmctl changed: the plan was made by vmctl {saved}, this is {now}"
            ),
            Staleness::File { file, what } => {
                write!(f, "{} changed: {}", file.display(), what.join("; "))
            }
            Staleness::Lock { path } => write!(f, "{} changed", path.display()),
            Staleness::Capabilities => {
                write!(f, "the runtime's live capabilities on this host changed")
            }
            Staleness::VmGone { vm } => {
                write!(f, "vm {vm} was destroyed since the plan (someone applied)")
            }
            Staleness::VmAppeared { vm } => {
                write!(f, "vm {vm} was created since the plan (someone applied)")
            }
            Staleness::Crashed { vm, pid } => match pid {
                Some(p) => write!(f, "vm {vm} crashed: its VMM (pid {p}) is gone"),
                None => write!(f, "vm {vm} crashed"),
            },
            Staleness::State { vm, was, now } => write!(
                f,
                "vm {vm} is {} now (it was {} when planned)",
                now.as_str(),
                was.as_str()
            ),
            Staleness::Vmm { vm, was, now } => {
                let p = |p: &Option<u32>| p.map_or("none".to_string(), |p| p.to_string());
                write!(
                    f,
                    "vm {vm} runs a different VMM now (pid {} → {}): it was restarted",
                    p(was),
                    p(now)
                )
            }
            Staleness::Record { vm, fields } => write!(
                f,
                "vm {vm}'s applied configuration changed ({}): someone applied",
                fields.join(", ")
            ),
            Staleness::Live { vm, what } => {
                write!(f, "vm {vm} reports {} now", what.join(", "))
            }
            Staleness::Network { network, was, now } => write!(
                f,
                "network {network} changed: it was {}, now it is {} (someone applied, or its bridge was removed)",
                was.unwrap_or("absent"),
                now.unwrap_or("absent")
            ),
        }
    }
}

/// Top-level JSON fields that differ between two serialisable values.
fn field_diff<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(unreadable)".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.replace('_', "-"))
        .collect()
}

fn desired_changes(
    file: &std::path::Path,
    was: &DesiredState,
    now: &DesiredState,
) -> Vec<Staleness> {
    if was == now {
        return Vec::new();
    }
    let mut what = Vec::new();
    for old in &was.vms {
        match now.vm(&old.name) {
            None => what.push(format!("vm {} removed", old.name)),
            Some(new) if new != old => what.push(format!(
                "vm {} changed ({})",
                old.name,
                field_diff(old, new).join(", ")
            )),
            Some(_) => {}
        }
    }
    for new in &now.vms {
        if was.vm(&new.name).is_none() {
            what.push(format!("vm {} added", new.name));
        }
    }
    let names = |d: &DesiredState| d.vms.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    if what.is_empty() && names(was) != names(now) {
        what.push("VM order changed".into());
    }
    if was.images != now.images {
        what.push("images changed".into());
    }
    if what.is_empty() {
        what.push("the resolved desired state differs".into());
    }
    vec![Staleness::File {
        file: file.to_path_buf(),
        what,
    }]
}

fn vm_changes(name: &str, old: &VmBasis, new: &VmBasis) -> Vec<Staleness> {
    let vm = name.to_string();
    let mut out = Vec::new();
    let had_vmm = old.state.has_vmm();
    if old.state != new.state {
        if had_vmm && new.state == RunState::Crashed {
            out.push(Staleness::Crashed {
                vm: vm.clone(),
                pid: old.pid,
            });
        } else {
            out.push(Staleness::State {
                vm: vm.clone(),
                was: old.state,
                now: new.state,
            });
        }
    }
    let identity = |v: &VmBasis| (v.pid, v.vmm_started);
    if had_vmm && new.state.has_vmm() && identity(old) != identity(new) {
        out.push(Staleness::Vmm {
            vm: vm.clone(),
            was: old.pid,
            now: new.pid,
        });
    }
    if old.record != new.record {
        let mut fields = field_diff(&old.record.spec, &new.record.spec);
        if old.record.desired != new.record.desired {
            fields.push("desired run state".into());
        }
        if fields.is_empty() {
            fields.push("record".into());
        }
        out.push(Staleness::Record {
            vm: vm.clone(),
            fields,
        });
    }
    let mut what = Vec::new();
    if old.cpus != new.cpus {
        what.push(format!("{} vCPUs (was {})", opt(new.cpus), opt(old.cpus)));
    }
    if old.memory_mib != new.memory_mib {
        what.push(format!(
            "{} MiB (was {})",
            opt(new.memory_mib),
            opt(old.memory_mib)
        ));
    }
    if old.disks != new.disks {
        what.push("different disks".into());
    }
    // A VM that stopped or crashed stops reporting: that is already named.
    if !what.is_empty() && old.state == new.state {
        out.push(Staleness::Live { vm, what });
    }
    out
}

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or("unknown".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::Desired;
    use vmctl_spec::VmSpec;

    fn desired(vms: Vec<VmSpec>) -> DesiredState {
        DesiredState::of_vms(vms)
    }

    fn running(spec: VmSpec, pid: u32) -> ObservedVm {
        ObservedVm {
            record: Record::new(spec, Desired::Running),
            live: Live {
                state: RunState::Running,
                pid: Some(pid),
                cpus: Some(1),
                memory_mib: Some(128),
                disks: vec![],
                nics: vec![],
                guest: Some(serde_json::json!({"uptime": 1})),
            },
        }
    }

    fn lock() -> LockDigest {
        LockDigest {
            path: "vmctl.lock".into(),
            sha256: None,
        }
    }

    fn basis(d: &DesiredState, o: &ObservedState) -> Basis {
        Basis::new(d, lock(), Capabilities::all(), o, |pid| {
            Some(u64::from(pid) * 10)
        })
    }

    fn saved(d: &DesiredState, o: &ObservedState) -> SavedPlan {
        SavedPlan::new("0.1.0", 0, "vmctl.kdl".into(), "/s".into(), basis(d, o))
            .unwrap()
            .0
    }

    fn two() -> (DesiredState, ObservedState) {
        let mut beta = VmSpec::diag("beta");
        beta.memory_mib = 256;
        let d = desired(vec![VmSpec::diag("alpha"), beta]);
        let mut o = ObservedState::new();
        o.insert(running(VmSpec::diag("alpha"), 100));
        (d, o)
    }

    #[test]
    fn same_basis_is_current_and_replans_to_the_saved_actions() {
        let (d, o) = two();
        let s = saved(&d, &o);
        assert_eq!(s.staleness("0.1.0", &basis(&d, &o)), vec![]);
        let plan = s.replan().unwrap();
        assert_eq!(plan.actions.len(), 1);
        assert_eq!(plan.actions[0].id, "beta:create");
        // The file round-trips through JSON.
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(SavedPlan::parse(&text).unwrap(), s);
    }

    /// A saved plan over a lab with a network: the network's record is in
    /// the basis (a replan gives the same actions), and a bridge that
    /// vanished, or a network someone removed, makes the plan stale.
    #[test]
    fn networks_are_in_the_basis_and_their_changes_are_named() {
        use vmctl_spec::{Ipv4Subnet, NetworkSpec};
        let (mut d, mut o) = two();
        let lab = NetworkSpec::new("lab", Ipv4Subnet::new([10, 20, 0, 0].into(), 24));
        d.networks.push(lab.clone());
        o.networks.insert(
            "lab".into(),
            ObservedNetwork {
                spec: lab,
                present: true,
            },
        );
        let s = saved(&d, &o);
        assert_eq!(s.staleness("0.1.0", &basis(&d, &o)), vec![]);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(SavedPlan::parse(&text).unwrap(), s);
        assert_eq!(s.replan().unwrap().actions.len(), 1);

        let mut gone = o.clone();
        if let Some(n) = gone.networks.get_mut("lab") {
            n.present = false;
        }
        let st = s.staleness("0.1.0", &basis(&d, &gone));
        assert_eq!(
            st.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![
                "network lab changed: it was present, now it is recorded, bridge missing \
                 (someone applied, or its bridge was removed)"
            ]
        );
        let mut removed = o.clone();
        removed.networks.clear();
        assert!(matches!(
            s.staleness("0.1.0", &basis(&d, &removed)).as_slice(),
            [Staleness::Network { now: None, .. }]
        ));
    }

    #[test]
    fn guest_reports_are_not_part_of_the_basis() {
        let (d, mut o) = two();
        let s = saved(&d, &o);
        if let Some(v) = o.vms.get_mut("alpha") {
            v.live.guest = Some(serde_json::json!({"uptime": 99}));
        }
        assert_eq!(s.staleness("0.1.0", &basis(&d, &o)), vec![]);
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let (d, o) = two();
        let s = saved(&d, &o);

        // The file changed.
        let mut d2 = d.clone();
        d2.vms[1].memory_mib = 512;
        let st = s.staleness("0.1.0", &basis(&d2, &o));
        assert_eq!(st.len(), 1);
        assert_eq!(
            st[0].to_string(),
            "vmctl.kdl changed: vm beta changed (memory-mib)"
        );

        // alpha's VMM died.
        let mut o2 = o.clone();
        if let Some(v) = o2.vms.get_mut("alpha") {
            v.live = Live {
                state: RunState::Crashed,
                ..Live::stopped()
            };
        }
        let st = s.staleness("0.1.0", &basis(&d, &o2));
        assert_eq!(
            st.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["vm alpha crashed: its VMM (pid 100) is gone"]
        );

        // Someone applied: beta exists now, alpha was restarted with more memory.
        let mut o3 = o.clone();
        o3.insert(running(d.vms[1].clone(), 200));
        let mut alpha = VmSpec::diag("alpha");
        alpha.memory_mib = 256;
        let mut a = running(alpha, 101);
        a.live.memory_mib = Some(256);
        o3.insert(a);
        let st: Vec<String> = s
            .staleness("0.1.0", &basis(&d, &o3))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            st,
            vec![
                "vm alpha runs a different VMM now (pid 100 → 101): it was restarted",
                "vm alpha's applied configuration changed (memory-mib): someone applied",
                "vm alpha reports 256 MiB (was 128) now",
                "vm beta was created since the plan (someone applied)",
            ]
        );

        // Same pid, different start time: a reused pid is another process.
        let other = Basis::new(&d, lock(), Capabilities::all(), &o, |_| Some(7));
        assert!(matches!(
            s.staleness("0.1.0", &other).as_slice(),
            [Staleness::Vmm { .. }]
        ));

        // Another vmctl, the lock file, the capabilities.
        let mut b = basis(&d, &o);
        b.lock.sha256 = Some("ab".into());
        b.capabilities = Capabilities::none();
        let st: Vec<String> = s
            .staleness("0.2.0", &b)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            st,
            vec![
                "vmctl changed: the plan was made by vmctl 0.1.0, this is 0.2.0",
                "vmctl.lock changed",
                "the runtime's live capabilities on this host changed",
            ]
        );
    }

    #[test]
    fn an_edited_plan_is_inconsistent_and_bad_files_are_named() {
        let (d, o) = two();
        let mut s = saved(&d, &o);
        s.plan["actions"] = serde_json::json!([]);
        assert!(matches!(s.replan(), Err(SavedPlanError::Inconsistent)));
        assert!(matches!(
            SavedPlan::parse("{}"),
            Err(SavedPlanError::NotAPlan(_))
        ));
        assert!(matches!(
            SavedPlan::parse(r#"{"kind":"vmctl-saved-plan","format_version":"9"}"#),
            Err(SavedPlanError::Version { .. })
        ));
        assert!(matches!(
            SavedPlan::parse("not json"),
            Err(SavedPlanError::NotAPlan(_))
        ));
    }
}
