//! Test support shared by every crate's KVM tests (runtime/tests/kvm.rs,
//! tests/apply.rs, tests/watch.rs): one rule for when a test that needs
//! `/dev/kvm` runs, is skipped, or fails.
//!
//! Without `/dev/kvm` such a test prints `skipped: /dev/kvm not available`
//! and passes — which on a CI host that should have KVM would hide that
//! nothing ran. `VMCTL_REQUIRE_KVM=1` turns that skip into a failure
//! (`.ci/run` sets it).
//!
//! KVM test binaries (`harness = false`) are also their own VMM: the
//! runtime re-executes them as `__vmm` ([`run_as_vmm_if_asked`]).

use std::ffi::OsStr;

/// The environment variable that makes a missing `/dev/kvm` a failure.
pub const REQUIRE_KVM: &str = "VMCTL_REQUIRE_KVM";

/// What a KVM test does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmGate {
    Run,
    Skip,
    /// Missing KVM where it is required: the message to fail with.
    Fail(String),
}

/// The decision, from whether KVM is usable and `VMCTL_REQUIRE_KVM`'s
/// value (set to anything but empty or `0` means required).
pub fn gate(kvm_usable: bool, require: Option<&OsStr>) -> KvmGate {
    let required = require.is_some_and(|v| !v.is_empty() && v != "0");
    match (kvm_usable, required) {
        (true, _) => KvmGate::Run,
        (false, false) => KvmGate::Skip,
        (false, true) => KvmGate::Fail(format!(
            "/dev/kvm is not available but {REQUIRE_KVM} is set: this test must run here"
        )),
    }
}

/// Whether `/dev/kvm` opens read-write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// For a test that needs KVM: `true` to run it; `false` (after printing
/// `skipped: /dev/kvm not available`) to return early. Panics — failing
/// the test — when KVM is missing and `VMCTL_REQUIRE_KVM` is set.
pub fn kvm_or_skip() -> bool {
    match gate(kvm_usable(), std::env::var_os(REQUIRE_KVM).as_deref()) {
        KvmGate::Run => true,
        KvmGate::Skip => {
            println!("skipped: /dev/kvm not available");
            false
        }
        KvmGate::Fail(msg) => panic!("{msg}"),
    }
}

/// In a KVM test binary's `main`, first thing: when this process was
/// started as a VMM (`BIN __vmm --vm-dir DIR`), run the VM and exit with its
/// code; otherwise return and let the tests run.
pub fn run_as_vmm_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("__vmm") {
        return;
    }
    let Some(dir) = args.get(3) else {
        eprintln!("usage: __vmm --vm-dir DIR");
        std::process::exit(2);
    };
    match crate::run_vmm(std::path::Path::new(dir)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vmctl __vmm: error: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kvm_skips_unless_required() {
        assert_eq!(gate(true, None), KvmGate::Run);
        assert_eq!(gate(true, Some(OsStr::new("1"))), KvmGate::Run);
        assert_eq!(gate(false, None), KvmGate::Skip);
        assert_eq!(gate(false, Some(OsStr::new(""))), KvmGate::Skip);
        assert_eq!(gate(false, Some(OsStr::new("0"))), KvmGate::Skip);
        assert!(matches!(
            gate(false, Some(OsStr::new("1"))),
            KvmGate::Fail(m) if m.contains("VMCTL_REQUIRE_KVM")
        ));
    }
}
