//! What the end-to-end tests through the binary share: a lab (a KDL file in
//! a temporary directory with its own `.vmctl/` state directory), helpers to
//! run vmctl against it and poll its status, a `Drop` that destroys every VM
//! it made (and kills any VMM left under its state directory), and the
//! checksums diag reports.

#![allow(dead_code)] // each test file uses a different part of it

pub mod hosts;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Skips (or, with `VMCTL_REQUIRE_KVM=1`, fails) without `/dev/kvm`.
pub fn kvm_available() -> bool {
    vmctl_runtime::testing::kvm_or_skip()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new(kdl: &str) -> Lab {
        Lab::new_in(&std::env::temp_dir(), kdl)
    }

    /// A lab in a new directory under `parent` (another filesystem).
    pub fn new_in(parent: &Path, kdl: &str) -> Lab {
        let lab = Lab {
            dir: tempfile::tempdir_in(parent).expect("tempdir"),
        };
        lab.write(kdl);
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn file(&self) -> PathBuf {
        self.path("vmctl.kdl")
    }

    pub fn state(&self) -> PathBuf {
        self.path(".vmctl")
    }

    pub fn write(&self, kdl: &str) {
        std::fs::write(self.file(), kdl).expect("write kdl");
    }

    /// vmctl in the lab's directory, no `-f` (it defaults to `vmctl.kdl`).
    pub fn bare(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmctl"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("VMCTL_STATE_DIR")
            .stdin(Stdio::null());
        c
    }

    /// vmctl with `-f <lab file>`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.bare(args);
        c.arg("-f").arg(self.file());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run vmctl")
    }

    pub fn run_bare(&self, args: &[&str]) -> Output {
        self.bare(args).output().expect("run vmctl")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vmctl {args:?} failed:\n{}",
            text(&out)
        );
        text(&out)
    }

    pub fn status(&self) -> Value {
        let out = self.ok(&["status", "--json"]);
        let start = out.find('{').expect("json in status output");
        serde_json::from_str(&out[start..]).expect("status --json parses")
    }

    pub fn vm(&self, name: &str) -> Value {
        self.status()["vms"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// Poll (bounded) until `check` holds for the VM's status entry.
    pub fn wait_vm(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.vm(name);
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: never {what}; last status: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the guest reports exactly the declared cpus and memory.
    pub fn wait_guest(&self, name: &str, cpus: u64, memory_mib: u64) -> Value {
        self.wait_vm(
            name,
            &format!("reported {cpus} cpus / {memory_mib} MiB"),
            |v| {
                v["state"] == "running"
                    && v["guest"]["cpus"] == cpus
                    && v["guest"]["memory_mib"] == memory_mib
            },
        )
    }

    pub fn vmm_pids(&self) -> Vec<i32> {
        vmm_pids_under(&self.state())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.state().exists() {
            let _ = self.run(&["destroy", "--auto-approve"]);
        }
        for pid in self.vmm_pids() {
            // SAFETY: plain kill(2) of a process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// VMM processes (not zombies) whose command line names `state` (one copy,
/// shared with the hosts harness and `cargo xtask chaos`).
pub use vmctl_hostrpc::testkit::vmm_pids_under;

/// qemu-img (Debian's qemu-utils, which CI installs) makes the foreign
/// images: without it the import test skips, or fails when
/// `VMCTL_REQUIRE_KVM=1` (CI, where it must run).
pub fn qemu_img_available() -> bool {
    let found = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("VMCTL_REQUIRE_KVM").as_deref() != Ok("1"),
            "qemu-img not found (apt-get install qemu-utils) and VMCTL_REQUIRE_KVM=1"
        );
        eprintln!("skipping: qemu-img not found (apt-get install qemu-utils)");
    }
    found
}

/// FNV-1a 64, as the diag guest reports sector 0 (docs/diag-guest.md).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
