//! Planning cost for 10 … 10,000 VMs, fresh (everything to create) and no-op
//! (everything converged). Each VM depends on the one before it in groups of
//! ten, and every tenth VM is a copy, so the graph has real edges.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vmctl_planner::synthetic::{converged, lab};
use vmctl_planner::{Capabilities, ObservedState, plan};

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
