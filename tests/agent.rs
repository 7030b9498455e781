//! Issue 14, the host→guest agent channel (docs/runtime.md, "The agent
//! channel"): a command sent through the VMM's control socket reaches the
//! diag guest on COM2 and the guest's own answer comes back, routed by id,
//! while its reports keep arriving as `status.guest`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use vmctl_runtime::api::ApiClient;
use vmctl_runtime::api::client::ClientError;

const VM: &str = "vm \"a\" {\n    os \"diag\"\n    cpus 2\n    memory \"64MiB\"\n}\n";

/// `vmctl backup a -o DIR --json`, its stdout parsed.
fn backup_json(lab: &Lab, dir: &std::path::Path) -> serde_json::Value {
    let out = lab.run(&["backup", "a", "-o", dir.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "backup failed:\n{}", text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json parses: {e}\n{}", text(&out)))
}

fn client(lab: &Lab) -> ApiClient {
    ApiClient::new(lab.state().join("vms/a/api.sock"))
}

#[test]
fn a_command_reaches_diag_and_its_own_answer_comes_back() {
    if !kvm_available() {
        return;
    }
    let lab = Lab::new(VM);
    lab.ok(&["apply", "--auto-approve"]);
    let report = lab.wait_vm("a", "a report listing its commands", |v| {
        v["guest"]["commands"].is_array() && v["guest"]["cpus"] == 2
    });
    assert_eq!(
        report["guest"]["commands"],
        json!(["ping", "freeze", "thaw"])
    );
    let seq = report["guest"]["seq"].as_u64().expect("seq");
    let api = client(&lab);
    let wait = Duration::from_secs(10);

    // The guest echoes the nonce and adds what only it knows.
    let pong = api
        .agent(json!({"cmd":"ping","nonce":"n-4711"}), wait)
        .expect("ping");
    assert_eq!(pong["ok"], true, "{pong}");
    assert_eq!(pong["agent"], "diag", "{pong}");
    assert_eq!(pong["nonce"], "n-4711", "{pong}");
    assert_eq!(pong["cpus"], 2, "{pong}");
    assert!(pong["seq"].as_u64().expect("seq") >= seq, "{pong}");
    assert_eq!(pong["handled"], 1, "{pong}");
    let first_id = pong["id"].as_u64().expect("id");

    // freeze/thaw: diag says nothing was frozen.
    let frozen = api.agent(json!({"cmd":"freeze"}), wait).expect("freeze");
    assert_eq!(frozen["ok"], true, "{frozen}");
    assert_eq!(frozen["frozen"], json!([]), "{frozen}");
    assert_eq!(frozen["id"], first_id + 1, "ids are the VMM's, in order");
    let thawed = api.agent(json!({"cmd":"thaw"}), wait).expect("thaw");
    assert_eq!(thawed["thawed"], json!([]), "{thawed}");

    // The guest's refusal is passed on as its reply.
    let unknown = api.agent(json!({"cmd":"halt"}), wait).expect("reply");
    assert_eq!(unknown["ok"], false, "{unknown}");
    assert_eq!(unknown["error"], "unknown command", "{unknown}");
    // The VMM refuses what is not a command, without asking the guest.
    match api.agent(json!(["ping"]), wait) {
        Err(ClientError::Refused(e)) => assert!(e.contains("\"cmd\""), "{e}"),
        other => panic!("not refused: {other:?}"),
    }

    // A paused guest cannot answer: the command times out. After the
    // resume diag reads that stale line and answers it (dropped: its id is
    // no longer outstanding), then the next command is answered.
    api.pause().expect("pause");
    match api.agent(
        json!({"cmd":"ping","nonce":"late"}),
        Duration::from_millis(300),
    ) {
        Err(ClientError::Refused(e)) => assert!(e.contains("did not answer"), "{e}"),
        other => panic!("a paused guest answered: {other:?}"),
    }
    api.resume().expect("resume");
    let pong = api
        .agent(json!({"cmd":"ping","nonce":"after"}), wait)
        .expect("ping after the timeout");
    assert_eq!(pong["nonce"], "after", "{pong}");
    assert_eq!(pong["handled"], 6, "the late ping was answered too: {pong}");

    // Replies never became the report.
    let status = lab.vm("a");
    assert_eq!(status["guest"]["agent"], "diag", "{status}");
    assert!(status["guest"].get("id").is_none(), "{status}");
}

/// A backup of a running VM whose agent offers `freeze` asks for it and
/// thaws afterwards; diag freezes nothing (it has no filesystem), so the
/// backup says it is crash-consistent and why — in its output, its
/// `--json` and its manifest — and the guest counted both commands.
#[test]
fn a_backup_asks_the_agent_to_freeze_and_thaw_and_states_the_level_it_reached() {
    if !kvm_available() {
        return;
    }
    let lab = Lab::new(&VM.replace("memory", "disk \"data\" size=\"1MiB\"\n    memory"));
    lab.ok(&["apply", "--auto-approve"]);
    lab.wait_vm("a", "a report listing its commands", |v| {
        v["guest"]["commands"].is_array()
    });
    let bk = lab.dir.path().join("bk");
    let out = lab.ok(&["backup", "a", "-o", bk.to_str().expect("utf-8")]);
    assert!(
        out.contains("for a crash-consistent copy"),
        "the level is stated:\n{out}"
    );
    assert!(
        out.contains("Not filesystem-consistent: the guest agent froze no filesystem."),
        "and why:\n{out}"
    );
    // The guest saw the freeze and the thaw (this ping is its third command).
    let pong = client(&lab)
        .agent(json!({"cmd":"ping"}), Duration::from_secs(10))
        .expect("ping");
    assert_eq!(pong["handled"], 3, "freeze, thaw, ping: {pong}");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bk.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["consistency"], "crash-consistent", "{manifest:#}");
    assert_eq!(manifest["frozen"], json!([]), "{manifest:#}");
    assert_eq!(
        manifest["consistency_note"], "the guest agent froze no filesystem",
        "{manifest:#}"
    );
    let bk2 = lab.dir.path().join("bk2");
    let v = backup_json(&lab, &bk2);
    assert_eq!(v["consistency"], "crash-consistent", "{v:#}");
    assert!(v["format_version"].is_string(), "{v:#}");

    // A stopped VM's copy is `offline`: nothing is asked of any agent.
    lab.write(&VM.replace(
        "memory",
        "disk \"data\" size=\"1MiB\"\n    autostart #false\n    memory",
    ));
    lab.ok(&["apply", "--auto-approve"]);
    let bk3 = lab.dir.path().join("bk3");
    let v = backup_json(&lab, &bk3);
    assert_eq!(v["consistency"], "offline", "{v:#}");
    assert_eq!(v["live"], false, "{v:#}");
}
