//! Synthetic labs of N diag VMs for measuring the planner: the criterion
//! bench (`benches/plan.rs`) and `cargo xtask bench` (the 10,000-VM
//! in-process plan row) plan the same shapes. Each VM depends on the one
//! before it in groups of ten, and every tenth VM is a copy, so the graph
//! has real edges. Not used by vmctl itself.

use vmctl_spec::{DesiredState, DiskFormat, DiskSpec, VmSpec};

use crate::{Desired, Live, ObservedState, ObservedVm, Record, RunState};

/// A lab of `n` VMs named `vm0` … as described above.
pub fn lab(n: usize) -> DesiredState {
    let vms = (0..n)
        .map(|i| VmSpec {
            name: format!("vm{i}"),
            os: "diag".into(),
            cpus: 1,
            max_cpus: 2,
            memory_mib: 128,
            max_memory_mib: 256,
            disks: vec![DiskSpec {
                name: "root".into(),
                size_bytes: 1 << 30,
                format: DiskFormat::Raw,
                path: None,
                source: None,
                source_format: None,
            }],
            depends_on: if i % 10 != 0 {
                vec![format!("vm{}", i - 1)]
            } else {
                vec![]
            },
            copy_from: if i % 10 == 5 {
                Some(format!("vm{}", i - 5))
            } else {
                None
            },
            cpu_weight: 100,
            autostart: true,
            image: None,
            ..VmSpec::diag("")
        })
        .collect();
    DesiredState::of_vms(vms)
}

/// What is observed once `d` has been applied: every VM recorded and running.
pub fn converged(d: &DesiredState) -> ObservedState {
    let mut o = ObservedState::new();
    for s in &d.vms {
        o.insert(ObservedVm {
            record: Record::new(s.clone(), Desired::Running),
            live: Live {
                state: RunState::Running,
                ..Live::stopped()
            },
        });
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_has_chains_and_copies_and_converges_to_a_no_op() {
        let d = lab(20);
        assert_eq!(d.vms.len(), 20);
        assert_eq!(d.vms[3].depends_on, vec!["vm2".to_string()]);
        assert!(d.vms[10].depends_on.is_empty());
        assert_eq!(d.vms[15].copy_from.as_deref(), Some("vm10"));
        let p = crate::plan(&d, &converged(&d), &crate::Capabilities::all()).unwrap();
        assert!(!p.summary().has_changes(), "a converged lab plans nothing");
    }
}
