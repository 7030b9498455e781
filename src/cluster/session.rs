//! One coordinator pass over a lab with `host` nodes: take the cluster lock
//! on etcd (its fencing token goes with every mutating call to every host),
//! reach each host's `vmctl host-rpc` over SSH, observe them all, place the
//! VMs and plan one DAG across the hosts. After the apply, the shared state
//! gets each VM's record (its applied spec and host) and the journal an
//! entry per action, every write guarded by the token.
//!
//! How ssh is run: `ssh -F $VMCTL_SSH_CONFIG -i $VMCTL_SSH_IDENTITY` when
//! those are set (docs/scale-out.md), else the user's own ssh configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use vmctl_cluster::{AcquireOptions, Auth, Etcd, EtcdConfig, LockGuard, TlsFiles};
use vmctl_hostrpc::{RemoteBackend, SshTarget, Timeouts};
use vmctl_planner::placement::{self, HostState, Placement};
use vmctl_planner::{Backend, HostCapacity};
use vmctl_spec::{ClusterSpec, DesiredState, HostSpec};

use super::route::{ClusterBackend, HostBackend};

/// An ssh_config file for every host connection (`ssh -F`).
pub const SSH_CONFIG_ENV: &str = "VMCTL_SSH_CONFIG";
/// An identity file for every host connection (`ssh -i`).
pub const SSH_IDENTITY_ENV: &str = "VMCTL_SSH_IDENTITY";

/// Why a cluster pass could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SessionError {
    #[error("the cluster {cluster}'s shared state: {source}")]
    #[diagnostic(help(
        "vmctl needs the etcd cluster of the file's `cluster` node to plan or apply a lab over hosts (docs/scale-out.md); `vmctl lock show --endpoints ...` shows who holds the lock"
    ))]
    Etcd {
        cluster: String,
        #[source]
        source: vmctl_cluster::ClusterError,
    },
    #[error("the cluster {cluster} reads the etcd password from ${var}, which is not set")]
    Password { cluster: String, var: String },
    #[error("cannot plan across the hosts: {0}")]
    Observe(String),
}

/// What the etcd side of the cluster node says, as the client wants it.
pub fn etcd_config(spec: &ClusterSpec) -> Result<EtcdConfig, SessionError> {
    let mut cfg = EtcdConfig::new(spec.endpoints.clone(), &spec.name);
    cfg.lock_ttl = Duration::from_secs(spec.lock_ttl_secs);
    if spec.ca.is_some() || spec.cert.is_some() {
        cfg.tls = Some(TlsFiles {
            ca: spec.ca.clone(),
            cert: spec.cert.clone(),
            key: spec.key.clone(),
        });
    }
    if let (Some(user), Some(var)) = (&spec.user, &spec.password_env) {
        let password = std::env::var(var).map_err(|_| SessionError::Password {
            cluster: spec.name.clone(),
            var: var.clone(),
        })?;
        cfg.auth = Some(Auth {
            user: user.clone(),
            password,
        });
    }
    Ok(cfg)
}

/// How to reach one host's vmctl.
pub fn ssh_target(h: &HostSpec) -> SshTarget {
    let mut t = SshTarget::new(&h.ssh, &h.state_dir);
    t.vmctl = h.vmctl.clone();
    t.ssh_config = std::env::var_os(SSH_CONFIG_ENV).map(PathBuf::from);
    t.identity = std::env::var_os(SSH_IDENTITY_ENV).map(PathBuf::from);
    t
}

/// Every declared host, connected (or why not) with `token`; and what each
/// reachable one has.
pub fn connect_hosts(
    hosts: &[HostSpec],
    token: Option<u64>,
) -> (
    BTreeMap<String, HostBackend>,
    BTreeMap<String, HostCapacity>,
) {
    // In parallel: an unreachable host costs its ssh ConnectTimeout once,
    // not once per host.
    let results: Vec<(String, Result<RemoteBackend, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                s.spawn(move || {
                    let r = RemoteBackend::ssh(&h.name, &ssh_target(h), token, Timeouts::default())
                        .map_err(|e| e.to_string());
                    (h.name.clone(), r)
                })
            })
            .collect();
        handles.into_iter().filter_map(|j| j.join().ok()).collect()
    });
    let mut backends = BTreeMap::new();
    let mut capacity = BTreeMap::new();
    for (name, r) in results {
        match r {
            Ok(rb) => {
                if let Some(c) = rb.hello().capacity {
                    capacity.insert(name.clone(), c);
                }
                backends.insert(name, Ok(Box::new(rb) as Box<dyn Backend + Send>));
            }
            Err(e) => {
                tracing::info!(host = %name, error = %e, "host unreachable");
                backends.insert(name, Err(e));
            }
        }
    }
    (backends, capacity)
}

/// The hosts the shared state records for each VM.
pub fn recorded_hosts(records: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    records
        .iter()
        .filter_map(|(vm, r)| Some((vm.clone(), r.get("host")?.as_str()?.to_string())))
        .collect()
}

/// A pass over the hosts: the lock, the routed backend and the placement.
pub struct Session {
    pub guard: LockGuard,
    pub backend: ClusterBackend,
    pub placement: Placement,
    /// The records as read under the lock (VM → JSON).
    pub records: BTreeMap<String, Value>,
    /// Writes of the shared state that failed during the apply (a token no
    /// longer current: another coordinator took over).
    pub write_errors: Mutex<Vec<String>>,
}

/// Lock, connect, observe and place. The observed state is returned for the
/// planner; the session carries the rest.
pub fn open(
    desired: &DesiredState,
    command: &str,
    wait: Option<Duration>,
) -> Result<(Session, vmctl_planner::ObservedState), SessionError> {
    let Some(spec) = &desired.cluster else {
        return Err(SessionError::Observe(
            "the file declares hosts but no cluster".into(),
        ));
    };
    let etcd_err = |source| SessionError::Etcd {
        cluster: spec.name.clone(),
        source,
    };
    let etcd = Etcd::connect(etcd_config(spec)?).map_err(etcd_err)?;
    let guard = etcd
        .lock(&AcquireOptions {
            command: command.to_string(),
            // "Wait forever" is a day: long enough for any apply.
            wait: wait.unwrap_or(Duration::from_secs(86_400)),
        })
        .map_err(etcd_err)?;
    let token = u64::try_from(guard.token()).ok();
    let records = guard.etcd().list_vms().map_err(etcd_err)?;
    let sv = survey(desired, token, &records)?;
    for line in assumed_lines(&sv.assumed) {
        eprintln!("warning: {line}");
    }
    let session = Session {
        guard,
        backend: sv.backend,
        placement: sv.placement,
        records,
        write_errors: Mutex::new(Vec::new()),
    };
    session.finish_interrupted_moves()?;
    Ok((session, sv.observed))
}

/// What a survey of the hosts found.
pub struct Survey {
    pub backend: ClusterBackend,
    pub observed: vmctl_planner::ObservedState,
    pub placement: Placement,
    /// VMs the shared state puts on a host that did not answer, taken as
    /// last applied (VM, host): planned against their record, so they are
    /// never planned as new, and any change to them fails on their host.
    pub assumed: Vec<(String, String)>,
    /// Why the shared state could not be read (read-only surveys only).
    pub note: Option<String>,
}

/// Reach every host (mutating calls carry `token`), observe them all and
/// place the VMs: found on a host beats the shared state's record, which
/// beats a new choice.
pub fn survey(
    desired: &DesiredState,
    token: Option<u64>,
    records: &BTreeMap<String, Value>,
) -> Result<Survey, SessionError> {
    let (backends, capacity) = connect_hosts(&desired.hosts, token);
    let mut backend = ClusterBackend::new(backends, BTreeMap::new())
        .with_capacity(capacity.clone())
        .with_records(recorded_hosts(records));
    let mut observed = backend
        .observe()
        .map_err(|e| SessionError::Observe(e.to_string()))?;
    let found = backend.found();
    let unreachable = backend.unreachable();
    let mut assumed = Vec::new();
    for (vm, record) in records {
        let Some(host) = record.get("host").and_then(Value::as_str) else {
            continue;
        };
        if found.contains_key(vm) || !unreachable.contains_key(host) {
            continue;
        }
        let Some(spec) = record
            .get("spec")
            .and_then(|s| serde_json::from_value::<vmctl_spec::VmSpec>(s.clone()).ok())
        else {
            continue;
        };
        observed.insert(vmctl_planner::ObservedVm {
            record: vmctl_planner::Record::new(spec, vmctl_planner::Desired::Running),
            live: vmctl_planner::Live {
                state: vmctl_planner::RunState::Running,
                ..vmctl_planner::Live::stopped()
            },
        });
        assumed.push((vm.clone(), host.to_string()));
    }
    let mut current = recorded_hosts(records);
    current.extend(found);
    let states: Vec<HostState> = desired
        .hosts
        .iter()
        .map(|h| HostState::new(h, capacity.get(&h.name).copied()))
        .collect();
    let placement = placement::place(&states, &desired.vms, &current);
    backend.assign(placement.hosts.clone());
    Ok(Survey {
        backend,
        observed,
        placement,
        assumed,
        note: None,
    })
}

/// For `plan` and `status`: no lock, no token (the hosts refuse any
/// mutating call). The records are read if etcd answers; if it does not,
/// the hosts alone say where each VM is, and `note` says so.
pub fn survey_read_only(desired: &DesiredState) -> Result<Survey, SessionError> {
    let Some(spec) = &desired.cluster else {
        return Err(SessionError::Observe(
            "the file declares hosts but no cluster".into(),
        ));
    };
    let records = etcd_config(spec).and_then(|cfg| {
        Etcd::connect(cfg)
            .and_then(|e| e.list_vms())
            .map_err(|source| SessionError::Etcd {
                cluster: spec.name.clone(),
                source,
            })
    });
    let (records, note) = match records {
        Ok(r) => (r, None),
        Err(e) => (
            BTreeMap::new(),
            Some(format!("{e}; where each VM is comes from the hosts alone")),
        ),
    };
    let mut s = survey(desired, None, &records)?;
    s.note = note;
    Ok(s)
}

/// The warning lines for VMs planned as last applied.
pub fn assumed_lines(assumed: &[(String, String)]) -> Vec<String> {
    assumed
        .iter()
        .map(|(vm, host)| {
            format!("{vm} is on {host}, which is unreachable: planned as last applied (its changes will fail)")
        })
        .collect()
}

impl Session {
    /// A VM found on two hosts is one `vmctl move` interrupted between the
    /// copy and the removal of the old copy: the shared state's record says
    /// which copy is the VM (the new host once the move was committed, the
    /// old one before), and the other — stopped, since a move starts the
    /// new copy only after the commit and never restarts the old one — is
    /// removed. A running leftover is never touched: the pass stops.
    fn finish_interrupted_moves(&self) -> Result<(), SessionError> {
        for (vm, host, running) in self.backend.leftovers() {
            let kept = self.backend.host_of(&vm).unwrap_or_default();
            if running {
                return Err(SessionError::Observe(format!(
                    "VM {vm} runs on {host} although the shared state puts it on {kept}: \
                     refusing to touch either (stop the one that should not run)"
                )));
            }
            eprintln!(
                "removing the copy of {vm} on {host} that an interrupted move left (the VM is on {kept})"
            );
            let r = self
                .backend
                .on_host(&host)
                .and_then(|b| b.destroy(&vm, false));
            self.journal(
                "remove-leftover",
                &vm,
                Some(&host),
                r.is_ok(),
                r.as_ref().err().map(|e| e.0.as_str()),
            );
            r.map_err(|e| {
                SessionError::Observe(format!("removing the leftover copy of {vm} on {host}: {e}"))
            })?;
        }
        Ok(())
    }

    fn guarded(&self, what: String, r: Result<(), vmctl_cluster::ClusterError>) {
        if let Err(e) = r {
            tracing::error!(%what, error = %e, "shared state write refused");
            if let Ok(mut v) = self.write_errors.lock() {
                v.push(format!("{what}: {e}"));
            }
        }
    }

    /// An action finished: journal it.
    pub fn journal(
        &self,
        action: &str,
        vm: &str,
        host: Option<&str>,
        ok: bool,
        error: Option<&str>,
    ) {
        let entry = json!({
            "format_version": "1",
            "action": action,
            "vm": vm,
            "host": host,
            "ok": ok,
            "error": error,
            "token": self.guard.token(),
        });
        let r = self.guard.append_journal(&entry).map(|_| ());
        self.guarded(format!("journal entry for {action}"), r);
    }

    /// After the apply: each desired VM that is on a host gets its record
    /// (spec and host) where it differs; records of VMs that are on no host
    /// any more and no longer desired are removed.
    pub fn write_records(&self, desired: &DesiredState) {
        let found = self.backend.found();
        for vm in &desired.vms {
            let Some(host) = found.get(&vm.name) else {
                continue;
            };
            let record = json!({"format_version": "1", "spec": vm, "host": host});
            if self.records.get(&vm.name) != Some(&record) {
                let r = self.guard.put_vm(&vm.name, &record);
                self.guarded(format!("record of {}", vm.name), r);
            }
        }
        for name in self.records.keys() {
            if desired.vm(name).is_none() && !found.contains_key(name) {
                let r = self.guard.delete_vm(name);
                self.guarded(format!("removing the record of {name}"), r);
            }
        }
    }

    /// Writes that failed, in order.
    pub fn write_errors(&self) -> Vec<String> {
        self.write_errors
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_give_each_vm_its_host() {
        let mut r = BTreeMap::new();
        r.insert("db".to_string(), json!({"host": "h1", "spec": {}}));
        r.insert("odd".to_string(), json!({"spec": {}}));
        let hosts = recorded_hosts(&r);
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts["db"], "h1");
    }

    #[test]
    fn the_etcd_password_comes_from_the_named_variable() {
        let spec = ClusterSpec {
            name: "lab".into(),
            state: vmctl_spec::StateBackend::Etcd,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            lock_ttl_secs: 7,
            ca: None,
            cert: None,
            key: None,
            user: Some("root".into()),
            password_env: Some("VMCTL_TEST_SURELY_UNSET_PASSWORD".into()),
        };
        let e = etcd_config(&spec).unwrap_err().to_string();
        assert!(e.contains("$VMCTL_TEST_SURELY_UNSET_PASSWORD"), "{e}");
        let cfg = etcd_config(&ClusterSpec {
            user: None,
            password_env: None,
            ..spec
        })
        .unwrap();
        assert_eq!(cfg.lock_ttl, Duration::from_secs(7));
        assert!(cfg.auth.is_none() && cfg.tls.is_none());
    }
}
