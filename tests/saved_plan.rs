//! Saved plans through the binary: `plan --out` → `apply PLANFILE` applies
//! exactly that plan; a changed file, a killed VMM or another apply in
//! between makes `apply PLANFILE` refuse with exit 1, name the change and
//! run nothing; `show --json` round-trips; an edited or foreign file is
//! refused. The KVM test boots diag VMs on the real /dev/kvm.

mod common;

use common::{Lab, kvm_available, text};
use serde_json::Value;

fn alpha(memory: &str) -> String {
    format!("vm \"alpha\" {{\n    os \"diag\"\n    memory \"{memory}\"\n}}\n")
}

/// The output with miette's line wrapping undone.
fn flat(out: &std::process::Output) -> String {
    text(out)
        .lines()
        .map(|l| l.trim_start_matches([' ', '│', '╰', '─', '▶']).trim_end())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `apply PLANFILE` that must be refused: exit 1, "nothing was applied",
/// and every `expect`ed change named.
fn refused(lab: &Lab, plan: &str, expect: &[&str]) -> String {
    let out = lab.run_bare(&["apply", plan]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let flat = flat(&out);
    assert!(flat.contains("is stale; nothing was applied"), "{t}");
    for e in expect {
        assert!(flat.contains(e), "expected {e:?} in:\n{t}");
    }
    t
}

#[test]
fn show_json_round_trips_and_an_edited_plan_or_another_file_is_refused() {
    let lab = Lab::new(&alpha("128MiB"));
    let out = lab.ok(&["plan", "-out", "p.json"]);
    assert!(out.contains("+ alpha create"), "{out}");
    let saved = std::fs::read_to_string(lab.path("p.json")).expect("plan file written");
    let doc: Value = serde_json::from_str(&saved).expect("the plan file is JSON");
    assert_eq!(doc["format_version"], "1");
    assert_eq!(doc["kind"], "vmctl-saved-plan");
    assert_eq!(doc["plan"]["actions"][0]["id"], "alpha:create");

    // show --json prints the plan document; its output is a plan file again.
    let shown = lab.run_bare(&["show", "p.json", "--json"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let again: Value = serde_json::from_slice(&shown.stdout).expect("show --json is JSON");
    assert_eq!(again, doc);
    std::fs::write(lab.path("copy.json"), &shown.stdout).expect("write copy");
    let a = lab.run_bare(&["show", "p.json"]);
    let b = lab.run_bare(&["show", "copy.json"]);
    assert!(a.status.success() && b.status.success());
    let (a, b) = (text(&a), text(&b));
    assert_eq!(
        a.split_once('\n').map(|x| x.1),
        b.split_once('\n').map(|x| x.1)
    );
    assert!(a.contains("+ alpha create"), "{a}");
    let md = lab.run_bare(&["show", "p.json", "--format", "markdown"]);
    assert!(text(&md).starts_with("### vmctl plan\n"), "{}", text(&md));

    // An edited plan (the actions no longer what the basis gives) is refused.
    let mut edited = doc.clone();
    edited["plan"]["actions"] = serde_json::json!([]);
    std::fs::write(lab.path("edited.json"), edited.to_string()).expect("write");
    for cmd in [["show", "edited.json"], ["apply", "edited.json"]] {
        let out = lab.run_bare(&cmd);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            flat(&out).contains("the file was edited or is corrupt"),
            "{}",
            text(&out)
        );
    }
    // Not a plan at all.
    let out = lab.run_bare(&["show", "vmctl.kdl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        flat(&out).contains("not a vmctl saved plan"),
        "{}",
        text(&out)
    );
    // PLANFILE and -f do not mix.
    let out = lab.run(&["apply", "p.json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // vmctl.lock appearing after the plan makes it stale; nothing ran.
    std::fs::write(lab.path("vmctl.lock"), "{}\n").expect("write lock");
    refused(&lab, "p.json", &["vmctl.lock changed"]);
    assert!(!lab.state().join("vms").exists(), "nothing was created");
}

#[test]
fn apply_planfile_applies_exactly_it_and_refuses_when_anything_changed() {
    if !kvm_available() {
        return;
    }
    let lab = Lab::new(&alpha("128MiB"));

    // plan --out → apply PLANFILE (no --auto-approve: it does not ask).
    lab.ok(&["plan", "--out", "p1.json"]);
    let out = lab.run_bare(&["apply", "p1.json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("alpha: create done"), "{}", text(&out));
    let first = lab.wait_vm("alpha", "reported", |v| {
        v["state"] == "running" && v["guest"]["memory_mib"] == 128
    });

    // The same plan again: alpha exists now.
    refused(
        &lab,
        "p1.json",
        &["vm alpha was created since the plan (someone applied)"],
    );

    // The file changes after the plan.
    lab.write(&alpha("256MiB"));
    lab.ok(&["plan", "--out", "p2.json"]);
    lab.write(&alpha("192MiB"));
    refused(
        &lab,
        "p2.json",
        &["vmctl.kdl changed: vm alpha changed (max-memory-mib, memory-mib)"],
    );
    assert_eq!(lab.vm("alpha")["pid"], first["pid"], "nothing ran");

    // A VM crashes after the plan.
    lab.write(&alpha("256MiB"));
    lab.ok(&["plan", "--out", "p3.json"]);
    let pid = first["pid"].as_i64().expect("alpha pid");
    // SAFETY: kill(2) of the VMM this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    lab.wait_vm("alpha", "crashed", |v| v["state"] == "crashed");
    refused(
        &lab,
        "p3.json",
        &[&format!("vm alpha crashed: its VMM (pid {pid}) is gone")],
    );
    assert_eq!(lab.vm("alpha")["state"], "crashed", "nothing ran");
    assert!(lab.vmm_pids().is_empty());

    // Someone applies after the plan.
    lab.ok(&["plan", "--out", "p4.json"]);
    lab.ok(&["apply", "--auto-approve"]);
    let running = lab.wait_vm("alpha", "restarted", |v| {
        v["state"] == "running" && v["guest"]["memory_mib"] == 256
    });
    refused(
        &lab,
        "p4.json",
        &[
            "vm alpha is running now (it was crashed when planned)",
            "vm alpha's applied configuration changed (max-memory-mib, memory-mib): someone applied",
        ],
    );
    assert_eq!(lab.vm("alpha")["pid"], running["pid"], "nothing ran");

    // A fresh plan of a live change applies exactly it.
    lab.write(&alpha("128MiB"));
    lab.ok(&["plan", "--out", "p5.json"]);
    let shown = text(&lab.run_bare(&["show", "p5.json"]));
    assert!(shown.contains("alpha restart"), "{shown}");
    let out = lab.run_bare(&["apply", "p5.json", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every --json line is JSON"))
        .collect();
    assert!(events.iter().all(|e| e["format_version"] == "1"));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "finished" && e["action"] == "alpha:restart"),
        "{events:?}"
    );
    lab.wait_vm("alpha", "restarted with 128 MiB", |v| {
        v["state"] == "running" && v["guest"]["memory_mib"] == 128
    });
}
