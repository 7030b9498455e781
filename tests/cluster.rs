//! A lab over three hosts, end to end through the binary: a real 3-member
//! etcd on 127.0.0.1 (the lock, the records, the journal), three SSH "hosts"
//! that are network namespaces with their own sshd and state directory
//! (tests/common/hosts.rs), and diag VMs on this machine's /dev/kvm. What
//! is checked: `apply` places and creates every VM on its host, `status`
//! shows each VM's host and its guest's own report, a re-apply is a no-op,
//! the records in etcd name the hosts, a stale record heals on a no-op
//! apply, a second coordinator is told who holds the lock, and an
//! unreachable host fails only its own VMs' actions.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::hosts::Hosts;
use common::{Lab, text};
use serde_json::Value;
use vmctl_cluster::testkit::EtcdCluster;
use vmctl_cluster::{AcquireOptions, Etcd};

const CLUSTER: &str = "t";

fn lab_kdl(etcd: &EtcdCluster, hosts: &Hosts, extra: &str) -> String {
    let mut kdl = format!(
        "cluster \"{CLUSTER}\" {{\n    state \"etcd\" endpoints=\"{}\" lock-ttl=\"5s\"\n}}\n",
        etcd.endpoints().join(",")
    );
    for (h, rack) in hosts.hosts.iter().zip(["a", "b", "b"]) {
        kdl.push_str(&format!(
            "host \"{}\" {{\n    ssh \"{}\"\n    labels rack=\"{rack}\"\n    vmctl \"{}\"\n    state-dir \"{}\"\n}}\n",
            h.name,
            h.name,
            env!("CARGO_BIN_EXE_vmctl"),
            h.state_dir.display()
        ));
    }
    kdl.push_str(
        "vm \"db\" {\n    os \"diag\"\n    memory \"128MiB\"\n    host \"h1\"\n}\n\
         vm \"web-1\" {\n    os \"diag\"\n    memory \"128MiB\"\n    depends-on \"db\"\n    placement {\n        spread \"rack\"\n    }\n}\n\
         vm \"web-2\" {\n    os \"diag\"\n    memory \"128MiB\"\n    depends-on \"db\"\n    placement {\n        spread \"rack\"\n    }\n}\n\
         vm \"cache\" {\n    os \"diag\"\n    memory \"128MiB\"\n    host \"h3\"\n}\n",
    );
    kdl.push_str(extra);
    kdl
}

fn vmctl(lab: &Lab, hosts: &Hosts, args: &[&str]) -> Command {
    let mut c = lab.cmd(args);
    c.env("VMCTL_SSH_CONFIG", &hosts.ssh_config);
    c
}

fn status(lab: &Lab, hosts: &Hosts) -> Value {
    let out = vmctl(lab, hosts, &["status", "--json"])
        .output()
        .expect("run vmctl");
    assert!(out.status.success(), "status failed:\n{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn vm<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["vms"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no VM {name} in {status:#}"))
}

/// Wait (bounded) until every VM's guest has reported.
fn wait_guests(lab: &Lab, hosts: &Hosts, names: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(lab, hosts);
        if names.iter().all(|n| !vm(&s, n)["guest"].is_null()) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "guests did not report within 120 s: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_lab_over_three_hosts_applies_places_and_reports() {
    if !vmctl_runtime::testing::kvm_or_skip() {
        return;
    }
    let Some(etcd) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let Some(mut hosts) = common::hosts::start(3) else {
        return;
    };
    let lab = Lab::new(&lab_kdl(&etcd, &hosts, ""));

    // 1. apply: every VM created on a host, db on its pinned h1.
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    eprintln!("first apply:\n{t}");
    assert!(out.status.success(), "apply failed:\n{t}");
    assert!(t.contains("db create on h1"), "{t}");

    // 2. status: each VM's host, and each guest's own report.
    let s = wait_guests(&lab, &hosts, &["db", "web-1", "web-2", "cache"]);
    assert_eq!(vm(&s, "db")["host"], "h1");
    let rack = |h: &Value| match h.as_str() {
        Some("h1") => "a",
        Some(_) => "b",
        None => panic!("no host: {s:#}"),
    };
    let (w1, w2) = (&vm(&s, "web-1")["host"], &vm(&s, "web-2")["host"]);
    assert_ne!(rack(w1), rack(w2), "spread over the racks: {s:#}");
    for n in ["db", "web-1", "web-2", "cache"] {
        let g = &vm(&s, n)["guest"];
        assert_eq!(g["cpus"], 1, "{n}: {g}");
        assert_eq!(g["memory_mib"], 128, "{n}: {g}");
    }
    let hosts_json = s["hosts"].as_array().expect("hosts in status --json");
    assert_eq!(hosts_json.len(), 3);
    assert!(hosts_json.iter().all(|h| h["reachable"] == true), "{s:#}");

    // 3. the shared state: a record per VM naming the host status shows.
    let e = Etcd::connect(etcd.config(CLUSTER)).expect("etcd");
    let records = e.list_vms().expect("records");
    assert_eq!(records.len(), 4, "{records:?}");
    for n in ["db", "web-1", "web-2", "cache"] {
        assert_eq!(records[n]["host"], vm(&s, n)["host"], "{n}");
    }
    let journal = e.list_journal().expect("journal");
    assert!(
        journal.len() >= 3,
        "one journal entry per action at least: {journal:?}"
    );

    // 4. a re-apply is a no-op: plan says so (exit 0 with
    // --detailed-exitcode) and the VMs keep their VMMs.
    let pids: Vec<Value> = ["db", "web-1", "web-2", "cache"]
        .iter()
        .map(|n| vm(&s, n)["pid"].clone())
        .collect();
    let out = vmctl(&lab, &hosts, &["plan", "--detailed-exitcode"])
        .output()
        .expect("run vmctl");
    assert_eq!(out.status.code(), Some(0), "plan:\n{}", text(&out));
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    assert!(out.status.success(), "re-apply:\n{}", text(&out));
    let s2 = status(&lab, &hosts);
    for (n, pid) in ["db", "web-1", "web-2", "cache"].iter().zip(&pids) {
        assert_eq!(
            &vm(&s2, n)["pid"],
            pid,
            "{n} was restarted by a no-op apply"
        );
    }

    // 4b. a record an interrupted apply left stale (here: deleted) heals
    // on the next apply, though it plans nothing (found by `cargo xtask
    // chaos`: the no-op path returned before writing any record).
    {
        let guard = e
            .lock(&AcquireOptions {
                command: "test-stale-record".into(),
                wait: Duration::from_secs(30),
            })
            .expect("lock");
        guard
            .delete_vm("cache")
            .expect("delete the record of cache");
    }
    assert!(!e.list_vms().expect("records").contains_key("cache"));
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    assert!(out.status.success(), "no-op apply:\n{}", text(&out));
    let records = e.list_vms().expect("records");
    assert_eq!(
        records.get("cache").map(|r| r["host"].clone()),
        Some(Value::from("h3")),
        "the no-op apply did not restore the record: {records:?}"
    );

    // 5. another coordinator holds the lock: apply waits, then says who.
    let guard = e
        .lock(&AcquireOptions {
            command: "test-holder".into(),
            wait: Duration::ZERO,
        })
        .expect("lock");
    let out = vmctl(
        &lab,
        &hosts,
        &["apply", "--auto-approve", "--lock-timeout", "1"],
    )
    .output()
    .expect("run vmctl");
    let t = text(&out);
    assert!(
        !out.status.success(),
        "apply ran under another's lock:\n{t}"
    );
    assert!(
        t.contains(&format!("pid {}", std::process::id())) && t.contains("test-holder"),
        "the holder is named:\n{t}"
    );
    drop(guard);

    // 6. h3 becomes unreachable: status says so, and a new VM pinned to
    // it fails while one on h1 is created (the rest applies, exit 1).
    let on_h3: Vec<String> = ["web-1", "web-2", "cache"]
        .iter()
        .filter(|n| vm(&s, n)["host"] == "h3")
        .map(|n| n.to_string())
        .collect();
    assert!(on_h3.contains(&"cache".to_string()), "{s:#}");
    hosts.kill_sshd("h3");
    let s3 = status(&lab, &hosts);
    let h3 = s3["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == "h3"))
        .expect("h3 in status");
    assert_eq!(h3["reachable"], false, "{s3:#}");
    for n in &on_h3 {
        assert_eq!(vm(&s3, n)["state"], "unreachable", "{s3:#}");
    }
    lab.write(&lab_kdl(
        &etcd,
        &hosts,
        "vm \"late\" {\n    os \"diag\"\n    memory \"128MiB\"\n    host \"h3\"\n}\n\
         vm \"extra\" {\n    os \"diag\"\n    memory \"128MiB\"\n    host \"h1\"\n}\n",
    ));
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    eprintln!("apply with h3 down:\n{t}");
    assert_eq!(out.status.code(), Some(1), "apply with a host down:\n{t}");
    assert!(t.contains("unreachable"), "{t}");
    assert!(
        !t.contains("cache create"),
        "a VM on an unreachable host is planned as last applied, never as new:\n{t}"
    );
    let s4 = status(&lab, &hosts);
    assert_eq!(vm(&s4, "extra")["host"], "h1", "{s4:#}");
    assert!(
        s4["vms"].as_array().is_some_and(|v| v
            .iter()
            .all(|v| v["name"] != "late" || v["state"] != "running")),
        "late cannot run on an unreachable host: {s4:#}"
    );
}
