//! The `.gitignore` hint through the binary: the first command that creates
//! a state directory inside a git work tree that does not ignore it says
//! which line to add — once; an ignored state directory, or one outside any
//! work tree, gets no hint. (An empty file: `apply` creates the state
//! directory and its lock but boots nothing, so no KVM is needed.)

mod common;

use std::process::Command;

use common::{Lab, text};

const HINT: &str = "hint: vmctl created its state directory";

fn git(lab: &Lab, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(lab.dir.path())
        .output()
        .expect("git must be installed");
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
}

#[test]
fn the_first_state_directory_in_an_unignoring_work_tree_gets_one_hint() {
    let lab = Lab::new("// no VMs yet\n");
    git(&lab, &["init", "-q"]);
    let first = text(&lab.run(&["apply", "--auto-approve"]));
    assert!(first.contains(HINT), "{first}");
    assert!(first.contains("echo '.vmctl/' >>"), "{first}");
    assert!(lab.state().is_dir());
    let second = text(&lab.run(&["apply", "--auto-approve"]));
    assert!(!second.contains(HINT), "once only:\n{second}");
}

#[test]
fn an_ignored_state_directory_gets_no_hint() {
    let lab = Lab::new("// no VMs yet\n");
    git(&lab, &["init", "-q"]);
    std::fs::write(lab.path(".gitignore"), ".vmctl/\n").expect("write");
    let out = text(&lab.run(&["apply", "--auto-approve"]));
    assert!(lab.state().is_dir());
    assert!(!out.contains(HINT), "{out}");
}

#[test]
fn outside_a_work_tree_there_is_no_hint() {
    let lab = Lab::new("// no VMs yet\n");
    let out = text(&lab.run(&["apply", "--auto-approve"]));
    assert!(lab.state().is_dir());
    assert!(!out.contains(HINT), "{out}");
}
