//! The capability table: the ONE place that says how each kind of change is
//! carried out (live, restart, replace or refused), what runtime capability a
//! live change needs and what happens without it.
//!
//! [`crate::diff`] looks rows up here, and [`markdown`] renders the same rows
//! for docs/planning.md, so the documentation cannot drift from the code.

use serde::{Deserialize, Serialize};

use crate::observed::Capabilities;

/// What part of a VM (or which other resource) a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// A declared network (a resource of its own: its bridge on the host).
    Network,
    /// A VM's NICs (added, removed, or moved to another network, address or MAC).
    Nics,
    /// The VM as a whole (exists or not).
    Vm,
    /// Running, stopped or crashed.
    State,
    Cpus,
    MaxCpus,
    Memory,
    MaxMemory,
    /// One disk's size.
    DiskSize,
    /// A disk added, removed, or its path/format changed.
    Disk,
    Os,
    /// The contents of the boot image (kernel, initrd, cmdline) with the same `os`.
    Image,
    CpuWeight,
    /// The extra Debian packages baked into the VM's image.
    Packages,
    /// Guest configuration applied at boot by the guest's `vmctl-config`.
    Hostname,
    Users,
    Files,
}

impl Attribute {
    pub fn label(self) -> &'static str {
        match self {
            Attribute::Network => "network",
            Attribute::Nics => "nics",
            Attribute::Vm => "vm",
            Attribute::State => "state",
            Attribute::Cpus => "cpus",
            Attribute::MaxCpus => "max cpus",
            Attribute::Memory => "memory",
            Attribute::MaxMemory => "max memory",
            Attribute::DiskSize => "disk size",
            Attribute::Disk => "disk",
            Attribute::Os => "os",
            Attribute::Image => "image",
            Attribute::CpuWeight => "cpu-weight",
            Attribute::Packages => "packages",
            Attribute::Hostname => "hostname",
            Attribute::Users => "users",
            Attribute::Files => "files",
        }
    }
}

/// When a row applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Declared, not observed.
    New,
    /// Declared with `copy-from`, not observed.
    NewCopy,
    /// Observed, no longer declared.
    Gone,
    /// Stopped, should run.
    StoppedShouldRun,
    /// VMM gone while the record says running; should run.
    Crashed,
    /// Running, `autostart=false`.
    RunningShouldStop,
    /// Crashed, `autostart=false` now.
    CrashedShouldStop,
    /// Increase up to the hot-add max.
    UpWithinMax,
    /// Increase past the hot-add max.
    UpBeyondMax,
    /// Increase within the max, but not by whole hot-add blocks (Linux
    /// onlines memory in 128 MiB blocks).
    UpNotInSteps,
    Down,
    Changed,
    Grow,
    Shrink,
    Added,
    /// A disk no longer declared whose file is in the state directory.
    Removed,
    /// A disk no longer declared whose file is at a user-chosen `path`.
    RemovedExternal,
    /// A disk's file location (`path`) changed.
    Moved,
    /// Recorded, but missing on the host (a network's bridge after a reboot).
    Missing,
}

impl Condition {
    pub fn label(self) -> &'static str {
        match self {
            Condition::New => "declared, not present",
            Condition::NewCopy => "declared with copy-from, not present",
            Condition::Gone => "present, no longer declared",
            Condition::StoppedShouldRun => "stopped, should run",
            Condition::Crashed => "crashed (VMM gone, record says running)",
            Condition::RunningShouldStop => "running, autostart=false",
            Condition::CrashedShouldStop => "crashed, autostart=false",
            Condition::UpWithinMax => "up, within max",
            Condition::UpBeyondMax => "up, beyond max",
            Condition::UpNotInSteps => "up, within max, not in 128 MiB steps",
            Condition::Down => "down",
            Condition::Changed => "changed",
            Condition::Grow => "grow",
            Condition::Shrink => "shrink",
            Condition::Added => "added",
            Condition::Removed => "removed (file in the state dir)",
            Condition::RemovedExternal => "removed (file at a user-chosen path)",
            Condition::Moved => "path changed",
            Condition::Missing => "recorded, missing on the host",
        }
    }
}

/// How much a change disturbs the VM. Serialized lowercase; a refused change is
/// written as `"none"` with `"refused": true` in the JSON plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disruption {
    /// Nothing running is touched (create, start, copy target).
    None,
    /// Changed while the VM runs.
    Live,
    /// The VM goes down (and comes back unless `autostart=false`).
    Restart,
    /// The VM and its disks are destroyed (replace, destroy).
    Replace,
    /// Not done: the reason says why.
    Refused,
}

impl Disruption {
    pub fn label(self) -> &'static str {
        match self {
            Disruption::None => "none",
            Disruption::Live => "live",
            Disruption::Restart => "restart",
            Disruption::Replace => "replace",
            Disruption::Refused => "refused",
        }
    }
}

/// The kinds of action in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    Create,
    Copy,
    Start,
    Stop,
    Restart,
    Replace,
    Destroy,
    HotAddCpu,
    HotRemoveCpu,
    HotAddMemory,
    ResizeDisk,
    SetCpuWeight,
    /// To another host (lab over several hosts): reported by the plan,
    /// carried out by `vmctl move` only.
    Move,
}

impl ActionKind {
    pub fn label(self) -> &'static str {
        match self {
            ActionKind::Create => "create",
            ActionKind::Copy => "copy",
            ActionKind::Start => "start",
            ActionKind::Stop => "stop",
            ActionKind::Restart => "restart",
            ActionKind::Replace => "replace",
            ActionKind::Destroy => "destroy",
            ActionKind::HotAddCpu => "hot-add-cpu",
            ActionKind::HotRemoveCpu => "hot-remove-cpu",
            ActionKind::HotAddMemory => "hot-add-memory",
            ActionKind::ResizeDisk => "resize-disk",
            ActionKind::SetCpuWeight => "set-cpu-weight",
            ActionKind::Move => "move",
        }
    }

    /// Changed while the VM keeps running.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ActionKind::HotAddCpu
                | ActionKind::HotRemoveCpu
                | ActionKind::HotAddMemory
                | ActionKind::ResizeDisk
                | ActionKind::SetCpuWeight
        )
    }
}

/// A runtime capability a live row needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    HotAddCpu,
    HotRemoveCpu,
    HotAddMemory,
    LiveDiskResize,
    LiveCpuWeight,
    Copy,
}

impl Capability {
    pub fn label(self) -> &'static str {
        match self {
            Capability::HotAddCpu => "hot_add_cpu",
            Capability::HotRemoveCpu => "hot_remove_cpu",
            Capability::HotAddMemory => "hot_add_memory",
            Capability::LiveDiskResize => "live_disk_resize",
            Capability::LiveCpuWeight => "live_cpu_weight",
            Capability::Copy => "copy",
        }
    }

    pub fn supported_by(self, caps: &Capabilities) -> bool {
        match self {
            Capability::HotAddCpu => caps.hot_add_cpu,
            Capability::HotRemoveCpu => caps.hot_remove_cpu,
            Capability::HotAddMemory => caps.hot_add_memory,
            Capability::LiveDiskResize => caps.live_disk_resize,
            Capability::LiveCpuWeight => caps.live_cpu_weight,
            Capability::Copy => caps.copy,
        }
    }
}

/// What to do instead when the runtime lacks the capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    pub disruption: Disruption,
    pub kind: ActionKind,
    pub reason: &'static str,
}

/// One row of the table. Reason templates may use `{vm}`, `{disk}`,
/// `{before}`, `{after}` and `{max}` (sizes already human-readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub attribute: Attribute,
    pub condition: Condition,
    pub disruption: Disruption,
    pub kind: ActionKind,
    pub reason: &'static str,
    pub needs: Option<Capability>,
    pub fallback: Option<Fallback>,
}

/// The decision for one change once the runtime's capabilities are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub disruption: Disruption,
    pub kind: ActionKind,
    pub reason: &'static str,
    /// The row's live path was not available.
    pub fell_back: bool,
}

impl Row {
    /// Apply the capability check: a live row whose capability is missing
    /// becomes its fallback. Never offers what the runtime cannot do.
    pub fn decide(&self, caps: &Capabilities) -> Decision {
        match (self.needs, self.fallback) {
            (Some(cap), Some(fb)) if !cap.supported_by(caps) => Decision {
                disruption: fb.disruption,
                kind: fb.kind,
                reason: fb.reason,
                fell_back: true,
            },
            _ => Decision {
                disruption: self.disruption,
                kind: self.kind,
                reason: self.reason,
                fell_back: false,
            },
        }
    }
}

const RESTART_NO_HOTADD_CPU: Fallback = Fallback {
    disruption: Disruption::Restart,
    kind: ActionKind::Restart,
    reason: "cpus {before} → {after}: runtime cannot hot-add vCPUs: restart",
};

/// The capability table. Order matters only for the rendered documentation.
pub static TABLE: &[Row] = &[
    Row {
        attribute: Attribute::Network,
        condition: Condition::New,
        disruption: Disruption::None,
        kind: ActionKind::Create,
        reason: "new network: a bridge with the host's address {after}",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Network,
        condition: Condition::Missing,
        disruption: Disruption::None,
        kind: ActionKind::Create,
        reason: "drift: the network's bridge is gone from the host: create it again",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Network,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Replace,
        reason: "network {before} → {after}: the bridge is re-addressed (VMs on it restart with their new NICs)",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Network,
        condition: Condition::Gone,
        disruption: Disruption::Replace,
        kind: ActionKind::Destroy,
        reason: "network no longer in the file: its bridge is removed after its last VM",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Nics,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "nics {before} → {after}: NIC hot-plug is not supported yet: restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Vm,
        condition: Condition::New,
        disruption: Disruption::None,
        kind: ActionKind::Create,
        reason: "new VM",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Vm,
        condition: Condition::NewCopy,
        disruption: Disruption::None,
        kind: ActionKind::Copy,
        reason: "new VM copied from {source} (a running source is paused briefly for a crash-consistent copy, or stopped meanwhile where the runtime cannot copy live)",
        needs: Some(Capability::Copy),
        fallback: Some(Fallback {
            disruption: Disruption::Refused,
            kind: ActionKind::Copy,
            reason: "runtime cannot copy VMs: refused (remove copy-from to create {vm} from scratch)",
        }),
    },
    Row {
        attribute: Attribute::Vm,
        condition: Condition::Gone,
        disruption: Disruption::Replace,
        kind: ActionKind::Destroy,
        reason: "no longer in the file: destroy (deletes its disks)",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::State,
        condition: Condition::StoppedShouldRun,
        disruption: Disruption::None,
        kind: ActionKind::Start,
        reason: "VM is stopped: start",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::State,
        condition: Condition::Crashed,
        disruption: Disruption::None,
        kind: ActionKind::Start,
        reason: "drift: VM crashed (its VMM is gone but it should run): start",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::State,
        condition: Condition::RunningShouldStop,
        disruption: Disruption::Restart,
        kind: ActionKind::Stop,
        reason: "autostart=false: stop",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::State,
        condition: Condition::CrashedShouldStop,
        disruption: Disruption::None,
        kind: ActionKind::Stop,
        reason: "VM crashed and autostart=false: record it as stopped",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Cpus,
        condition: Condition::UpWithinMax,
        disruption: Disruption::Live,
        kind: ActionKind::HotAddCpu,
        reason: "cpus {before} → {after} within hot-add max {max}: hot-add",
        needs: Some(Capability::HotAddCpu),
        fallback: Some(RESTART_NO_HOTADD_CPU),
    },
    Row {
        attribute: Attribute::Cpus,
        condition: Condition::UpBeyondMax,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "cpus {before} → {after} exceeds hot-add max {max}: restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Cpus,
        condition: Condition::Down,
        disruption: Disruption::Live,
        kind: ActionKind::HotRemoveCpu,
        reason: "cpus {before} → {after}: the guest offlines and ejects the vCPUs: hot-remove",
        needs: Some(Capability::HotRemoveCpu),
        fallback: Some(Fallback {
            disruption: Disruption::Restart,
            kind: ActionKind::Restart,
            reason: "cpus {before} → {after}: runtime cannot remove vCPUs live: restart",
        }),
    },
    Row {
        attribute: Attribute::MaxCpus,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "max cpus {before} → {after}: hot-add headroom is fixed at boot: restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Memory,
        condition: Condition::UpWithinMax,
        disruption: Disruption::Live,
        kind: ActionKind::HotAddMemory,
        reason: "memory {before} → {after} within hot-add max {max}: hot-add",
        needs: Some(Capability::HotAddMemory),
        fallback: Some(Fallback {
            disruption: Disruption::Restart,
            kind: ActionKind::Restart,
            reason: "memory {before} → {after}: runtime cannot hot-add memory: restart",
        }),
    },
    Row {
        attribute: Attribute::Memory,
        condition: Condition::UpNotInSteps,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "memory {before} → {after}: hot-add needs 128 MiB steps: restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Memory,
        condition: Condition::UpBeyondMax,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "memory {before} → {after} exceeds hot-add max {max}: restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Memory,
        condition: Condition::Down,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "memory {before} → {after}: memory cannot be removed live: restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::MaxMemory,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "max memory {before} → {after}: hot-add headroom is fixed at boot: restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::DiskSize,
        condition: Condition::Grow,
        disruption: Disruption::Live,
        kind: ActionKind::ResizeDisk,
        reason: "disk {disk} {before} → {after}: grow live",
        needs: Some(Capability::LiveDiskResize),
        fallback: Some(Fallback {
            disruption: Disruption::Restart,
            kind: ActionKind::Restart,
            reason: "disk {disk} {before} → {after}: runtime cannot resize disks live: restart",
        }),
    },
    Row {
        attribute: Attribute::DiskSize,
        condition: Condition::Shrink,
        disruption: Disruption::Refused,
        kind: ActionKind::ResizeDisk,
        reason: "disk {disk} {before} → {after}: shrinking a disk would lose data: refused (remove the disk or the VM to start over)",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Disk,
        condition: Condition::Added,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "disk {disk} added ({after}): restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Disk,
        condition: Condition::Removed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "disk {disk} removed: its file is deleted (re-adding the disk later gives an empty disk): restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Disk,
        condition: Condition::RemovedExternal,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "disk {disk} removed: WARNING its file {before} is at a user-chosen path and is left in place (a disk declared there again reuses its data): restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Disk,
        condition: Condition::Moved,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "disk {disk}: move disk file {before} → {after}, its data follows (refused at apply if {after} exists): restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Disk,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "disk {disk} {before} → {after}: restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Os,
        condition: Condition::Changed,
        disruption: Disruption::Replace,
        kind: ActionKind::Replace,
        reason: "os {before} → {after}: replace (destroys the VM's disks)",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Image,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "boot image {after} changed (kernel, initrd or cmdline): restart",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::CpuWeight,
        condition: Condition::Changed,
        disruption: Disruption::Live,
        kind: ActionKind::SetCpuWeight,
        reason: "cpu-weight {before} → {after}: live",
        needs: Some(Capability::LiveCpuWeight),
        // A restart could not enforce it either: record it and say so.
        fallback: Some(Fallback {
            disruption: Disruption::Live,
            kind: ActionKind::SetCpuWeight,
            reason: "cpu-weight {before} → {after}: recorded, NOT enforced: this host has no writable cpu cgroup controller (warning; nothing restarts for it)",
        }),
    },
    Row {
        attribute: Attribute::Packages,
        condition: Condition::Changed,
        disruption: Disruption::Replace,
        kind: ActionKind::Replace,
        reason: "packages {delta}: the image is rebuilt, the root disk recreated (replace: destroys the VM's disks)",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Hostname,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "guest configuration changed (hostname): re-applied at boot",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Users,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "guest configuration changed (users): re-applied at boot",
        needs: None,
        fallback: None,
    },
    Row {
        attribute: Attribute::Files,
        condition: Condition::Changed,
        disruption: Disruption::Restart,
        kind: ActionKind::Restart,
        reason: "guest configuration changed (files): re-applied at boot",
        needs: None,
        fallback: None,
    },
];

/// The row for an attribute and condition.
pub fn row(attribute: Attribute, condition: Condition) -> Option<&'static Row> {
    TABLE
        .iter()
        .find(|r| r.attribute == attribute && r.condition == condition)
}

/// Fill a reason template.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// The table as markdown, for docs/planning.md (a test keeps the doc in step).
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str("| attribute | change | disruption | action | needs | without it | reason |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for r in TABLE {
        let needs = r
            .needs
            .map(|c| format!("`{}`", c.label()))
            .unwrap_or_else(|| "—".into());
        let without = match r.fallback {
            Some(fb) if r.needs.is_some() => format!(
                "{} ({}): {}",
                fb.disruption.label(),
                fb.kind.label(),
                fb.reason
            ),
            _ => "—".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.attribute.label(),
            r.condition.label(),
            r.disruption.label(),
            r.kind.label(),
            needs,
            without,
            r.reason
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert!(
                    !(a.attribute == b.attribute && a.condition == b.condition),
                    "duplicate row {:?}/{:?}",
                    a.attribute,
                    a.condition
                );
            }
        }
    }

    #[test]
    fn live_rows_have_a_capability_and_a_non_live_fallback() {
        for r in TABLE {
            if r.disruption == Disruption::Live {
                let cap = r.needs.expect("live row without capability");
                let fb = r.fallback.expect("live row without fallback");
                if r.attribute == Attribute::CpuWeight {
                    // The one exception: no controller means no restart
                    // could enforce it either, so the fallback records it
                    // and the plan warns instead.
                    assert!(fb.reason.contains("NOT enforced"), "{}", fb.reason);
                    continue;
                }
                assert_ne!(fb.disruption, Disruption::Live, "{cap:?}");
                assert!(fb.reason.contains("runtime cannot"), "{}", fb.reason);
            }
        }
    }

    /// (attribute, condition, with all caps, with no caps)
    #[test]
    fn table_driven_decisions() {
        use ActionKind as K;
        use Attribute as A;
        use Condition as C;
        use Disruption as D;
        type Case = (A, C, (D, K), (D, K));
        let cases: &[Case] = &[
            (
                A::Cpus,
                C::UpWithinMax,
                (D::Live, K::HotAddCpu),
                (D::Restart, K::Restart),
            ),
            (
                A::Cpus,
                C::UpBeyondMax,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::Cpus,
                C::Down,
                (D::Live, K::HotRemoveCpu),
                (D::Restart, K::Restart),
            ),
            (
                A::Memory,
                C::UpNotInSteps,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::Memory,
                C::UpWithinMax,
                (D::Live, K::HotAddMemory),
                (D::Restart, K::Restart),
            ),
            (
                A::Memory,
                C::UpBeyondMax,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::Memory,
                C::Down,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::MaxCpus,
                C::Changed,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::MaxMemory,
                C::Changed,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::DiskSize,
                C::Grow,
                (D::Live, K::ResizeDisk),
                (D::Restart, K::Restart),
            ),
            (
                A::DiskSize,
                C::Shrink,
                (D::Refused, K::ResizeDisk),
                (D::Refused, K::ResizeDisk),
            ),
            (
                A::Disk,
                C::Added,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::Disk,
                C::Removed,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::Os,
                C::Changed,
                (D::Replace, K::Replace),
                (D::Replace, K::Replace),
            ),
            (
                A::CpuWeight,
                C::Changed,
                (D::Live, K::SetCpuWeight),
                // A restart could not enforce it either (issue 15).
                (D::Live, K::SetCpuWeight),
            ),
            (
                A::Packages,
                C::Changed,
                (D::Replace, K::Replace),
                (D::Replace, K::Replace),
            ),
            (
                A::Hostname,
                C::Changed,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::Users,
                C::Changed,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (
                A::Files,
                C::Changed,
                (D::Restart, K::Restart),
                (D::Restart, K::Restart),
            ),
            (A::Vm, C::New, (D::None, K::Create), (D::None, K::Create)),
            (A::Vm, C::NewCopy, (D::None, K::Copy), (D::Refused, K::Copy)),
            (
                A::Vm,
                C::Gone,
                (D::Replace, K::Destroy),
                (D::Replace, K::Destroy),
            ),
            (
                A::State,
                C::StoppedShouldRun,
                (D::None, K::Start),
                (D::None, K::Start),
            ),
            (
                A::State,
                C::Crashed,
                (D::None, K::Start),
                (D::None, K::Start),
            ),
            (
                A::State,
                C::RunningShouldStop,
                (D::Restart, K::Stop),
                (D::Restart, K::Stop),
            ),
        ];
        for &(a, c, with, without) in cases {
            let r = row(a, c).unwrap_or_else(|| panic!("no row {a:?}/{c:?}"));
            let d = r.decide(&Capabilities::all());
            assert_eq!((d.disruption, d.kind), with, "{a:?}/{c:?} with all caps");
            let d = r.decide(&Capabilities::none());
            assert_eq!((d.disruption, d.kind), without, "{a:?}/{c:?} with no caps");
        }
    }

    #[test]
    fn each_capability_only_affects_its_rows() {
        let caps = [
            (
                Capability::HotAddCpu,
                Capabilities {
                    hot_add_cpu: true,
                    ..Capabilities::none()
                },
            ),
            (
                Capability::HotRemoveCpu,
                Capabilities {
                    hot_remove_cpu: true,
                    ..Capabilities::none()
                },
            ),
            (
                Capability::HotAddMemory,
                Capabilities {
                    hot_add_memory: true,
                    ..Capabilities::none()
                },
            ),
            (
                Capability::LiveDiskResize,
                Capabilities {
                    live_disk_resize: true,
                    ..Capabilities::none()
                },
            ),
            (
                Capability::LiveCpuWeight,
                Capabilities {
                    live_cpu_weight: true,
                    ..Capabilities::none()
                },
            ),
            (
                Capability::Copy,
                Capabilities {
                    copy: true,
                    ..Capabilities::none()
                },
            ),
        ];
        for (cap, c) in caps {
            for r in TABLE {
                let d = r.decide(&c);
                assert_eq!(d.fell_back, r.needs.is_some() && r.needs != Some(cap));
            }
        }
    }

    #[test]
    fn fill_replaces_placeholders() {
        assert_eq!(
            fill(
                "memory {before} → {after} exceeds hot-add max {max}: restart",
                &[("before", "1 GiB"), ("after", "8 GiB"), ("max", "4 GiB")]
            ),
            "memory 1 GiB → 8 GiB exceeds hot-add max 4 GiB: restart"
        );
    }
}
