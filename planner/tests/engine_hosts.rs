//! The engine over several hosts: `parallelism` is per host. Never more
//! than that many actions on one host at once, and hosts do not wait for
//! each other (a rendezvous between the first actions of two hosts only
//! completes when both run at once).

mod common;

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use common::*;
use vmctl_planner::{
    Backend, BackendError, Capabilities, CopyReport, Desired, HostCapacity, HostState,
    ObservedState, engine, place, plan_on_hosts,
};
use vmctl_spec::{DesiredState, HostSpec, NetworkSpec, Reserve, VmSpec};

#[derive(Default)]
struct Tracker {
    /// host → (in flight, most in flight).
    hosts: BTreeMap<String, (usize, usize)>,
    /// Hosts that have started an action.
    started: Vec<String>,
}

struct HostsFake {
    host_of: BTreeMap<String, String>,
    t: Mutex<Tracker>,
    cv: Condvar,
}

impl HostsFake {
    fn act(&self, vm: &str) -> Result<(), BackendError> {
        let host = self.host_of.get(vm).cloned().unwrap_or_default();
        let mut t = self.t.lock().unwrap();
        let e = t.hosts.entry(host.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
        let first = !t.started.contains(&host);
        t.started.push(host.clone());
        self.cv.notify_all();
        if first {
            // Wait for another host to start too (a guard, not a timing
            // assertion: a serial engine fails the check below).
            let (g, _) = self
                .cv
                .wait_timeout_while(t, Duration::from_secs(30), |t| {
                    !t.started.iter().any(|h| *h != host)
                })
                .unwrap();
            t = g;
        }
        t.hosts.entry(host).or_default().0 -= 1;
        Ok(())
    }
}

impl Backend for HostsFake {
    fn observe(&self) -> Result<ObservedState, BackendError> {
        Ok(ObservedState::new())
    }
    fn observe_vm(&self, _: &str) -> Result<Option<vmctl_planner::ObservedVm>, BackendError> {
        Ok(None)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }
    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        self.act(&spec.name)
    }
    fn start(&self, name: &str) -> Result<(), BackendError> {
        self.act(name)
    }
    fn stop(&self, name: &str) -> Result<(), BackendError> {
        self.act(name)
    }
    fn restart(&self, _: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        self.act(&new.name)
    }
    fn destroy(&self, name: &str, _: bool) -> Result<(), BackendError> {
        self.act(name)
    }
    fn hot_add_cpu(&self, name: &str, _: u32) -> Result<(), BackendError> {
        self.act(name)
    }
    fn hot_add_memory(&self, name: &str, _: u64) -> Result<(), BackendError> {
        self.act(name)
    }
    fn resize_disk(&self, name: &str, _: &str, _: u64) -> Result<(), BackendError> {
        self.act(name)
    }
    fn set_cpu_weight(&self, name: &str, _: u32) -> Result<(), BackendError> {
        self.act(name)
    }
    fn copy(&self, _: &str, new: &VmSpec) -> Result<CopyReport, BackendError> {
        self.act(&new.name)?;
        Err(BackendError::new("no copies here"))
    }
    fn create_network(&self, _: &NetworkSpec) -> Result<(), BackendError> {
        Ok(())
    }
    fn destroy_network(&self, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn record(&self, _: &VmSpec, _: Desired) -> Result<(), BackendError> {
        Ok(())
    }
}

fn host(name: &str) -> HostSpec {
    HostSpec {
        name: name.into(),
        ssh: name.into(),
        labels: BTreeMap::new(),
        reserve: Reserve::default(),
        drain: false,
        vmctl: "vmctl".into(),
        state_dir: "/var/lib/vmctl/lab".into(),
    }
}

#[test]
fn parallelism_is_per_host() {
    let pin = |n: &str, h: &str| VmSpec {
        host: Some(h.into()),
        ..vm(n)
    };
    let d = DesiredState {
        hosts: vec![host("h1"), host("h2")],
        ..desired(vec![
            pin("a1", "h1"),
            pin("a2", "h1"),
            pin("a3", "h1"),
            pin("b1", "h2"),
            pin("b2", "h2"),
            pin("b3", "h2"),
        ])
    };
    let states: Vec<HostState> = d
        .hosts
        .iter()
        .map(|h| {
            HostState::new(
                h,
                Some(HostCapacity {
                    memory_mib: 4096,
                    cpus: 2,
                }),
            )
        })
        .collect();
    let placed = place(&states, &d.vms, &BTreeMap::new());
    let p = plan_on_hosts(&d, &ObservedState::new(), &Capabilities::all(), &placed).unwrap();
    let fake = HostsFake {
        host_of: placed.hosts.clone(),
        t: Mutex::new(Tracker::default()),
        cv: Condvar::new(),
    };
    let opts = vmctl_planner::Options {
        parallelism: 1,
        ..Default::default()
    };
    let out = engine::apply(&fake, &p, &d, None, &opts, &|_| {});
    assert!(out.ok(), "{:?}", out.failed);
    let t = fake.t.lock().unwrap();
    for (h, (_, most)) in &t.hosts {
        assert_eq!(*most, 1, "{h}: at most --parallelism actions on one host");
    }
    // Both hosts' first actions met: the hosts ran side by side.
    let first_two: Vec<&String> = t.started.iter().take(2).collect();
    assert_ne!(first_two[0], first_two[1], "{:?}", t.started);
}
