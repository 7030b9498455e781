//! Plans of labs over several hosts (issue 18): every VM action carries
//! its placed host, one DAG spans the hosts, a move and a VM that fits
//! nowhere are refused entries with the reason, and a converged lab plans
//! nothing. Text and JSON as insta snapshots (snapshots/planner/hosts_*).

mod common;

use std::collections::BTreeMap;

use common::*;
use vmctl_planner::{
    ActionKind, Capabilities, HostCapacity, HostState, ObservedState, Plan, RunState, place,
    plan_on_hosts, render,
};
use vmctl_spec::{DesiredState, HostSpec, PlacementSpec, Reserve, VmSpec};

fn snap(name: &str, p: &Plan) {
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/planner"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(format!("{name}_text"), render::text(p));
        insta::assert_json_snapshot!(format!("{name}_json"), render::json(p));
        insta::assert_snapshot!(format!("{name}_markdown"), vmctl_planner::markdown::markdown(p));
    });
}

fn host_spec(name: &str, rack: &str) -> HostSpec {
    HostSpec {
        name: name.into(),
        ssh: format!("root@{name}"),
        labels: [("rack".to_string(), rack.to_string())].into(),
        reserve: Reserve {
            memory_mib: 1024,
            cpus: 0,
        },
        drain: false,
        vmctl: "vmctl".into(),
        state_dir: "/var/lib/vmctl/lab".into(),
    }
}

fn lab(vms: Vec<VmSpec>) -> DesiredState {
    DesiredState {
        hosts: vec![
            host_spec("h1", "a"),
            host_spec("h2", "b"),
            host_spec("h3", "a"),
        ],
        ..desired(vms)
    }
}

fn hosts(d: &DesiredState, gib: &[(&str, u64)]) -> Vec<HostState> {
    d.hosts
        .iter()
        .map(|h| {
            let cap = gib
                .iter()
                .find(|(n, _)| *n == h.name)
                .map(|(_, g)| HostCapacity {
                    memory_mib: g * 1024,
                    cpus: 4,
                });
            HostState::new(h, cap)
        })
        .collect()
}

fn three_tier() -> DesiredState {
    let db = VmSpec {
        host: Some("h1".into()),
        memory_mib: 2048,
        max_memory_mib: 2048,
        ..vm("db")
    };
    let web = |n: &str| VmSpec {
        depends_on: vec!["db".into()],
        placement: Some(PlacementSpec {
            spread: Some("rack".into()),
            labels: BTreeMap::new(),
        }),
        ..vm(n)
    };
    lab(vec![db, web("web1"), web("web2")])
}

#[test]
fn a_fresh_lab_over_three_hosts() {
    let d = three_tier();
    let h = hosts(&d, &[("h1", 8), ("h2", 8), ("h3", 4)]);
    let p = place(&h, &d.vms, &BTreeMap::new());
    assert!(p.is_ok(), "{:?}", p.errors);
    let plan = plan_on_hosts(&d, &ObservedState::new(), &Capabilities::all(), &p).unwrap();
    let on: Vec<(&str, Option<&str>)> = plan
        .actions
        .iter()
        .map(|a| (a.id.as_str(), a.host.as_deref()))
        .collect();
    // db pinned to h1 (it does not spread, so it is not counted in the
    // webs' group); web1 (same size, name first) goes by best fit to h3,
    // the tightest host; web2 then to rack b, which has none of the group.
    assert_eq!(
        on,
        [
            ("db:create", Some("h1")),
            ("web1:create", Some("h3")),
            ("web2:create", Some("h2")),
        ]
    );
    snap("hosts_fresh", &plan);
}

#[test]
fn a_converged_lab_plans_nothing() {
    let d = three_tier();
    let h = hosts(&d, &[("h1", 8), ("h2", 8), ("h3", 4)]);
    let first = place(&h, &d.vms, &BTreeMap::new());
    let o = converged(&d);
    let again = place(&h, &d.vms, &first.hosts);
    assert_eq!(again.hosts, first.hosts);
    let plan = plan_on_hosts(&d, &o, &Capabilities::all(), &again).unwrap();
    assert!(plan.actions.is_empty(), "{}", render::text(&plan));
}

#[test]
fn moves_and_misfits_are_refused_with_their_reasons() {
    let mut d = three_tier();
    // db is now pinned to h2 but lives on h1; "big" fits nowhere.
    d.vms[0].host = Some("h2".into());
    d.vms.push(VmSpec {
        memory_mib: 16384,
        max_memory_mib: 16384,
        ..vm("big")
    });
    let h = hosts(&d, &[("h1", 8), ("h2", 8)]);
    let current: BTreeMap<String, String> = [
        ("db".to_string(), "h1".to_string()),
        ("web1".to_string(), "h2".to_string()),
        ("web2".to_string(), "h3".to_string()),
        ("old".to_string(), "h3".to_string()),
    ]
    .into();
    let mut o = ObservedState::new();
    for s in &d.vms[..3] {
        o.insert(observed_vm(s, RunState::Running));
    }
    o.insert(observed_vm(&vm("old"), RunState::Running));
    let p = place(&h, &d.vms, &current);
    let plan = plan_on_hosts(&d, &o, &Capabilities::all(), &p).unwrap();
    let kinds: Vec<(&str, ActionKind, bool, Option<&str>)> = plan
        .actions
        .iter()
        .map(|a| (a.vm.as_str(), a.kind, a.is_refused(), a.host.as_deref()))
        .collect();
    assert!(kinds.contains(&("old", ActionKind::Destroy, false, Some("h3"))));
    assert!(kinds.contains(&("db", ActionKind::Move, true, Some("h1"))));
    assert!(kinds.contains(&("big", ActionKind::Create, true, None)));
    assert!(
        !kinds.iter().any(|k| k.0 == "db" && !k.2),
        "db is not recreated: {kinds:?}"
    );
    snap("hosts_move_and_misfit", &plan);
}
