//! OS profiles: the defaults each OS brings for what a VM leaves out.
//!
//! The lowest layer of resolution (explicit > copy-from source > `defaults`
//! node > OS profile). A custom `image` gets [`IMAGE_PROFILE`].

/// Defaults an OS supplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsProfile {
    pub name: &'static str,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Disks every VM of this OS has: (name, size in bytes).
    pub disks: &'static [(&'static str, u64)],
    pub description: &'static str,
}

/// The built-in OSes, in the order error messages list them.
pub const BUILTIN: &[OsProfile] = &[
    OsProfile {
        name: "diag",
        memory_mib: 128,
        cpus: 1,
        disks: &[],
        description: "vmctl's built-in diagnostic guest (no download)",
    },
    OsProfile {
        name: "debian-12",
        memory_mib: 1024,
        cpus: 1,
        disks: &[("root", 8 << 30)],
        description: "Debian 12 (bookworm): systemd, openssh-server and the guest agent on an ext4 root disk, built from Debian packages",
    },
    OsProfile {
        name: "debian-12-minimal",
        memory_mib: 256,
        cpus: 1,
        disks: &[],
        description: "Debian 12's cloud kernel with a busybox initramfs as the whole guest (fast, tiny; no root filesystem)",
    },
];

/// Defaults for a VM whose `os` names an `image` node.
pub const IMAGE_PROFILE: OsProfile = OsProfile {
    name: "<image>",
    memory_mib: 512,
    cpus: 1,
    disks: &[],
    description: "a custom kernel/initrd declared with `image`",
};

/// The built-in profile named `name`.
pub fn builtin(name: &str) -> Option<&'static OsProfile> {
    BUILTIN.iter().find(|p| p.name == name)
}

/// Names of the built-in OSes.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|p| p.name)
}

/// Default `cpu-weight` (cgroup v2's default `cpu.weight`).
pub const DEFAULT_CPU_WEIGHT: u32 = 100;
/// Default kernel command line of an `image` without `cmdline`.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
