//! Placement: which host each VM of a lab spread over hosts runs on.
//!
//! Why a module of its own: the choice must be the same on every machine
//! that plans the same file against the same shared state, so it is a pure,
//! deterministic function of (hosts, desired VMs, current assignment) — no
//! clock, no randomness, no iteration over hash maps, no dependence on the
//! order VMs are written in the file. docs/scale-out.md ("Placement")
//! describes the rules; in short:
//!
//! 1. **Sticky**: a VM that already has a host keeps it. Its disks are local
//!    to that host, so a different host is a *move* ([`Move`]), reported and
//!    never done silently: when the file pins it elsewhere, or its host
//!    drains.
//! 2. **Pinned** (`host "h1"`): a new VM goes to its host. An unreachable
//!    pinned host still gets it (its actions fail at apply, like any action
//!    on a host that is down); a draining one or one without room is an
//!    error.
//! 3. **Copies** (`copy-from`) go to their source's host (disks are copied
//!    locally).
//! 4. **Scheduled**: the rest, largest boot memory first (then most vCPUs,
//!    then name), each onto the candidate host — labels match, not
//!    draining, reachable, room left — with, for `spread "key"`, the label
//!    value holding the fewest VMs that spread over the same key, then the
//!    **best fit** (least memory left free), then the host name.
//!
//! Room: memory is the limit. A host offers its RAM minus `reserve memory`
//! minus the boot memory of every VM assigned to it (VMs on the move count
//! on both hosts until they moved). vCPUs time-share CPUs and are not
//! summed across VMs; a single VM's boot vCPUs must not exceed the host's
//! CPUs minus `reserve cpus`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use vmctl_spec::{HostSpec, Reserve, VmSpec};

use crate::observed::HostCapacity;
use crate::size::human_mib;

/// One host as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// As observed; `None`: the host could not be reached.
    pub capacity: Option<HostCapacity>,
    pub reserve: Reserve,
    pub drain: bool,
}

impl HostState {
    /// A declared host with what was observed of it.
    pub fn new(spec: &HostSpec, capacity: Option<HostCapacity>) -> HostState {
        HostState {
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            capacity,
            reserve: spec.reserve,
            drain: spec.drain,
        }
    }

    /// Memory placement may hand out: RAM minus the reserve.
    fn usable_mib(&self) -> Option<u64> {
        self.capacity
            .map(|c| c.memory_mib.saturating_sub(self.reserve.memory_mib))
    }

    fn usable_cpus(&self) -> Option<u32> {
        self.capacity
            .map(|c| c.cpus.saturating_sub(self.reserve.cpus))
    }
}

/// Why a VM should be on another host than the one it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveReason {
    /// The file pins it to another host.
    Pinned,
    /// Its host is draining.
    Drain,
}

/// A VM that is on `from` and belongs on `to`. Its actions still run on
/// `from`; only a move (`vmctl move`) changes its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub vm: String,
    pub from: String,
    /// Where it should go; `None` when no host can take it (`blocked` says
    /// why, with the numbers).
    pub to: Option<String>,
    pub reason: MoveReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

impl Move {
    /// One line for the plan.
    pub fn describe(&self) -> String {
        let (vm, from) = (&self.vm, &self.from);
        let where_ = match self.reason {
            MoveReason::Pinned => format!("{vm} is on {from} and pinned to"),
            MoveReason::Drain => format!("{vm} is on {from}, which is draining; placement picks"),
        };
        match (&self.to, &self.blocked) {
            (Some(to), None) => format!(
                "{where_} {to}: its disks are on {from}, so it moves only with `vmctl move {vm} --to {to}`"
            ),
            (Some(to), Some(b)) => format!("{where_} {to}, which cannot take it: {b}"),
            (None, b) => format!(
                "{vm} is on {from}, which is draining, and no other host can take it: {}",
                b.as_deref().unwrap_or("no candidate host")
            ),
        }
    }
}

/// A VM no host can take, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct Unplaceable {
    pub vm: String,
    pub message: String,
}

/// The outcome: every VM is in exactly one of `hosts` or `errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// VM → the host it is on or goes to; also every VM of the current
    /// assignment that is no longer desired (where it is destroyed).
    pub hosts: BTreeMap<String, String>,
    /// VMs that belong elsewhere (sorted by VM).
    pub moves: Vec<Move>,
    /// VMs that fit nowhere.
    pub errors: BTreeMap<String, Unplaceable>,
    /// What each reachable host has, for the planner's own checks.
    #[serde(skip)]
    pub capacity: BTreeMap<String, HostCapacity>,
}

impl Placement {
    /// `vm` fits nowhere (or may not stay where it is), because `message`.
    fn refuse(&mut self, vm: &str, message: String) {
        self.errors.insert(
            vm.to_string(),
            Unplaceable {
                vm: vm.to_string(),
                message,
            },
        );
    }

    /// The host of a VM's actions.
    pub fn host_of(&self, vm: &str) -> Option<&str> {
        self.hosts.get(vm).map(String::as_str)
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Memory and VMs assigned to each host while placing.
#[derive(Default)]
struct Load {
    mib: BTreeMap<String, u64>,
    vms: BTreeMap<String, u32>,
    /// (spread key, label value) → VMs spreading over that key there.
    spread: BTreeMap<(String, String), u32>,
}

impl Load {
    fn add(&mut self, host: &HostState, vm: &VmSpec) {
        *self.mib.entry(host.name.clone()).or_default() += vm.memory_mib;
        *self.vms.entry(host.name.clone()).or_default() += 1;
        if let Some(key) = vm.placement.as_ref().and_then(|p| p.spread.as_ref())
            && let Some(v) = host.labels.get(key)
        {
            *self.spread.entry((key.clone(), v.clone())).or_default() += 1;
        }
    }

    fn used(&self, host: &str) -> u64 {
        self.mib.get(host).copied().unwrap_or(0)
    }

    fn free(&self, host: &HostState) -> Option<u64> {
        host.usable_mib()
            .map(|u| u.saturating_sub(self.used(&host.name)))
    }
}

/// Why `vm` cannot go on `host` now; `None`: it fits.
fn refusal(host: &HostState, vm: &VmSpec, load: &Load, scheduled: bool) -> Option<String> {
    let n = &host.name;
    if scheduled && host.drain {
        return Some(format!("{n} is draining"));
    }
    if scheduled
        && let Some(p) = &vm.placement
        && let Some((k, v)) = p
            .labels
            .iter()
            .find(|(k, v)| host.labels.get(*k) != Some(*v))
    {
        return Some(format!("{n} lacks {k}=\"{v}\""));
    }
    let (Some(usable), Some(cpus)) = (host.usable_mib(), host.usable_cpus()) else {
        return scheduled.then(|| format!("{n} is unreachable"));
    };
    let free = usable.saturating_sub(load.used(n));
    let reserve = |what: String| {
        if what.is_empty() {
            String::new()
        } else {
            format!(" after reserve {what}")
        }
    };
    if vm.memory_mib > free {
        let total = host.capacity.map(|c| c.memory_mib).unwrap_or(0);
        let vms = load.vms.get(n).copied().unwrap_or(0);
        let r = if host.reserve.memory_mib > 0 {
            human_mib(host.reserve.memory_mib)
        } else {
            String::new()
        };
        let mut s = format!(
            "{n} has {} free of {}{}",
            human_mib(free),
            human_mib(total),
            reserve(r)
        );
        if vms > 0 {
            let _ = write!(
                s,
                " and {vms} VM{} ({})",
                if vms == 1 { "" } else { "s" },
                human_mib(load.used(n))
            );
        }
        return Some(s);
    }
    if vm.cpus > cpus {
        let r = if host.reserve.cpus > 0 {
            format!("{} CPU(s)", host.reserve.cpus)
        } else {
            String::new()
        };
        return Some(format!("{n} has {cpus} CPU(s){}", reserve(r)));
    }
    None
}

/// What a VM needs, for the start of an error.
fn needs(vm: &VmSpec) -> String {
    format!(
        "{} needs {} of memory and {} vCPU(s)",
        vm.name,
        human_mib(vm.memory_mib),
        vm.cpus
    )
}

/// Scheduling order: largest boot memory first, then most vCPUs, then name.
fn order_key(vm: &VmSpec) -> (std::cmp::Reverse<u64>, std::cmp::Reverse<u32>, &str) {
    (
        std::cmp::Reverse(vm.memory_mib),
        std::cmp::Reverse(vm.cpus),
        vm.name.as_str(),
    )
}

/// How a candidate host ranks (smallest wins): lacks the spread label,
/// VMs of the spread group on its label value, memory left free, name.
type Rank<'h> = (bool, u32, u64, &'h str);

/// The host a scheduled VM goes to, or why none can take it. `except`:
/// a host not to consider (the one a draining VM leaves).
fn choose<'h>(
    hosts: &'h [HostState],
    vm: &VmSpec,
    load: &Load,
    except: Option<&str>,
) -> Result<&'h HostState, String> {
    let mut why = Vec::new();
    let mut best: Option<(Rank<'h>, &HostState)> = None;
    for h in hosts {
        if Some(h.name.as_str()) == except {
            continue;
        }
        if let Some(r) = refusal(h, vm, load, true) {
            why.push(r);
            continue;
        }
        let free_after = load.free(h).unwrap_or(0).saturating_sub(vm.memory_mib);
        let (missing, group) = match vm.placement.as_ref().and_then(|p| p.spread.as_ref()) {
            Some(key) => match h.labels.get(key) {
                Some(v) => (
                    false,
                    load.spread
                        .get(&(key.clone(), v.clone()))
                        .copied()
                        .unwrap_or(0),
                ),
                None => (true, 0),
            },
            None => (false, 0),
        };
        let key = (missing, group, free_after, h.name.as_str());
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, h));
        }
    }
    match best {
        Some((_, h)) => Ok(h),
        None if why.is_empty() => Err(format!("{}; no other host is declared", needs(vm))),
        None => Err(format!("{}; {}", needs(vm), why.join("; "))),
    }
}

/// Place every VM of `vms` on one of `hosts`, keeping `current` (VM → host,
/// from the shared state) wherever it still holds.
pub fn place(hosts: &[HostState], vms: &[VmSpec], current: &BTreeMap<String, String>) -> Placement {
    let mut hosts: Vec<HostState> = hosts.to_vec();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let by_name: BTreeMap<&str, &HostState> = hosts.iter().map(|h| (h.name.as_str(), h)).collect();
    let mut out = Placement {
        capacity: hosts
            .iter()
            .filter_map(|h| h.capacity.map(|c| (h.name.clone(), c)))
            .collect(),
        ..Placement::default()
    };
    let mut load = Load::default();
    let mut sorted: Vec<&VmSpec> = vms.iter().collect();
    sorted.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    let wanted: BTreeSet<&str> = vms.iter().map(|v| v.name.as_str()).collect();

    // Gone VMs are destroyed where they are; they take no room (this apply
    // destroys them).
    for (vm, h) in current {
        if !wanted.contains(vm.as_str()) {
            out.hosts.insert(vm.clone(), h.clone());
        }
    }

    // 1. Sticky: a placed VM stays (and takes its room there).
    let mut pending: Vec<&VmSpec> = Vec::new();
    let mut movers: Vec<(&VmSpec, MoveReason)> = Vec::new();
    for vm in &sorted {
        let Some(h) = current.get(&vm.name) else {
            pending.push(vm);
            continue;
        };
        out.hosts.insert(vm.name.clone(), h.clone());
        match by_name.get(h.as_str()) {
            Some(host) => {
                load.add(host, vm);
                if vm.host.as_ref().is_some_and(|p| p != h) {
                    movers.push((vm, MoveReason::Pinned));
                } else if host.drain {
                    movers.push((vm, MoveReason::Drain));
                }
            }
            None => {
                // Its host left the file: the VM is still there, so its
                // actions stay addressed to it (and fail, naming the host).
                out.hosts.remove(&vm.name);
                out.refuse(
                    &vm.name,
                    format!(
                        "{} runs on host {h}, which the file no longer declares: declare {h} \
                             again (and `vmctl move` it away), or remove {} from the file",
                        vm.name, vm.name
                    ),
                );
            }
        }
    }

    // 2. Pinned new VMs.
    let mut rest: Vec<&VmSpec> = Vec::new();
    for vm in pending {
        let Some(pin) = vm.host.as_ref().filter(|_| vm.copy_from.is_none()) else {
            rest.push(vm);
            continue;
        };
        let Some(host) = by_name.get(pin.as_str()) else {
            out.refuse(
                &vm.name,
                format!("{} is pinned to host {pin}, which is not declared", vm.name),
            );
            continue;
        };
        let problem = if host.drain {
            Some(format!("{pin} is draining"))
        } else {
            refusal(host, vm, &load, false)
        };
        match problem {
            Some(p) => {
                out.refuse(&vm.name, format!("{} (pinned to {pin}); {p}", needs(vm)));
            }
            None => {
                load.add(host, vm);
                out.hosts.insert(vm.name.clone(), pin.clone());
            }
        }
    }

    // 3 and 4. Copies beside their sources, the rest scheduled; a copy
    // waits for its source (chains resolve over rounds, in order).
    let mut waiting = rest;
    loop {
        let before = waiting.len();
        let mut next = Vec::new();
        for vm in waiting {
            if let Some(src) = &vm.copy_from {
                if out.errors.contains_key(src) {
                    out.refuse(
                        &vm.name,
                        format!("{} is a copy of {src}, which has no host", vm.name),
                    );
                    continue;
                }
                let Some(h) = out.hosts.get(src).cloned() else {
                    next.push(vm);
                    continue;
                };
                let problem = match (by_name.get(h.as_str()), &vm.host) {
                    (_, Some(pin)) if *pin != h => Some(format!(
                        "it is pinned to {pin}, but a copy is made where its source's disks are"
                    )),
                    (Some(host), _) => refusal(host, vm, &load, false),
                    (None, _) => Some(format!("{h} is not declared")),
                };
                match problem {
                    None => {
                        if let Some(host) = by_name.get(h.as_str()) {
                            load.add(host, vm);
                        }
                        out.hosts.insert(vm.name.clone(), h);
                    }
                    Some(p) => {
                        out.refuse(
                            &vm.name,
                            format!(
                                "{} (a copy of {src}, so on {src}'s host {h}); {p}",
                                needs(vm)
                            ),
                        );
                    }
                }
                continue;
            }
            match choose(&hosts, vm, &load, None) {
                Ok(host) => {
                    load.add(host, vm);
                    out.hosts.insert(vm.name.clone(), host.name.clone());
                }
                Err(message) => {
                    out.refuse(&vm.name, message);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        if next.len() == before {
            // Sources that are not in the file (or a cycle, which
            // validation refuses): nothing to place beside.
            for vm in next {
                let src = vm.copy_from.as_deref().unwrap_or("?");
                out.refuse(
                    &vm.name,
                    format!("{} is a copy of {src}, which has no host", vm.name),
                );
            }
            break;
        }
        waiting = next;
    }

    // 5. Moves: where each VM that belongs elsewhere should go (its room
    // is taken there too, so two moves never count on the same room).
    for (vm, reason) in movers {
        let from = out.hosts.get(&vm.name).cloned().unwrap_or_default();
        let m = match reason {
            MoveReason::Pinned => {
                let to = vm.host.clone().unwrap_or_default();
                let blocked = match by_name.get(to.as_str()) {
                    None => Some(format!("{to} is not declared")),
                    Some(host) if host.drain => Some(format!("{to} is draining")),
                    Some(host) => refusal(host, vm, &load, false),
                };
                if blocked.is_none()
                    && let Some(host) = by_name.get(to.as_str())
                {
                    load.add(host, vm);
                }
                Move {
                    vm: vm.name.clone(),
                    from,
                    to: Some(to),
                    reason,
                    blocked,
                }
            }
            MoveReason::Drain => match choose(&hosts, vm, &load, Some(&from)) {
                Ok(host) => {
                    load.add(host, vm);
                    Move {
                        vm: vm.name.clone(),
                        from,
                        to: Some(host.name.clone()),
                        reason,
                        blocked: None,
                    }
                }
                Err(why) => Move {
                    vm: vm.name.clone(),
                    from,
                    to: None,
                    reason,
                    blocked: Some(why),
                },
            },
        };
        out.moves.push(m);
    }
    out.moves.sort_by(|a, b| a.vm.cmp(&b.vm));
    out
}

#[cfg(test)]
mod tests;
