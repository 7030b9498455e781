//! Property: executing a plan's actions in order on the observed state (a pure
//! simulator) yields the desired state, and planning again yields nothing to do.
//! The simulator also checks the ordering promises: a copy's source is not
//! running while it is copied, a VM starts only after its dependencies run,
//! a VM comes up only on networks that exist, and a network goes only when
//! no VM is on it.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use vmctl_planner::{ActionKind, Capabilities, ObservedNetwork, ObservedState, RunState, plan};
use vmctl_spec::{DesiredState, NetworkSpec, NicSpec, VmSpec};

#[derive(Debug, Clone)]
struct Gen {
    observed: Option<(VmSpec, RunState)>,
    desired: Option<VmSpec>,
}

fn spec_strategy(name: String) -> impl Strategy<Value = VmSpec> {
    (
        1u32..4,
        0u32..3,
        prop::sample::select(vec![128u64, 256, 512, 1024]),
        prop::sample::select(vec![0u64, 256, 1024]),
        prop::collection::vec(1u64..4, 0..3),
        prop::sample::select(vec!["diag", "debian-12"]),
        prop::sample::select(vec![100u32, 200]),
        any::<bool>(),
    )
        .prop_map(
            move |(cpus, extra, mem, extra_mem, disks, os, w, auto)| VmSpec {
                cpus,
                max_cpus: cpus + extra,
                memory_mib: mem,
                max_memory_mib: mem + extra_mem,
                disks: disks
                    .iter()
                    .enumerate()
                    .map(|(i, g)| disk(&format!("d{i}"), g * GIB))
                    .collect(),
                os: os.into(),
                cpu_weight: w,
                autostart: auto,
                ..vm(&name)
            },
        )
}

fn world() -> impl Strategy<Value = (DesiredState, ObservedState, Capabilities)> {
    let one = |i: usize| {
        let name = format!("vm{i}");
        (
            prop::option::of((
                spec_strategy(name.clone()),
                prop::sample::select(vec![
                    RunState::Running,
                    RunState::Stopped,
                    RunState::Crashed,
                ]),
            )),
            prop::option::weighted(0.8, spec_strategy(name)),
            prop::collection::vec(0usize..8, 0..3),
            prop::option::of(0usize..8),
            // NICs: network picks of the observed and the desired VM.
            prop::collection::vec(0usize..2, 0..3),
            prop::collection::vec(0usize..2, 0..3),
        )
            .prop_map(move |(obs, des, deps, copy, onics, dnics)| {
                (i, obs, des, deps, copy, onics, dnics)
            })
    };
    // Two networks, each maybe observed (its subnet variant, bridge present)
    // and maybe declared (its subnet variant).
    let nets = prop::collection::vec(
        (
            prop::option::of((0u8..2, any::<bool>())),
            prop::option::of(0u8..2),
        ),
        2,
    );
    let vms = (1usize..8).prop_flat_map(move |n| (0..n).map(one).collect::<Vec<_>>());
    let caps = (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(a, b, c, d, e, f, g)| Capabilities {
            hot_add_cpu: a,
            hot_remove_cpu: f,
            hot_add_memory: b,
            live_disk_resize: c,
            live_cpu_weight: d,
            copy: e,
            live_copy: g,
        });
    (vms, caps, nets).prop_map(|(vms, caps, nets)| {
        let net = |k: usize, v: u8| net(&format!("n{k}"), &format!("10.{v}.{k}.0/24"));
        let observed_nets: Vec<usize> = (0..2).filter(|&k| nets[k].0.is_some()).collect();
        let desired_nets: Vec<usize> = (0..2).filter(|&k| nets[k].1.is_some()).collect();
        let nics = |picks: &[usize], on: &[usize], vm: usize| -> Vec<NicSpec> {
            picks
                .iter()
                .enumerate()
                .filter_map(|(j, p)| {
                    let k = *on.get(p % on.len().max(1))?;
                    Some(nic(
                        &format!("n{k}"),
                        &format!("10.0.{k}.{}", 2 + vm * 4 + j),
                    ))
                })
                .collect()
        };
        let mut gens: Vec<Gen> = Vec::new();
        for (i, obs, des, deps, copy, onics, dnics) in vms {
            let obs = obs.map(|(s, st)| {
                (
                    VmSpec {
                        nics: nics(&onics, &observed_nets, i),
                        ..s
                    },
                    st,
                )
            });
            let mut des = des.map(|s| VmSpec {
                nics: nics(&dnics, &desired_nets, i),
                ..s
            });
            if let Some(d) = des.as_mut() {
                // depends-on and copy-from point only backwards (acyclic) and
                // at declared VMs, as validation guarantees.
                for dep in deps {
                    if dep < i && gens[dep].desired.is_some() {
                        let n = format!("vm{dep}");
                        if !d.depends_on.contains(&n) {
                            d.depends_on.push(n);
                        }
                    }
                }
                if let Some(c) = copy
                    && c < i
                    && gens[c].desired.is_some()
                {
                    d.copy_from = Some(format!("vm{c}"));
                }
                // Disks only grow (a shrink is refused by design).
                if let Some((o, _)) = &obs {
                    for dd in &mut d.disks {
                        if let Some(od) = o.disks.iter().find(|x| x.name == dd.name) {
                            dd.size_bytes = dd.size_bytes.max(od.size_bytes);
                        }
                    }
                }
            }
            gens.push(Gen {
                observed: obs,
                desired: des,
            });
        }
        let d = DesiredState {
            networks: desired_nets
                .iter()
                .filter_map(|&k| Some(net(k, nets[k].1?)))
                .collect(),
            ..desired(gens.iter().filter_map(|g| g.desired.clone()).collect())
        };
        let mut o = ObservedState::new();
        for g in &gens {
            if let Some((s, st)) = &g.observed {
                o.insert(observed_vm(s, *st));
            }
        }
        for &k in &observed_nets {
            if let Some((v, present)) = nets[k].0 {
                o.insert_network(ObservedNetwork {
                    spec: net(k, v),
                    present,
                });
            }
        }
        (d, o, caps)
    })
}

/// The simulated host: each VM's configuration and run state.
type Sim = BTreeMap<String, (VmSpec, RunState)>;

/// The simulated host's networks: configuration and whether the bridge is there.
type NetSim = BTreeMap<String, (NetworkSpec, bool)>;

/// A VM coming up needs every network it is on to be there.
fn wired(nets: &NetSim, id: &str, spec: &VmSpec) -> Result<(), String> {
    for n in &spec.nics {
        if !nets.get(&n.network).is_some_and(|(_, present)| *present) {
            return Err(format!("{id} before its network {} is there", n.network));
        }
    }
    Ok(())
}

/// `live_copy`: the runtime copies a running source (a short pause).
fn run(
    sim: &mut Sim,
    nets: &mut NetSim,
    d: &DesiredState,
    p: &vmctl_planner::Plan,
    live_copy: bool,
) -> Result<(), String> {
    // A VM whose creation is refused never runs; its dependents go ahead
    // without it (documented in docs/planning.md).
    let refused: Vec<&str> = p
        .actions
        .iter()
        .filter(|a| a.is_refused() && a.kind == ActionKind::Copy)
        .map(|a| a.vm.as_str())
        .collect();
    // Copy sources stopped for a copy: their dependents may start meanwhile.
    let mut copying: Vec<String> = Vec::new();
    for a in p.executable() {
        let up_check = |sim: &Sim, spec: &VmSpec| -> Result<(), String> {
            if !spec.autostart {
                return Ok(());
            }
            for dep in &spec.depends_on {
                let want_run =
                    d.vm(dep).is_some_and(|s| s.autostart) && !refused.contains(&dep.as_str());
                let runs = sim.get(dep).is_some_and(|(_, st)| *st == RunState::Running)
                    || copying.contains(dep);
                if want_run && !runs {
                    return Err(format!("{} starts before its dependency {dep}", a.id));
                }
            }
            Ok(())
        };
        let up = |s: &VmSpec| {
            if s.autostart {
                RunState::Running
            } else {
                RunState::Stopped
            }
        };
        if a.is_network() {
            match a.kind {
                ActionKind::Destroy => {
                    if let Some((vm, _)) = sim
                        .iter()
                        .find(|(_, (s, _))| s.nics.iter().any(|n| n.network == a.vm))
                    {
                        return Err(format!("{} while {vm} is on it", a.id));
                    }
                    nets.remove(&a.vm).ok_or("destroy of a missing network")?;
                }
                _ => {
                    let n = a.network.clone().ok_or("no network spec")?;
                    nets.insert(n.name.clone(), (n, true));
                }
            }
            continue;
        }
        let new = a.new.clone();
        match a.kind {
            ActionKind::Create | ActionKind::Restart | ActionKind::Replace => {
                let n = new.ok_or("no spec")?;
                up_check(sim, &n)?;
                wired(nets, &a.id, &n)?;
                let st = up(&n);
                sim.insert(n.name.clone(), (n, st));
            }
            ActionKind::Copy => {
                let n = new.ok_or("no spec")?;
                let src = a.source.as_deref().ok_or("no source")?;
                match sim.get(src) {
                    None => return Err(format!("{} before its source exists", a.id)),
                    Some((_, RunState::Running)) if !live_copy => {
                        return Err(format!("{} while its source runs", a.id));
                    }
                    Some(_) => {}
                }
                // A copy of its own dependency starts while the source is
                // still stopped for the copy (documented in docs/planning.md).
                let others = VmSpec {
                    depends_on: n
                        .depends_on
                        .iter()
                        .filter(|x| x.as_str() != src)
                        .cloned()
                        .collect(),
                    ..n.clone()
                };
                up_check(sim, &others)?;
                wired(nets, &a.id, &n)?;
                let st = up(&n);
                sim.insert(n.name.clone(), (n, st));
            }
            ActionKind::Start => {
                let e = sim.get(&a.vm).ok_or("start of a missing VM")?.0.clone();
                // A start-after-copy restores the source as it was.
                let check = VmSpec {
                    autostart: true,
                    ..d.vm(&a.vm).cloned().unwrap_or(e)
                };
                up_check(sim, &check)?;
                wired(nets, &a.id, &check)?;
                copying.retain(|c| c != &a.vm);
                if let Some(v) = sim.get_mut(&a.vm) {
                    v.1 = RunState::Running;
                }
            }
            ActionKind::Stop => {
                if a.id.ends_with(":stop-for-copy") {
                    copying.push(a.vm.clone());
                }
                let v = sim.get_mut(&a.vm).ok_or("stop of a missing VM")?;
                v.1 = RunState::Stopped;
            }
            ActionKind::Destroy => {
                sim.remove(&a.vm).ok_or("destroy of a missing VM")?;
            }
            ActionKind::Move => return Err(format!("{}: a move is never executable", a.id)),
            ActionKind::HotAddCpu
            | ActionKind::HotRemoveCpu
            | ActionKind::HotAddMemory
            | ActionKind::ResizeDisk
            | ActionKind::SetCpuWeight => {
                let n = new.ok_or("no spec")?;
                let v = sim.get_mut(&a.vm).ok_or("live change of a missing VM")?;
                if v.1 != RunState::Running {
                    return Err(format!("{} on a VM that is not running", a.id));
                }
                let c = &a.changes[0];
                match a.kind {
                    ActionKind::HotAddCpu | ActionKind::HotRemoveCpu => {
                        if n.cpus > v.0.max_cpus {
                            return Err(format!("{} beyond max", a.id));
                        }
                        v.0.cpus = n.cpus;
                    }
                    ActionKind::HotAddMemory => {
                        if n.memory_mib > v.0.max_memory_mib {
                            return Err(format!("{} beyond max", a.id));
                        }
                        v.0.memory_mib = n.memory_mib;
                    }
                    ActionKind::ResizeDisk => {
                        let name = c.disk.as_deref().ok_or("no disk")?;
                        let want = n.disks.iter().find(|x| x.name == name).ok_or("no disk")?;
                        let have =
                            v.0.disks
                                .iter_mut()
                                .find(|x| x.name == name)
                                .ok_or("no disk")?;
                        if want.size_bytes < have.size_bytes {
                            return Err(format!("{} shrinks", a.id));
                        }
                        have.size_bytes = want.size_bytes;
                    }
                    _ => v.0.cpu_weight = n.cpu_weight,
                }
            }
        }
    }
    Ok(())
}

fn to_observed(sim: &Sim, nets: &NetSim) -> ObservedState {
    let mut o = ObservedState::new();
    for (s, st) in sim.values() {
        o.insert(observed_vm(s, *st));
    }
    for (n, present) in nets.values() {
        o.insert_network(ObservedNetwork {
            spec: n.clone(),
            present: *present,
        });
    }
    o
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn applying_the_plan_converges((d, o, caps) in world()) {
        let p = plan(&d, &o, &caps).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut sim: Sim = o
            .vms
            .values()
            .map(|v| (v.name().to_string(), (v.record.spec.clone(), v.live.state)))
            .collect();
        let mut nets: NetSim = o
            .networks
            .values()
            .map(|n| (n.spec.name.clone(), (n.spec.clone(), n.present)))
            .collect();
        run(&mut sim, &mut nets, &d, &p, caps.live_copy).map_err(TestCaseError::fail)?;
        let want_nets: Vec<&NetworkSpec> = d.networks.iter().collect();
        let have_nets: Vec<&NetworkSpec> = nets.values().map(|(n, _)| n).collect();
        prop_assert_eq!(have_nets, want_nets);
        prop_assert!(nets.values().all(|(_, present)| *present));

        let refused: Vec<&str> = p.actions.iter().filter(|a| a.is_refused()).map(|a| a.vm.as_str()).collect();
        for want in &d.vms {
            if refused.contains(&want.name.as_str()) {
                continue;
            }
            let (have, st) = sim.get(&want.name).ok_or_else(|| TestCaseError::fail(format!("{} missing", want.name)))?;
            // Fields without runtime effect are rewritten by the engine's
            // final record step; everything else must match.
            let normalized = VmSpec {
                depends_on: want.depends_on.clone(),
                copy_from: want.copy_from.clone(),
                autostart: want.autostart,
                name: want.name.clone(),
                ..have.clone()
            };
            prop_assert_eq!(&normalized, want);
            let expect = if want.autostart { RunState::Running } else { RunState::Stopped };
            prop_assert_eq!(*st, expect, "{}", want.name);
        }
        for name in sim.keys() {
            prop_assert!(d.vm(name).is_some(), "{} not destroyed", name);
        }

        // Re-plan after the record step: nothing left to execute.
        for want in &d.vms {
            if let Some(v) = sim.get_mut(&want.name) {
                v.0 = want.clone();
            }
        }
        let again = plan(&d, &to_observed(&sim, &nets), &caps).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let left: Vec<&str> = again.executable().map(|a| a.id.as_str()).collect();
        prop_assert!(left.is_empty(), "left over: {:?}", left);
    }
}
