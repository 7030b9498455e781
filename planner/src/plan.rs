//! From desired + observed state to an ordered action graph.
//!
//! Each VM yields at most one disruptive action (create, copy, restart,
//! replace, destroy, start or stop) or a chain of live actions, plus refused
//! entries that are reported but never executed; each network at most one
//! create, replace or destroy (the `network` submodule). Ordering between VMs comes
//! from `depends-on` and `copy-from`; the graph is a petgraph `DiGraph`,
//! sorted topologically (Kahn, ties broken by creation order so plans are
//! deterministic). Everything is O(VMs + edges): no pairwise scans.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use serde_json::{Value, json};
use vmctl_spec::{DesiredState, NetworkSpec, VmSpec};

use crate::capabilities::{self, ActionKind, Attribute, Condition, Disruption};
use crate::diff::{Change, diff_vm};
use crate::observed::{Capabilities, HostCapacity, ObservedState, ObservedVm, RunState};
use crate::placement::Placement;

mod network;

/// What an action is about. Serialized lowercase (`"resource"` in the JSON
/// plan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    #[default]
    Vm,
    Network,
}

impl Resource {
    pub fn label(self) -> &'static str {
        match self {
            Resource::Vm => "vm",
            Resource::Network => "network",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Unique and stable: `<vm>:<kind>` (`db:create`, `web:resize-disk:root`,
    /// `web:stop-for-copy`, `web:resize-disk:root:refused`), and
    /// `network:<name>:<kind>` for a network (`network:lab:create`).
    pub id: String,
    /// The VM's name, or the network's for a network action.
    pub vm: String,
    pub resource: Resource,
    pub kind: ActionKind,
    /// [`Disruption::Refused`] for a refused entry (never executed).
    pub disruption: Disruption,
    /// Why; always set for restart, replace, destroy, stop and refusals.
    pub reason: Option<String>,
    /// The attribute changes this action carries out (or refuses).
    pub changes: Vec<Change>,
    /// Ids of the actions that must finish first.
    pub depends_on: Vec<String>,
    /// The configuration to apply (create, copy, restart, replace, live).
    pub new: Option<VmSpec>,
    /// The configuration observed (restart, replace, destroy, live).
    pub old: Option<VmSpec>,
    /// The VM copied from (copy only).
    pub source: Option<String>,
    /// A network action's configuration to apply (create, replace).
    pub network: Option<NetworkSpec>,
    /// A network action's observed configuration (replace, destroy).
    pub network_old: Option<NetworkSpec>,
    /// The host the action runs on in a lab over several hosts (the VM's
    /// assigned host, see [`crate::placement`]); `None` in a single-host
    /// lab and for network actions.
    pub host: Option<String>,
}

impl Action {
    pub fn is_refused(&self) -> bool {
        self.disruption == Disruption::Refused
    }

    pub fn is_network(&self) -> bool {
        self.resource == Resource::Network
    }

    /// Brings the VM up (or keeps it up): ordered after its dependencies' ups.
    fn is_up(&self) -> bool {
        !self.is_network()
            && matches!(
                self.kind,
                ActionKind::Create
                    | ActionKind::Copy
                    | ActionKind::Start
                    | ActionKind::Restart
                    | ActionKind::Replace
            )
    }

    /// Takes the VM down for good (dependents' part of "stop web before db").
    fn is_pure_down(&self) -> bool {
        !self.is_network()
            && matches!(self.kind, ActionKind::Stop | ActionKind::Destroy)
            && !self.id.ends_with(":stop-for-copy")
    }

    /// Takes the VM down at some point (the dependency's part). A copy's
    /// brief stop of its source does not count: dependents keep running.
    fn goes_down(&self) -> bool {
        !self.is_network()
            && matches!(
                self.kind,
                ActionKind::Stop | ActionKind::Destroy | ActionKind::Restart | ActionKind::Replace
            )
            && !self.id.ends_with(":stop-for-copy")
    }

    /// The JSON `before`/`after` objects.
    pub fn before_after(&self) -> (Value, Value) {
        if self.is_network() {
            let j = |n: &Option<NetworkSpec>| n.as_ref().map_or(Value::Null, |n| json!(n));
            return (j(&self.network_old), j(&self.network));
        }
        match self.kind {
            ActionKind::Create | ActionKind::Copy if !self.is_refused() => {
                (Value::Null, json!(self.new))
            }
            ActionKind::Destroy => (json!(self.old), Value::Null),
            _ => {
                let mut b = serde_json::Map::new();
                let mut a = serde_json::Map::new();
                for c in &self.changes {
                    b.insert(c.key.clone(), c.before.clone());
                    a.insert(c.key.clone(), c.after.clone());
                }
                (Value::Object(b), Value::Object(a))
            }
        }
    }
}

/// Counts per kind of outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub create: usize,
    pub copy: usize,
    pub update_live: usize,
    pub restart: usize,
    pub replace: usize,
    pub destroy: usize,
    pub start: usize,
    pub stop: usize,
    pub refused: usize,
}

impl Summary {
    /// Any action to execute.
    pub fn has_actions(&self) -> bool {
        self.create
            + self.copy
            + self.update_live
            + self.restart
            + self.replace
            + self.destroy
            + self.start
            + self.stop
            > 0
    }

    /// Anything differs (actions or refusals).
    pub fn has_changes(&self) -> bool {
        self.has_actions() || self.refused > 0
    }
}

/// An ordered plan: `actions` are in a valid execution order (every action
/// after its `depends_on`), refused entries last.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for a in &self.actions {
            if a.is_refused() {
                s.refused += 1;
                continue;
            }
            match a.kind {
                ActionKind::Create => s.create += 1,
                ActionKind::Copy => s.copy += 1,
                ActionKind::Start => s.start += 1,
                ActionKind::Stop => s.stop += 1,
                ActionKind::Restart => s.restart += 1,
                ActionKind::Replace => s.replace += 1,
                ActionKind::Destroy => s.destroy += 1,
                ActionKind::HotAddCpu
                | ActionKind::HotRemoveCpu
                | ActionKind::HotAddMemory
                | ActionKind::ResizeDisk
                | ActionKind::SetCpuWeight => s.update_live += 1,
                // Only ever a refused entry (counted above).
                ActionKind::Move => s.refused += 1,
            }
        }
        s
    }

    /// The actions to execute (refused entries left out).
    pub fn executable(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| !a.is_refused())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Validation should have caught it; the planner refuses to order a cycle.
    #[error("the action graph has a cycle: {}", cycle.join(" → "))]
    Cycle { cycle: Vec<String> },
}

#[derive(Default)]
struct VmActs {
    all: Vec<usize>,
}

struct Builder {
    actions: Vec<Action>,
    by_vm: HashMap<String, VmActs>,
    edges: Vec<(usize, usize)>,
    /// Actions that start a copy source again after its copies.
    after_copy: HashSet<usize>,
    /// "Start db before web" edges from an after-copy start: kept only when
    /// they close no cycle (see [`add_soft_edges`]).
    soft: Vec<(usize, usize)>,
}

impl Builder {
    fn push(&mut self, a: Action) -> usize {
        let i = self.actions.len();
        if !a.is_refused() {
            self.by_vm.entry(a.vm.clone()).or_default().all.push(i);
        }
        self.actions.push(a);
        i
    }

    fn acts(&self, vm: &str) -> &[usize] {
        self.by_vm.get(vm).map(|v| v.all.as_slice()).unwrap_or(&[])
    }
}

fn action(vm: &str, kind: ActionKind, disruption: Disruption) -> Action {
    Action {
        id: format!("{vm}:{}", kind.label()),
        vm: vm.to_string(),
        resource: Resource::Vm,
        network: None,
        network_old: None,
        kind,
        disruption,
        reason: None,
        changes: Vec::new(),
        depends_on: Vec::new(),
        new: None,
        old: None,
        source: None,
        host: None,
    }
}

fn state_change(before: RunState, after: RunState) -> Change {
    let name = |s: RunState| s.as_str();
    Change {
        attribute: Attribute::State,
        condition: Condition::Changed,
        disk: None,
        key: "state".into(),
        before: json!(name(before)),
        after: json!(name(after)),
        before_text: name(before).into(),
        after_text: name(after).into(),
        disruption: Disruption::None,
        kind: ActionKind::Start,
        reason: String::new(),
    }
}

/// Why a copy cannot happen (beyond the runtime's `copy` capability): its
/// source is missing from the file, or is itself a copy that cannot happen.
fn copy_blocker(
    name: &str,
    desired: &HashMap<&str, &VmSpec>,
    observed: &ObservedState,
) -> Option<String> {
    // The chain is at most as long as the file; a cycle (which validation
    // rejects) ends the walk.
    let mut seen = HashSet::from([name]);
    let mut cur = name;
    loop {
        let src = desired.get(cur)?.copy_from.as_deref()?;
        if !desired.contains_key(src) {
            return Some(format!("copy source {src} is not in the file"));
        }
        if observed.get(src).is_some() {
            return None;
        }
        if !seen.insert(src) {
            return Some(format!("copy-from chain through {src} is a cycle"));
        }
        cur = src;
    }
}

/// Plan the changes that take `observed` to `desired` on a runtime with `caps`.
pub fn plan(
    desired: &DesiredState,
    observed: &ObservedState,
    caps: &Capabilities,
) -> Result<Plan, PlanError> {
    plan_with(desired, observed, caps, None)
}

/// [`plan`] for a lab over several hosts: every VM action carries the host
/// `placement` assigned its VM; a VM placement could not place gets one
/// refused entry with placement's reason (instead of the single-host RAM
/// check), and each [`crate::placement::Move`] is a refused `move` entry on
/// the host the VM is on. One DAG spans all hosts: `depends-on` across
/// hosts orders actions as on one host.
pub fn plan_on_hosts(
    desired: &DesiredState,
    observed: &ObservedState,
    caps: &Capabilities,
    placement: &Placement,
) -> Result<Plan, PlanError> {
    let mut p = plan_with(desired, observed, caps, Some(placement))?;
    for a in &mut p.actions {
        if !a.is_network() {
            a.host = placement.host_of(&a.vm).map(str::to_string);
        }
    }
    Ok(p)
}

fn plan_with(
    desired: &DesiredState,
    observed: &ObservedState,
    caps: &Capabilities,
    on: Option<&Placement>,
) -> Result<Plan, PlanError> {
    let wanted: HashMap<&str, &VmSpec> = desired.vms.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut b = Builder {
        actions: Vec::with_capacity(desired.vms.len() + observed.vms.len()),
        by_vm: HashMap::with_capacity(desired.vms.len() + observed.vms.len()),
        edges: Vec::new(),
        after_copy: HashSet::new(),
        soft: Vec::new(),
    };
    // VMs whose (non-refused) copy action was planned: source → copy indices.
    let mut copies: Vec<(String, usize)> = Vec::new();

    for spec in &desired.vms {
        let unplaced = on.and_then(|p| p.errors.get(&spec.name));
        // Each VM's own host's capacity (or this host's, single-host).
        let capacity = match on {
            Some(p) => p
                .host_of(&spec.name)
                .and_then(|h| p.capacity.get(h))
                .copied(),
            None => observed.host,
        };
        match observed.get(&spec.name) {
            // A VM that exists but whose host left the file: its actions
            // cannot be addressed; one refused entry says why.
            Some(_) if unplaced.is_some() => {
                let mut a = action(&spec.name, ActionKind::Move, Disruption::Refused);
                a.id.push_str(":refused");
                a.reason = unplaced.map(|u| u.message.clone());
                b.push(a);
            }
            None => match unplaced
                .map(|u| format!("{}: refused", u.message))
                .or_else(|| on.is_none().then(|| too_big(spec, capacity)).flatten())
            {
                // A VM that cannot fit on this host is not created (its
                // VMM would fail to get the memory after the record was
                // written).
                Some(why) => {
                    let kind = if spec.copy_from.is_some() {
                        ActionKind::Copy
                    } else {
                        ActionKind::Create
                    };
                    let mut a = action(&spec.name, kind, Disruption::Refused);
                    a.id.push_str(":refused");
                    a.reason = Some(why);
                    a.new = Some(spec.clone());
                    b.push(a);
                }
                None => plan_new(&mut b, spec, &wanted, observed, caps, &mut copies),
            },
            Some(ovm) => plan_existing(&mut b, spec, ovm, caps, capacity),
        }
    }
    for m in on.map(|p| p.moves.as_slice()).unwrap_or(&[]) {
        let mut a = action(&m.vm, ActionKind::Move, Disruption::Refused);
        a.id.push_str(":refused");
        a.reason = Some(m.describe());
        b.push(a);
    }
    for (name, ovm) in &observed.vms {
        if wanted.contains_key(name.as_str()) {
            continue;
        }
        let row = capabilities::row(Attribute::Vm, Condition::Gone);
        let mut a = action(name, ActionKind::Destroy, Disruption::Replace);
        a.reason = row.map(|r| r.reason.to_string());
        a.old = Some(ovm.record.spec.clone());
        b.push(a);
    }

    wrap_copies(&mut b, &wanted, &copies, caps.live_copy);
    dependency_edges(&mut b, desired, &wanted, observed);
    let nets = network::plan_networks(&mut b, desired, observed);
    network::network_edges(&mut b, &nets);
    add_soft_edges(&mut b);
    order(b)
}

fn plan_new(
    b: &mut Builder,
    spec: &VmSpec,
    wanted: &HashMap<&str, &VmSpec>,
    observed: &ObservedState,
    caps: &Capabilities,
    copies: &mut Vec<(String, usize)>,
) {
    let Some(src) = &spec.copy_from else {
        let mut a = action(&spec.name, ActionKind::Create, Disruption::None);
        a.reason = capabilities::row(Attribute::Vm, Condition::New).map(|r| r.reason.to_string());
        a.new = Some(spec.clone());
        b.push(a);
        return;
    };
    let decision = capabilities::row(Attribute::Vm, Condition::NewCopy).map(|r| r.decide(caps));
    let mut a = action(&spec.name, ActionKind::Copy, Disruption::None);
    a.new = Some(spec.clone());
    a.source = Some(src.clone());
    let refusal = match decision {
        Some(d) if d.disruption == Disruption::Refused => Some(capabilities::fill(
            d.reason,
            &[("vm", &spec.name), ("source", src)],
        )),
        _ => copy_blocker(&spec.name, wanted, observed).map(|why| format!("{why}: refused")),
    };
    match refusal {
        Some(why) => {
            a.disruption = Disruption::Refused;
            a.id.push_str(":refused");
            a.reason = Some(why);
            b.push(a);
        }
        None => {
            a.reason = decision
                .map(|d| capabilities::fill(d.reason, &[("vm", &spec.name), ("source", src)]));
            let i = b.push(a);
            copies.push((src.clone(), i));
        }
    }
}

/// Why `spec` cannot fit on `host`: its boot memory is more than the
/// host's RAM. Memory across VMs may be overcommitted (guests touch their
/// memory lazily), one VM bigger than the whole host may not.
fn too_big(spec: &VmSpec, host: Option<HostCapacity>) -> Option<String> {
    let host = host?;
    (spec.memory_mib > host.memory_mib).then(|| {
        format!(
            "memory {} does not fit on this host, which has {} of RAM (MemTotal): refused",
            crate::size::human_mib(spec.memory_mib),
            crate::size::human_mib(host.memory_mib)
        )
    })
}

fn plan_existing(
    b: &mut Builder,
    spec: &VmSpec,
    ovm: &ObservedVm,
    caps: &Capabilities,
    host: Option<HostCapacity>,
) {
    let name = spec.name.as_str();
    let current = ovm.current();
    // A paused VM (a copy in flight) has its VMM: plan it as running.
    let state = match ovm.live.state {
        RunState::Paused => RunState::Running,
        s => s,
    };
    let running = state == RunState::Running;
    let want_run = spec.autostart;
    let mut changes = diff_vm(&current, spec, caps);
    // More boot memory than the host has: the memory change is refused,
    // and so is the rest of the VM's changes (a restart would boot the new
    // memory), until the file asks for what fits.
    if let Some(why) = too_big(spec, host)
        && changes.iter().any(|c| c.attribute == Attribute::Memory)
    {
        for c in &mut changes {
            c.disruption = Disruption::Refused;
            c.reason = if c.attribute == Attribute::Memory {
                why.clone()
            } else {
                format!("{}: refused with the memory change", c.reason)
            };
        }
    }
    let (refused, effective): (Vec<Change>, Vec<Change>) = changes
        .into_iter()
        .partition(|c| c.disruption == Disruption::Refused);

    for c in refused {
        let mut a = action(name, c.kind, Disruption::Refused);
        if let Some(d) = &c.disk {
            a.id = format!("{name}:{}:{d}", c.kind.label());
        }
        a.id.push_str(":refused");
        a.reason = Some(c.reason.clone());
        a.old = Some(current.clone());
        a.changes = vec![c];
        b.push(a);
    }

    let any = |d: Disruption| effective.iter().any(|c| c.disruption == d);
    if any(Disruption::Replace) {
        let mut a = action(name, ActionKind::Replace, Disruption::Replace);
        a.reason = Some(join_reasons(&effective, Disruption::Replace));
        a.old = Some(current);
        a.new = Some(spec.clone());
        a.changes = effective;
        b.push(a);
    } else if !effective.is_empty() && (any(Disruption::Restart) || !running || !want_run) {
        let disruption = if running {
            Disruption::Restart
        } else {
            Disruption::None
        };
        let mut a = action(name, ActionKind::Restart, disruption);
        // A VM that is not running is not restarted: its configuration is
        // rewritten (and it is started if it should run).
        let mut why = if !running {
            "VM is not running: new configuration written".to_string()
        } else if any(Disruption::Restart) {
            join_reasons(&effective, Disruption::Restart)
        } else {
            "autostart=false: stop with the new configuration".to_string()
        };
        if state == RunState::Crashed {
            why = format!("drift: VM crashed; {why}");
        }
        if !running && want_run {
            why.push_str(", then started");
        }
        a.reason = Some(why);
        a.old = Some(current);
        a.new = Some(spec.clone());
        a.changes = effective;
        b.push(a);
    } else if !effective.is_empty() {
        let mut prev: Option<usize> = None;
        for c in effective {
            let mut a = action(name, c.kind, Disruption::Live);
            if let Some(d) = &c.disk {
                a.id = format!("{name}:{}:{d}", c.kind.label());
            }
            a.reason = Some(c.reason.clone());
            a.old = Some(current.clone());
            a.new = Some(spec.clone());
            a.changes = vec![c];
            let i = b.push(a);
            // Live changes to one VM go one at a time, in table order.
            if let Some(p) = prev {
                b.edges.push((p, i));
            }
            prev = Some(i);
        }
    } else {
        let cond = match (state, want_run) {
            (RunState::Stopped, true) => Some((Condition::StoppedShouldRun, ActionKind::Start)),
            (RunState::Crashed, true) => Some((Condition::Crashed, ActionKind::Start)),
            (RunState::Running, false) => Some((Condition::RunningShouldStop, ActionKind::Stop)),
            (RunState::Crashed, false) => Some((Condition::CrashedShouldStop, ActionKind::Stop)),
            _ => None,
        };
        if let Some((cond, kind)) = cond
            && let Some(row) = capabilities::row(Attribute::State, cond)
        {
            let mut a = action(name, kind, row.disruption);
            a.reason = Some(row.reason.to_string());
            let after = if kind == ActionKind::Start {
                RunState::Running
            } else {
                RunState::Stopped
            };
            a.changes = vec![state_change(state, after)];
            a.old = Some(current);
            a.new = Some(spec.clone());
            b.push(a);
        }
    }
}

fn join_reasons(changes: &[Change], level: Disruption) -> String {
    let v: Vec<&str> = changes
        .iter()
        .filter(|c| c.disruption == level)
        .map(|c| c.reason.as_str())
        .collect();
    v.join("; ")
}

/// Order each copy after its source's actions. Without `live_copy`, stop
/// each copy source that will be running while its disks are copied, and
/// start it again after the last copy; with it, the runtime copies a running
/// source in a short pause and nothing is stopped.
fn wrap_copies(
    b: &mut Builder,
    wanted: &HashMap<&str, &VmSpec>,
    copies: &[(String, usize)],
    live_copy: bool,
) {
    let mut by_source: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut pos: HashMap<&str, usize> = HashMap::new();
    for (src, i) in copies {
        let slot = *pos.entry(src.as_str()).or_insert_with(|| {
            by_source.push((src.as_str(), Vec::new()));
            by_source.len() - 1
        });
        by_source[slot].1.push(*i);
    }
    for (src, targets) in by_source {
        let source_acts: Vec<usize> = b.acts(src).to_vec();
        let will_run = wanted.get(src).is_some_and(|s| s.autostart);
        let names: Vec<&str> = targets.iter().map(|&t| b.actions[t].vm.as_str()).collect();
        let names = names.join(", ");
        // A stopped source that is about to be started: copy first, then start.
        let pending_start = source_acts
            .iter()
            .copied()
            .find(|&i| b.actions[i].kind == ActionKind::Start && source_acts.len() == 1);
        if let Some(start) = pending_start {
            b.after_copy.insert(start);
            for &t in &targets {
                b.edges.push((t, start));
            }
            continue;
        }
        let mut before: Vec<usize> = source_acts.clone();
        if will_run && !live_copy {
            let mut stop = action(src, ActionKind::Stop, Disruption::Restart);
            stop.id = format!("{src}:stop-for-copy");
            stop.reason = Some(format!("stopped while its disks are copied to {names}"));
            stop.changes = vec![state_change(RunState::Running, RunState::Stopped)];
            let stop_i = b.push(stop);
            for &s in &source_acts {
                b.edges.push((s, stop_i));
            }
            before = vec![stop_i];
            let mut start = action(src, ActionKind::Start, Disruption::None);
            start.id = format!("{src}:start-after-copy");
            start.reason = Some(format!(
                "started again after its disks were copied to {names}"
            ));
            start.changes = vec![state_change(RunState::Stopped, RunState::Running)];
            let start_i = b.push(start);
            b.after_copy.insert(start_i);
            for &t in &targets {
                b.edges.push((t, start_i));
            }
        }
        for &t in &targets {
            for &s in &before {
                b.edges.push((s, t));
            }
        }
    }
}

/// `depends-on`: start dependencies before dependents; stop or destroy
/// dependents before their dependencies. A dependency's restart does not
/// restart its dependents.
fn dependency_edges(
    b: &mut Builder,
    desired: &DesiredState,
    wanted: &HashMap<&str, &VmSpec>,
    observed: &ObservedState,
) {
    let add = |b: &mut Builder, vm: &str, dep: &str, up: bool| {
        let vm_acts = b.acts(vm).to_vec();
        let dep_acts = b.acts(dep).to_vec();
        for &a in &vm_acts {
            for &d in &dep_acts {
                let (aa, da) = (&b.actions[a], &b.actions[d]);
                // A copy of its own dependency is ordered by the copy wrap
                // (it cannot wait for the source's start: that waits for it).
                let own_source = aa.source.as_deref() == Some(dep);
                if up && aa.is_up() && da.is_up() && !own_source {
                    if b.after_copy.contains(&d) {
                        b.soft.push((d, a));
                    } else {
                        b.edges.push((d, a));
                    }
                }
                if !up && aa.is_pure_down() && da.goes_down() {
                    b.edges.push((a, d));
                }
            }
        }
    };
    for spec in &desired.vms {
        for dep in &spec.depends_on {
            add(b, &spec.name, dep, true);
            add(b, &spec.name, dep, false);
        }
    }
    for (name, ovm) in &observed.vms {
        let declared = wanted.get(name.as_str()).map(|s| &s.depends_on);
        for dep in &ovm.record.spec.depends_on {
            if declared.is_some_and(|d| d.contains(dep)) {
                continue;
            }
            add(b, name, dep, false);
        }
    }
}

/// A dependent waits for its dependency to be started again after a copy,
/// unless the copy itself (transitively) waits for that dependent — then the
/// dependent may start while the source is briefly stopped for the copy.
/// Each edge `s → a` is kept iff `a` is not an ancestor of `s` (so the graph
/// stays acyclic); ancestors are found once per after-copy start.
fn add_soft_edges(b: &mut Builder) {
    if b.soft.is_empty() {
        return;
    }
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); b.actions.len()];
    for &(from, to) in &b.edges {
        preds[to].push(from);
    }
    let mut soft = std::mem::take(&mut b.soft);
    soft.sort_by_key(|&(s, a)| (s, a));
    let mut i = 0;
    while i < soft.len() {
        let s = soft[i].0;
        let mut ancestors: HashSet<usize> = HashSet::new();
        let mut stack = vec![s];
        while let Some(n) = stack.pop() {
            for &p in &preds[n] {
                if ancestors.insert(p) {
                    stack.push(p);
                }
            }
        }
        while i < soft.len() && soft[i].0 == s {
            let a = soft[i].1;
            if !ancestors.contains(&a) && a != s {
                b.edges.push((s, a));
                preds[a].push(s);
            }
            i += 1;
        }
    }
}

/// Topological order (Kahn, ties by creation order), `depends_on` filled in.
fn order(b: Builder) -> Result<Plan, PlanError> {
    let Builder { actions, edges, .. } = b;
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(actions.len(), edges.len());
    let nodes: Vec<NodeIndex> = (0..actions.len()).map(|i| g.add_node(i)).collect();
    let mut seen = HashSet::with_capacity(edges.len());
    for (from, to) in edges {
        if seen.insert((from, to)) {
            g.add_edge(nodes[from], nodes[to], ());
        }
    }

    let mut indeg: Vec<usize> = nodes
        .iter()
        .map(|&n| g.neighbors_directed(n, petgraph::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = indeg
        .iter()
        .enumerate()
        .filter(|&(i, &d)| d == 0 && !actions[i].is_refused())
        .map(|(i, _)| Reverse(i))
        .collect();
    let mut sorted = Vec::with_capacity(actions.len());
    while let Some(Reverse(i)) = ready.pop() {
        sorted.push(i);
        for e in g.edges_directed(nodes[i], petgraph::Outgoing) {
            let t = g[e.target()];
            indeg[t] -= 1;
            if indeg[t] == 0 {
                ready.push(Reverse(t));
            }
        }
    }
    let executable = actions.iter().filter(|a| !a.is_refused()).count();
    if sorted.len() < executable {
        return Err(PlanError::Cycle {
            cycle: find_cycle(&g, &actions),
        });
    }

    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); actions.len()];
    let mut rank = vec![0usize; actions.len()];
    for (r, &i) in sorted.iter().enumerate() {
        rank[i] = r;
    }
    for e in g.edge_references() {
        deps[g[e.target()]].push(g[e.source()]);
    }
    let ids: Vec<String> = actions.iter().map(|a| a.id.clone()).collect();
    let mut slots: Vec<Option<Action>> = actions.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    let refused: Vec<usize> = (0..slots.len())
        .filter(|&i| slots[i].as_ref().is_some_and(Action::is_refused))
        .collect();
    for i in sorted.into_iter().chain(refused) {
        let Some(mut a) = slots[i].take() else {
            continue;
        };
        let mut d = std::mem::take(&mut deps[i]);
        d.sort_by_key(|&j| rank[j]);
        a.depends_on = d.into_iter().map(|j| ids[j].clone()).collect();
        out.push(a);
    }
    Ok(Plan { actions: out })
}

/// One cycle in `g`, named by action ids (`a → b → a`).
fn find_cycle(g: &DiGraph<usize, ()>, actions: &[Action]) -> Vec<String> {
    for scc in petgraph::algo::tarjan_scc(g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        let mut path = vec![scc[0]];
        let mut at: HashMap<NodeIndex, usize> = HashMap::from([(scc[0], 0)]);
        let mut cur = scc[0];
        while let Some(next) = g
            .neighbors_directed(cur, petgraph::Outgoing)
            .find(|n| members.contains(n))
        {
            if let Some(&start) = at.get(&next) {
                let mut cycle: Vec<String> = path[start..]
                    .iter()
                    .map(|&n| actions[g[n]].id.clone())
                    .collect();
                cycle.push(actions[g[next]].id.clone());
                return cycle;
            }
            at.insert(next, path.len());
            path.push(next);
            cur = next;
        }
    }
    Vec::new()
}
