//! Built-in Linux OSes (`debian-12`, `debian-12-minimal`) are plugged in by
//! the control plane, not known to the runtime: their images are built from
//! Debian packages by `vmctl-image`, which the runtime (and so the VMM) must
//! not link. The runtime asks an [`OsProvider`] what to boot, what a new
//! disk starts as, what to write into the disks before each boot, and how to
//! read a `disk source=` image that is not raw (qcow2, vdi, ...: converted
//! by qemu-img, which the runtime must not run either) — and stays a plain
//! "kernel + initrd + raw disk files" machine otherwise.

use std::path::{Path, PathBuf};

use vmctl_spec::model::{DiskSpec, ImageSpec, SourceFormat, VmSpec};

/// What a `disk source=` image is, as the provider found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceImage {
    pub format: SourceFormat,
    /// The size of the disk it holds: the raw file's size after import.
    pub virtual_size: u64,
}

/// One NIC as its guest should configure it (a debian-12 guest writes a
/// systemd-networkd file from it): the VM's record joined with its
/// network's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNic {
    /// The network's name.
    pub network: String,
    /// `52:54:00:12:34:56` form.
    pub mac: String,
    /// The NIC's address with its network's prefix, `10.20.0.10/24`.
    pub address: String,
    /// The network's host (bridge) address; the default route when the
    /// network has NAT.
    pub host_address: String,
    pub nat: bool,
}

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
    /// `disks` are the VM's disks with their files, `nics` its NICs as the
    /// guest should configure them.
    fn configure(
        &self,
        spec: &VmSpec,
        disks: &[(DiskSpec, PathBuf)],
        nics: &[GuestNic],
    ) -> Result<(), String>;

    /// What the image `path` (a disk's `source`) is: `declared` (its
    /// `source-format`) or detected, and the size of the disk it holds. A
    /// corrupt image is an error naming it. Called before anything of the
    /// VM is created.
    fn inspect_source(
        &self,
        path: &Path,
        declared: Option<SourceFormat>,
    ) -> Result<SourceImage, String>;

    /// Write `image` (a non-raw one from `inspect_source`) as a sparse raw
    /// file at `to` (mode 0600). The runtime fsyncs and renames it into
    /// place, and removes it when this fails.
    fn convert_source(&self, path: &Path, image: &SourceImage, to: &Path) -> Result<(), String>;
}
