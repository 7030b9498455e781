//! One [`Backend`] over many hosts: the planner and the apply engine stay
//! single-DAG and synchronous, and this routes each VM's action to the
//! backend of the host the VM lives on (a `RemoteBackend` over SSH in a
//! real cluster, anything in tests).
//!
//! Where a VM lives: where it was *found* (the last observe saw its record
//! on that host) before where it is *assigned* (placement, or the shared
//! state's record). A VM is never created on a second host while a first
//! one still has it: a VM found on two hosts makes `observe` fail, so the
//! plan stops before anything runs twice.
//!
//! Networks are per host (a bridge each): a network is created on every
//! reachable host and is "present" only where all of them have it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use vmctl_planner::{
    Backend, BackendError, Capabilities, CopyReport, Desired, ObservedNetwork, ObservedState,
    ObservedVm,
};
use vmctl_spec::{NetworkSpec, VmSpec};

/// A host's backend, or why it could not be reached.
pub type HostBackend = Result<Box<dyn Backend + Send>, String>;

/// Many hosts' backends behind one [`Backend`].
pub struct ClusterBackend {
    hosts: BTreeMap<String, HostBackend>,
    /// VM → host as placement (or the shared state) decided.
    assigned: BTreeMap<String, String>,
    /// VM → host where the last observe found it.
    found: Mutex<BTreeMap<String, String>>,
    /// What each reachable host has (its `hello`).
    capacity: BTreeMap<String, vmctl_planner::HostCapacity>,
    /// VM → host as the shared state records it: when a VM is found on two
    /// hosts (a `vmctl move` interrupted between copy and clean-up), the
    /// recorded host is the VM and the other copy is a leftover.
    recorded: BTreeMap<String, String>,
    /// Copies found on a host other than the recorded one (VM, host), from
    /// the last observe, with whether that copy runs.
    leftovers: Mutex<Vec<(String, String, bool)>>,
}

impl ClusterBackend {
    pub fn new(hosts: BTreeMap<String, HostBackend>, assigned: BTreeMap<String, String>) -> Self {
        ClusterBackend {
            hosts,
            assigned,
            found: Mutex::new(BTreeMap::new()),
            capacity: BTreeMap::new(),
            recorded: BTreeMap::new(),
            leftovers: Mutex::new(Vec::new()),
        }
    }

    /// Where the shared state says each VM is (see `recorded`).
    pub fn with_records(mut self, recorded: BTreeMap<String, String>) -> Self {
        self.recorded = recorded;
        self
    }

    /// Copies the last observe found on a host other than the recorded one:
    /// (VM, host, running).
    pub fn leftovers(&self) -> Vec<(String, String, bool)> {
        self.leftovers.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// One host's own backend (for `vmctl move`, which acts on two hosts).
    pub fn on_host(&self, host: &str) -> Result<&(dyn Backend + Send), BackendError> {
        self.backend(host)
    }

    /// Remember what each host has (for `status`).
    pub fn with_capacity(
        mut self,
        capacity: BTreeMap<String, vmctl_planner::HostCapacity>,
    ) -> Self {
        self.capacity = capacity;
        self
    }

    /// Set where each VM goes (placement's answer).
    pub fn assign(&mut self, assigned: BTreeMap<String, String>) {
        self.assigned = assigned;
    }

    /// The host a VM's actions go to: where it was found, else where it is
    /// assigned.
    pub fn host_of(&self, vm: &str) -> Option<String> {
        let found = self.found.lock().ok().and_then(|f| f.get(vm).cloned());
        found.or_else(|| self.assigned.get(vm).cloned())
    }

    /// Where every VM was found by the last observe.
    pub fn found(&self) -> BTreeMap<String, String> {
        self.found.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// A reachable host's capacity, for `status` (empty when unknown).
    pub fn describe(&self, host: &str) -> String {
        self.capacity
            .get(host)
            .map(|c| {
                format!(
                    "{} RAM, {} CPUs",
                    vmctl_planner::size::human_mib(c.memory_mib),
                    c.cpus
                )
            })
            .unwrap_or_default()
    }

    /// The hosts that could not be reached, with why.
    pub fn unreachable(&self) -> BTreeMap<String, String> {
        self.hosts
            .iter()
            .filter_map(|(h, b)| b.as_ref().err().map(|e| (h.clone(), e.clone())))
            .collect()
    }

    fn backend(&self, host: &str) -> Result<&(dyn Backend + Send), BackendError> {
        match self.hosts.get(host) {
            Some(Ok(b)) => Ok(b.as_ref()),
            // The connection's own error names the host already.
            Some(Err(why)) => Err(BackendError::new(why.clone())),
            None => Err(BackendError::new(format!("no host named {host}"))),
        }
    }

    /// The backend of the host `vm` lives on.
    fn for_vm(&self, vm: &str) -> Result<(String, &(dyn Backend + Send)), BackendError> {
        let host = self.host_of(vm).ok_or_else(|| {
            BackendError::new(format!("VM {vm} is placed on no host (internal error)"))
        })?;
        let b = self.backend(&host)?;
        Ok((host, b))
    }

    fn reachable(&self) -> impl Iterator<Item = (&String, &(dyn Backend + Send))> {
        self.hosts
            .iter()
            .filter_map(|(h, b)| b.as_ref().ok().map(|b| (h, b.as_ref())))
    }

    fn note_found(&self, vm: &str, host: Option<&str>) {
        if let Ok(mut f) = self.found.lock() {
            match host {
                Some(h) => f.insert(vm.to_string(), h.to_string()),
                None => f.remove(vm),
            };
        }
    }
}

impl Backend for ClusterBackend {
    fn observe(&self) -> Result<ObservedState, BackendError> {
        let mut all = ObservedState::new();
        let mut found: BTreeMap<String, String> = BTreeMap::new();
        let mut networks: BTreeMap<String, (ObservedNetwork, usize)> = BTreeMap::new();
        let mut reachable = 0usize;
        let mut leftovers = Vec::new();
        for (host, b) in self.reachable() {
            reachable += 1;
            let o = b
                .observe()
                .map_err(|e| BackendError::new(format!("host {host}: {e}")))?;
            for (name, vm) in o.vms {
                let Some(first) = found.get(&name).cloned() else {
                    found.insert(name, host.clone());
                    all.insert(vm);
                    continue;
                };
                // On two hosts: the recorded one is the VM, the other a
                // copy an interrupted move left; without a record naming
                // one of them, nothing is guessed.
                let running = |v: &ObservedVm| v.live.state.has_vmm();
                match self.recorded.get(&name) {
                    Some(r) if *r == first => {
                        leftovers.push((name, host.clone(), running(&vm)));
                    }
                    Some(r) if r == host => {
                        if let Some(old) = all.vms.get(&name) {
                            leftovers.push((name.clone(), first, running(old)));
                        }
                        found.insert(name, host.clone());
                        all.insert(vm);
                    }
                    _ => {
                        return Err(BackendError::new(format!(
                            "VM {name} has a record on two hosts, {first} and {host}: \
                             refusing to plan (remove the stale copy with \
                             `vmctl destroy` on the host that should not have it)"
                        )));
                    }
                }
            }
            for (name, net) in o.networks {
                let e = networks.entry(name).or_insert((net.clone(), 0));
                e.0.present &= net.present;
                e.1 += 1;
            }
        }
        for (_, (mut net, seen)) in networks {
            // Missing on some host: apply makes it there.
            net.present &= seen == reachable;
            all.insert_network(net);
        }
        if let Ok(mut f) = self.found.lock() {
            *f = found;
        }
        if let Ok(mut l) = self.leftovers.lock() {
            *l = leftovers;
        }
        Ok(all)
    }

    fn observe_vm(&self, name: &str) -> Result<Option<ObservedVm>, BackendError> {
        // Where it should be first, then everywhere else (a moved or
        // re-placed VM), so a VM is found wherever it is.
        let first = self.host_of(name);
        let order = first
            .iter()
            .chain(self.hosts.keys().filter(|h| Some(*h) != first.as_ref()));
        for host in order {
            let Ok(b) = self.backend(host) else {
                continue;
            };
            if let Some(vm) = b
                .observe_vm(name)
                .map_err(|e| BackendError::new(format!("host {host}: {e}")))?
            {
                self.note_found(name, Some(host));
                return Ok(Some(vm));
            }
        }
        self.note_found(name, None);
        Ok(None)
    }

    fn observe_network(&self, name: &str) -> Result<Option<ObservedNetwork>, BackendError> {
        // Present only where every reachable host has its bridge.
        let mut out: Option<ObservedNetwork> = None;
        let mut present = true;
        for (host, b) in self.reachable() {
            match b
                .observe_network(name)
                .map_err(|e| BackendError::new(format!("host {host}: {e}")))?
            {
                Some(n) => {
                    present &= n.present;
                    out.get_or_insert(n);
                }
                None => present = false,
            }
        }
        Ok(out.map(|n| ObservedNetwork { present, ..n }))
    }

    fn capabilities(&self) -> Capabilities {
        // Every host runs a vmctl; a capability counts only if all have it.
        let mut caps = Capabilities::all();
        for (_, b) in self.reachable() {
            let c = b.capabilities();
            caps.hot_add_cpu &= c.hot_add_cpu;
            caps.hot_remove_cpu &= c.hot_remove_cpu;
            caps.hot_add_memory &= c.hot_add_memory;
            caps.live_disk_resize &= c.live_disk_resize;
            caps.live_cpu_weight &= c.live_cpu_weight;
            caps.copy &= c.copy;
            caps.live_copy &= c.live_copy;
        }
        caps
    }

    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let (host, b) = self.for_vm(&spec.name)?;
        b.create(spec)?;
        self.note_found(&spec.name, Some(&host));
        Ok(())
    }

    fn start(&self, name: &str) -> Result<(), BackendError> {
        self.for_vm(name)?.1.start(name)
    }

    fn stop(&self, name: &str) -> Result<(), BackendError> {
        self.for_vm(name)?.1.stop(name)
    }

    fn restart(&self, old: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        self.for_vm(&new.name)?.1.restart(old, new)
    }

    fn destroy(&self, name: &str, delete_external_disks: bool) -> Result<(), BackendError> {
        self.for_vm(name)?.1.destroy(name, delete_external_disks)?;
        self.note_found(name, None);
        Ok(())
    }

    fn hot_add_cpu(&self, name: &str, cpus: u32) -> Result<(), BackendError> {
        self.for_vm(name)?.1.hot_add_cpu(name, cpus)
    }

    fn hot_add_memory(&self, name: &str, memory_mib: u64) -> Result<(), BackendError> {
        self.for_vm(name)?.1.hot_add_memory(name, memory_mib)
    }

    fn resize_disk(&self, name: &str, disk: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.for_vm(name)?.1.resize_disk(name, disk, size_bytes)
    }

    fn set_cpu_weight(&self, name: &str, weight: u32) -> Result<(), BackendError> {
        self.for_vm(name)?.1.set_cpu_weight(name, weight)
    }

    fn copy(&self, source: &str, new: &VmSpec) -> Result<CopyReport, BackendError> {
        let (from, b) = self.for_vm(source)?;
        let to = self.host_of(&new.name).unwrap_or_else(|| from.clone());
        if to != from {
            return Err(BackendError::new(format!(
                "{} copies {source}, which is on host {from}, but is placed on {to}: \
                 a copy stays on its source's host (pin it with `host \"{from}\"`)",
                new.name
            )));
        }
        let report = b.copy(source, new)?;
        self.note_found(&new.name, Some(&from));
        Ok(report)
    }

    fn create_network(&self, net: &NetworkSpec) -> Result<(), BackendError> {
        self.on_every_host(|h, b| {
            b.create_network(net)
                .map_err(|e| BackendError::new(format!("host {h}: {e}")))
        })
    }

    fn destroy_network(&self, name: &str) -> Result<(), BackendError> {
        self.on_every_host(|h, b| {
            b.destroy_network(name)
                .map_err(|e| BackendError::new(format!("host {h}: {e}")))
        })
    }

    fn record(&self, spec: &VmSpec, desired: Desired) -> Result<(), BackendError> {
        self.for_vm(&spec.name)?.1.record(spec, desired)
    }
}

impl ClusterBackend {
    /// Run `f` on every host; an unreachable host is an error (after the
    /// reachable ones were done), so the action fails and is re-planned.
    fn on_every_host(
        &self,
        f: impl Fn(&str, &(dyn Backend + Send)) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let mut first_err = None;
        for host in self.hosts.keys() {
            let r = self.backend(host).and_then(|b| f(host, b));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmctl_planner::{Live, Record, RunState};

    /// An in-memory host: VM records only.
    #[derive(Default)]
    struct Mem {
        vms: Mutex<BTreeMap<String, VmSpec>>,
        nets: Mutex<BTreeMap<String, NetworkSpec>>,
        calls: Mutex<Vec<String>>,
    }

    impl Mem {
        fn with(names: &[&str]) -> Self {
            let m = Mem::default();
            for n in names {
                m.vms.lock().unwrap().insert(n.to_string(), spec(n));
            }
            m
        }
        fn log(&self, what: String) {
            self.calls.lock().unwrap().push(what);
        }
    }

    fn spec(name: &str) -> VmSpec {
        let loaded = vmctl_spec::parse_str(
            "t.kdl",
            &format!("vm \"{name}\" {{\n    os \"diag\"\n}}\n"),
            std::path::Path::new("/"),
            2,
        )
        .unwrap();
        loaded.state.vms[0].clone()
    }

    fn observed(s: &VmSpec) -> ObservedVm {
        ObservedVm {
            record: Record::new(s.clone(), Desired::Running),
            live: Live {
                state: RunState::Running,
                ..Live::stopped()
            },
        }
    }

    impl Backend for Mem {
        fn observe(&self) -> Result<ObservedState, BackendError> {
            let mut o = ObservedState::new();
            for s in self.vms.lock().unwrap().values() {
                o.insert(observed(s));
            }
            for n in self.nets.lock().unwrap().values() {
                o.insert_network(ObservedNetwork {
                    spec: n.clone(),
                    present: true,
                });
            }
            Ok(o)
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::all()
        }
        fn create(&self, s: &VmSpec) -> Result<(), BackendError> {
            self.log(format!("create {}", s.name));
            self.vms.lock().unwrap().insert(s.name.clone(), s.clone());
            Ok(())
        }
        fn start(&self, n: &str) -> Result<(), BackendError> {
            self.log(format!("start {n}"));
            Ok(())
        }
        fn stop(&self, n: &str) -> Result<(), BackendError> {
            self.log(format!("stop {n}"));
            Ok(())
        }
        fn restart(&self, _: &VmSpec, n: &VmSpec) -> Result<(), BackendError> {
            self.log(format!("restart {}", n.name));
            Ok(())
        }
        fn destroy(&self, n: &str, _: bool) -> Result<(), BackendError> {
            self.log(format!("destroy {n}"));
            self.vms.lock().unwrap().remove(n);
            Ok(())
        }
        fn hot_add_cpu(&self, n: &str, c: u32) -> Result<(), BackendError> {
            self.log(format!("cpus {n} {c}"));
            Ok(())
        }
        fn hot_add_memory(&self, n: &str, m: u64) -> Result<(), BackendError> {
            self.log(format!("memory {n} {m}"));
            Ok(())
        }
        fn resize_disk(&self, n: &str, d: &str, _: u64) -> Result<(), BackendError> {
            self.log(format!("resize {n} {d}"));
            Ok(())
        }
        fn set_cpu_weight(&self, n: &str, w: u32) -> Result<(), BackendError> {
            self.log(format!("weight {n} {w}"));
            Ok(())
        }
        fn copy(&self, src: &str, new: &VmSpec) -> Result<CopyReport, BackendError> {
            self.log(format!("copy {src} {}", new.name));
            self.vms
                .lock()
                .unwrap()
                .insert(new.name.clone(), new.clone());
            Ok(CopyReport::default())
        }
        fn create_network(&self, n: &NetworkSpec) -> Result<(), BackendError> {
            self.log(format!("net+ {}", n.name));
            self.nets.lock().unwrap().insert(n.name.clone(), n.clone());
            Ok(())
        }
        fn destroy_network(&self, n: &str) -> Result<(), BackendError> {
            self.log(format!("net- {n}"));
            self.nets.lock().unwrap().remove(n);
            Ok(())
        }
        fn record(&self, s: &VmSpec, _: Desired) -> Result<(), BackendError> {
            self.log(format!("record {}", s.name));
            Ok(())
        }
    }

    type Hosts = BTreeMap<String, HostBackend>;

    fn hosts(list: Vec<(&str, HostBackend)>) -> Hosts {
        list.into_iter().map(|(h, b)| (h.to_string(), b)).collect()
    }

    fn assign(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(v, h)| (v.to_string(), h.to_string()))
            .collect()
    }

    #[test]
    fn actions_go_to_the_host_a_vm_was_found_on_before_its_assignment() {
        let c = ClusterBackend::new(
            hosts(vec![
                ("h1", Ok(Box::new(Mem::with(&["db"])))),
                ("h2", Ok(Box::new(Mem::default()))),
            ]),
            // Placement would put db on h2, but it lives on h1: it stays.
            assign(&[("db", "h2"), ("web", "h2")]),
        );
        let o = c.observe().unwrap();
        assert!(o.vms.contains_key("db"));
        assert_eq!(c.host_of("db").as_deref(), Some("h1"));
        c.stop("db").unwrap();
        c.create(&spec("web")).unwrap();
        assert_eq!(c.host_of("web").as_deref(), Some("h2"));
        // A second observe sees web on h2 and db on h1, once each.
        let o = c.observe().unwrap();
        assert_eq!(o.vms.len(), 2);
        assert_eq!(
            c.found(),
            assign(&[("db", "h1"), ("web", "h2")]),
            "where each VM was found"
        );
    }

    #[test]
    fn a_vm_on_two_hosts_stops_the_plan() {
        let c = ClusterBackend::new(
            hosts(vec![
                ("h1", Ok(Box::new(Mem::with(&["db"])))),
                ("h2", Ok(Box::new(Mem::with(&["db"])))),
            ]),
            assign(&[("db", "h1")]),
        );
        let e = c.observe().unwrap_err().to_string();
        assert!(
            e.contains("VM db has a record on two hosts, h1 and h2"),
            "{e}"
        );
    }

    #[test]
    fn a_copy_on_a_second_host_is_a_leftover_when_the_record_names_the_other() {
        let c = ClusterBackend::new(
            hosts(vec![
                ("h1", Ok(Box::new(Mem::with(&["db"])))),
                ("h2", Ok(Box::new(Mem::with(&["db"])))),
            ]),
            assign(&[("db", "h2")]),
        )
        .with_records(assign(&[("db", "h2")]));
        let o = c.observe().unwrap();
        assert_eq!(o.vms.len(), 1);
        assert_eq!(c.host_of("db").as_deref(), Some("h2"));
        assert_eq!(c.leftovers(), [("db".to_string(), "h1".to_string(), true)]);
    }

    #[test]
    fn an_unreachable_hosts_actions_fail_and_the_others_work() {
        let c = ClusterBackend::new(
            hosts(vec![
                ("h1", Ok(Box::new(Mem::default()))),
                (
                    "h2",
                    Err("ssh: connect to host h2 port 22: timed out".into()),
                ),
            ]),
            assign(&[("a", "h1"), ("b", "h2")]),
        );
        c.observe().unwrap();
        c.create(&spec("a")).unwrap();
        let e = c.create(&spec("b")).unwrap_err().to_string();
        assert!(e.contains("ssh: connect to host h2"), "{e}");
        assert_eq!(c.unreachable().len(), 1);
        // A network is made where it can be, and the action still fails.
        let net = NetworkSpec::new("lab", "10.20.0.0/24".parse().unwrap());
        let e = c.create_network(&net).unwrap_err().to_string();
        assert!(e.contains("h2"), "{e}");
        let o = c.observe().unwrap();
        assert!(o.networks["lab"].present, "present on every reachable host");
    }

    #[test]
    fn a_network_missing_on_one_host_is_not_present() {
        let h1 = Mem::default();
        let net = NetworkSpec::new("lab", "10.20.0.0/24".parse().unwrap());
        h1.nets.lock().unwrap().insert("lab".into(), net);
        let c = ClusterBackend::new(
            hosts(vec![
                ("h1", Ok(Box::new(h1))),
                ("h2", Ok(Box::new(Mem::default()))),
            ]),
            BTreeMap::new(),
        );
        assert!(!c.observe().unwrap().networks["lab"].present);
        assert!(!c.observe_network("lab").unwrap().unwrap().present);
    }

    #[test]
    fn a_copy_stays_on_its_sources_host() {
        let c = ClusterBackend::new(
            hosts(vec![
                ("h1", Ok(Box::new(Mem::with(&["base"])))),
                ("h2", Ok(Box::new(Mem::default()))),
            ]),
            assign(&[("base", "h1"), ("clone", "h2"), ("twin", "h1")]),
        );
        c.observe().unwrap();
        let e = c.copy("base", &spec("clone")).unwrap_err().to_string();
        assert!(e.contains("a copy stays on its source's host"), "{e}");
        c.copy("base", &spec("twin")).unwrap();
        assert_eq!(c.host_of("twin").as_deref(), Some("h1"));
    }

    #[test]
    fn observe_vm_finds_a_vm_wherever_it_is() {
        let c = ClusterBackend::new(
            hosts(vec![
                ("h1", Ok(Box::new(Mem::default()))),
                ("h2", Ok(Box::new(Mem::with(&["db"])))),
            ]),
            assign(&[("db", "h1")]),
        );
        assert!(c.observe_vm("db").unwrap().is_some());
        assert_eq!(c.host_of("db").as_deref(), Some("h2"));
        c.destroy("db", false).unwrap();
        assert!(c.observe_vm("db").unwrap().is_none());
        assert_eq!(
            c.host_of("db").as_deref(),
            Some("h1"),
            "back to its assignment"
        );
    }
}
