//! `vmctl lock show|break` through the binary against a real 3-member etcd
//! (`vmctl_cluster::testkit`): a free lock, a lock held by this test process
//! (holder, token, lease in text and `--json`), breaking it — after which the
//! holder's writes are refused by etcd — and etcd without quorum as an error
//! naming the endpoints. Skipped where `etcd` is not installed unless
//! `VMCTL_REQUIRE_ETCD` is set.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::text;
use serde_json::{Value, json};
use vmctl_cluster::testkit::EtcdCluster;
use vmctl_cluster::{AcquireOptions, ClusterError, Etcd};

fn vmctl(c: &EtcdCluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .args(args)
        .env("VMCTL_ETCD_ENDPOINTS", c.endpoints().join(","))
        .env_remove("VMCTL_CLUSTER")
        .output()
        .expect("run vmctl")
}

/// The output with miette's line wrapping undone.
fn flat(out: &Output) -> String {
    text(out)
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn lock_show_and_break() {
    let Some(mut c) = EtcdCluster::start_or_skip(3) else {
        return;
    };

    let out = vmctl(&c, &["lock", "show", "--cluster", "lab"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cluster \"lab\": the lock is free\n"
    );
    let v = json_of(&vmctl(&c, &["lock", "show", "--cluster", "lab", "--json"]));
    assert_eq!(
        v,
        json!({"format_version": "1", "cluster": "lab", "held": false, "lock": null})
    );

    let etcd = Etcd::connect(c.config("lab")).expect("connect");
    let guard = etcd
        .lock(&AcquireOptions {
            command: "apply".into(),
            wait: Duration::ZERO,
        })
        .expect("lock");
    let me = format!("pid {}", std::process::id());

    let out = vmctl(&c, &["lock", "show", "--cluster", "lab"]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        shown.starts_with("cluster \"lab\": lock held by ") && shown.contains(&me),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("token:   {}\n", guard.token())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("lease:   {:x} (TTL 15s, ", guard.lease_id())),
        "{shown}"
    );
    // Another cluster's lock is another key.
    let v = json_of(&vmctl(&c, &["lock", "show", "--json"]));
    assert_eq!(v["cluster"], "default");
    assert_eq!(v["held"], false);

    let v = json_of(&vmctl(&c, &["lock", "show", "--cluster", "lab", "--json"]));
    assert_eq!(v["format_version"], "1");
    assert_eq!(v["held"], true);
    assert_eq!(v["lock"]["token"], guard.token());
    assert_eq!(v["lock"]["lease_id"], guard.lease_id());
    assert_eq!(v["lock"]["holder"]["command"], "apply");
    assert_eq!(v["lock"]["holder"]["format_version"], "1");
    assert!(
        v["lock"]["holder"]["holder"]
            .as_str()
            .is_some_and(|h| h.ends_with(&me)),
        "{v}"
    );
    assert!(
        v["lock"]["ttl_left_secs"]
            .as_i64()
            .is_some_and(|t| (1..=15).contains(&t)),
        "{v}"
    );

    let out = vmctl(&c, &["lock", "break", "--cluster", "lab"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        said.starts_with("cluster \"lab\": broke the lock held by ") && said.contains(&me),
        "{said}"
    );
    assert!(
        said.contains(&format!("token:   {}\n", guard.token())),
        "{said}"
    );
    // The holder's next write reaches etcd and is refused.
    guard.skip_local_loss_check_for_tests();
    match guard.put_vm("db", &json!({})) {
        Err(ClusterError::Fenced {
            token,
            current: None,
        }) => assert_eq!(token, guard.token()),
        other => panic!("a write after the break: {other:?}"),
    }
    let v = json_of(&vmctl(&c, &["lock", "break", "--cluster", "lab", "--json"]));
    assert_eq!(
        v,
        json!({"format_version": "1", "cluster": "lab", "broken": null})
    );
    let out = vmctl(&c, &["lock", "break", "--cluster", "lab"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cluster \"lab\": the lock was free; nothing to break\n"
    );

    // Bad input and no quorum are errors that say what is wrong.
    let out = vmctl(&c, &["lock", "show", "--cluster", "a/b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        flat(&out).contains("cluster name \"a/b\" cannot be part of an etcd key"),
        "{}",
        text(&out)
    );
    c.kill(0);
    c.kill(1);
    let out = vmctl(&c, &["lock", "show", "--cluster", "lab"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = flat(&out);
    assert!(
        said.contains("etcd is unavailable at ") && said.contains(&c.endpoint(2)),
        "{said}"
    );
    println!("{}", text(&out));
}

#[test]
fn lock_show_over_tls_with_etcd_auth() {
    let Some(c) = EtcdCluster::start_or_skip_with(3, true) else {
        return;
    };
    c.enable_auth("s3cret").expect("enable auth");
    let certs = c.certs().expect("a TLS cluster has certificates");
    let tls = [
        "--etcd-ca",
        certs.ca.to_str().expect("utf-8"),
        "--etcd-cert",
        certs.client_cert.to_str().expect("utf-8"),
        "--etcd-key",
        certs.client_key.to_str().expect("utf-8"),
    ];
    let run = |extra: &[&str], password: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmctl"));
        cmd.args(["lock", "show", "--cluster", "lab"])
            .args(tls)
            .args(extra)
            .env("VMCTL_ETCD_ENDPOINTS", c.endpoints().join(","))
            .env_remove("VMCTL_ETCD_PASSWORD");
        if let Some(p) = password {
            cmd.env("VMCTL_ETCD_PASSWORD", p);
        }
        cmd.output().expect("run vmctl")
    };
    let out = run(&["--etcd-user", "root"], Some("s3cret"));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cluster \"lab\": the lock is free\n"
    );

    let pw = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(pw.path(), "s3cret\n").expect("write");
    let out = run(
        &[
            "--etcd-user",
            "root",
            "--etcd-password-file",
            pw.path().to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = run(&["--etcd-user", "root"], Some("wrong"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        flat(&out).contains("etcd refused the request"),
        "{}",
        text(&out)
    );
    let out = run(&["--etcd-user", "root"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(flat(&out).contains("needs a password"), "{}", text(&out));
}
