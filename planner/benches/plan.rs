//! Planning cost for 10 … 10,000 VMs, fresh (everything to create) and no-op
//! (everything converged). Each VM depends on the one before it in groups of
//! ten, and every tenth VM is a copy, so the graph has real edges.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vmctl_planner::{
    Capabilities, Desired, Live, ObservedState, ObservedVm, Record, RunState, plan,
};
use vmctl_spec::{DesiredState, DiskFormat, DiskSpec, VmSpec};

fn lab(n: usize) -> DesiredState {
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
    DesiredState {
        format_version: "1".into(),
        vms,
        images: vec![],
        networks: vec![],
    }
}

fn converged(d: &DesiredState) -> ObservedState {
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

fn bench(c: &mut Criterion) {
    let caps = Capabilities::all();
    let mut g = c.benchmark_group("plan");
    for n in [10usize, 100, 1_000, 10_000] {
        let d = lab(n);
        let empty = ObservedState::new();
        let full = converged(&d);
        g.bench_with_input(BenchmarkId::new("fresh", n), &n, |b, _| {
            b.iter(|| plan(black_box(&d), black_box(&empty), &caps))
        });
        g.bench_with_input(BenchmarkId::new("no-op", n), &n, |b, _| {
            b.iter(|| plan(black_box(&d), black_box(&full), &caps))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
