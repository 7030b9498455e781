//! The state vocabulary shared by the planner, the runtime and the VMM: what
//! a VM's record (`vm.json`) says, what state a VM is in, and what a running
//! VM can change live. One definition each, here at the bottom of the
//! dependency graph (planner and runtime both depend on this crate and on
//! nothing of each other), so the wire formats cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::model::VmSpec;

/// Version of the `vm.json` document.
pub const RECORD_FORMAT_VERSION: &str = "1";

/// Whether apply wants the VM running, as recorded in `vm.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    /// What a spec asks for: `autostart` keeps the VM running.
    pub fn of(spec: &VmSpec) -> Self {
        if spec.autostart {
            Desired::Running
        } else {
            Desired::Stopped
        }
    }
}

/// `vm.json`: `{"format_version":"1","spec":<VmSpec>,"desired":"running"|"stopped"}`,
/// the configuration last applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub format_version: String,
    pub spec: VmSpec,
    pub desired: Desired,
}

impl Record {
    pub fn new(spec: VmSpec, desired: Desired) -> Self {
        Record {
            format_version: RECORD_FORMAT_VERSION.to_string(),
            spec,
            desired,
        }
    }
}

/// What a VM is doing right now. The VMM itself only ever says `running` or
/// `paused` (on its control socket); `stopped` and `crashed` are what the
/// control plane concludes when there is no VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    /// A VMM holds the VM with its vCPUs parked (a copy or backup in flight).
    Paused,
    Stopped,
    /// The VMM is gone but the record says the VM should run (drift).
    Crashed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
            RunState::Crashed => "crashed",
        }
    }

    /// A VMM process exists for the VM (running or paused).
    pub fn has_vmm(self) -> bool {
        matches!(self, RunState::Running | RunState::Paused)
    }
}

/// What can be changed without restarting a VM. The planner never offers an
/// action whose capability is `false`. A VMM answers its own part on the
/// control socket (`capabilities`); the control plane adds what it does
/// itself (`copy`, and `live_cpu_weight`, a cgroup write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Capabilities {
    pub hot_add_cpu: bool,
    /// Take vCPUs away from a running guest (it offlines and ejects them).
    #[serde(default)]
    pub hot_remove_cpu: bool,
    pub hot_add_memory: bool,
    pub live_disk_resize: bool,
    pub live_cpu_weight: bool,
    /// Create a VM by copying another VM's disks.
    #[serde(default)]
    pub copy: bool,
    /// Copy a running VM's disks without stopping it (a short quiesce:
    /// docs/disks.md); without it the plan stops a copy source meanwhile.
    #[serde(default)]
    pub live_copy: bool,
}

impl Capabilities {
    /// A runtime that can do everything.
    pub fn all() -> Self {
        Capabilities {
            hot_add_cpu: true,
            hot_remove_cpu: true,
            hot_add_memory: true,
            live_disk_resize: true,
            live_cpu_weight: true,
            copy: true,
            live_copy: true,
        }
    }

    /// A runtime that can only create, start, stop and destroy.
    pub fn none() -> Self {
        Capabilities::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names() {
        for s in [
            RunState::Running,
            RunState::Paused,
            RunState::Stopped,
            RunState::Crashed,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        // An older VMM's capabilities (no hot_remove_cpu, no copy) still parse.
        let c: Capabilities = serde_json::from_str(
            r#"{"hot_add_cpu":false,"hot_add_memory":false,"live_disk_resize":true,"live_cpu_weight":false}"#,
        )
        .unwrap();
        assert!(c.live_disk_resize && !c.copy && !c.hot_remove_cpu);
    }
}
