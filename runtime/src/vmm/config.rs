//! The machine config: everything a VMM process needs to build a VM, fully
//! resolved by the control plane (crate::resolve) and written as
//! `machine.json` beside `vm.json` before the VMM is spawned — as Firecracker's
//! VMM takes one complete config. The VMM reads nothing else: it knows no
//! KDL, no OS names and no image cache, only files, sizes and modes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::irq::IrqMode;
use crate::arch::x86_64::layout;
use crate::devices::virtio::net::{Mac, tap};

/// Version of the `machine.json` document.
pub const MACHINE_CONFIG_VERSION: &str = "1";

/// `machine.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub format_version: String,
    /// The VM's name, for logs only.
    pub name: String,
    /// bzImage or ELF.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// vCPUs online at boot.
    pub cpus: u32,
    /// Possible vCPUs (hot-add headroom; the MADT lists this many).
    pub max_cpus: u32,
    /// Boot RAM.
    pub memory_mib: u64,
    /// RAM the guest may reach by hot-add (the reserved hotplug region is
    /// `max_memory_mib - memory_mib`).
    pub max_memory_mib: u64,
    /// virtio-blk disks, in declaration order (device `i` at
    /// `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`, GSI `VIRTIO_GSI_BASE + i`).
    pub disks: Vec<DiskConfig>,
    /// virtio-net devices, after the disks in the virtio-mmio layout (NIC
    /// `j` is device `disks.len() + j`); docs/networking.md.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// `polled` for guests that poll their devices (diag), `irqchip` else.
    pub irq_mode: IrqMode,
    /// Where COM1's output is appended.
    pub console_log: PathBuf,
    /// `console_log` is rotated to `<console_log>.1` when it would pass this.
    #[serde(default = "default_console_log_max")]
    pub console_log_max_bytes: u64,
}

fn default_console_log_max() -> u64 {
    crate::devices::serial::CONSOLE_LOG_MAX
}

/// One disk file behind a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The disk's name; also its virtio-blk serial (what the guest reports as `id`).
    pub name: String,
    pub path: PathBuf,
}

/// One virtio-net device backed by a persistent host TAP that the control
/// plane created (docs/networking.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    /// The NIC's name in the VM (the network it is on), for logs and status.
    pub name: String,
    /// "52:54:00:12:34:56" form.
    pub mac: String,
    /// The host TAP interface to attach to.
    pub tap: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the machine config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the machine config {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl MachineConfig {
    /// Read and check `machine.json`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let cfg: MachineConfig = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        cfg.check().map_err(invalid)?;
        Ok(cfg)
    }

    /// The invariants the VMM relies on.
    pub fn check(&self) -> Result<(), String> {
        if self.format_version != MACHINE_CONFIG_VERSION {
            return Err(format!(
                "format_version {:?}; this VMM reads {MACHINE_CONFIG_VERSION:?}",
                self.format_version
            ));
        }
        if self.cpus == 0 || self.max_cpus < self.cpus {
            return Err(format!(
                "cpus {} max {}: need 1 <= cpus <= max",
                self.cpus, self.max_cpus
            ));
        }
        if self.memory_mib == 0 || self.max_memory_mib < self.memory_mib {
            return Err(format!(
                "memory {} MiB max {} MiB: need 0 < memory <= max",
                self.memory_mib, self.max_memory_mib
            ));
        }
        let devices = self.disks.len() + self.nics.len();
        if devices as u64 > layout::VIRTIO_MMIO_MAX_DEVICES {
            return Err(format!(
                "{} disks and {} NICs; at most {} virtio devices in all",
                self.disks.len(),
                self.nics.len(),
                layout::VIRTIO_MMIO_MAX_DEVICES
            ));
        }
        for (i, nic) in self.nics.iter().enumerate() {
            let mac = Mac::parse(&nic.mac).ok_or_else(|| {
                format!(
                    "NIC {:?}: MAC {:?} is not of the form 52:54:00:12:34:56",
                    nic.name, nic.mac
                )
            })?;
            if !mac.is_unicast() {
                return Err(format!(
                    "NIC {:?}: MAC {} is a group (multicast/broadcast) or zero address",
                    nic.name, nic.mac
                ));
            }
            if !tap::valid_name(&nic.tap) {
                return Err(format!(
                    "NIC {:?}: TAP name {:?} is not an interface name (1 to {} bytes, no '/', ':', whitespace)",
                    nic.name,
                    nic.tap,
                    tap::MAX_NAME_LEN
                ));
            }
            for other in &self.nics[..i] {
                if other.tap == nic.tap {
                    return Err(format!(
                        "NICs {:?} and {:?} both use TAP {:?}",
                        other.name, nic.name, nic.tap
                    ));
                }
                if Mac::parse(&other.mac) == Some(mac) {
                    return Err(format!(
                        "NICs {:?} and {:?} both have MAC {mac}",
                        other.name, nic.name
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MachineConfig {
        MachineConfig {
            format_version: MACHINE_CONFIG_VERSION.into(),
            name: "a".into(),
            kernel: "/k".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            cpus: 1,
            max_cpus: 4,
            memory_mib: 256,
            max_memory_mib: 1024,
            disks: vec![DiskConfig {
                name: "root".into(),
                path: "/d/root.raw".into(),
            }],
            nics: vec![NicConfig {
                name: "lab".into(),
                mac: "52:54:00:12:34:56".into(),
                tap: "vt-lab-a".into(),
            }],
            irq_mode: IrqMode::Polled,
            console_log: "/vm/console.log".into(),
            console_log_max_bytes: 1 << 20,
        }
    }

    #[test]
    fn round_trips_and_rejects_what_the_vmm_cannot_build() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("machine.json");
        std::fs::write(&p, cfg().to_json()).unwrap();
        assert_eq!(MachineConfig::load(&p).unwrap(), cfg());
        for bad in [
            MachineConfig { cpus: 0, ..cfg() },
            MachineConfig {
                max_cpus: 0,
                ..cfg()
            },
            MachineConfig {
                max_memory_mib: 128,
                ..cfg()
            },
            MachineConfig {
                format_version: "2".into(),
                ..cfg()
            },
        ] {
            std::fs::write(&p, bad.to_json()).unwrap();
            assert!(matches!(
                MachineConfig::load(&p),
                Err(ConfigError::Invalid { .. })
            ));
        }
        std::fs::write(&p, b"{").unwrap();
        assert!(MachineConfig::load(&p).is_err());
    }

    #[test]
    fn nics_are_optional_in_older_configs() {
        let mut v = serde_json::to_value(cfg()).unwrap();
        v.as_object_mut().unwrap().remove("nics");
        let old: MachineConfig = serde_json::from_value(v).unwrap();
        assert!(old.nics.is_empty());
        assert_eq!(old.check(), Ok(()));
    }

    #[test]
    fn nics_are_checked() {
        let nic = |name: &str, mac: &str, tap: &str| NicConfig {
            name: name.into(),
            mac: mac.into(),
            tap: tap.into(),
        };
        let with = |nics: Vec<NicConfig>| MachineConfig { nics, ..cfg() }.check();
        assert_eq!(
            with(vec![
                nic("a", "02:00:00:00:00:01", "t0"),
                nic("b", "02:00:00:00:00:02", "t1")
            ]),
            Ok(())
        );
        for (nics, why) in [
            (vec![nic("a", "52:54:00:12:34", "t0")], "not of the form"),
            (vec![nic("a", "52:54:00:12:34:5g", "t0")], "not of the form"),
            (vec![nic("a", "01:00:5e:00:00:01", "t0")], "group"),
            (vec![nic("a", "ff:ff:ff:ff:ff:ff", "t0")], "group"),
            (vec![nic("a", "00:00:00:00:00:00", "t0")], "zero"),
            (
                vec![nic("a", "02:00:00:00:00:01", "sixteen-bytes-xx")],
                "TAP name",
            ),
            (vec![nic("a", "02:00:00:00:00:01", "")], "TAP name"),
            (vec![nic("a", "02:00:00:00:00:01", "../x")], "TAP name"),
            (
                vec![
                    nic("a", "02:00:00:00:00:01", "t0"),
                    nic("b", "02:00:00:00:00:02", "t0"),
                ],
                "both use TAP",
            ),
            (
                vec![
                    nic("a", "02:00:00:00:00:01", "t0"),
                    nic("b", "02:00:00:00:00:01", "t1"),
                ],
                "both have MAC",
            ),
        ] {
            let e = with(nics).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let many = (0..16)
            .map(|i| nic("n", &format!("02:00:00:00:00:{i:02x}"), &format!("t{i}")))
            .collect();
        assert!(with(many).unwrap_err().contains("at most 16"));
    }
}
