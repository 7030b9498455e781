//! The observed state: what vmctl last applied to each VM and network and what
//! is live now.
//!
//! The planner diffs the desired state against this model. It is obtained
//! through [`crate::Backend::observe`], so tests can build it by hand.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vmctl_spec::{NetworkSpec, VmSpec};

pub use vmctl_spec::state::{Capabilities, Desired, Record, RunState};

/// One disk as seen on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveDisk {
    pub name: String,
    pub size_bytes: u64,
    pub path: Option<PathBuf>,
}

/// One NIC as its VMM reports it: what it is attached to and its frame
/// counters (docs/networking.md). Only a running VM has these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveNic {
    pub name: String,
    pub mac: String,
    pub tap: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// The live view of one VM (from its VMM's control socket and its files).
/// Fields the backend could not learn are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Live {
    pub state: RunState,
    pub pid: Option<u32>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Empty when unknown; otherwise one entry per disk file found.
    #[serde(default)]
    pub disks: Vec<LiveDisk>,
    /// The NICs of a running VM (its VMM's view); empty otherwise.
    #[serde(default)]
    pub nics: Vec<LiveNic>,
    /// The guest's own report (COM2 agent), as it sent it.
    pub guest: Option<serde_json::Value>,
}

impl Live {
    /// A VM with no VMM and nothing else known.
    pub fn stopped() -> Self {
        Live {
            state: RunState::Stopped,
            pid: None,
            cpus: None,
            memory_mib: None,
            disks: Vec::new(),
            nics: Vec::new(),
            guest: None,
        }
    }
}

/// One VM vmctl knows about (it has a record in the state directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedVm {
    pub record: Record,
    pub live: Live,
}

impl ObservedVm {
    pub fn name(&self) -> &str {
        &self.record.spec.name
    }

    /// The configuration in effect: the record, corrected by what the live
    /// VM reports (a running VM's vCPU count, memory and disk sizes are truth).
    pub fn current(&self) -> VmSpec {
        let mut spec = self.record.spec.clone();
        if self.live.state.has_vmm() {
            if let Some(c) = self.live.cpus {
                spec.cpus = c;
            }
            if let Some(m) = self.live.memory_mib {
                spec.memory_mib = m;
            }
        }
        for d in &mut spec.disks {
            if let Some(l) = self.live.disks.iter().find(|l| l.name == d.name) {
                d.size_bytes = l.size_bytes;
            }
        }
        spec
    }
}

/// One network vmctl made (it has a record in the state directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNetwork {
    /// What was last applied.
    pub spec: NetworkSpec,
    /// Its bridge exists on the host with the recorded address (false after
    /// a reboot or when someone deleted it: apply makes it again).
    pub present: bool,
}

/// What the host the VMs run on has, as far as planning depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    /// The host's RAM (`MemTotal` of /proc/meminfo), MiB.
    pub memory_mib: u64,
    /// CPUs this process may run on.
    pub cpus: u32,
}

/// Everything observed, keyed by name (sorted, so output is deterministic).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObservedState {
    pub vms: BTreeMap<String, ObservedVm>,
    #[serde(default)]
    pub networks: BTreeMap<String, ObservedNetwork>,
    /// The host's capacity (None: not known, e.g. an in-memory backend):
    /// a VM whose boot memory exceeds the host's RAM is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostCapacity>,
}

impl ObservedState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a VM.
    pub fn insert(&mut self, vm: ObservedVm) {
        self.vms.insert(vm.name().to_string(), vm);
    }

    pub fn get(&self, name: &str) -> Option<&ObservedVm> {
        self.vms.get(name)
    }

    /// Add (or replace) a network.
    pub fn insert_network(&mut self, net: ObservedNetwork) {
        self.networks.insert(net.spec.name.clone(), net);
    }
}
