//! `cluster`, `host`, and a VM's `host`/`placement` (issue 18): how they
//! resolve, that they render and format back, and every diagnostic as a
//! user sees it.

#[macro_use]
mod common;

use common::{errors_of, parse};
use vmctl_spec::{DesiredState, StateBackend};

const LAB: &str = r#"cluster "lab" {
    state "etcd" endpoints="http://127.0.0.1:2379,http://127.0.0.1:22379" lock-ttl="20s" ca="pki/ca.pem" cert="pki/c.pem" key="pki/c-key.pem" user="vmctl" password-env="ETCD_PASSWORD"
}
host "h1" {
    ssh "root@10.0.0.11"
    labels rack="a" zone="x"
    reserve memory="2GiB" cpus=1
}
host "h2" {
    ssh "root@10.0.0.12"
    labels rack="b"
    drain #true
    vmctl "/usr/local/bin/vmctl"
    state-dir "/srv/vmctl"
}
vm "db" {
    os "diag"
    host "h1"
}
vm "web" {
    os "diag"
    depends-on "db"
    placement {
        spread "rack"
        labels zone="x"
    }
}
vm "plain" {
    os "diag"
}
"#;

fn ok(text: &str) -> DesiredState {
    match parse("hosts.kdl", text) {
        Ok(l) => l.state,
        Err(e) => panic!("{}", common::render_all(&e)),
    }
}

/// Assert the codes and snapshot the rendering.
fn check(name: &str, text: &str, codes: &[&str]) {
    let (got, rendered) = errors_of(&format!("{name}.kdl"), text);
    assert_eq!(got, codes, "{rendered}");
    snap!(format!("diag_{name}"), rendered);
}

#[test]
fn a_lab_over_hosts_resolves() {
    let s = ok(LAB);
    let c = s.cluster.as_ref().expect("cluster");
    assert_eq!(c.state, StateBackend::Etcd);
    assert_eq!(c.endpoints.len(), 2);
    assert_eq!(c.lock_ttl_secs, 20);
    assert_eq!(
        c.ca.as_deref(),
        Some(std::path::Path::new("/lab/pki/ca.pem"))
    );
    let h1 = s.host("h1").expect("h1");
    assert_eq!(h1.reserve.memory_mib, 2048);
    assert_eq!(h1.reserve.cpus, 1);
    assert_eq!(h1.vmctl, "vmctl", "default: vmctl on the host's PATH");
    assert_eq!(h1.state_dir, "/var/lib/vmctl/lab", "default: per cluster");
    assert!(!h1.drain);
    let h2 = s.host("h2").expect("h2");
    assert!(h2.drain);
    assert_eq!(h2.state_dir, "/srv/vmctl");
    assert_eq!(s.vm("db").and_then(|v| v.host.as_deref()), Some("h1"));
    let web = s.vm("web").expect("web");
    let p = web.placement.as_ref().expect("placement");
    assert_eq!(p.spread.as_deref(), Some("rack"));
    assert_eq!(p.labels.get("zone").map(String::as_str), Some("x"));
    assert!(
        s.vm("plain")
            .is_some_and(|v| v.host.is_none() && v.placement.is_none())
    );
    snap!(
        "resolved_hosts",
        serde_json::to_string_pretty(&s).expect("json")
    );
}

#[test]
fn defaults_without_options() {
    let s = ok(
        "cluster \"c\" {\n    state \"etcd\" endpoints=\"http://127.0.0.1:2379\"\n}\nhost \"h\" {\n    ssh \"h\"\n}\n",
    );
    let c = s.cluster.as_ref().expect("cluster");
    assert_eq!(c.lock_ttl_secs, vmctl_spec::DEFAULT_LOCK_TTL_SECS);
    assert!(c.ca.is_none() && c.cert.is_none() && c.user.is_none());
    let h = &s.hosts[0];
    assert_eq!(h.reserve, vmctl_spec::Reserve::default());
    assert!(h.labels.is_empty());
    // A host without labels and a VM without host/placement: nothing extra
    // in the JSON but the hosts themselves.
    let json = serde_json::to_value(&s).expect("json");
    assert!(json["hosts"][0].get("labels").is_none(), "{json}");
}

#[test]
fn a_file_without_hosts_has_no_new_keys() {
    let s = ok("vm \"a\" {\n    os \"diag\"\n}\n");
    assert!(s.cluster.is_none() && s.hosts.is_empty());
    let json = serde_json::to_value(&s).expect("json");
    assert!(json.get("cluster").is_none() && json.get("hosts").is_none());
    assert!(json["vms"][0].get("host").is_none());
    assert!(json["vms"][0].get("placement").is_none());
}

#[test]
fn render_parses_back_to_the_same_state() {
    let s = ok(LAB);
    let text = vmctl_spec::to_kdl(&s);
    let back = ok(&text);
    assert_eq!(back, s, "{text}");
}

#[test]
fn fmt_keeps_the_new_nodes_canonical() {
    let messy = "cluster \"lab\" { state \"etcd\" endpoints=\"http://127.0.0.1:2379\" lock-ttl=\"15s\" }\n\n\nhost \"h1\" { ssh \"root@10.0.0.11\"; labels rack=a;   reserve memory=\"2048MiB\" cpus=1; drain #true }\nvm \"web\" { os diag; placement { spread \"rack\"; labels rack=\"a\" } }\nvm \"db\" {   host h1 }\n";
    let out = vmctl_spec::fmt::format(messy).expect("formats");
    assert_eq!(
        vmctl_spec::fmt::format(&out).expect("formats"),
        out,
        "idempotent"
    );
    snap!("fmt_hosts", out);
}

#[test]
fn depends_on_across_hosts_is_allowed() {
    let s = ok(
        "cluster \"c\" {\n    state \"etcd\" endpoints=\"http://127.0.0.1:2379\"\n}\nhost \"h1\" {\n    ssh \"a\"\n}\nhost \"h2\" {\n    ssh \"b\"\n}\nvm \"db\" {\n    os \"diag\"\n    host \"h1\"\n}\nvm \"web\" {\n    os \"diag\"\n    host \"h2\"\n    depends-on \"db\"\n}\n",
    );
    assert_eq!(
        s.vm("web").map(|v| v.depends_on.clone()),
        Some(vec!["db".to_string()])
    );
}

const CLUSTER: &str =
    "cluster \"lab\" {\n    state \"etcd\" endpoints=\"http://127.0.0.1:2379\"\n}\n";
const HOSTS: &str = "host \"h1\" {\n    ssh \"root@10.0.0.11\"\n    labels rack=\"a\"\n}\nhost \"h2\" {\n    ssh \"root@10.0.0.12\"\n    labels rack=\"b\"\n}\n";

#[test]
fn unknown_host_did_you_mean() {
    check(
        "unknown_host",
        &format!(
            "{CLUSTER}{HOSTS}vm \"db\" {{\n    os \"diag\"\n    host \"h3\"\n}}\nvm \"web\" {{\n    os \"diag\"\n    host \"web1\"\n}}\n"
        ),
        &["vmctl::spec::unknown-host", "vmctl::spec::unknown-host"],
    );
}

#[test]
fn duplicate_host_points_at_both() {
    check(
        "duplicate_host",
        &format!("{CLUSTER}{HOSTS}host \"h1\" {{\n    ssh \"root@10.0.0.13\"\n}}\n"),
        &["vmctl::spec::duplicate-host"],
    );
}

#[test]
fn host_and_placement_without_hosts() {
    check(
        "no_hosts",
        "vm \"db\" {\n    os \"diag\"\n    host \"h1\"\n}\nvm \"web\" {\n    os \"diag\"\n    placement {\n        spread \"rack\"\n    }\n}\n",
        &["vmctl::spec::no-hosts", "vmctl::spec::no-hosts"],
    );
}

#[test]
fn hosts_need_a_cluster() {
    check(
        "hosts_without_cluster",
        &format!("{HOSTS}vm \"db\" {{\n    os \"diag\"\n}}\n"),
        &["vmctl::spec::hosts-without-cluster"],
    );
}

#[test]
fn only_etcd_is_a_state_store() {
    check(
        "unknown_state_backend",
        "cluster \"lab\" {\n    state \"etdc\" endpoints=\"http://127.0.0.1:2379\"\n}\n",
        &["vmctl::spec::unknown-state-backend"],
    );
}

#[test]
fn bad_lock_ttls() {
    check(
        "bad_lock_ttl",
        "cluster \"lab\" {\n    state \"etcd\" endpoints=\"http://127.0.0.1:2379\" lock-ttl=\"15\"\n}\ncluster \"lab2\" {\n    state \"etcd\" endpoints=\"http://127.0.0.1:2379\" lock-ttl=\"1s\"\n}\n",
        &[
            "vmctl::spec::bad-lock-ttl",
            "vmctl::spec::duplicate-field",
            "vmctl::spec::bad-lock-ttl",
        ],
    );
}

#[test]
fn spread_over_a_label_no_host_has() {
    check(
        "unknown_spread_label",
        &format!(
            "{CLUSTER}{HOSTS}vm \"web\" {{\n    os \"diag\"\n    placement {{\n        spread \"rakc\"\n    }}\n}}\n"
        ),
        &["vmctl::spec::unknown-spread-label"],
    );
}

#[test]
fn placement_labels_no_host_matches() {
    check(
        "no_matching_host",
        &format!(
            "{CLUSTER}{HOSTS}vm \"web\" {{\n    os \"diag\"\n    placement {{\n        labels rack=\"c\"\n    }}\n}}\n"
        ),
        &["vmctl::spec::no-matching-host"],
    );
}

#[test]
fn pinned_and_placed() {
    check(
        "host_and_placement",
        &format!(
            "{CLUSTER}{HOSTS}vm \"web\" {{\n    os \"diag\"\n    host \"h1\"\n    placement {{\n        spread \"rack\"\n    }}\n}}\n"
        ),
        &["vmctl::spec::host-and-placement"],
    );
}

#[test]
fn bad_cluster_and_host_values() {
    check(
        "host_bad_values",
        "cluster \"lab\" {\n    state \"etcd\" endpoints=\"127.0.0.1:2379\" cert=\"c.pem\" user=\"u\" password-env=\"ETCD PASSWORD\"\n}\nhost \"h1\" {\n    ssh \"-oProxyCommand=evil\"\n    state-dir \"vmctl\"\n    vmctl \"bin/vmctl\"\n}\nhost \"H_2\" {\n    ssh \"b\"\n}\nhost \"h3\" {\n    labels rack=\"a\"\n}\n",
        &[
            "vmctl::spec::bad-endpoint",
            "vmctl::spec::bad-cluster-tls",
            "vmctl::spec::bad-cluster-auth",
            "vmctl::spec::bad-ssh-target",
            "vmctl::spec::bad-host-path",
            "vmctl::spec::bad-host-path",
            "vmctl::spec::bad-host-name",
            "vmctl::spec::missing-value",
        ],
    );
}

// --- property: a lab over hosts renders and parses back ------------------

mod generate {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use proptest::prelude::*;
    use vmctl_spec::{ClusterSpec, DesiredState, HostSpec, PlacementSpec, Reserve, StateBackend};

    use super::common::states::{state, vm_name};

    fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map("[a-z][a-z0-9-]{0,5}", "[ -~]{0,6}", 0..3)
    }

    fn host() -> impl Strategy<Value = HostSpec> {
        (
            vm_name(),
            "[a-z]{1,6}@[a-z0-9.]{1,10}",
            labels(),
            (0u64..65536, 0u32..8),
            any::<bool>(),
            prop_oneof![Just("vmctl".to_string()), "(/[a-z]{1,5}){1,3}"],
            "(/[a-z]{1,5}){1,3}",
        )
            .prop_map(
                |(name, ssh, labels, (mib, cpus), drain, vmctl, state_dir)| HostSpec {
                    name,
                    ssh,
                    labels,
                    reserve: Reserve {
                        memory_mib: mib,
                        cpus,
                    },
                    drain,
                    vmctl,
                    state_dir,
                },
            )
    }

    fn cluster() -> impl Strategy<Value = ClusterSpec> {
        (
            vm_name(),
            proptest::collection::vec(1u16..65535, 1..4),
            2u64..=3600,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(name, ports, ttl, tls, auth)| ClusterSpec {
                name,
                state: StateBackend::Etcd,
                endpoints: ports
                    .iter()
                    .map(|p| format!("http://127.0.0.1:{p}"))
                    .collect(),
                lock_ttl_secs: ttl,
                ca: tls.then(|| PathBuf::from("/pki/ca.pem")),
                cert: tls.then(|| PathBuf::from("/pki/c.pem")),
                key: tls.then(|| PathBuf::from("/pki/c-key.pem")),
                user: auth.then(|| "vmctl".to_string()),
                password_env: auth.then(|| "ETCD_PASSWORD".to_string()),
            })
    }

    /// A valid single-host state, given a cluster, hosts with unique names,
    /// and per VM a pin or placement rules that some host satisfies.
    pub fn hosted() -> impl Strategy<Value = DesiredState> {
        (
            state(),
            cluster(),
            proptest::collection::vec(host(), 1..4),
            proptest::collection::vec((0u8..3, any::<usize>(), any::<bool>()), 6),
        )
            .prop_map(|(mut s, cluster, mut hosts, picks)| {
                let mut seen = std::collections::BTreeSet::new();
                hosts.retain(|h| seen.insert(h.name.clone()));
                for (vm, (how, pick, lab)) in s.vms.iter_mut().zip(picks) {
                    let h = &hosts[pick % hosts.len()];
                    match how {
                        1 => vm.host = Some(h.name.clone()),
                        2 => {
                            vm.placement = Some(PlacementSpec {
                                spread: h.labels.keys().next().cloned(),
                                labels: if lab {
                                    h.labels.clone()
                                } else {
                                    BTreeMap::new()
                                },
                            })
                        }
                        _ => {}
                    }
                }
                s.cluster = Some(cluster);
                s.hosts = hosts;
                s
            })
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    #[test]
    fn a_lab_over_hosts_renders_and_parses_back(s in generate::hosted()) {
        let text = vmctl_spec::to_kdl(&s);
        let loaded = vmctl_spec::parse_str("gen.kdl", &text, std::path::Path::new("/base"), u32::MAX)
            .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{}\n{text}", common::render_all(&e))))?;
        proptest::prop_assert_eq!(&loaded.state, &s, "{}", text);
        let json = serde_json::to_string(&loaded.state).unwrap();
        let back: DesiredState = serde_json::from_str(&json).unwrap();
        proptest::prop_assert_eq!(back, s);
        let formatted = vmctl_spec::fmt::format(&text).unwrap();
        let again = vmctl_spec::parse_str("gen.kdl", &formatted, std::path::Path::new("/base"), u32::MAX)
            .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{}\n{formatted}", common::render_all(&e))))?;
        proptest::prop_assert_eq!(again.state, loaded.state);
    }
}
