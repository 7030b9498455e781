//! The one door to the runtime: the planner observes and acts only through
//! [`Backend`], so it needs no KVM and tests can use an in-memory fake.

use vmctl_spec::{NetworkSpec, VmSpec};

use crate::observed::{Capabilities, Desired, ObservedNetwork, ObservedState, ObservedVm};

/// A runtime failure, as text (the runtime's own error types stay behind the
/// trait).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

impl BackendError {
    pub fn new(msg: impl Into<String>) -> Self {
        BackendError(msg.into())
    }
}

/// What a copy did, for the apply report (`apply` prints the pause).
/// Serialisable: it crosses hosts as host-rpc's `copy` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CopyReport {
    /// The source was running and was paused (not stopped) for the copy.
    pub live: bool,
    /// How long the source's vCPUs were paused, in microseconds.
    pub paused_us: Option<u64>,
    /// How the files were copied (`reflink`, `sparse`), one per disk.
    pub methods: Vec<String>,
    /// `filesystem-consistent`, `crash-consistent` or `offline`
    /// (docs/disks.md, "Consistency levels"); empty if unknown.
    pub consistency: String,
    /// Why a live copy is only crash-consistent.
    pub consistency_note: Option<String>,
}

/// The runtime as the planner and the apply engine see it.
///
/// Every action must be idempotent: the engine re-observes a VM before acting
/// and skips actions that are already done, but an apply killed between the
/// action and the journal's "finished" line will run it again.
pub trait Backend: Sync {
    /// Every VM with a record in the state directory, with its live state.
    /// A VM whose VMM is gone but whose record says running is `Crashed`.
    fn observe(&self) -> Result<ObservedState, BackendError>;

    /// One VM (`None` if it has no record). The engine calls this before
    /// every action to skip work that is already done; the default observes
    /// everything and picks the VM out.
    fn observe_vm(&self, name: &str) -> Result<Option<ObservedVm>, BackendError> {
        Ok(self.observe()?.vms.remove(name))
    }

    /// One network (`None` if it has no record); like [`Backend::observe_vm`].
    fn observe_network(&self, name: &str) -> Result<Option<ObservedNetwork>, BackendError> {
        Ok(self.observe()?.networks.remove(name))
    }

    /// What this runtime can change without a restart.
    fn capabilities(&self) -> Capabilities;

    /// Create the VM: state directory files, disks, `vm.json`; start its VMM
    /// when `spec.autostart`.
    fn create(&self, spec: &VmSpec) -> Result<(), BackendError>;

    /// Start a stopped (or crashed) VM and record it as running.
    fn start(&self, name: &str) -> Result<(), BackendError>;

    /// Stop a VM (graceful, then forced) and record it as stopped.
    fn stop(&self, name: &str) -> Result<(), BackendError>;

    /// Stop the VM if it runs, rewrite its configuration to `new` (growing or
    /// adding disks as needed), start it when `new.autostart`.
    fn restart(&self, old: &VmSpec, new: &VmSpec) -> Result<(), BackendError>;

    /// Stop the VM and delete its state directory (disks at a user-chosen
    /// `path` only when `delete_external_disks`).
    fn destroy(&self, name: &str, delete_external_disks: bool) -> Result<(), BackendError>;

    /// Bring the running VM to `cpus` vCPUs (≤ its max) and record it.
    fn hot_add_cpu(&self, name: &str, cpus: u32) -> Result<(), BackendError>;

    /// Bring the running VM to `memory_mib` MiB (≤ its max) and record it.
    fn hot_add_memory(&self, name: &str, memory_mib: u64) -> Result<(), BackendError>;

    /// Grow one disk of a running VM to `size_bytes` and record it.
    fn resize_disk(&self, name: &str, disk: &str, size_bytes: u64) -> Result<(), BackendError>;

    /// Change the VM's CPU share while it runs and record it.
    fn set_cpu_weight(&self, name: &str, weight: u32) -> Result<(), BackendError>;

    /// Create `new` by copying the disks of VM `source` (stopped, or running
    /// when the runtime has `live_copy`); start it when `new.autostart`.
    fn copy(&self, source: &str, new: &VmSpec) -> Result<CopyReport, BackendError>;

    /// Make the network exist as `net` says (its bridge, with the host's
    /// address; NAT when asked) and record it. Adopts what is already there,
    /// re-addresses a bridge whose subnet changed.
    fn create_network(&self, net: &NetworkSpec) -> Result<(), BackendError>;

    /// Remove the network's bridge (and any of this lab's taps still on it)
    /// and its record. The planner orders it after its last VM is gone.
    fn destroy_network(&self, name: &str) -> Result<(), BackendError>;

    /// Rewrite the VM's record without touching the VM (for fields with no
    /// runtime effect, such as `depends-on`).
    fn record(&self, spec: &VmSpec, desired: Desired) -> Result<(), BackendError>;
}
