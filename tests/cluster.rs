//! A lab over three hosts, end to end through the binary: a real 3-member
//! etcd on 127.0.0.1 (the lock, the records, the journal), three SSH "hosts"
//! that are network namespaces with their own sshd and state directory
//! (vmctl_hostrpc::testkit), and diag VMs on this machine's /dev/kvm. What
//! is checked: `apply` places and creates every VM on its host, `status`
//! shows each VM's host and its guest's own report, a re-apply is a no-op,
//! the records in etcd name the hosts, a stale record heals on a no-op
//! apply, a second coordinator is told who holds the lock, `destroy` of one
//! VM, an unreachable host fails only its own VMs' actions, without etcd
//! quorum apply refuses while status still reads the hosts, and a VM moves
//! with its disk.

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
    let Some(mut etcd) = EtcdCluster::start_or_skip(3) else {
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
    // `vmctl lock show -f FILE` reaches etcd through the file's cluster node.
    let out = vmctl(&lab, &hosts, &["lock", "show"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("test-holder"),
        "lock show:\n{t}"
    );
    drop(guard);

    // 6. destroy one VM by name: gone from its host and from etcd.
    let out = vmctl(&lab, &hosts, &["destroy", "web-1", "--auto-approve"])
        .output()
        .expect("run vmctl");
    assert!(out.status.success(), "destroy:\n{}", text(&out));
    let sd = status(&lab, &hosts);
    assert!(
        sd["vms"]
            .as_array()
            .is_some_and(|v| v.iter().all(|v| v["name"] != "web-1")),
        "{sd:#}"
    );
    let records = e.list_vms().expect("records");
    assert!(!records.contains_key("web-1"), "{records:?}");
    assert_eq!(records.len(), 3, "{records:?}");
    // The next apply makes it again (the file still declares it).
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    assert!(out.status.success() && t.contains("web-1 create on"), "{t}");

    // 7. h3 becomes unreachable: status says so, and a new VM pinned to
    // it fails while one on h1 is created (the rest applies, exit 1).
    let now = status(&lab, &hosts);
    let on_h3: Vec<String> = ["web-1", "web-2", "cache"]
        .iter()
        .filter(|n| vm(&now, n)["host"] == "h3")
        .map(|n| n.to_string())
        .collect();
    assert!(on_h3.contains(&"cache".to_string()), "{now:#}");
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

    // 8. etcd loses its quorum: apply refuses (nothing can be agreed on),
    // status still reads the hosts over ssh and says why the records are
    // missing.
    etcd.kill(0);
    etcd.kill(1);
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    assert!(!out.status.success(), "apply without quorum:\n{t}");
    assert!(t.contains("shared state"), "{t}");
    let out = vmctl(&lab, &hosts, &["status", "--json"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    assert!(out.status.success(), "status without quorum:\n{t}");
    assert!(
        t.contains("where each VM is comes from the hosts alone"),
        "{t}"
    );
    let s5: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(vm(&s5, "db")["host"], "h1", "{s5:#}");
    assert_eq!(vm(&s5, "db")["state"], "running", "{s5:#}");
}

/// Two hosts, a diag VM with a seeded disk pinned to h1, then pinned to
/// h2: the plan refuses to move it by itself, `vmctl move` does, and the
/// guest on the new host reads the same disk. Then a leftover copy (what a
/// move killed between copy and clean-up leaves) is removed by the next
/// apply, the VM untouched.
#[test]
fn a_vm_moves_with_its_disk_and_a_leftover_copy_is_removed() {
    if !vmctl_runtime::testing::kvm_or_skip() {
        return;
    }
    let Some(etcd) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let Some(hosts) = common::hosts::start(2) else {
        return;
    };
    let lab = Lab::new("");
    let seed = lab.path("seed.raw");
    let bytes: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&seed, &bytes).expect("seed");
    // db pinned to `host`, or (None) placed freely while `drain` drains.
    let kdl_with = |host: Option<&str>, drain: Option<&str>| {
        let mut k = format!(
            "cluster \"{CLUSTER}\" {{\n    state \"etcd\" endpoints=\"{}\" lock-ttl=\"5s\"\n}}\n",
            etcd.endpoints().join(",")
        );
        for h in &hosts.hosts {
            let drains = if drain == Some(h.name.as_str()) {
                "    drain #true\n"
            } else {
                ""
            };
            k.push_str(&format!(
                "host \"{}\" {{\n    ssh \"{}\"\n    vmctl \"{}\"\n    state-dir \"{}\"\n{drains}}}\n",
                h.name,
                h.name,
                env!("CARGO_BIN_EXE_vmctl"),
                h.state_dir.display()
            ));
        }
        let pin = host
            .map(|h| format!("    host \"{h}\"\n"))
            .unwrap_or_default();
        k.push_str(&format!(
            "vm \"db\" {{\n    os \"diag\"\n    memory \"128MiB\"\n{pin}    disk \"data\" size=\"64MiB\" source=\"{}\"\n}}\n",
            seed.display()
        ));
        k
    };
    let kdl = |host: &str| kdl_with(Some(host), None);
    lab.write(&kdl("h1"));
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    assert!(out.status.success(), "apply:\n{}", text(&out));
    let before = wait_guests(&lab, &hosts, &["db"]);
    let disk_before = vm(&before, "db")["guest"]["disks"][0].clone();
    assert_eq!(vm(&before, "db")["host"], "h1");
    assert!(disk_before["sector0_fnv1a"].is_string(), "{disk_before}");

    // Pinned elsewhere: the plan refuses to recreate it there by itself.
    lab.write(&kdl("h2"));
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("vmctl move db --to h2"), "{t}");

    // The move.
    // Without --to: where placement wants it (its new pin).
    let out = vmctl(&lab, &hosts, &["move", "db"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    eprintln!("move:\n{t}");
    assert!(out.status.success(), "move:\n{t}");
    let h1_dir = hosts.host("h1").state_dir.join("vms/db");
    assert!(!h1_dir.exists(), "the old copy is gone");
    let after = wait_guests(&lab, &hosts, &["db"]);
    assert_eq!(vm(&after, "db")["host"], "h2", "{after:#}");
    assert_eq!(vm(&after, "db")["state"], "running");
    let disk_after = &vm(&after, "db")["guest"]["disks"][0];
    assert_eq!(
        disk_after["sector0_fnv1a"], disk_before["sector0_fnv1a"],
        "the guest on h2 reads the disk it had on h1"
    );
    assert_eq!(disk_after["size_bytes"], disk_before["size_bytes"]);
    let e = Etcd::connect(etcd.config(CLUSTER)).expect("etcd");
    assert_eq!(e.list_vms().expect("records")["db"]["host"], "h2");
    let out = vmctl(&lab, &hosts, &["plan", "--detailed-exitcode"])
        .output()
        .expect("run vmctl");
    assert_eq!(
        out.status.code(),
        Some(0),
        "after the move:\n{}",
        text(&out)
    );

    // A leftover: the VM's directory copied back to h1 (no VMM holds it
    // there), as a move killed after its commit leaves it.
    let h2_dir = hosts.host("h2").state_dir.join("vms/db");
    let cp = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(&h2_dir)
        .arg(&h1_dir)
        .status()
        .expect("cp");
    assert!(cp.success());
    let pid = vm(&after, "db")["pid"].clone();
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    assert!(out.status.success(), "apply with a leftover:\n{t}");
    assert!(t.contains("removing the copy of db on h1"), "{t}");
    assert!(!h1_dir.exists(), "the leftover is gone");
    let s = status(&lab, &hosts);
    assert_eq!(vm(&s, "db")["host"], "h2");
    assert_eq!(vm(&s, "db")["pid"], pid, "the VM itself was not touched");

    // Drain h2 (db no longer pinned): `vmctl move` with no VM moves every
    // VM placement wants elsewhere — db back to h1, with its disk.
    lab.write(&kdl_with(None, Some("h2")));
    let out = vmctl(&lab, &hosts, &["move"]).output().expect("run vmctl");
    let t = text(&out);
    assert!(out.status.success(), "move (drain):\n{t}");
    assert!(t.contains("Moved db from h2 to h1"), "{t}");
    let drained = wait_guests(&lab, &hosts, &["db"]);
    assert_eq!(vm(&drained, "db")["host"], "h1");
    assert_eq!(
        vm(&drained, "db")["guest"]["disks"][0]["sector0_fnv1a"],
        disk_before["sector0_fnv1a"]
    );
    assert!(!h2_dir.exists(), "h2 is empty");
    let out = vmctl(&lab, &hosts, &["move"]).output().expect("run vmctl");
    assert!(
        text(&out).contains("Nothing to move"),
        "a second drain has nothing left:\n{}",
        text(&out)
    );
}

/// The cluster node's TLS (a CA and a client certificate) and etcd user
/// auth (the password from the variable `password-env` names), through
/// `apply` and `status`: the lab applies over TLS with credentials, and the
/// same file without the password variable is refused before anything runs.
#[test]
fn a_lab_applies_over_tls_with_etcd_auth() {
    if !vmctl_runtime::testing::kvm_or_skip() {
        return;
    }
    let Some(etcd) = EtcdCluster::start_or_skip_with(3, true) else {
        return;
    };
    etcd.enable_auth("s3cret").expect("etcd auth");
    let Some(hosts) = common::hosts::start(1) else {
        return;
    };
    let certs = etcd.certs().expect("TLS certificates");
    let h = &hosts.hosts[0];
    let kdl = format!(
        "cluster \"{CLUSTER}\" {{\n    state \"etcd\" endpoints=\"{}\" lock-ttl=\"5s\" ca=\"{}\" cert=\"{}\" key=\"{}\" user=\"root\" password-env=\"VMCTL_TEST_ETCD_PASSWORD\"\n}}\n\
         host \"{}\" {{\n    ssh \"{}\"\n    vmctl \"{}\"\n    state-dir \"{}\"\n}}\n\
         vm \"db\" {{\n    os \"diag\"\n    memory \"128MiB\"\n}}\n",
        etcd.endpoints().join(","),
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display(),
        h.name,
        h.name,
        env!("CARGO_BIN_EXE_vmctl"),
        h.state_dir.display()
    );
    assert!(kdl.contains("https://"), "{kdl}");
    let lab = Lab::new(&kdl);
    // No password in the environment: refused, nothing created.
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .output()
        .expect("run vmctl");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("$VMCTL_TEST_ETCD_PASSWORD"), "{t}");
    assert!(!h.state_dir.join("vms/db").exists());
    // A wrong password: etcd refuses it.
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .env("VMCTL_TEST_ETCD_PASSWORD", "wrong")
        .output()
        .expect("run vmctl");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!h.state_dir.join("vms/db").exists());
    // The right one: applied, recorded, reported.
    let out = vmctl(&lab, &hosts, &["apply", "--auto-approve"])
        .env("VMCTL_TEST_ETCD_PASSWORD", "s3cret")
        .output()
        .expect("run vmctl");
    assert!(out.status.success(), "apply over TLS:\n{}", text(&out));
    let s = vmctl(&lab, &hosts, &["status", "--json"])
        .env("VMCTL_TEST_ETCD_PASSWORD", "s3cret")
        .output()
        .expect("run vmctl");
    let t = text(&s);
    assert!(s.status.success(), "{t}");
    assert!(!t.contains("hosts alone"), "status read the records: {t}");
    let v: Value = serde_json::from_slice(&s.stdout).expect("json");
    assert_eq!(vm(&v, "db")["host"], h.name.as_str());
}
