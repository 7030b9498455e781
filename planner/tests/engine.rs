//! The apply engine against an in-memory fake backend: DAG order under
//! parallelism, failure isolation, idempotent re-runs, the journal.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use common::*;
use vmctl_planner::engine::{self, Event, Options, SkipReason};
use vmctl_planner::{
    Backend, BackendError, Capabilities, CopyReport, Desired, Journal, JournalEvent, Live,
    LiveDisk, ObservedNetwork, ObservedState, ObservedVm, Plan, Record, RunState, plan,
};
use vmctl_spec::{DesiredState, NetworkSpec, VmSpec};

/// A host in memory. `trace` records `begin <vm> <call>` / `end <vm> <call>`.
#[derive(Default)]
struct Fake {
    vms: Mutex<BTreeMap<String, (VmSpec, RunState)>>,
    /// Networks; a VM may only be created or started on a network that
    /// exists, and a network only destroyed when no VM is on it (the real
    /// backend's taps need the bridge).
    nets: Mutex<BTreeMap<String, NetworkSpec>>,
    trace: Mutex<Vec<String>>,
    fail: HashSet<String>,
    in_flight: Mutex<(usize, usize)>,
}

impl Fake {
    fn with(o: &ObservedState) -> Self {
        let f = Fake::default();
        {
            let mut vms = f.vms.lock().unwrap();
            for v in o.vms.values() {
                vms.insert(v.name().to_string(), (v.record.spec.clone(), v.live.state));
            }
            let mut nets = f.nets.lock().unwrap();
            for n in o.networks.values() {
                nets.insert(n.spec.name.clone(), n.spec.clone());
            }
        }
        f
    }

    /// Every NIC of `spec` is on a network that exists.
    fn check_wired(&self, spec: &VmSpec) {
        let nets = self.nets.lock().unwrap();
        for nic in &spec.nics {
            assert!(
                nets.contains_key(&nic.network),
                "{} plugged into network {} before it exists",
                spec.name,
                nic.network
            );
        }
    }

    fn net_act(&self, name: &str, call: &str, f: impl FnOnce(&mut BTreeMap<String, NetworkSpec>)) {
        self.trace
            .lock()
            .unwrap()
            .push(format!("begin network:{name} {call}"));
        std::thread::yield_now();
        f(&mut self.nets.lock().unwrap());
        self.trace
            .lock()
            .unwrap()
            .push(format!("end network:{name} {call}"));
    }

    fn act(
        &self,
        vm: &str,
        call: &str,
        f: impl FnOnce(&mut BTreeMap<String, (VmSpec, RunState)>),
    ) -> Result<(), BackendError> {
        {
            let mut n = self.in_flight.lock().unwrap();
            n.0 += 1;
            n.1 = n.1.max(n.0);
        }
        self.trace
            .lock()
            .unwrap()
            .push(format!("begin {vm} {call}"));
        // Let other workers interleave.
        std::thread::yield_now();
        let r = if self.fail.contains(&format!("{vm} {call}")) {
            Err(BackendError::new(format!("{call} {vm}: injected failure")))
        } else {
            f(&mut self.vms.lock().unwrap());
            Ok(())
        };
        self.trace.lock().unwrap().push(format!("end {vm} {call}"));
        self.in_flight.lock().unwrap().0 -= 1;
        r
    }

    fn observed(&self) -> ObservedState {
        let mut o = ObservedState::new();
        for (s, st) in self.vms.lock().unwrap().values() {
            o.insert(observed_vm(s, *st));
        }
        for n in self.nets.lock().unwrap().values() {
            o.insert_network(ObservedNetwork {
                spec: n.clone(),
                present: true,
            });
        }
        o
    }

    fn mutating_calls(&self) -> usize {
        self.trace
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("begin"))
            .count()
    }
}

fn up(s: &VmSpec) -> RunState {
    if s.autostart {
        RunState::Running
    } else {
        RunState::Stopped
    }
}

impl Backend for Fake {
    fn observe(&self) -> Result<ObservedState, BackendError> {
        Ok(self.observed())
    }
    fn observe_vm(&self, name: &str) -> Result<Option<ObservedVm>, BackendError> {
        Ok(self.vms.lock().unwrap().get(name).map(|(s, st)| {
            let mut v = observed_vm(s, *st);
            v.live.disks = s
                .disks
                .iter()
                .map(|d| LiveDisk {
                    name: d.name.clone(),
                    size_bytes: d.size_bytes,
                    path: None,
                })
                .collect();
            v
        }))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }
    fn create_network(&self, net: &NetworkSpec) -> Result<(), BackendError> {
        self.net_act(&net.name, "create", |m| {
            m.insert(net.name.clone(), net.clone());
        });
        Ok(())
    }
    fn destroy_network(&self, name: &str) -> Result<(), BackendError> {
        let users: Vec<String> = self
            .vms
            .lock()
            .unwrap()
            .values()
            .filter(|(s, _)| s.nics.iter().any(|n| n.network == name))
            .map(|(s, _)| s.name.clone())
            .collect();
        assert!(users.is_empty(), "network {name} destroyed under {users:?}");
        self.net_act(name, "destroy", |m| {
            m.remove(name);
        });
        Ok(())
    }
    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        self.check_wired(spec);
        self.act(&spec.name, "create", |m| {
            m.insert(spec.name.clone(), (spec.clone(), up(spec)));
        })
    }
    fn start(&self, name: &str) -> Result<(), BackendError> {
        self.act(name, "start", |m| {
            if let Some(v) = m.get_mut(name) {
                v.1 = RunState::Running;
            }
        })
    }
    fn stop(&self, name: &str) -> Result<(), BackendError> {
        self.act(name, "stop", |m| {
            if let Some(v) = m.get_mut(name) {
                v.1 = RunState::Stopped;
            }
        })
    }
    fn restart(&self, _old: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        self.check_wired(new);
        self.act(&new.name, "restart", |m| {
            m.insert(new.name.clone(), (new.clone(), up(new)));
        })
    }
    fn destroy(&self, name: &str, _ext: bool) -> Result<(), BackendError> {
        self.act(name, "destroy", |m| {
            m.remove(name);
        })
    }
    fn hot_add_cpu(&self, name: &str, cpus: u32) -> Result<(), BackendError> {
        self.act(name, "hot-add-cpu", |m| {
            if let Some(v) = m.get_mut(name) {
                v.0.cpus = cpus;
            }
        })
    }
    fn hot_add_memory(&self, name: &str, mib: u64) -> Result<(), BackendError> {
        self.act(name, "hot-add-memory", |m| {
            if let Some(v) = m.get_mut(name) {
                v.0.memory_mib = mib;
            }
        })
    }
    fn resize_disk(&self, name: &str, disk: &str, size: u64) -> Result<(), BackendError> {
        self.act(name, "resize-disk", |m| {
            if let Some(d) = m
                .get_mut(name)
                .and_then(|v| v.0.disks.iter_mut().find(|d| d.name == disk))
            {
                d.size_bytes = size;
            }
        })
    }
    fn set_cpu_weight(&self, name: &str, w: u32) -> Result<(), BackendError> {
        self.act(name, "set-cpu-weight", |m| {
            if let Some(v) = m.get_mut(name) {
                v.0.cpu_weight = w;
            }
        })
    }
    fn copy(&self, source: &str, new: &VmSpec) -> Result<CopyReport, BackendError> {
        // The fake copies live (Capabilities::all()): a running source is
        // fine, a missing one is not.
        let mut live = false;
        self.act(&new.name, "copy", |m| {
            let st = m.get(source).map(|v| v.1);
            assert!(st.is_some(), "copy source missing");
            live = st == Some(RunState::Running);
            m.insert(new.name.clone(), (new.clone(), up(new)));
        })?;
        Ok(CopyReport {
            live,
            ..CopyReport::default()
        })
    }
    fn record(&self, spec: &VmSpec, _d: Desired) -> Result<(), BackendError> {
        if let Some(v) = self.vms.lock().unwrap().get_mut(&spec.name) {
            v.0 = spec.clone();
        }
        Ok(())
    }
}

/// A wide lab: 4 chains of 5 VMs (each depends on the previous), and one copy.
fn wide() -> DesiredState {
    let mut vms = Vec::new();
    for c in 0..4 {
        for i in 0..5 {
            let mut s = vm(&format!("c{c}v{i}"));
            if i > 0 {
                s.depends_on = vec![format!("c{c}v{}", i - 1)];
            }
            vms.push(s);
        }
    }
    vms.push(VmSpec {
        copy_from: Some("c0v0".into()),
        ..vm("copy")
    });
    desired(vms)
}

fn opts(n: usize) -> Options {
    Options {
        parallelism: n,
        delete_external_disks: false,
        apply_id: "test".into(),
    }
}

fn position(trace: &[String], line: &str) -> usize {
    trace
        .iter()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("{line} not in trace"))
}

fn call_of(a: &vmctl_planner::Action) -> String {
    if a.is_network() {
        format!("network:{} {}", a.vm, a.kind.label())
    } else {
        format!("{} {}", a.vm, a.kind.label())
    }
}

fn check_order(p: &Plan, trace: &[String]) {
    for a in p.executable() {
        for d in &a.depends_on {
            let dep = p.actions.iter().find(|x| &x.id == d).unwrap();
            let end = position(trace, &format!("end {}", call_of(dep)));
            let begin = position(trace, &format!("begin {}", call_of(a)));
            assert!(end < begin, "{} began before {} ended", a.id, dep.id);
        }
    }
}

#[test]
fn ordering_respects_the_dag_under_parallelism_4() {
    let d = wide();
    let fake = Fake::default();
    let p = plan(&d, &ObservedState::new(), &Capabilities::all()).unwrap();
    let out = engine::apply(&fake, &p, &d, None, &opts(4), &|_| {});
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.finished.len(), p.executable().count());
    let trace = fake.trace.lock().unwrap().clone();
    check_order(&p, &trace);
    assert!(fake.in_flight.lock().unwrap().1 <= 4);

    // Tear down in reverse: dependents are destroyed before their dependencies.
    let empty = desired(vec![]);
    let p2 = plan(&empty, &fake.observed(), &Capabilities::all()).unwrap();
    fake.trace.lock().unwrap().clear();
    let out = engine::apply(&fake, &p2, &empty, None, &opts(4), &|_| {});
    assert!(out.ok());
    let trace = fake.trace.lock().unwrap().clone();
    check_order(&p2, &trace);
    assert!(
        position(&trace, "end c0v4 destroy") < position(&trace, "begin c0v3 destroy"),
        "{trace:?}"
    );
    assert!(fake.vms.lock().unwrap().is_empty());
}

#[test]
fn a_failure_stops_its_dependents_only() {
    let d = wide();
    let fake = Fake {
        fail: HashSet::from(["c1v2 create".to_string()]),
        ..Fake::default()
    };
    let p = plan(&d, &ObservedState::new(), &Capabilities::all()).unwrap();
    let events = Mutex::new(Vec::new());
    let out = engine::apply(&fake, &p, &d, None, &opts(4), &|e| {
        let line = match e {
            Event::Failed { action, .. } => format!("failed {}", action.id),
            Event::Skipped { action, reason } => format!("skipped {} {reason:?}", action.id),
            _ => return,
        };
        events.lock().unwrap().push(line);
    });
    assert_eq!(out.failed.len(), 1, "{out:?}");
    assert_eq!(out.failed[0].0, "c1v2:create");
    let mut skipped: Vec<_> = out.skipped.iter().map(|(id, _)| id.as_str()).collect();
    skipped.sort();
    assert_eq!(skipped, ["c1v3:create", "c1v4:create"]);
    assert!(
        out.skipped
            .iter()
            .all(|(_, r)| *r == SkipReason::DependencyFailed("c1v2:create".into()))
    );
    // Everything else was created.
    let vms = fake.vms.lock().unwrap();
    assert_eq!(vms.len(), 21 - 3);
    let mut ev = events.lock().unwrap().clone();
    ev.sort();
    assert_eq!(ev[0], "failed c1v2:create");
}

#[test]
fn re_running_a_plan_is_idempotent() {
    let d = wide();
    let fake = Fake::default();
    let p = plan(&d, &ObservedState::new(), &Capabilities::all()).unwrap();
    assert!(engine::apply(&fake, &p, &d, None, &opts(3), &|_| {}).ok());
    let calls = fake.mutating_calls();
    // The same (now stale) plan again: every action sees its work done.
    let out = engine::apply(&fake, &p, &d, None, &opts(3), &|_| {});
    assert!(out.ok());
    assert!(out.finished.is_empty(), "{out:?}");
    assert!(
        out.skipped
            .iter()
            .all(|(_, r)| *r == SkipReason::AlreadyDone)
    );
    assert_eq!(fake.mutating_calls(), calls);
    // And a fresh plan has nothing to do.
    let again = plan(&d, &fake.observed(), &Capabilities::all()).unwrap();
    assert_eq!(again.executable().count(), 0);
}

#[test]
fn live_changes_and_records_converge() {
    let old = debian("db");
    let new = VmSpec {
        cpus: 3,
        memory_mib: 2048,
        disks: vec![disk("root", 20 * GIB)],
        cpu_weight: 300,
        depends_on: vec![],
        ..old.clone()
    };
    let web_old = vm("web");
    let web_new = VmSpec {
        depends_on: vec!["db".into()],
        ..web_old.clone()
    };
    let d = desired(vec![new.clone(), web_new.clone()]);
    let fake = Fake::with(&observed(&[
        (&old, RunState::Running),
        (&web_old, RunState::Running),
    ]));
    let p = plan(&d, &fake.observed(), &Capabilities::all()).unwrap();
    assert_eq!(p.executable().count(), 4);
    let out = engine::apply(&fake, &p, &d, None, &opts(2), &|_| {});
    assert!(out.ok(), "{out:?}");
    let vms = fake.vms.lock().unwrap();
    assert_eq!(vms["db"].0, new);
    // depends-on has no runtime effect: the record step wrote it.
    assert_eq!(vms["web"].0, web_new);
}

#[test]
fn the_journal_brackets_every_action_and_reports_interrupted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".vmctl");
    let d = desired(vec![
        vm("a"),
        VmSpec {
            depends_on: vec!["a".into()],
            ..vm("b")
        },
    ]);
    let fake = Fake::default();
    let p = plan(&d, &ObservedState::new(), &Capabilities::all()).unwrap();

    // A previous apply was killed while creating "a".
    let j = Journal::open(&state).unwrap();
    j.append(&vmctl_planner::JournalEntry {
        ts: 1,
        apply_id: "killed".into(),
        action: "a:create".into(),
        vm: "a".into(),
        kind: vmctl_planner::ActionKind::Create,
        event: JournalEvent::Started,
        skipped: false,
        error: None,
    })
    .unwrap();

    let interrupted = Mutex::new(Vec::new());
    let out = engine::apply(&fake, &p, &d, Some(&j), &opts(2), &|e| {
        if let Event::Interrupted { entry } = e {
            interrupted.lock().unwrap().push(entry.action.clone());
        }
    });
    assert!(out.ok());
    assert_eq!(*interrupted.lock().unwrap(), ["a:create"]);

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(j.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ours: Vec<String> = lines
        .iter()
        .filter(|l| l["apply_id"] == "test")
        .map(|l| {
            format!(
                "{} {}",
                l["action"].as_str().unwrap(),
                l["event"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ours,
        [
            "a:create started",
            "a:create finished",
            "b:create started",
            "b:create finished"
        ]
    );
    for l in &lines {
        for k in ["ts", "apply_id", "action", "vm", "kind", "event"] {
            assert!(l.get(k).is_some(), "{k} missing in {l}");
        }
    }
    // This apply completed: nothing is reported next time.
    assert!(Journal::interrupted(&state).unwrap().is_empty());
}

#[test]
fn a_failure_is_journaled_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = desired(vec![vm("a")]);
    let fake = Fake {
        fail: HashSet::from(["a create".to_string()]),
        ..Fake::default()
    };
    let p = plan(&d, &ObservedState::new(), &Capabilities::all()).unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let out = engine::apply(&fake, &p, &d, Some(&j), &opts(1), &|_| {});
    assert!(!out.ok());
    let all = Journal::read(dir.path()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].event, JournalEvent::Failed);
    assert!(
        all[1]
            .error
            .as_deref()
            .unwrap()
            .contains("injected failure")
    );
}

#[test]
fn refused_entries_are_reported_not_run() {
    let old = debian("db");
    let new = VmSpec {
        disks: vec![disk("root", GIB)],
        ..old.clone()
    };
    let d = desired(vec![new]);
    let fake = Fake::with(&observed(&[(&old, RunState::Running)]));
    let p = plan(&d, &fake.observed(), &Capabilities::all()).unwrap();
    let out = engine::apply(&fake, &p, &d, None, &opts(2), &|_| {});
    assert_eq!(
        out.skipped,
        [(
            "db:resize-disk:root:refused".to_string(),
            SkipReason::Refused
        )]
    );
    assert_eq!(fake.mutating_calls(), 0);
    let _ = (Record::new(vm("x"), Desired::Running), Live::stopped());
}

#[test]
fn a_failed_copy_still_restarts_its_source() {
    let src = vm("src");
    let d = desired(vec![
        src.clone(),
        VmSpec {
            copy_from: Some("src".into()),
            ..vm("dup")
        },
    ]);
    let fake = Fake {
        fail: HashSet::from(["dup copy".to_string()]),
        ..Fake::with(&observed(&[(&src, RunState::Running)]))
    };
    // A runtime without live copy: the plan stops the source.
    let caps = Capabilities {
        live_copy: false,
        ..Capabilities::all()
    };
    let p = plan(&d, &fake.observed(), &caps).unwrap();
    let out = engine::apply(&fake, &p, &d, None, &opts(2), &|_| {});
    assert_eq!(out.failed.len(), 1);
    assert_eq!(out.finished, ["src:stop-for-copy", "src:start-after-copy"]);
    assert_eq!(fake.vms.lock().unwrap()["src"].1, RunState::Running);
}

/// Issue 15, found by `cargo xtask crash`: an apply killed after its action
/// took effect but before `finished` was journaled left a plan with nothing
/// to do. That no-op apply never looked at the journal, so the killed
/// action stayed open and the next apply with real work, maybe much later,
/// reported it as interrupted and "finishing it now". Settling closes it.
#[test]
fn a_plan_with_nothing_to_do_settles_the_actions_a_killed_apply_left_open() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".vmctl");
    let j = Journal::open(&state).unwrap();
    j.append(&vmctl_planner::JournalEntry {
        ts: 1,
        apply_id: "killed".into(),
        action: "a:start".into(),
        vm: "a".into(),
        kind: vmctl_planner::ActionKind::Start,
        event: JournalEvent::Started,
        skipped: false,
        error: None,
    })
    .unwrap();

    let mut settled = Vec::new();
    let n =
        engine::settle_interrupted(&j, "noop", &mut |e| settled.push(e.action.clone())).unwrap();
    assert_eq!(
        (n, settled.as_slice()),
        (1, ["a:start".to_string()].as_slice())
    );
    assert!(Journal::interrupted(&state).unwrap().is_empty());
    let last = Journal::read(&state).unwrap().pop().unwrap();
    assert_eq!(
        (last.apply_id.as_str(), last.event, last.skipped),
        ("noop", JournalEvent::Finished, true)
    );
    // Nothing left: a second settle closes nothing and writes nothing.
    assert_eq!(
        engine::settle_interrupted(&j, "noop2", &mut |_| {}).unwrap(),
        0
    );
    assert_eq!(Journal::read(&state).unwrap().len(), 2);
}

/// Issue 15, found by `cargo xtask crash`: a hot-add killed after the VMM
/// grew the memory but before the record was rewritten leaves the record
/// at the old size and the VM running with the new one. A later change
/// back down plans a restart (the diff reads what runs), but the restart's
/// "already done" check compared the *record* with the new spec, found them
/// equal, and skipped it — on every apply, so the VM never converged.
#[test]
fn a_restart_is_not_taken_for_done_when_only_the_stale_record_matches() {
    let want = VmSpec {
        memory_mib: 128,
        max_memory_mib: 384,
        ..vm("hot")
    };
    let mut obs = observed_vm(&want, RunState::Running);
    obs.live.memory_mib = Some(384); // what the VMM runs after the hot-add
    let mut observed = ObservedState::new();
    observed.insert(obs.clone());
    let p = plan(&desired(vec![want]), &observed, &Capabilities::all()).unwrap();
    let restart = p
        .actions
        .iter()
        .find(|a| a.kind == vmctl_planner::ActionKind::Restart)
        .expect("memory 384 → 128 is a restart");
    assert!(!engine::already_done(restart, Some(&obs)));
    // Once the VM runs the new size, it is done.
    obs.live.memory_mib = Some(128);
    assert!(engine::already_done(restart, Some(&obs)));
}

#[test]
fn networks_come_before_their_vms_and_go_after_them() {
    let lab = DesiredState {
        networks: vec![net("lab", "10.20.0.0/24")],
        ..desired(vec![
            on(vm("a"), vec![nic("lab", "10.20.0.2")]),
            on(vm("b"), vec![nic("lab", "10.20.0.3")]),
            vm("c"),
        ])
    };
    let fake = Fake::default();
    let p = plan(&lab, &fake.observed(), &Capabilities::all()).unwrap();
    // The fake panics if a VM is created before its network.
    let out = engine::apply(&fake, &p, &lab, None, &opts(4), &|_| {});
    assert!(out.ok(), "{:?}", out.failed);
    check_order(&p, &fake.trace.lock().unwrap());
    assert!(
        plan(&lab, &fake.observed(), &Capabilities::all())
            .unwrap()
            .actions
            .is_empty(),
        "converged"
    );
    // Re-running the same plan does nothing (every action is already done).
    let calls = fake.mutating_calls();
    let again = engine::apply(&fake, &p, &lab, None, &opts(4), &|_| {});
    assert!(again.ok());
    assert_eq!(fake.mutating_calls(), calls);

    // Everything goes: the fake panics if the network goes first.
    let empty = desired(vec![]);
    let p = plan(&empty, &fake.observed(), &Capabilities::all()).unwrap();
    let out = engine::apply(&fake, &p, &empty, None, &opts(4), &|_| {});
    assert!(out.ok(), "{:?}", out.failed);
    assert!(fake.nets.lock().unwrap().is_empty());
    assert!(fake.vms.lock().unwrap().is_empty());
}
