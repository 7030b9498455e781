//! What must hold after every scenario, read from three independent
//! places: each host's own state directory and VMM processes (what really
//! exists), `vmctl status --json` (what the coordinator sees, and the
//! guests' own reports), and the records in etcd (the shared state).
//!
//! * every desired VM exists on exactly one host (lost = 0, duplicated = 0)
//!   and runs there as exactly one VMM;
//! * no VM that is no longer desired is left on any host;
//! * each running VM's guest reports, with the declared CPUs and memory;
//! * the etcd record of each VM names the host it is on, and no record is
//!   left for a VM that is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmctl_cluster::Etcd;

use super::ChaosError;
use super::env::{CLUSTER, Env};

/// What one check found.
#[derive(Debug, Default, Clone)]
pub struct Check {
    /// Desired VMs on no host.
    pub lost: usize,
    /// Desired VMs on more than one host, or with more than one VMM.
    pub duplicated: usize,
    /// Everything else that is wrong, in words.
    pub problems: Vec<String>,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.problems.is_empty()
    }
}

/// VM → hosts whose state directory has its record (`vms/NAME/vm.json`).
fn on_disk(env: &Env) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in &env.hosts.hosts {
        let Ok(entries) = std::fs::read_dir(h.state_dir.join("vms")) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().join("vm.json").is_file()
                && let Some(name) = e.file_name().to_str()
            {
                out.entry(name.to_string())
                    .or_default()
                    .push(h.name.clone());
            }
        }
    }
    out
}

/// VM → hosts with a live VMM for it (one entry per VMM process), from
/// `/proc`: `vmctl __vmm --vm-dir STATE/vms/NAME`.
fn vmms(env: &Env) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in &env.hosts.hosts {
        for pid in vmctl_hostrpc::testkit::vmm_pids_under(&h.state_dir) {
            if let Some(name) = vm_of(pid, &h.state_dir) {
                out.entry(name).or_default().push(h.name.clone());
            }
        }
    }
    out
}

fn vm_of(pid: i32, state: &Path) -> Option<String> {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmd
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let dir = args
        .iter()
        .position(|a| a == "--vm-dir")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--vm-dir=").map(str::to_string))
        })?;
    let rel = Path::new(&dir).strip_prefix(state.join("vms")).ok()?;
    rel.to_str().map(str::to_string)
}

/// `vmctl status --json`, polled (bounded) until every desired VM's guest
/// has reported; the last status either way.
fn status_with_guests(env: &mut Env) -> Result<Value, ChaosError> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, text) = env.run("status", &["status", "--json"], Duration::from_secs(120))?;
        let status: Value = text
            .find('{')
            .and_then(|i| serde_json::from_str(&text[i..]).ok())
            .unwrap_or(Value::Null);
        let all = env.desired().iter().all(|d| {
            status["vms"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|v| v["name"] == d.name && !v["guest"].is_null())
            })
        });
        if all || Instant::now() >= deadline {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Check every invariant now.
pub fn check(env: &mut Env) -> Result<Check, ChaosError> {
    let mut c = Check::default();
    let status = status_with_guests(env)?;
    let disk = on_disk(env);
    let running = vmms(env);
    let desired: BTreeSet<&str> = env.desired().iter().map(|v| v.name).collect();

    // Where each VM really is.
    let mut at: BTreeMap<&str, String> = BTreeMap::new();
    for d in env.desired() {
        let hosts = disk.get(d.name).cloned().unwrap_or_default();
        let procs = running.get(d.name).cloned().unwrap_or_default();
        match hosts.len() {
            0 => {
                c.lost += 1;
                c.problems.push(format!("{}: on no host", d.name));
            }
            1 => {
                at.insert(d.name, hosts[0].clone());
            }
            _ => {
                c.duplicated += 1;
                c.problems
                    .push(format!("{}: on several hosts {hosts:?}", d.name));
            }
        }
        if procs.len() > 1 && hosts.len() <= 1 {
            c.duplicated += 1;
        }
        if procs.len() != 1 || (hosts.len() == 1 && procs[0] != hosts[0]) {
            c.problems.push(format!(
                "{}: VMMs on {procs:?}, record on {hosts:?} (want exactly one VMM, where the record is)",
                d.name
            ));
        }
    }
    for (name, hosts) in disk.iter().chain(running.iter()) {
        if !desired.contains(name.as_str()) {
            c.problems
                .push(format!("{name}: no longer desired, still on {hosts:?}"));
        }
    }

    // What status says: the same host, running, the guest's own report.
    let vms = status["vms"].as_array().cloned().unwrap_or_default();
    for d in env.desired() {
        let Some(v) = vms.iter().find(|v| v["name"] == d.name) else {
            c.problems.push(format!("{}: not in vmctl status", d.name));
            continue;
        };
        if let Some(h) = at.get(d.name)
            && v["host"].as_str() != Some(h.as_str())
        {
            c.problems.push(format!(
                "{}: status says host {}, it is on {h}",
                d.name, v["host"]
            ));
        }
        if v["state"] != "running" {
            c.problems
                .push(format!("{}: status says {}", d.name, v["state"]));
        }
        let g = &v["guest"];
        if g.is_null() {
            c.problems
                .push(format!("{}: the guest never reported", d.name));
        } else if g["cpus"] != d.cpus || g["memory_mib"] != d.memory_mib {
            c.problems.push(format!(
                "{}: the guest reports {} CPUs / {} MiB, the file says {} / {}",
                d.name, g["cpus"], g["memory_mib"], d.cpus, d.memory_mib
            ));
        }
    }

    // The shared state: one record per VM, naming where it is.
    let records = Etcd::connect(env.etcd.config(CLUSTER))
        .and_then(|e| e.list_vms())
        .map_err(|e| ChaosError::Setup(format!("reading the records in etcd: {e}")))?;
    for (name, h) in &at {
        match records.get(*name).and_then(|r| r["host"].as_str()) {
            Some(r) if r == h => {}
            other => c.problems.push(format!(
                "{name}: the etcd record says host {other:?}, it is on {h}"
            )),
        }
    }
    for name in records.keys() {
        if !desired.contains(name.as_str()) {
            c.problems
                .push(format!("{name}: etcd keeps a record of a VM that is gone"));
        }
    }
    Ok(c)
}
