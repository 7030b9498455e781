//! The resolved desired state: what every other crate consumes.
//!
//! Everything here is fully resolved — OS-profile defaults applied, `copy-from`
//! inheritance done, sizes in bytes/MiB, paths absolute — so that the planner and
//! the runtime never see KDL, spans or optional fields that have a default.
//! The serde form of [`DesiredState`] *is* the `validate --json` contract
//! (`format_version` "1"); fields may be added, never renamed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::net::{Ipv4Subnet, MacAddr};

/// The JSON contract version written by every `--json` document.
pub const FORMAT_VERSION: &str = "1";

/// A whole KDL file, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub format_version: String,
    /// VMs in the order the file declares them.
    pub vms: Vec<VmSpec>,
    /// Custom boot images declared with `image "name" { ... }`.
    #[serde(default)]
    pub images: Vec<ImageSpec>,
    /// Networks declared with `network "name" { ... }`, in file order
    /// (absent from the JSON when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkSpec>,
    /// The shared state of a lab spread over hosts (`cluster "name" { ... }`;
    /// absent from the JSON in a single-host lab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpec>,
    /// The hosts VMs are placed on (`host "name" { ... }`), in file order;
    /// empty (and absent from the JSON) in a single-host lab.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostSpec>,
}

impl DesiredState {
    /// A state of just these VMs (no images, networks or hosts).
    pub fn of_vms(vms: Vec<VmSpec>) -> DesiredState {
        DesiredState {
            format_version: FORMAT_VERSION.to_string(),
            vms,
            images: Vec::new(),
            networks: Vec::new(),
            cluster: None,
            hosts: Vec::new(),
        }
    }

    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn vm(&self, name: &str) -> Option<&VmSpec> {
        self.vms.iter().find(|v| v.name == name)
    }

    pub fn network(&self, name: &str) -> Option<&NetworkSpec> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// A declared network: one Linux bridge on the host, with the host side's
/// address, that the VMs' NICs are plugged into (docs/networking-hosts.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// Declared, or chosen (a free 10.x.y.0/24, docs/kdl.md).
    pub subnet: Ipv4Subnet,
    /// The bridge's address: the subnet's first host address (`.1`).
    pub host_ip: Ipv4Addr,
    /// Masquerade the subnet to the host's other interfaces (default off).
    #[serde(default)]
    pub nat: bool,
}

impl NetworkSpec {
    /// A network on `subnet` without NAT.
    pub fn new(name: impl Into<String>, subnet: Ipv4Subnet) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            subnet,
            host_ip: subnet.host_ip(),
            nat: false,
        }
    }
}

/// One NIC of a VM, resolved: the network it plugs into, its address in that
/// network's subnet and its MAC (declared or derived, never missing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// One virtual machine as declared, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    /// `diag`, `debian-12`, or the name of an `image`.
    pub os: String,
    /// Boot vCPUs.
    pub cpus: u32,
    /// Hot-add headroom: the most vCPUs this VM can have without a restart.
    pub max_cpus: u32,
    /// Boot RAM in MiB (a multiple of 2).
    pub memory_mib: u64,
    /// Hot-add headroom in MiB.
    pub max_memory_mib: u64,
    pub disks: Vec<DiskSpec>,
    /// VMs that must be running before this one starts (and stopped after it).
    pub depends_on: Vec<String>,
    /// Created by copying this VM's disks.
    pub copy_from: Option<String>,
    /// cgroup v2 `cpu.weight`, 1..=10000 (default 100).
    pub cpu_weight: u32,
    /// Whether apply keeps this VM running (default true).
    #[serde(default = "default_true")]
    pub autostart: bool,
    /// The boot image when `os` names an `image` node; `null` for the built-in
    /// OSes (`diag`, `debian-12`), which the runtime knows how to boot.
    #[serde(default)]
    pub image: Option<ImageSpec>,
    /// Extra Debian packages installed into this VM's image at build time
    /// (`packages "nginx" ...`; built-in Linux OSes only), sorted, unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// First-boot configuration written into the VM's root disk
    /// (`hostname`, `user`, `file`; built-in Linux OSes only).
    #[serde(default, skip_serializing_if = "GuestConfig::is_empty")]
    pub config: GuestConfig,
    /// NICs in declaration order (`nic "lab" ip="..." mac="..."`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
    /// The host this VM is pinned to (`host "h1"`); `None`: placed by
    /// [`PlacementSpec`] rules, or a single-host lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How to choose a host for an unpinned VM (`placement { ... }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,
}

/// What vmctl configures inside a built-in Linux guest: applied at every
/// boot by the guest's `vmctl-config` service from `/etc/vmctl/config.json`,
/// which vmctl writes into the root disk at create and before a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// The guest's hostname; `None` means the VM name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
}

impl GuestConfig {
    pub fn is_empty(&self) -> bool {
        self.hostname.is_none() && self.users.is_empty() && self.files.is_empty()
    }
}

/// `user "alice" { ssh-key "..."; sudo #true }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub name: String,
    /// OpenSSH public keys (one `authorized_keys` line each).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Passwordless sudo.
    #[serde(default)]
    pub sudo: bool,
}

/// `file "/etc/motd" content="..."`: an absolute path in the guest and its
/// whole content, written with mode `mode` (default 0644), owned by root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    pub path: String,
    pub content: String,
    #[serde(default = "default_file_mode")]
    pub mode: u32,
}

fn default_file_mode() -> u32 {
    0o644
}

impl VmSpec {
    /// What `vm "name" { os "diag" }` resolves to: the built-in diag guest
    /// with its profile's defaults (1 vCPU, 128 MiB, no disk, cpu-weight 100).
    /// Start here and override fields with struct-update syntax.
    pub fn diag(name: impl Into<String>) -> Self {
        VmSpec {
            name: name.into(),
            os: "diag".into(),
            cpus: 1,
            max_cpus: 1,
            memory_mib: 128,
            max_memory_mib: 128,
            disks: Vec::new(),
            depends_on: Vec::new(),
            copy_from: None,
            cpu_weight: 100,
            autostart: true,
            image: None,
            packages: Vec::new(),
            config: GuestConfig::default(),
            nics: Vec::new(),
            host: None,
            placement: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// One virtual disk: one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub name: String,
    pub size_bytes: u64,
    pub format: DiskFormat,
    /// A user-chosen location (absolute); `null` means
    /// `<state-dir>/vms/<vm>/disks/<name>.raw`.
    pub path: Option<PathBuf>,
    /// An image to import on create (absolute path).
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// The format of `source` as declared (`source-format=`); `None`: the
    /// control plane detects it from the file's first bytes (raw when no
    /// known header matches). docs/disks.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<SourceFormat>,
}

/// A disk image format `source=` can import. The VM's disk is always raw:
/// an image in another format is converted when the disk is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Raw,
    Qcow2,
    Vdi,
    Vmdk,
    /// Microsoft VHD (qemu calls it `vpc`).
    Vhd,
    Vhdx,
    /// Parallels (`.hds`/`.hdd`).
    Parallels,
}

impl SourceFormat {
    pub const ALL: [SourceFormat; 7] = [
        SourceFormat::Raw,
        SourceFormat::Qcow2,
        SourceFormat::Vdi,
        SourceFormat::Vmdk,
        SourceFormat::Vhd,
        SourceFormat::Vhdx,
        SourceFormat::Parallels,
    ];

    /// The name in KDL (`source-format="..."`) and in the state JSON.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Raw => "raw",
            SourceFormat::Qcow2 => "qcow2",
            SourceFormat::Vdi => "vdi",
            SourceFormat::Vmdk => "vmdk",
            SourceFormat::Vhd => "vhd",
            SourceFormat::Vhdx => "vhdx",
            SourceFormat::Parallels => "parallels",
        }
    }

    pub fn from_name(name: &str) -> Option<SourceFormat> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// qemu-img's name for it (`-f`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            SourceFormat::Vhd => "vpc",
            other => other.name(),
        }
    }
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
}

/// A custom boot image: a kernel (bzImage or ELF), an optional initrd and a
/// command line. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// `cluster "name" { state "etcd" endpoints="..." ... }`: where the hosts of
/// a lab agree on its lock, records and journal (docs/scale-out.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    /// The shared-state store; etcd is the only one.
    pub state: StateBackend,
    /// Client URLs (`http://` or `https://`), in the order written.
    pub endpoints: Vec<String>,
    /// Lifetime of the lock's lease in seconds: how long a dead holder keeps
    /// the lock (default 15).
    pub lock_ttl_secs: u64,
    /// TLS: the CA that signs the servers' certificates (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// TLS client certificate and its key (absolute paths; both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// etcd user; its password comes from the environment variable
    /// `password_env` (never from the file). Both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

/// Default `lock-ttl` in seconds.
pub const DEFAULT_LOCK_TTL_SECS: u64 = 15;

/// The kinds of shared-state store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    Etcd,
}

impl StateBackend {
    pub fn name(self) -> &'static str {
        match self {
            StateBackend::Etcd => "etcd",
        }
    }
}

/// Default `vmctl` of a host: found on the PATH of its SSH session.
pub const DEFAULT_HOST_VMCTL: &str = "vmctl";
/// The default `state-dir` of a host is this directory + `/<cluster name>`.
pub const DEFAULT_HOST_STATE_ROOT: &str = "/var/lib/vmctl";

/// `host "name" { ssh "..."; labels ...; reserve ...; drain #true; ... }`:
/// a machine VMs are placed on, reached over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    pub name: String,
    /// The SSH destination (`[user@]host`), passed to `ssh` as one argument.
    pub ssh: String,
    /// Free-form labels (`labels rack="a"`) that placement filters and
    /// spreads on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What placement keeps free on this host for itself.
    #[serde(default)]
    pub reserve: Reserve,
    /// No new VMs are placed here, and its VMs are to move away.
    #[serde(default)]
    pub drain: bool,
    /// The `vmctl` binary on the host (default `vmctl`, on its PATH).
    pub vmctl: String,
    /// vmctl's state directory on the host (absolute; default
    /// `/var/lib/vmctl/<cluster name>`).
    pub state_dir: String,
}

/// `reserve memory="2GiB" cpus=1` (default: nothing reserved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    pub memory_mib: u64,
    pub cpus: u32,
}

/// `placement { spread "rack"; labels rack="a" }` in a `vm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    /// Spread the VMs that name the same key across this label's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
    /// Only hosts carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}
