//! Builders shared by the planner's integration tests.
#![allow(dead_code)]

use vmctl_planner::{Desired, Live, LiveDisk, ObservedState, ObservedVm, Record, RunState};
use vmctl_spec::{DesiredState, DiskFormat, DiskSpec, VmSpec};

pub const GIB: u64 = 1 << 30;

pub fn vm(name: &str) -> VmSpec {
    VmSpec::diag(name)
}

pub fn debian(name: &str) -> VmSpec {
    VmSpec {
        os: "debian-12".into(),
        cpus: 2,
        max_cpus: 4,
        memory_mib: 1024,
        max_memory_mib: 4096,
        disks: vec![disk("root", 10 * GIB)],
        ..vm(name)
    }
}

pub fn disk(name: &str, size: u64) -> DiskSpec {
    DiskSpec {
        name: name.into(),
        size_bytes: size,
        format: DiskFormat::Raw,
        path: None,
        source: None,
        source_format: None,
    }
}

pub fn desired(vms: Vec<VmSpec>) -> DesiredState {
    DesiredState {
        format_version: "1".into(),
        vms,
        images: vec![],
    }
}

/// An observed VM in `state` whose live view matches its record.
pub fn observed_vm(spec: &VmSpec, state: RunState) -> ObservedVm {
    let desired = match state {
        RunState::Stopped => Desired::Stopped,
        _ => Desired::Running,
    };
    let running = state == RunState::Running;
    ObservedVm {
        record: Record::new(spec.clone(), desired),
        live: Live {
            state,
            pid: running.then_some(4242),
            cpus: running.then_some(spec.cpus),
            memory_mib: running.then_some(spec.memory_mib),
            disks: spec
                .disks
                .iter()
                .map(|d| LiveDisk {
                    name: d.name.clone(),
                    size_bytes: d.size_bytes,
                    path: None,
                })
                .collect(),
            nics: Vec::new(),
            guest: None,
        },
    }
}

pub fn observed(vms: &[(&VmSpec, RunState)]) -> ObservedState {
    let mut o = ObservedState::new();
    for (s, st) in vms {
        o.insert(observed_vm(s, *st));
    }
    o
}

/// Everything declared, running as declared.
pub fn converged(d: &DesiredState) -> ObservedState {
    let mut o = ObservedState::new();
    for s in &d.vms {
        let st = if s.autostart {
            RunState::Running
        } else {
            RunState::Stopped
        };
        o.insert(observed_vm(s, st));
    }
    o
}
