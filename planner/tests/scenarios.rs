//! Plans for typical situations, as insta snapshots of the text AND the JSON
//! output (snapshots/planner/).

mod common;

use common::*;
use vmctl_planner::{ActionKind, Capabilities, ObservedState, Plan, RunState, plan, render};
use vmctl_spec::DesiredState;

fn snap(name: &str, d: &DesiredState, o: &ObservedState, caps: Capabilities) -> Plan {
    let p = plan(d, o, &caps).unwrap();
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/planner"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(format!("{name}_text"), render::text(&p));
        insta::assert_json_snapshot!(format!("{name}_json"), render::json(&p));
    });
    p
}

/// The markdown (PR comment) rendering of a scenario's plan.
fn snap_markdown(name: &str, p: &Plan) {
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/planner"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(format!("{name}_markdown"), vmctl_planner::markdown::markdown(p));
    });
}

fn all() -> Capabilities {
    Capabilities::all()
}

/// A runtime that cannot copy a running VM: the plan stops the source.
fn stopping_copy() -> Capabilities {
    Capabilities {
        live_copy: false,
        ..Capabilities::all()
    }
}

fn lab() -> DesiredState {
    let db = debian("db");
    let web = vmctl_spec::VmSpec {
        depends_on: vec!["db".into()],
        ..vm("web")
    };
    let web2 = vmctl_spec::VmSpec {
        copy_from: Some("web".into()),
        memory_mib: 256,
        max_memory_mib: 256,
        ..web.clone()
    };
    let web2 = vmctl_spec::VmSpec {
        name: "web-2".into(),
        ..web2
    };
    desired(vec![db, web, web2])
}

#[test]
fn fresh_lab() {
    let p = snap("fresh_lab", &lab(), &ObservedState::new(), stopping_copy());
    snap_markdown("fresh_lab", &p);
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "db:create",
            "web:create",
            "web:stop-for-copy",
            "web-2:copy",
            "web:start-after-copy"
        ]
    );
}

#[test]
fn a_live_copy_does_not_stop_its_running_source() {
    let p = plan(&lab(), &ObservedState::new(), &all()).unwrap();
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["db:create", "web:create", "web-2:copy"]);
    let copy = &p.actions[2];
    assert!(copy.depends_on.contains(&"web:create".to_string()));
    assert!(p.actions.iter().all(|a| a.kind != ActionKind::Stop));
}

#[test]
fn no_op() {
    let d = lab();
    let p = snap("no_op", &d, &converged(&d), all());
    snap_markdown("no_op", &p);
    assert!(p.actions.is_empty());
}

#[test]
fn hot_add_memory_within_max() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        memory_mib: 2048,
        ..old.clone()
    };
    snap(
        "hot_add_memory",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
}

#[test]
fn cpus_down_within_max_is_a_live_hot_remove() {
    let old = vmctl_spec::VmSpec {
        cpus: 3,
        ..debian("db")
    };
    let new = vmctl_spec::VmSpec {
        cpus: 1,
        ..old.clone()
    };
    let p = snap(
        "cpus_hot_remove",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    assert_eq!(p.actions.len(), 1);
    assert_eq!(p.actions[0].kind.label(), "hot-remove-cpu");
}

#[test]
fn memory_up_not_in_128_mib_steps_restarts() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        memory_mib: 1024 + 300,
        ..old.clone()
    };
    let p = snap(
        "memory_not_in_steps",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    assert!(
        p.actions[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("hot-add needs 128 MiB steps: restart"),
        "{:?}",
        p.actions[0].reason
    );
}

#[test]
fn memory_beyond_max_restarts() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        memory_mib: 8192,
        max_memory_mib: 8192,
        ..old.clone()
    };
    let p = snap(
        "memory_beyond_max",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    assert!(
        p.actions[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("memory 1 GiB → 8 GiB exceeds hot-add max 4 GiB: restart")
    );
}

#[test]
fn runtime_without_hot_add() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        memory_mib: 2048,
        cpus: 3,
        ..old.clone()
    };
    let p = snap(
        "without_hot_add",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        Capabilities::none(),
    );
    assert_eq!(p.actions.len(), 1);
    assert!(
        p.actions[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("runtime cannot hot-add memory: restart")
    );
}

#[test]
fn runtime_with_hot_add_cpu_and_disk_grow() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        cpus: 4,
        disks: vec![disk("root", 20 * GIB)],
        cpu_weight: 200,
        ..old.clone()
    };
    let p = snap(
        "live_updates",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        ["db:hot-add-cpu", "db:resize-disk:root", "db:set-cpu-weight"]
    );
}

#[test]
fn cpus_down_and_max_change_restart() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        cpus: 1,
        max_cpus: 8,
        ..old.clone()
    };
    snap(
        "cpus_down_restart",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
}

#[test]
fn refused_disk_shrink() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        disks: vec![disk("root", 5 * GIB)],
        memory_mib: 2048,
        ..old.clone()
    };
    let p = snap(
        "refused_shrink",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    let s = p.summary();
    assert_eq!((s.refused, s.update_live), (1, 1));
    snap_markdown("refused_shrink", &p);
}

#[test]
fn os_change_replaces() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        os: "diag".into(),
        ..old.clone()
    };
    let p = snap(
        "os_replace",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    assert!(
        p.actions[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("destroys the VM's disks")
    );
    snap_markdown("os_replace", &p);
}

#[test]
fn crashed_vm_is_started() {
    let s = vm("web");
    snap(
        "crashed",
        &desired(vec![s.clone()]),
        &observed(&[(&s, RunState::Crashed)]),
        all(),
    );
}

#[test]
fn stopped_vm_should_run_and_autostart_false_stops() {
    let a = vm("a");
    let b = vm("b");
    let b2 = vmctl_spec::VmSpec {
        autostart: false,
        ..b.clone()
    };
    snap(
        "start_and_stop",
        &desired(vec![a.clone(), b2]),
        &observed(&[(&a, RunState::Stopped), (&b, RunState::Running)]),
        all(),
    );
}

#[test]
fn vm_gone_from_file_is_destroyed_in_reverse_dependency_order() {
    let db = debian("db");
    let web = vmctl_spec::VmSpec {
        depends_on: vec!["db".into()],
        ..vm("web")
    };
    let p = snap(
        "destroy_reverse",
        &desired(vec![]),
        &observed(&[(&db, RunState::Running), (&web, RunState::Running)]),
        all(),
    );
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["web:destroy", "db:destroy"]);
}

#[test]
fn dependency_chain_starts_in_order_and_stops_in_reverse() {
    let a = vm("a");
    let b = vmctl_spec::VmSpec {
        depends_on: vec!["a".into()],
        ..vm("b")
    };
    let c = vmctl_spec::VmSpec {
        depends_on: vec!["b".into()],
        ..vm("c")
    };
    // Declared in reverse order to prove the graph, not the file, orders.
    let p = snap(
        "dependency_chain",
        &desired(vec![c.clone(), b.clone(), a.clone()]),
        &ObservedState::new(),
        all(),
    );
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["a:create", "b:create", "c:create"]);

    let stop = |s: &vmctl_spec::VmSpec| vmctl_spec::VmSpec {
        autostart: false,
        ..s.clone()
    };
    let p = snap(
        "dependency_chain_stop",
        &desired(vec![stop(&a), stop(&b), stop(&c)]),
        &observed(&[
            (&a, RunState::Running),
            (&b, RunState::Running),
            (&c, RunState::Running),
        ]),
        all(),
    );
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["c:stop", "b:stop", "a:stop"]);
}

#[test]
fn restarting_a_dependency_does_not_restart_dependents() {
    let db = debian("db");
    let web = vmctl_spec::VmSpec {
        depends_on: vec!["db".into()],
        ..vm("web")
    };
    let db2 = vmctl_spec::VmSpec {
        max_cpus: 8,
        ..db.clone()
    };
    let p = snap(
        "dependency_restart",
        &desired(vec![db2, web.clone()]),
        &observed(&[(&db, RunState::Running), (&web, RunState::Running)]),
        all(),
    );
    assert_eq!(p.actions.len(), 1);
}

#[test]
fn copy_chain() {
    let base = debian("base");
    let mid = vmctl_spec::VmSpec {
        copy_from: Some("base".into()),
        ..debian("mid")
    };
    let leaf = vmctl_spec::VmSpec {
        copy_from: Some("mid".into()),
        ..debian("leaf")
    };
    let p = snap(
        "copy_chain",
        &desired(vec![base.clone(), mid, leaf]),
        &observed(&[(&base, RunState::Running)]),
        stopping_copy(),
    );
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "base:stop-for-copy",
            "mid:copy",
            "base:start-after-copy",
            "mid:stop-for-copy",
            "leaf:copy",
            "mid:start-after-copy"
        ]
    );
}

#[test]
fn copy_refused_without_capability() {
    let d = lab();
    let p = snap(
        "copy_refused",
        &d,
        &ObservedState::new(),
        Capabilities {
            copy: false,
            ..Capabilities::all()
        },
    );
    let refused: Vec<_> = p.actions.iter().filter(|a| a.is_refused()).collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("runtime cannot copy VMs")
    );
    snap_markdown("copy_refused", &p);
}

#[test]
fn mixed_changes() {
    let db = debian("db");
    let web = vmctl_spec::VmSpec {
        depends_on: vec!["db".into()],
        ..vm("web")
    };
    let old = vm("old");
    let cache = vm("cache");
    let db2 = vmctl_spec::VmSpec {
        memory_mib: 2048,
        ..db.clone()
    };
    let web2 = vmctl_spec::VmSpec {
        memory_mib: 512,
        max_memory_mib: 512,
        ..web.clone()
    };
    let new = vmctl_spec::VmSpec {
        depends_on: vec!["web".into()],
        ..vm("new")
    };
    let p = snap(
        "mixed",
        &desired(vec![db2, web2, cache.clone(), new]),
        &observed(&[
            (&db, RunState::Running),
            (&web, RunState::Running),
            (&old, RunState::Running),
            (&cache, RunState::Crashed),
        ]),
        all(),
    );
    snap_markdown("mixed", &p);
    // The PR comment puts what goes down first: the destroy, then the
    // restart, then the rest in plan order.
    let md = vmctl_planner::markdown::markdown(&p);
    let row = |s: &str| md.find(s).unwrap_or(usize::MAX);
    assert!(row("| `-` | `old` |") < row("| `~!` | `web` |"), "{md}");
    assert!(row("| `~!` | `web` |") < row("| `~` | `db` |"), "{md}");
}

#[test]
fn disk_added_and_stopped_vm_reconfigured() {
    let old = debian("db");
    let new = vmctl_spec::VmSpec {
        disks: vec![disk("root", 10 * GIB), disk("data", 100 * GIB)],
        autostart: false,
        ..old.clone()
    };
    snap(
        "disk_added_stopped",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Stopped)]),
        all(),
    );
}

#[test]
fn dependency_cycle_is_rejected_with_its_name() {
    let a = vmctl_spec::VmSpec {
        depends_on: vec!["b".into()],
        ..vm("a")
    };
    let b = vmctl_spec::VmSpec {
        depends_on: vec!["a".into()],
        ..vm("b")
    };
    let err = plan(&desired(vec![a, b]), &ObservedState::new(), &all()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cycle"), "{msg}");
    assert!(
        msg.contains("a:create") && msg.contains("b:create"),
        "{msg}"
    );
}

#[test]
fn every_restart_replace_and_refusal_has_a_reason() {
    for (d, o) in [(lab(), ObservedState::new())] {
        let p = plan(&d, &o, &all()).unwrap();
        for a in &p.actions {
            if matches!(
                a.disruption,
                vmctl_planner::Disruption::Restart
                    | vmctl_planner::Disruption::Replace
                    | vmctl_planner::Disruption::Refused
            ) {
                assert!(a.reason.is_some(), "{}", a.id);
            }
        }
    }
}

#[test]
fn copy_that_needs_a_dependent_of_its_source_is_not_a_cycle() {
    // b depends on a; c copies a but depends on b: b must start before c is
    // copied, so b cannot wait for a's start after the copy.
    let a = vm("a");
    let b = vmctl_spec::VmSpec {
        depends_on: vec!["a".into()],
        ..vm("b")
    };
    let c = vmctl_spec::VmSpec {
        depends_on: vec!["b".into()],
        copy_from: Some("a".into()),
        ..vm("c")
    };
    let p = plan(
        &desired(vec![a, b, c]),
        &ObservedState::new(),
        &stopping_copy(),
    )
    .unwrap();
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "a:create",
            "b:create",
            "a:stop-for-copy",
            "c:copy",
            "a:start-after-copy"
        ]
    );
}

fn with_guest(name: &str) -> vmctl_spec::VmSpec {
    vmctl_spec::VmSpec {
        packages: vec!["curl".into(), "vim".into()],
        config: vmctl_spec::GuestConfig {
            hostname: None,
            users: vec![vmctl_spec::UserSpec {
                name: "alice".into(),
                ssh_keys: vec!["ssh-ed25519 AAAAC3Nz... alice@laptop".into()],
                sudo: false,
            }],
            files: vec![vmctl_spec::FileSpec {
                path: "/etc/motd".into(),
                content: "lab 3\n".into(),
                mode: 0o644,
            }],
        },
        ..debian(name)
    }
}

#[test]
fn package_change_replaces_and_names_the_packages() {
    let old = with_guest("web");
    let new = vmctl_spec::VmSpec {
        packages: vec!["nginx".into(), "vim".into()],
        // A guest-configuration change rides along in the same replace.
        config: vmctl_spec::GuestConfig {
            hostname: Some("www".into()),
            ..old.config.clone()
        },
        ..old.clone()
    };
    let p = snap(
        "packages_replace",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    assert_eq!(p.actions.len(), 1);
    assert_eq!(p.actions[0].kind, vmctl_planner::ActionKind::Replace);
    let reason = p.actions[0].reason.as_deref().unwrap();
    assert!(
        reason
            .starts_with("packages + nginx − curl: the image is rebuilt, the root disk recreated"),
        "{reason}"
    );
}

#[test]
fn guest_config_change_restarts() {
    let old = with_guest("web");
    let mut new = old.clone();
    new.config.hostname = Some("www".into());
    new.config.users[0].sudo = true;
    new.config.users.push(vmctl_spec::UserSpec {
        name: "bob".into(),
        ssh_keys: vec![],
        sudo: false,
    });
    new.config.files[0].mode = 0o600;
    // A stopped VM only gets its new configuration written.
    let stopped = vmctl_spec::VmSpec {
        name: "db".into(),
        config: vmctl_spec::GuestConfig {
            files: vec![],
            ..new.config.clone()
        },
        ..with_guest("db")
    };
    let p = snap(
        "guest_config_restart",
        &desired(vec![new, stopped]),
        &observed(&[
            (&old, RunState::Running),
            (&with_guest("db"), RunState::Stopped),
        ]),
        all(),
    );
    let kinds: Vec<_> = p
        .actions
        .iter()
        .map(|a| (a.id.as_str(), a.disruption))
        .collect();
    assert_eq!(
        kinds,
        [
            ("web:restart", vmctl_planner::Disruption::Restart),
            ("db:restart", vmctl_planner::Disruption::None),
        ]
    );
    assert_eq!(
        p.actions[0].reason.as_deref(),
        Some(
            "guest configuration changed (hostname): re-applied at boot; \
             guest configuration changed (users): re-applied at boot; \
             guest configuration changed (files): re-applied at boot"
        )
    );
}

#[test]
fn create_shows_packages_and_guest_config() {
    snap(
        "create_with_guest",
        &desired(vec![vmctl_spec::VmSpec {
            config: vmctl_spec::GuestConfig {
                hostname: Some("www".into()),
                ..with_guest("web").config
            },
            ..with_guest("web")
        }]),
        &ObservedState::new(),
        all(),
    );
}

/// Issue 14: a disk whose `path` changes is planned as what apply does
/// — its file moves and the data follows — not as a plain restart that
/// silently gave the VM an empty disk at the new path.
#[test]
fn disk_path_changed_moves_the_file() {
    let old = vmctl_spec::VmSpec {
        disks: vec![
            disk("root", 10 * GIB),
            vmctl_spec::DiskSpec {
                path: Some("/srv/old/data.raw".into()),
                ..disk("data", 10 * GIB)
            },
            disk("logs", GIB),
        ],
        ..debian("db")
    };
    let new = vmctl_spec::VmSpec {
        disks: vec![
            vmctl_spec::DiskSpec {
                path: Some("/srv/fast/root.raw".into()),
                ..disk("root", 10 * GIB)
            },
            vmctl_spec::DiskSpec {
                path: Some("/srv/new/data.raw".into()),
                ..disk("data", 10 * GIB)
            },
            disk("logs", GIB),
        ],
        ..old.clone()
    };
    let p = snap(
        "disk_path_moved",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    let text = render::text(&p);
    assert!(
        text.contains("move disk file /srv/old/data.raw → /srv/new/data.raw"),
        "{text}"
    );
}

/// Issue 14: a removed disk's file is deleted when it is in the state
/// directory (so a disk re-added later is empty), left in place with a
/// warning when it is at a user-chosen path.
#[test]
fn disk_removed_deletes_its_file_or_warns() {
    let old = vmctl_spec::VmSpec {
        disks: vec![
            disk("root", 10 * GIB),
            disk("scratch", GIB),
            vmctl_spec::DiskSpec {
                path: Some("/srv/keep/archive.raw".into()),
                ..disk("archive", GIB)
            },
        ],
        ..debian("db")
    };
    let new = vmctl_spec::VmSpec {
        disks: vec![disk("root", 10 * GIB)],
        ..old.clone()
    };
    let p = snap(
        "disk_removed",
        &desired(vec![new]),
        &observed(&[(&old, RunState::Running)]),
        all(),
    );
    let text = render::text(&p);
    assert!(
        text.contains("disk scratch removed: its file is deleted"),
        "{text}"
    );
    assert!(
        text.contains(
            "WARNING its file /srv/keep/archive.raw is at a user-chosen path and is left in place"
        ),
        "{text}"
    );
}

/// A network and two VMs on it.
fn net_lab() -> DesiredState {
    let db = on(vm("db"), vec![nic("lab", "10.20.0.10")]);
    let web = on(
        vmctl_spec::VmSpec {
            depends_on: vec!["db".into()],
            ..vm("web")
        },
        vec![nic("lab", "10.20.0.11")],
    );
    DesiredState {
        networks: vec![net("lab", "10.20.0.0/24")],
        ..desired(vec![db, web])
    }
}

#[test]
fn network_lab_fresh() {
    let p = snap("network_fresh", &net_lab(), &ObservedState::new(), all());
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["network:lab:create", "db:create", "web:create"]);
    assert_eq!(p.actions[1].depends_on, ["network:lab:create"]);
    let json = render::json(&p);
    assert_eq!(json["actions"][0]["resource"], "network");
    assert_eq!(json["actions"][1]["resource"], "vm");
    assert_eq!(json["actions"][0]["after"]["subnet"], "10.20.0.0/24");
    assert_eq!(json["summary"]["create"], 3);
}

#[test]
fn network_converged_is_a_no_op() {
    let d = net_lab();
    assert!(plan(&d, &converged(&d), &all()).unwrap().actions.is_empty());
}

#[test]
fn network_bridge_missing_is_recreated_before_the_vms_start() {
    let d = net_lab();
    let mut o = converged(&d);
    for n in o.networks.values_mut() {
        n.present = false;
    }
    for v in o.vms.values_mut() {
        v.live = vmctl_planner::Live::stopped();
        v.live.state = RunState::Crashed;
    }
    let p = plan(&d, &o, &all()).unwrap();
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["network:lab:create", "db:start", "web:start"]);
    assert!(
        p.actions[1]
            .depends_on
            .contains(&"network:lab:create".to_string())
    );
}

#[test]
fn nic_added_restarts_the_vm() {
    let d = net_lab();
    let mut o = converged(&d);
    // web had no NIC yet.
    if let Some(w) = o.vms.get_mut("web") {
        w.record.spec.nics.clear();
    }
    let p = snap("nic_added_restart", &d, &o, all());
    assert_eq!(p.actions.len(), 1);
    let a = &p.actions[0];
    assert_eq!(a.id, "web:restart");
    assert!(
        a.reason
            .as_deref()
            .is_some_and(|r| r.contains("NIC hot-plug is not supported yet")),
        "{:?}",
        a.reason
    );
}

#[test]
fn network_removed_goes_after_its_last_vm() {
    let before = net_lab();
    let o = converged(&before);
    // The file drops `web` and the network; `db` loses its NIC.
    let d = desired(vec![vm("db")]);
    let p = snap("network_removed", &d, &o, all());
    snap_markdown("network_removed", &p);
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["web:destroy", "db:restart", "network:lab:destroy"]);
    let last = &p.actions[2];
    assert_eq!(last.depends_on, ["web:destroy", "db:restart"]);
}

#[test]
fn network_subnet_changed_is_readdressed_before_its_vms_restart() {
    let before = net_lab();
    let o = converged(&before);
    let mut d = net_lab();
    d.networks = vec![net("lab", "10.30.0.0/24")];
    for v in &mut d.vms {
        for n in &mut v.nics {
            let [_, _, c, last] = n.ip.octets();
            n.ip = std::net::Ipv4Addr::new(10, 30, c, last);
        }
    }
    let p = snap("network_readdressed", &d, &o, all());
    let ids: Vec<_> = p.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["network:lab:replace", "db:restart", "web:restart"]);
}

/// A host of 4 GiB: a new VM of 6 GiB is refused (the rest of the lab is
/// created); an existing VM asked to grow past the host is refused whole
/// (a restart would boot the memory that does not fit), one that fits
/// changes as usual.
#[test]
fn a_vm_bigger_than_the_host_is_refused() {
    let host = vmctl_planner::HostCapacity {
        memory_mib: 4096,
        cpus: 2,
    };
    let big = vmctl_spec::VmSpec {
        memory_mib: 6144,
        max_memory_mib: 6144,
        ..vm("big")
    };
    let mut o = ObservedState::new();
    o.host = Some(host);
    let p = snap(
        "host_too_small_create",
        &desired(vec![big, vm("small")]),
        &o,
        all(),
    );
    let refused: Vec<_> = p.actions.iter().filter(|a| a.is_refused()).collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].vm, "big");
    assert!(p.executable().any(|a| a.vm == "small"));

    let old = debian("db");
    let grown = vmctl_spec::VmSpec {
        memory_mib: 8192,
        max_memory_mib: 8192,
        cpus: 2,
        ..old.clone()
    };
    let mut o = observed(&[(&old, RunState::Running)]);
    o.host = Some(host);
    let p = snap("host_too_small_grow", &desired(vec![grown]), &o, all());
    assert_eq!(p.executable().count(), 0, "nothing of db runs");
    assert!(p.actions.iter().all(|a| a.is_refused()));
    let fits = vmctl_spec::VmSpec {
        memory_mib: 2048,
        ..old.clone()
    };
    let p = plan(&desired(vec![fits]), &o, &all()).unwrap();
    assert!(p.actions.iter().all(|a| !a.is_refused()), "{p:?}");
    assert_eq!(p.executable().count(), 1);
}
