//! examples/ci/ kept honest: the shell CI script runs its two steps against
//! its one-VM diag lab (`pr`: fmt --check, validate, plan --out with the
//! markdown summary; `merge`: apply PLANFILE, and a second merge of the same
//! plan is refused), each pre-commit hook's `entry` passes a good file and
//! fails a bad one, and the GitHub workflow calls the same script.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Lab, kvm_available, text};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn path_env() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_vmctl"))
        .parent()
        .expect("binary dir");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn ci(lab: &Lab, step: &str) -> Output {
    Command::new("bash")
        .arg(repo("examples/ci/ci.sh"))
        .arg(step)
        .current_dir(lab.dir.path())
        .env("VMCTL", env!("CARGO_BIN_EXE_vmctl"))
        .env_remove("VMCTL_STATE_DIR")
        .output()
        .expect("run ci.sh")
}

#[test]
fn the_shell_ci_plans_on_pr_and_applies_exactly_that_on_merge() {
    if !kvm_available() {
        return;
    }
    let kdl = std::fs::read_to_string(repo("examples/ci/vmctl.kdl")).expect("the CI lab");
    let lab = Lab::new(&kdl);

    let out = ci(&lab, "pr");
    assert!(out.status.success(), "{}", text(&out));
    let md = std::fs::read_to_string(lab.path("vmctl-plan/plan.md")).expect("plan.md");
    assert!(md.starts_with("### vmctl plan"), "{md}");
    assert!(md.contains("| `+` | `ci-probe` | create |"), "{md}");
    assert!(lab.path("vmctl-plan/plan.json").is_file());
    assert!(!lab.state().join("vms").exists(), "pr changes nothing");

    let out = ci(&lab, "merge");
    assert!(out.status.success(), "{}", text(&out));
    lab.wait_vm("ci-probe", "running", |v| {
        v["state"] == "running" && v["guest"]["memory_mib"] == 64
    });

    // The same plan once more: stale, refused, exit 1.
    let out = ci(&lab, "merge");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("was created since the plan"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_pre_commit_hooks_pass_good_files_and_fail_bad_ones() {
    let config = std::fs::read_to_string(repo("examples/ci/pre-commit-config.yaml"))
        .expect("the pre-commit config");
    let entries: Vec<&str> = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("entry: "))
        .collect();
    assert_eq!(entries.len(), 2, "{config}");
    let good = "vm \"a\" {\n    os \"diag\"\n}\n";
    let messy = "vm \"a\" { os \"diag\"; }\n";
    let invalid = "vm \"a\" {\n    os \"diag\"\n    memory 512\n}\n";
    for (entry, bad) in entries.iter().zip([messy, invalid]) {
        let lab = Lab::new(good);
        let run = |lab: &Lab| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("{entry} vmctl.kdl"))
                .current_dir(lab.dir.path())
                .env("PATH", path_env())
                .output()
                .expect("run the hook")
        };
        let out = run(&lab);
        assert!(out.status.success(), "{entry}: {}", text(&out));
        lab.write(bad);
        let out = run(&lab);
        assert_eq!(out.status.code(), Some(1), "{entry} passed {bad:?}");
    }
}

#[test]
fn the_github_workflow_runs_the_same_script() {
    let wf = std::fs::read_to_string(repo("examples/ci/github-actions.yml")).expect("workflow");
    for step in [
        "run: ./examples/ci/ci.sh pr",
        "run: ./examples/ci/ci.sh merge",
    ] {
        assert!(wf.contains(step), "the workflow lacks `{step}`");
    }
    assert!(!wf.contains('\t'), "YAML does not allow tabs");
}
