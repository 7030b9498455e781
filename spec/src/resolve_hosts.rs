//! Cluster, hosts and where each VM may run: the cross-node rules.
//!
//! A file without `host` nodes is a single-host lab and nothing here adds
//! to its state. Once there are hosts, a `cluster` (the shared state) is
//! required, every `host "…"` in a `vm` must name one of them, and
//! `placement` may only ask for labels some host has: all of this is known
//! from the file alone, so it is reported with spans here, not at plan time.
//! What depends on the hosts' live capacity is the planner's placement.

use std::collections::BTreeMap;
use std::path::Path;

use crate::diagnostic::{Diag, Sink};
use crate::model::{
    ClusterSpec, DEFAULT_HOST_STATE_ROOT, DEFAULT_HOST_VMCTL, DEFAULT_LOCK_TTL_SECS, HostSpec,
    PlacementSpec, Reserve, StateBackend,
};
use crate::resolve::absolute;
use crate::suggest::did_you_mean;
use crate::syntax::{RawCluster, RawFile, RawHost, RawVm};

/// The cluster, the unique hosts (file order), and per VM (`vms[i]`) its
/// pinned host and placement.
pub(crate) struct Resolved {
    pub cluster: Option<ClusterSpec>,
    pub hosts: Vec<HostSpec>,
    pub per_vm: Vec<(Option<String>, Option<PlacementSpec>)>,
}

pub(crate) fn resolve(raw: &RawFile, vms: &[&RawVm], base: &Path, sink: &mut Sink) -> Resolved {
    let cluster = resolve_cluster(&raw.clusters, base, sink);
    let mut hosts: Vec<&RawHost> = Vec::new();
    for h in &raw.hosts {
        if let Some(first) = hosts.iter().find(|u| u.name.val == h.name.val) {
            sink.push(
                Diag::error(
                    "vmctl::spec::duplicate-host",
                    format!("host `{}` is declared twice", h.name.val),
                )
                .label(h.name.span, "declared again here")
                .label(first.name.span, "first declared here")
                .help("host names must be unique: rename or remove one of them"),
            );
        } else {
            hosts.push(h);
        }
    }
    if let (Some(first), true) = (hosts.first(), raw.clusters.is_empty()) {
        sink.push(
            Diag::error(
                "vmctl::spec::hosts-without-cluster",
                "hosts are declared, but no `cluster` says where they share their state",
            )
            .label(first.name.span, "first host")
            .help(
                "VMs on several hosts need one lock and one record of where each VM is: add \
                 cluster \"lab\" { state \"etcd\" endpoints=\"http://127.0.0.1:2379\" } \
                 (docs/scale-out.md)",
            ),
        );
    }
    let root = match &cluster {
        Some(c) => format!("{DEFAULT_HOST_STATE_ROOT}/{}", c.name),
        None => match raw.clusters.first() {
            Some(c) => format!("{DEFAULT_HOST_STATE_ROOT}/{}", c.name.val),
            None => DEFAULT_HOST_STATE_ROOT.to_string(),
        },
    };
    let per_vm = vms.iter().map(|vm| vm_place(vm, &hosts, sink)).collect();
    Resolved {
        cluster,
        hosts: hosts
            .iter()
            .map(|h| HostSpec {
                name: h.name.val.clone(),
                ssh: h.ssh.as_ref().map(|s| s.val.clone()).unwrap_or_default(),
                labels: h
                    .labels
                    .iter()
                    .map(|(k, (v, _))| (k.clone(), v.clone()))
                    .collect(),
                reserve: Reserve {
                    memory_mib: h.reserve_memory_mib,
                    cpus: h.reserve_cpus,
                },
                drain: h.drain,
                vmctl: h
                    .vmctl
                    .clone()
                    .unwrap_or_else(|| DEFAULT_HOST_VMCTL.to_string()),
                state_dir: h.state_dir.clone().unwrap_or_else(|| root.clone()),
            })
            .collect(),
        per_vm,
    }
}

fn resolve_cluster(raw: &[RawCluster], base: &Path, sink: &mut Sink) -> Option<ClusterSpec> {
    let (c, rest) = raw.split_first()?;
    for other in rest {
        sink.push(
            Diag::error("vmctl::spec::duplicate-field", "`cluster` is given twice")
                .label(other.name.span, "second `cluster`")
                .label(c.name.span, "first `cluster`")
                .help("a file describes one lab: keep one `cluster`"),
        );
    }
    let mut ok = true;
    match &c.state {
        Some(s) if s.val == StateBackend::Etcd.name() => {}
        Some(s) => {
            ok = false;
            let near = did_you_mean(&s.val, [StateBackend::Etcd.name()]);
            sink.push(
                Diag::error(
                    "vmctl::spec::unknown-state-backend",
                    format!("`{}` is not a shared-state store vmctl can use", s.val),
                )
                .label(s.span, "unknown store")
                .help(match near {
                    Some(n) => format!("did you mean \"{n}\"? etcd is the only store"),
                    None => "etcd is the only store: state \"etcd\" endpoints=\"...\"".to_string(),
                }),
            );
        }
        None => {
            ok = false;
            if !c.state_written {
                sink.push(
                    Diag::error(
                        "vmctl::spec::missing-value",
                        format!("cluster `{}` has no `state`", c.name.val),
                    )
                    .label(c.name.span, "this cluster")
                    .help(format!(
                        "say where the hosts share their state: {}",
                        crate::syntax::example("state")
                    )),
                );
            }
        }
    }
    if c.state.is_some() && c.endpoints.is_empty() {
        ok = false;
        if c.endpoints_span.is_none() {
            sink.push(
                Diag::error(
                    "vmctl::spec::missing-value",
                    format!("cluster `{}` has no etcd `endpoints`", c.name.val),
                )
                .label(c.name.span, "this cluster")
                .help(format!("for example: {}", crate::syntax::example("state"))),
            );
        }
    }
    match (&c.cert, &c.key) {
        (Some(s), None) | (None, Some(s)) => {
            ok = false;
            sink.push(
                Diag::error(
                    "vmctl::spec::bad-cluster-tls",
                    "a TLS client certificate needs its key (and the key its certificate)",
                )
                .label(s.span, "given alone")
                .help("give both cert=\"client.pem\" and key=\"client-key.pem\", or neither"),
            );
        }
        _ => {}
    }
    match (&c.user, &c.password_env) {
        _ if c.auth_reported => ok = false,
        (Some(s), None) | (None, Some(s)) => {
            ok = false;
            sink.push(
                Diag::error(
                    "vmctl::spec::bad-cluster-auth",
                    "etcd authentication needs both `user` and `password-env`",
                )
                .label(s.span, "given alone")
                .help(
                    "give user=\"vmctl\" password-env=\"ETCD_PASSWORD\" (the variable holds the \
                     password; it is never written in the file), or neither",
                ),
            );
        }
        _ => {}
    }
    ok.then(|| ClusterSpec {
        name: c.name.val.clone(),
        state: StateBackend::Etcd,
        endpoints: c.endpoints.clone(),
        lock_ttl_secs: c.lock_ttl_secs.unwrap_or(DEFAULT_LOCK_TTL_SECS),
        ca: c.ca.as_ref().map(|p| absolute(base, p)),
        cert: c.cert.as_ref().map(|p| absolute(base, &p.val)),
        key: c.key.as_ref().map(|p| absolute(base, &p.val)),
        user: c.user.as_ref().map(|s| s.val.clone()),
        password_env: c.password_env.as_ref().map(|s| s.val.clone()),
    })
}

/// One VM's `host` and `placement`, checked against the declared hosts.
fn vm_place(
    vm: &RawVm,
    hosts: &[&RawHost],
    sink: &mut Sink,
) -> (Option<String>, Option<PlacementSpec>) {
    if let (Some(h), Some(p)) = (&vm.host, &vm.placement) {
        sink.push(
            Diag::error(
                "vmctl::spec::host-and-placement",
                format!("VM `{}` is both pinned and placed", vm.name.val),
            )
            .label(h.span, "pinned here")
            .label(p.span, "placement rules here")
            .help("a pinned VM ignores placement: keep `host` or `placement`, not both"),
        );
        return (None, None);
    }
    if hosts.is_empty() {
        let span = match (&vm.host, &vm.placement) {
            (Some(h), _) => h.span,
            (None, Some(p)) => p.span,
            (None, None) => return (None, None),
        };
        sink.push(
            Diag::error(
                "vmctl::spec::no-hosts",
                format!(
                    "VM `{}` says where to run, but this file declares no hosts",
                    vm.name.val
                ),
            )
            .label(span, "no host to choose from")
            .help(
                "without `host` nodes every VM runs on this machine: remove this, or declare \
                 the hosts: host \"h1\" { ssh \"root@10.0.0.11\" } (docs/scale-out.md)",
            ),
        );
        return (None, None);
    }
    if let Some(h) = &vm.host {
        if hosts.iter().any(|x| x.name.val == h.val) {
            return (Some(h.val.clone()), None);
        }
        let names: Vec<&str> = hosts.iter().map(|x| x.name.val.as_str()).collect();
        let help = match did_you_mean(&h.val, names.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("hosts in this file: {}", quoted(&names)),
        };
        sink.push(
            Diag::error(
                "vmctl::spec::unknown-host",
                format!(
                    "VM `{}` is pinned to host `{}`, which does not exist",
                    vm.name.val, h.val
                ),
            )
            .label(h.span, "no host of this name")
            .help(help),
        );
        return (None, None);
    }
    let Some(p) = &vm.placement else {
        return (None, None);
    };
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = hosts
            .iter()
            .flat_map(|h| h.labels.keys().map(String::as_str))
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let mut ok = true;
    if let Some(s) = &p.spread
        && !keys.contains(&s.val.as_str())
    {
        ok = false;
        sink.push(
            Diag::error(
                "vmctl::spec::unknown-spread-label",
                format!("no host has a label `{}` to spread over", s.val),
            )
            .label(s.span, "no host has this label")
            .help(label_help(&s.val, &keys)),
        );
    }
    if !p.labels.is_empty() {
        let matches = |h: &&RawHost| {
            p.labels
                .iter()
                .all(|(k, (v, _))| h.labels.get(k).is_some_and(|(hv, _)| hv == v))
        };
        if !hosts.iter().any(matches) {
            ok = false;
            let (key, (_, span)) = p
                .labels
                .iter()
                .find(|(k, (v, _))| {
                    !hosts
                        .iter()
                        .any(|h| h.labels.get(*k).is_some_and(|(hv, _)| hv == v))
                })
                .or_else(|| p.labels.iter().next())
                .map(|(k, v)| (k.as_str(), v.clone()))
                .unwrap_or(("", (String::new(), p.span)));
            let wanted: Vec<String> = p
                .labels
                .iter()
                .map(|(k, (v, _))| format!("{k}=\"{v}\""))
                .collect();
            let help = if keys.contains(&key) {
                let values: Vec<String> = {
                    let mut v: Vec<String> = hosts
                        .iter()
                        .filter_map(|h| h.labels.get(key).map(|(v, _)| format!("\"{v}\"")))
                        .collect();
                    v.sort();
                    v.dedup();
                    v
                };
                format!(
                    "the hosts' values of `{key}`: {}; placement only picks hosts carrying every label it names",
                    values.join(", ")
                )
            } else {
                label_help(key, &keys)
            };
            sink.push(
                Diag::error(
                    "vmctl::spec::no-matching-host",
                    format!(
                        "no host carries all of {} for VM `{}`",
                        wanted.join(" "),
                        vm.name.val
                    ),
                )
                .label(span, "no host matches")
                .help(help),
            );
        }
    }
    let spec = PlacementSpec {
        spread: p.spread.as_ref().map(|s| s.val.clone()),
        labels: p
            .labels
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    };
    (None, ok.then_some(spec))
}

fn label_help(key: &str, keys: &[&str]) -> String {
    match did_you_mean(key, keys.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None if keys.is_empty() => {
            "no host has labels: add some, e.g. labels rack=\"a\" inside a `host`".to_string()
        }
        None => format!("the hosts' labels: {}", quoted(keys)),
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
