//! Builders shared by the planner's integration tests.
#![allow(dead_code)]

use vmctl_planner::{
    Desired, Live, LiveDisk, ObservedNetwork, ObservedState, ObservedVm, Record, RunState,
};
use vmctl_spec::{DesiredState, DiskFormat, DiskSpec, MacAddr, NetworkSpec, NicSpec, VmSpec};

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

/// A network on `subnet` (e.g. "10.20.0.0/24").
pub fn net(name: &str, subnet: &str) -> NetworkSpec {
    NetworkSpec::new(name, subnet.parse().expect("test subnet"))
}

/// A NIC on `network` with address `ip`; the MAC is made from the address.
pub fn nic(network: &str, ip: &str) -> NicSpec {
    let ip: std::net::Ipv4Addr = ip.parse().expect("test ip");
    let [a, b, c, d] = ip.octets();
    NicSpec {
        network: network.into(),
        ip,
        mac: MacAddr([0x02, 0, a, b, c, d]),
    }
}

/// `vm` with NICs.
pub fn on(vm: VmSpec, nics: Vec<NicSpec>) -> VmSpec {
    VmSpec { nics, ..vm }
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
    DesiredState::of_vms(vms)
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
    for n in &d.networks {
        o.insert_network(ObservedNetwork {
            spec: n.clone(),
            present: true,
        });
    }
    o
}
