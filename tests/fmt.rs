//! `vmctl fmt` through the binary: `--check` lists unformatted files and
//! exits 1 without touching them; `fmt` rewrites them (and is then clean);
//! a file that is not KDL is named and left alone; every KDL file in this
//! repository is formatted.

mod common;

use common::{Lab, text};

const MESSY: &str = "vm alpha{os diag;memory \"1024MiB\"}\n";

#[test]
fn check_lists_and_fmt_rewrites() {
    let lab = Lab::new(MESSY);
    std::fs::create_dir(lab.path("sub")).expect("mkdir");
    std::fs::write(lab.path("sub/ok.kdl"), "vm \"b\" {\n    os \"diag\"\n}\n").expect("write");
    std::fs::create_dir(lab.path(".vmctl")).expect("mkdir");
    std::fs::write(lab.path(".vmctl/skip.kdl"), MESSY).expect("hidden dirs are skipped");

    let out = lab.run_bare(&["fmt", "--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "./vmctl.kdl\n");
    assert_eq!(std::fs::read_to_string(lab.file()).expect("read"), MESSY);

    let out = lab.run_bare(&["fmt"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(lab.file()).expect("read"),
        "vm \"alpha\" {\n    os \"diag\"\n    memory \"1GiB\"\n}\n"
    );
    let out = lab.run_bare(&["fmt", "--check", "vmctl.kdl", "sub"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty());

    std::fs::write(lab.path("bad.kdl"), "vm \"a\" {\n").expect("write");
    let out = lab.run_bare(&["fmt", "--check", "bad.kdl", "vmctl.kdl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("bad.kdl"), "{}", text(&out));
}

#[test]
fn every_kdl_file_in_the_repository_is_formatted() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .args(["fmt", "--check"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run vmctl fmt");
    assert!(out.status.success(), "run `vmctl fmt` on:\n{}", text(&out));
}
