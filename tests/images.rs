//! End-to-end tests of the built-in OS images through the vmctl binary that
//! need the host's apt and mmdebstrap but no KVM: a package apt cannot find
//! fails `apply` before anything is created, naming the package. (Booting a
//! debian-12 image needs a `/dev/kvm` that delivers interrupts: the nested
//! lab does that, docs/nested-lab.md.)

use std::process::Command;

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

#[test]
fn an_unknown_package_names_itself_and_nothing_is_created() {
    if !on_path("mmdebstrap") || !on_path("apt-get") {
        if std::env::var_os("VMCTL_REQUIRE_IMAGE_TOOLS").is_some() {
            panic!("VMCTL_REQUIRE_IMAGE_TOOLS is set but mmdebstrap/apt-get is missing");
        }
        eprintln!("skipped: needs apt-get and mmdebstrap (apt-get install mmdebstrap)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kdl = dir.path().join("vmctl.kdl");
    std::fs::write(
        &kdl,
        "vm \"web\" {\n    os \"debian-12\"\n    packages \"vmctl-no-such-package\"\n}\n",
    )
    .expect("write kdl");
    let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .args(["apply", "--auto-approve", "-f"])
        .arg(&kdl)
        .env("NO_COLOR", "1")
        .output()
        .expect("run vmctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // The report is wrapped to the terminal width: compare words.
    let words = stderr
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        words.contains("apt cannot find the package \"vmctl-no-such-package\""),
        "{stderr}"
    );
    assert!(
        !dir.path().join(".vmctl/vms/web").exists(),
        "no VM was created"
    );
    assert!(
        !dir.path().join("vmctl.lock").exists(),
        "nothing was pinned"
    );
    // No half-built image is left in the cache.
    let images: Vec<_> = std::fs::read_dir(dir.path().join(".vmctl/images"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(images.iter().all(|n| n == ".lock"), "{images:?}");
}
