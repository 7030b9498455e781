//! From a VM's resolved spec to its VMM's machine config (crate::vmm::config).
//!
//! This is the control plane's side of the boundary: it knows OS names, the
//! image cache and the state directory's layout, and turns them into plain
//! files and numbers — the kernel to boot (the embedded diag guest written out
//! into the cache, the debian-12 image, or the user's own image), the
//! interrupt mode that guest needs, each disk's path. The VMM reads only the
//! result.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vmctl_spec::model::VmSpec;

use crate::os::{GuestNic, OsProvider};
use crate::state::{StateDir, VmDir};
use crate::vmm::config::{DiskConfig, MACHINE_CONFIG_VERSION, MachineConfig, NicConfig};
use crate::vmm::irq::IrqMode;

/// Command line of the built-in diag guest.
pub const DIAG_CMDLINE: &str = "console=ttyS0";
/// Environment variable that overrides the interrupt mode (`polled`/`irqchip`)
/// of every VM this vmctl starts (for experiments; docs/runtime.md).
pub const IRQ_MODE_ENV: &str = "VMCTL_IRQ_MODE";

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("VM {vm:?}: os {os:?} has no boot image")]
    NoImage { vm: String, os: String },
    #[error("the diag guest is not built into this vmctl")]
    NoDiag,
    #[error("VM {vm:?}: os {os:?}: {message}")]
    Os {
        vm: String,
        os: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(
        "VM {vm:?}: NIC {nic} is on network {network:?}, which this lab has no record of (apply creates a network before its VMs)"
    )]
    NoNetwork {
        vm: String,
        nic: usize,
        network: String,
    },
    #[error("VM {vm:?}: cannot read the lab's network records: {message}")]
    NetRecords { vm: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResolveError + '_ {
    move |source| ResolveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn absolute(p: &Path) -> Result<PathBuf, ResolveError> {
    std::path::absolute(p).map_err(io(p))
}

/// The machine config of `spec`, a VM of `state` whose files are in `dir`;
/// `os` provides the built-in Linux OSes (see [`crate::os`]).
pub fn machine_config(
    state: &StateDir,
    dir: &VmDir,
    spec: &VmSpec,
    os: Option<&dyn OsProvider>,
) -> Result<MachineConfig, ResolveError> {
    let provided = match (&spec.image, os) {
        (None, Some(p)) if spec.os != "diag" => {
            p.boot_image(spec).map_err(|message| ResolveError::Os {
                vm: spec.name.clone(),
                os: spec.os.clone(),
                message,
            })?
        }
        _ => None,
    };
    let (kernel, initrd, cmdline, mode) =
        if let Some(img) = spec.image.as_ref().or(provided.as_ref()) {
            (
                img.kernel.clone(),
                img.initrd.clone(),
                img.cmdline.clone(),
                IrqMode::Irqchip,
            )
        } else if spec.os == "diag" {
            (
                diag_kernel_file(state)?,
                None,
                DIAG_CMDLINE.to_string(),
                IrqMode::Polled,
            )
        } else {
            return Err(ResolveError::NoImage {
                vm: spec.name.clone(),
                os: spec.os.clone(),
            });
        };
    let irq_mode = match std::env::var(IRQ_MODE_ENV).as_deref() {
        Ok("polled") => IrqMode::Polled,
        Ok("irqchip") => IrqMode::Irqchip,
        _ => mode,
    };
    let disks = spec
        .disks
        .iter()
        .map(|d| {
            Ok(DiskConfig {
                name: d.name.clone(),
                path: absolute(&dir.disk_path(d))?,
            })
        })
        .collect::<Result<Vec<_>, ResolveError>>()?;
    let (nics, net_args) = nics(state, spec)?;
    let cmdline = if spec.os == "diag" && spec.image.is_none() {
        format!("{cmdline}{net_args}")
    } else {
        cmdline
    };
    let cpus = spec.cpus.max(1);
    Ok(MachineConfig {
        format_version: MACHINE_CONFIG_VERSION.into(),
        name: spec.name.clone(),
        kernel: absolute(&kernel)?,
        initrd: initrd.as_deref().map(absolute).transpose()?,
        cmdline,
        cpus,
        max_cpus: spec.max_cpus.max(cpus),
        memory_mib: spec.memory_mib,
        max_memory_mib: spec.max_memory_mib.max(spec.memory_mib),
        disks,
        nics,
        irq_mode,
        console_log: absolute(&dir.console_log())?,
        console_log_max_bytes: crate::devices::serial::CONSOLE_LOG_MAX,
    })
}

/// One NIC of the VM, resolved: what its guest configures and the
/// persistent TAP the control plane made for it (vmctl-hostnet's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNic {
    pub guest: GuestNic,
    pub tap: String,
}

/// The VM's NICs joined with their networks' records, which apply writes
/// before any VM on the network is created.
pub fn resolve_nics(state: &StateDir, spec: &VmSpec) -> Result<Vec<ResolvedNic>, ResolveError> {
    if spec.nics.is_empty() {
        return Ok(Vec::new());
    }
    let hn = vmctl_hostnet::HostNet::new(&state.root);
    let records = hn.records().map_err(|e| ResolveError::NetRecords {
        vm: spec.name.clone(),
        message: e.to_string(),
    })?;
    spec.nics
        .iter()
        .enumerate()
        .map(|(i, nic)| {
            let net = records
                .iter()
                .find(|r| r.spec.name == nic.network)
                .ok_or_else(|| ResolveError::NoNetwork {
                    vm: spec.name.clone(),
                    nic: i,
                    network: nic.network.clone(),
                })?;
            Ok(ResolvedNic {
                guest: GuestNic {
                    network: nic.network.clone(),
                    mac: nic.mac.to_string(),
                    address: format!("{}/{}", nic.ip, net.spec.subnet.prefix()),
                    host_address: net.spec.subnet.host_ip().to_string(),
                    nat: net.spec.nat,
                },
                tap: hn.tap(&spec.name, i),
            })
        })
        .collect()
}

/// Most targets diag pings (docs/diag-guest.md).
const DIAG_PING_TARGETS: usize = 4;

/// The VM's NICs for its VMM and the diag guest's network arguments: each
/// NIC's address with its network's prefix, and what to ping: its
/// networks' host addresses, then the addresses of the lab's other VMs on
/// those networks that have a record when this one starts (a VM that
/// `depends-on` another is started after it, so it pings it) — at most
/// [`DIAG_PING_TARGETS`] (docs/diag-guest.md).
fn nics(state: &StateDir, spec: &VmSpec) -> Result<(Vec<NicConfig>, String), ResolveError> {
    let resolved = resolve_nics(state, spec)?;
    if resolved.is_empty() {
        return Ok((Vec::new(), String::new()));
    }
    let mut gateways: Vec<String> = Vec::new();
    for n in &resolved {
        if !gateways.contains(&n.guest.host_address) && gateways.len() < DIAG_PING_TARGETS {
            gateways.push(n.guest.host_address.clone());
        }
    }
    for peer in peer_addresses(state, spec) {
        if !gateways.contains(&peer) && gateways.len() < DIAG_PING_TARGETS {
            gateways.push(peer);
        }
    }
    let addrs: Vec<&str> = resolved.iter().map(|n| n.guest.address.as_str()).collect();
    let args = format!(
        " vmctl.net={} vmctl.ping={}",
        addrs.join(","),
        gateways.join(",")
    );
    let cfg = resolved
        .into_iter()
        .map(|n| NicConfig {
            name: n.guest.network,
            mac: n.guest.mac,
            tap: n.tap,
        })
        .collect();
    Ok((cfg, args))
}

/// The addresses of the other VMs recorded in `state` on the networks
/// `spec` has a NIC on, in name order. Unreadable records are skipped:
/// this only chooses what diag pings.
fn peer_addresses(state: &StateDir, spec: &VmSpec) -> Vec<String> {
    let networks: Vec<&str> = spec.nics.iter().map(|n| n.network.as_str()).collect();
    let mut out = Vec::new();
    for name in state.vm_names().unwrap_or_default() {
        if name == spec.name {
            continue;
        }
        let Ok(Some(rec)) = state.vm(&name).read_record_if_exists() else {
            continue;
        };
        for nic in &rec.spec.nics {
            if networks.contains(&nic.network.as_str()) {
                out.push(nic.ip.to_string());
            }
        }
    }
    out
}

/// Resolve and write `machine.json` for the VM in `dir`.
pub fn write_machine_config(
    state: &StateDir,
    dir: &VmDir,
    spec: &VmSpec,
    os: Option<&dyn OsProvider>,
    console_log_max_bytes: u64,
) -> Result<MachineConfig, ResolveError> {
    let mut cfg = machine_config(state, dir, spec, os)?;
    cfg.console_log_max_bytes = console_log_max_bytes;
    crate::state::write_replace(&dir.machine_config(), &cfg.to_json())?;
    Ok(cfg)
}

/// The embedded diag guest as a file of the image cache,
/// `<state>/images/diag/<sha256>.elf`, written once (and again if the file
/// there does not hold exactly these bytes).
pub fn diag_kernel_file(state: &StateDir) -> Result<PathBuf, ResolveError> {
    let bytes = crate::diag::KERNEL;
    if bytes.is_empty() {
        return Err(ResolveError::NoDiag);
    }
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let dir = state.root.join("images").join("diag");
    let path = dir.join(format!("{hex}.elf"));
    if std::fs::read(&path).is_ok_and(|b| b == bytes) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    crate::state::write_atomic(&path, bytes)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmctl_spec::model::ImageSpec;

    /// A diag VM with a NIC: its VMM gets the TAP vmctl-hostnet names for
    /// it and the declared MAC; the guest gets its address with the
    /// network's prefix and the host address to ping. No record of the
    /// network is a clear error.
    #[test]
    fn nics_get_their_taps_and_diag_its_addresses() {
        use vmctl_spec::{Ipv4Subnet, MacAddr, NetworkSpec, NicSpec};
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        let dir = state.vm("web");
        let mut spec = VmSpec::diag("web");
        spec.nics.push(NicSpec {
            network: "lab".into(),
            ip: [10, 20, 0, 7].into(),
            mac: MacAddr([0x02, 0, 0, 0, 0, 7]),
        });
        let err = machine_config(&state, &dir, &spec, None).unwrap_err();
        assert!(matches!(err, ResolveError::NoNetwork { .. }), "{err}");

        let net = NetworkSpec::new("lab", Ipv4Subnet::new([10, 20, 0, 0].into(), 24));
        let rec = vmctl_hostnet::NetworkRecord {
            format_version: vmctl_spec::FORMAT_VERSION.into(),
            bridge: vmctl_hostnet::bridge_name(tmp.path(), "lab"),
            spec: net,
        };
        std::fs::create_dir_all(tmp.path().join("networks")).unwrap();
        std::fs::write(
            tmp.path().join("networks/lab.json"),
            serde_json::to_string(&rec).unwrap(),
        )
        .unwrap();
        let cfg = machine_config(&state, &dir, &spec, None).unwrap();
        assert_eq!(
            cfg.nics,
            [NicConfig {
                name: "lab".into(),
                mac: "02:00:00:00:00:07".into(),
                tap: vmctl_hostnet::tap_name(tmp.path(), "web", 0),
            }]
        );
        assert_eq!(
            cfg.cmdline,
            "console=ttyS0 vmctl.net=10.20.0.7/24 vmctl.ping=10.20.0.1"
        );
        // A VM already recorded on the same network is pinged too; one on
        // another network is not.
        for (name, network, ip) in [("db", "lab", [10, 20, 0, 9]), ("x", "other", [10, 9, 0, 2])] {
            let mut peer = VmSpec::diag(name);
            peer.nics.push(NicSpec {
                network: network.into(),
                ip: ip.into(),
                mac: MacAddr([0x02, 0, 0, 0, 0, 9]),
            });
            let d = state.vm(name);
            std::fs::create_dir_all(&d.path).unwrap();
            d.write_record(&crate::state::Record::new(
                peer,
                crate::state::Desired::Running,
            ))
            .unwrap();
        }
        let cfg = machine_config(&state, &dir, &spec, None).unwrap();
        assert_eq!(
            cfg.cmdline,
            "console=ttyS0 vmctl.net=10.20.0.7/24 vmctl.ping=10.20.0.1,10.20.0.9"
        );
    }

    #[test]
    fn diag_is_polled_from_a_cached_copy_of_the_embedded_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        let dir = state.vm("a");
        let mut spec = VmSpec::diag("a");
        spec.cpus = 2;
        spec.max_cpus = 4;
        let cfg = machine_config(&state, &dir, &spec, None).unwrap();
        assert_eq!(cfg.irq_mode, IrqMode::Polled);
        assert_eq!((cfg.cpus, cfg.max_cpus), (2, 4));
        assert_eq!(std::fs::read(&cfg.kernel).unwrap(), crate::diag::KERNEL);
        assert!(cfg.kernel.starts_with(tmp.path().join("images/diag")));
        assert!(cfg.console_log.is_absolute());
        // A damaged cache copy is replaced.
        std::fs::write(&cfg.kernel, b"junk").unwrap();
        let again = machine_config(&state, &dir, &spec, None).unwrap();
        assert_eq!(std::fs::read(&again.kernel).unwrap(), crate::diag::KERNEL);
    }

    #[test]
    fn an_image_is_irqchip_with_its_own_files_and_an_unknown_os_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        let dir = state.vm("b");
        let spec = VmSpec {
            os: "mine".into(),
            image: Some(ImageSpec {
                name: "mine".into(),
                kernel: "/boot/k".into(),
                initrd: Some("/boot/i".into()),
                cmdline: "console=ttyS0 quiet".into(),
            }),
            ..VmSpec::diag("b")
        };
        let cfg = machine_config(&state, &dir, &spec, None).unwrap();
        assert_eq!(cfg.irq_mode, IrqMode::Irqchip);
        assert_eq!(cfg.kernel, PathBuf::from("/boot/k"));
        assert_eq!(cfg.initrd, Some(PathBuf::from("/boot/i")));
        assert_eq!(cfg.cmdline, "console=ttyS0 quiet");
        let unknown = VmSpec {
            os: "plan9".into(),
            ..VmSpec::diag("c")
        };
        assert!(matches!(
            machine_config(&state, &dir, &unknown, None),
            Err(ResolveError::NoImage { .. })
        ));
    }
}
