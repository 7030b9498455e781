//! The planner's [`Backend`] over vmctl's own runtime: observation reads the
//! state directory and asks each VMM over its control socket; actions call
//! the runtime facade, whose operations are idempotent.
//!
//! Observing never creates the state directory (`vmctl plan` writes nothing);
//! the first action does. Networks and the taps of VMs' NICs are
//! vmctl-hostnet's: a VM's taps are made (idempotently) before its VMM is
//! created, started or restarted, and removed when it is destroyed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use vmctl_hostnet::HostNet;
use vmctl_planner::ObservedNetwork;
use vmctl_planner::{
    Backend, BackendError, Capabilities, CopyReport, Desired, Live, LiveDisk, LiveNic,
    ObservedState, ObservedVm, Record, RunState,
};
use vmctl_runtime::{Runtime, RuntimeError};
use vmctl_spec::{NetworkSpec, VmSpec};

/// How long a graceful shutdown may take before the VMM is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// The runtime of one state directory, as the planner sees it.
#[derive(Debug)]
pub struct RuntimeBackend {
    dir: PathBuf,
    runtime: OnceLock<Runtime>,
    /// Bridges and taps (vmctl-hostnet): a VM's taps exist before its VMM
    /// starts and go when it is destroyed.
    net: HostNet,
}

/// Open a state directory without creating it.
pub fn open(state_dir: &Path) -> Result<RuntimeBackend, BackendError> {
    Ok(RuntimeBackend {
        dir: state_dir.to_path_buf(),
        runtime: OnceLock::new(),
        net: HostNet::new(state_dir),
    })
}

fn err(e: RuntimeError) -> BackendError {
    BackendError::new(e.to_string())
}

fn net_err(e: vmctl_hostnet::HostNetError) -> BackendError {
    BackendError::new(e.to_string())
}

impl RuntimeBackend {
    /// The runtime, opened (and the state directory created) on first use.
    fn rt(&self) -> Result<&Runtime, BackendError> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = Runtime::open(&self.dir)
            .map_err(err)?
            .with_os_provider(std::sync::Arc::new(crate::builtin_os::BuiltinOs::new(
                &self.dir,
            )));
        Ok(self.runtime.get_or_init(|| rt))
    }

    /// Observation must not create the directory: use a runtime only if the
    /// directory is there.
    fn rt_if_exists(&self) -> Result<Option<&Runtime>, BackendError> {
        if self.dir.join("vms").is_dir() {
            self.rt().map(Some)
        } else {
            Ok(None)
        }
    }

    /// One VM as the planner models it; `None` when it does not exist (or
    /// was destroyed while we looked).
    pub fn observe_one(rt: &Runtime, name: &str) -> Result<Option<ObservedVm>, BackendError> {
        let Some(obs) = rt.observe(name).map_err(err)? else {
            return Ok(None);
        };
        let vm_dir = rt.vm_dir(name);
        // A VMM that answers says whether it is paused.
        let state = match (&obs.status, obs.live) {
            (Some(st), RunState::Running) => st.state,
            (_, live) => live,
        };
        // Disk sizes: the VMM's view when it answers, else the files.
        let disks = match &obs.status {
            Some(st) => st
                .disks
                .iter()
                .map(|d| LiveDisk {
                    name: d.name.clone(),
                    size_bytes: d.size_bytes,
                    path: Some(PathBuf::from(&d.path)),
                })
                .collect(),
            None => obs
                .record
                .spec
                .disks
                .iter()
                .filter_map(|d| {
                    let path = vm_dir.disk_path(d);
                    let len = std::fs::metadata(&path).ok()?.len();
                    Some(LiveDisk {
                        name: d.name.clone(),
                        size_bytes: len,
                        path: Some(path),
                    })
                })
                .collect(),
        };
        let nics = obs
            .status
            .iter()
            .flat_map(|st| &st.nics)
            .map(|n| LiveNic {
                name: n.name.clone(),
                mac: n.mac.clone(),
                tap: n.tap.clone(),
                rx_packets: n.stats.rx_packets,
                rx_bytes: n.stats.rx_bytes,
                tx_packets: n.stats.tx_packets,
                tx_bytes: n.stats.tx_bytes,
            })
            .collect();
        let live = Live {
            state,
            pid: obs.pid.and_then(|p| u32::try_from(p).ok()),
            cpus: obs.status.as_ref().map(|s| s.vcpus),
            memory_mib: obs.status.as_ref().map(|s| s.memory_mib),
            disks,
            nics,
            guest: obs.status.as_ref().and_then(|s| s.guest.clone()),
        };
        let record = Record::new(obs.record.spec, obs.record.desired);
        Ok(Some(ObservedVm { record, live }))
    }
}

/// This host's RAM and CPUs: the planner refuses a VM that cannot fit.
pub fn host_capacity() -> Option<vmctl_planner::HostCapacity> {
    Some(vmctl_planner::HostCapacity {
        memory_mib: vmctl_runtime::vmm::host::total_mib()?,
        cpus: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
    })
}

impl Backend for RuntimeBackend {
    fn observe(&self) -> Result<ObservedState, BackendError> {
        let mut state = ObservedState::new();
        state.host = host_capacity();
        for n in self.net.observe().map_err(net_err)? {
            state.insert_network(ObservedNetwork {
                spec: n.spec,
                present: n.present,
            });
        }
        let Some(rt) = self.rt_if_exists()? else {
            return Ok(state);
        };
        let names = rt.state_dir().vm_names().map_err(|e| err(e.into()))?;
        for name in names {
            // A VM destroyed between the listing and this read is gone, not
            // an error.
            if let Some(vm) = Self::observe_one(rt, &name)? {
                state.insert(vm);
            }
        }
        Ok(state)
    }

    /// Only this VM: every action re-observes its own VM before it acts, and
    /// must neither pay for nor trip over the others (the trait's default
    /// lists them all).
    fn observe_vm(&self, name: &str) -> Result<Option<ObservedVm>, BackendError> {
        match self.rt_if_exists()? {
            Some(rt) => Self::observe_one(rt, name),
            None => Ok(None),
        }
    }

    fn capabilities(&self) -> Capabilities {
        let c = vmctl_runtime::vmm::CAPABILITIES;
        Capabilities {
            hot_add_cpu: c.hot_add_cpu,
            hot_remove_cpu: c.hot_remove_cpu,
            hot_add_memory: c.hot_add_memory,
            live_disk_resize: c.live_disk_resize,
            // The weight is a cgroup write done from vmctl's side: the one
            // source of truth is whether the host lets vmctl use the cpu
            // controller (the VMM claims nothing about it).
            live_cpu_weight: Runtime::host_can_set_cpu_weight(),
            copy: true,
            live_copy: c.live_copy,
        }
    }

    fn observe_network(&self, name: &str) -> Result<Option<ObservedNetwork>, BackendError> {
        Ok(self
            .net
            .observe()
            .map_err(net_err)?
            .into_iter()
            .find(|n| n.spec.name == name)
            .map(|n| ObservedNetwork {
                spec: n.spec,
                present: n.present,
            }))
    }

    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        self.net.ensure_taps(spec).map_err(net_err)?;
        self.rt()?.create(spec).map_err(err)
    }

    fn start(&self, name: &str) -> Result<(), BackendError> {
        let rt = self.rt()?;
        if let Some(obs) = rt.observe(name).map_err(err)? {
            self.net.ensure_taps(&obs.record.spec).map_err(net_err)?;
        }
        rt.start(name).map(|_| ()).map_err(err)
    }

    fn stop(&self, name: &str) -> Result<(), BackendError> {
        self.rt()?.stop(name, STOP_GRACE).map_err(err)
    }

    fn restart(&self, old: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        let rt = self.rt()?;
        if rt.observe(&old.name).map_err(err)?.is_some() {
            rt.stop(&old.name, STOP_GRACE).map_err(err)?;
        }
        // Moved disks' files follow their `path`, removed disks' files in
        // the state directory are deleted (a disk re-added later starts
        // empty); then create() keeps existing disk files, grows short ones,
        // adds new ones, rewrites the record and starts the VM when
        // `autostart`.
        rt.reconcile_disk_files(old, new).map_err(err)?;
        // NICs added, moved or removed: the taps follow before the VMM
        // starts again.
        self.net.ensure_taps(new).map_err(net_err)?;
        rt.create(new).map_err(err)
    }

    fn destroy(&self, name: &str, delete_external_disks: bool) -> Result<(), BackendError> {
        self.rt()?
            .destroy(name, delete_external_disks)
            .map_err(err)?;
        self.net.remove_vm_taps(name).map_err(net_err)
    }

    fn hot_add_cpu(&self, name: &str, cpus: u32) -> Result<(), BackendError> {
        self.rt()?.hot_add_cpu(name, cpus).map_err(err)
    }

    fn hot_add_memory(&self, name: &str, memory_mib: u64) -> Result<(), BackendError> {
        self.rt()?.hot_add_memory(name, memory_mib).map_err(err)
    }

    fn resize_disk(&self, name: &str, disk: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.rt()?.resize_disk(name, disk, size_bytes).map_err(err)
    }

    fn set_cpu_weight(&self, name: &str, weight: u32) -> Result<(), BackendError> {
        self.rt()?.set_cpu_weight(name, weight).map_err(err)
    }

    fn copy(&self, source: &str, new: &VmSpec) -> Result<CopyReport, BackendError> {
        self.net.ensure_taps(new).map_err(net_err)?;
        let snap = self.rt()?.copy(source, new).map_err(err)?;
        Ok(CopyReport {
            live: snap.live,
            paused_us: snap.paused_us,
            methods: snap
                .disks
                .iter()
                .map(|d| d.method.as_str().to_string())
                .collect(),
            consistency: snap.consistency.as_str().to_string(),
            consistency_note: snap.consistency_note,
        })
    }

    fn create_network(&self, net: &NetworkSpec) -> Result<(), BackendError> {
        self.net.ensure_network(net).map_err(net_err)
    }

    fn destroy_network(&self, name: &str) -> Result<(), BackendError> {
        self.net.remove_network(name).map_err(net_err)
    }

    fn record(&self, spec: &VmSpec, desired: Desired) -> Result<(), BackendError> {
        let rec = Record::new(spec.clone(), desired);
        self.rt()?.write_record(&rec).map_err(err)
    }
}
