//! Built-in Linux OSes (`debian-12`, `debian-12-minimal`) are plugged in by
//! the control plane, not known to the runtime: their images are built from
//! Debian packages by `vmctl-image`, which the runtime (and so the VMM) must
//! not link. The runtime asks an [`OsProvider`] three things — what to boot,
//! what a new disk starts as, and what to write into the disks before each
//! boot — and stays a plain "kernel + initrd + disk files" machine otherwise.

use std::path::PathBuf;

use vmctl_spec::model::{DiskSpec, ImageSpec, VmSpec};

/// The control plane's answer for OSes the runtime does not know itself.
pub trait OsProvider: Send + Sync + std::fmt::Debug {
    /// The kernel, initrd and command line that boot `spec`; `Ok(None)` when
    /// this provider does not provide `spec.os`.
    fn boot_image(&self, spec: &VmSpec) -> Result<Option<ImageSpec>, String>;

    /// The file a new disk of `spec` starts as a copy of (a root disk: the
    /// OS image's root filesystem); `Ok(None)`: it starts empty. The runtime
    /// copies it (sparse, atomically) and grows it to the declared size.
    fn disk_source(&self, spec: &VmSpec, disk: &DiskSpec) -> Result<Option<PathBuf>, String>;

    /// Called with the VM stopped, before each boot: bring what the guest
    /// reads at boot (its first-boot configuration) up to date with `spec`.
    /// `disks` are the VM's disks with their files.
    fn configure(&self, spec: &VmSpec, disks: &[(DiskSpec, PathBuf)]) -> Result<(), String>;
}
