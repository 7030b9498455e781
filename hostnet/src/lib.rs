//! `vmctl-hostnet`: the host side of a lab's declared networks.
//!
//! One Linux bridge per network, carrying the host's address (`.1/prefix`);
//! one persistent TAP per NIC (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, owned by
//! vmctl's user), enslaved to its network's bridge and up, which the VMM
//! opens by name. Nothing is routed or NATed to the outside unless a network
//! says `nat #true` (the `nat` module). Interface names are derived from the lab's
//! state directory ([`names`]), so two labs never collide and the host's
//! own interfaces are never touched; every network also has a record,
//! `<state-dir>/networks/<name>.json`. Every operation is idempotent and
//! adopts what a crashed run left behind; [`HostNet::sweep`] removes every
//! interface of the lab, recorded or not.
//!
//! Changing interfaces needs CAP_NET_ADMIN ([`has_net_admin`]); reading them
//! (what `vmctl plan` does) does not. docs/networking-hosts.md.

mod ip;
pub mod names;
mod nat;
mod privilege;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmctl_spec::net::{HostRoute, NetEnv, parse_proc_net_route};
use vmctl_spec::{Ipv4Subnet, NetworkSpec, VmSpec};

pub use ip::Link;
pub use names::{bridge_name, lab_identity, lab_prefix, tap_name};
pub use privilege::has_net_admin;

use names::LinkKind;

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{message}")]
    Tool { tool: &'static str, message: String },
    #[error("network {network}: {message}")]
    Network { network: String, message: String },
    #[error(
        "interface {name} exists but belongs to {owner}, not to {wanted}: remove it (`ip link del {name}`) or rename the VM"
    )]
    NameClash {
        name: String,
        owner: String,
        wanted: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("network record {path}: {message}")]
    Record { path: String, message: String },
}

/// A network as recorded in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub format_version: String,
    pub spec: NetworkSpec,
    /// The bridge's interface name (informational; it is derived anyway).
    pub bridge: String,
}

/// One recorded network and whether its bridge is there as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNet {
    pub spec: NetworkSpec,
    /// The bridge exists, is up and has the host's address.
    pub present: bool,
}

/// The host networking of one lab (one state directory).
#[derive(Debug, Clone)]
pub struct HostNet {
    dir: PathBuf,
    prefix: String,
}

/// What a tap's alias says: `vmctl vm=<vm> nic=<index>`.
fn tap_alias(vm: &str, nic: usize) -> String {
    format!("vmctl vm={vm} nic={nic}")
}

fn bridge_alias(network: &str) -> String {
    format!("vmctl network={network}")
}

fn alias_field<'a>(alias: Option<&'a str>, key: &str) -> Option<&'a str> {
    alias?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

impl HostNet {
    pub fn new(state_dir: &Path) -> HostNet {
        HostNet {
            dir: state_dir.to_path_buf(),
            prefix: lab_prefix(state_dir),
        }
    }

    fn records_dir(&self) -> PathBuf {
        self.dir.join("networks")
    }

    /// Whether this lab has ever recorded a network (a lab without
    /// networks never runs `ip` at all).
    pub fn has_records(&self) -> bool {
        self.records_dir().is_dir()
    }

    pub fn bridge(&self, network: &str) -> String {
        bridge_name(&self.dir, network)
    }

    pub fn tap(&self, vm: &str, nic: usize) -> String {
        tap_name(&self.dir, vm, nic)
    }

    /// Every network record (a bad record is an error: it names its file).
    pub fn records(&self) -> Result<Vec<NetworkRecord>, HostNetError> {
        let dir = self.records_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for e in entries {
            let path = e?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let rec: NetworkRecord =
                serde_json::from_str(&text).map_err(|e| HostNetError::Record {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    fn write_record(&self, spec: &NetworkSpec) -> Result<(), HostNetError> {
        let dir = self.records_dir();
        std::fs::create_dir_all(&dir)?;
        let rec = NetworkRecord {
            format_version: vmctl_spec::FORMAT_VERSION.into(),
            spec: spec.clone(),
            bridge: self.bridge(&spec.name),
        };
        let text = serde_json::to_string_pretty(&rec).map_err(|e| HostNetError::Record {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let path = dir.join(format!("{}.json", spec.name));
        let tmp = dir.join(format!(".{}.json.tmp", spec.name));
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The recorded networks and whether each bridge is there as recorded.
    pub fn observe(&self) -> Result<Vec<ObservedNet>, HostNetError> {
        let records = self.records()?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let links = ip::links()?;
        let mut out = Vec::new();
        for r in records {
            let br = self.bridge(&r.spec.name);
            let present = match links.iter().find(|l| l.ifname == br) {
                Some(l) if l.is_up() => {
                    ip::ipv4_addrs(&br)?.contains(&(r.spec.host_ip, r.spec.subnet.prefix()))
                }
                _ => false,
            };
            out.push(ObservedNet {
                spec: r.spec,
                present,
            });
        }
        Ok(out)
    }

    /// This lab's interfaces, taps first.
    pub fn lab_links(&self) -> Result<Vec<Link>, HostNetError> {
        let mut mine: Vec<Link> = ip::links()?
            .into_iter()
            .filter(|l| names::lab_link_kind(&self.prefix, &l.ifname).is_some())
            .collect();
        mine.sort_by_key(|l| {
            (
                names::lab_link_kind(&self.prefix, &l.ifname) != Some(LinkKind::Tap),
                l.ifname.clone(),
            )
        });
        Ok(mine)
    }

    /// Record the network, then make its bridge exist, up, with exactly the
    /// host's address on it, and NAT as declared.
    pub fn ensure_network(&self, net: &NetworkSpec) -> Result<(), HostNetError> {
        let br = self.bridge(&net.name);
        let had_nat = self
            .records()?
            .iter()
            .any(|r| r.spec.name == net.name && r.spec.nat);
        // Recorded first: a run that dies half-way leaves a record whose
        // bridge is not (yet) as recorded, which the next plan re-creates
        // and `destroy` removes.
        self.write_record(net)?;
        let links = ip::links()?;
        match links.iter().find(|l| l.ifname == br) {
            Some(l) if l.kind() != Some("bridge") => {
                return Err(HostNetError::Network {
                    network: net.name.clone(),
                    message: format!(
                        "{br} exists but is a {}, not a bridge",
                        l.kind().unwrap_or("device of unknown kind")
                    ),
                });
            }
            Some(_) => {}
            None => {
                ip::ip(&["link", "add", "name", &br, "type", "bridge"])?;
            }
        }
        ip::ip(&["link", "set", "dev", &br, "alias", &bridge_alias(&net.name)])?;
        let want = (net.host_ip, net.subnet.prefix());
        for (addr, prefix) in ip::ipv4_addrs(&br)? {
            if (addr, prefix) != want {
                ip::ip(&["addr", "del", &format!("{addr}/{prefix}"), "dev", &br])?;
            }
        }
        if !ip::ipv4_addrs(&br)?.contains(&want) {
            ip::ip(&["addr", "add", &format!("{}/{}", want.0, want.1), "dev", &br])?;
        }
        ip::ip(&["link", "set", "dev", &br, "up"])?;
        if net.nat {
            nat::enable(net, &br)?;
        } else if had_nat {
            nat::disable(&br)?;
        }
        Ok(())
    }

    /// Remove the network: this lab's taps still on its bridge, the bridge,
    /// its NAT rules and its record. Nothing there is fine.
    pub fn remove_network(&self, name: &str) -> Result<(), HostNetError> {
        let br = self.bridge(name);
        let recorded = self.records()?.into_iter().find(|r| r.spec.name == name);
        for l in self.lab_links()? {
            if l.master.as_deref() == Some(br.as_str()) || l.ifname == br {
                ip::ip(&["link", "del", "dev", &l.ifname])?;
            }
        }
        if recorded.as_ref().is_some_and(|r| r.spec.nat) {
            nat::disable(&br)?;
        }
        match std::fs::remove_file(self.records_dir().join(format!("{name}.json"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Make the VM's taps exist (one per NIC, in order), owned by this
    /// process's user, each enslaved to its network's bridge and up; remove
    /// the VM's taps beyond its NIC count. A VM without NICs in a lab that
    /// never had a network costs nothing.
    pub fn ensure_taps(&self, vm: &VmSpec) -> Result<(), HostNetError> {
        if vm.nics.is_empty() && !self.has_records() {
            return Ok(());
        }
        let links = self.lab_links()?;
        for (i, nic) in vm.nics.iter().enumerate() {
            let tap = self.tap(&vm.name, i);
            let br = self.bridge(&nic.network);
            if !links.iter().any(|l| l.ifname == br) {
                return Err(HostNetError::Network {
                    network: nic.network.clone(),
                    message: format!(
                        "its bridge {br} is missing, so VM {} cannot be plugged in (apply creates it)",
                        vm.name
                    ),
                });
            }
            let alias = tap_alias(&vm.name, i);
            let have = links.iter().find(|l| l.ifname == tap);
            match have {
                Some(l) => {
                    if let Some(owner) = l.ifalias.as_deref().filter(|a| *a != alias) {
                        return Err(HostNetError::NameClash {
                            name: tap,
                            owner: owner.to_string(),
                            wanted: alias,
                        });
                    }
                }
                None => {
                    // SAFETY: geteuid has no preconditions and cannot fail.
                    let uid = unsafe { libc::geteuid() }.to_string();
                    ip::ip(&[
                        "tuntap", "add", "dev", &tap, "mode", "tap", "vnet_hdr", "user", &uid,
                    ])?;
                }
            }
            // Only what differs is changed (an adopted or a new tap).
            if have.and_then(|l| l.ifalias.as_deref()) != Some(alias.as_str()) {
                ip::ip(&["link", "set", "dev", &tap, "alias", &alias])?;
            }
            if have.and_then(|l| l.master.as_deref()) != Some(br.as_str()) {
                ip::ip(&["link", "set", "dev", &tap, "master", &br])?;
            }
            if !have.is_some_and(Link::is_up) {
                ip::ip(&["link", "set", "dev", &tap, "up"])?;
            }
        }
        for l in &links {
            let stale = alias_field(l.ifalias.as_deref(), "vm") == Some(vm.name.as_str())
                && alias_field(l.ifalias.as_deref(), "nic")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n >= vm.nics.len());
            if stale {
                ip::ip(&["link", "del", "dev", &l.ifname])?;
            }
        }
        Ok(())
    }

    /// Remove every tap of VM `vm` (after it is destroyed).
    pub fn remove_vm_taps(&self, vm: &str) -> Result<(), HostNetError> {
        if !self.has_records() {
            return Ok(());
        }
        for l in self.lab_links()? {
            if alias_field(l.ifalias.as_deref(), "vm") == Some(vm) {
                ip::ip(&["link", "del", "dev", &l.ifname])?;
            }
        }
        Ok(())
    }

    /// Remove every interface of this lab (recorded or left by a crash), the
    /// NAT rules of recorded networks and the records. Returns the names of
    /// the interfaces removed.
    pub fn sweep(&self) -> Result<Vec<String>, HostNetError> {
        let records = self.records()?;
        let mut removed = Vec::new();
        for l in self.lab_links()? {
            ip::ip(&["link", "del", "dev", &l.ifname])?;
            removed.push(l.ifname);
        }
        for r in records.iter().filter(|r| r.spec.nat) {
            nat::disable(&self.bridge(&r.spec.name))?;
        }
        match std::fs::remove_dir_all(self.records_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        Ok(removed)
    }

    /// What resolving the lab's file needs: its identity, the host's routes
    /// except this lab's own bridges', and the recorded subnets.
    pub fn net_env(&self) -> Result<NetEnv, HostNetError> {
        let routes = match std::fs::read_to_string("/proc/net/route") {
            Ok(text) => parse_proc_net_route(&text),
            Err(_) => Vec::new(),
        };
        let routes: Vec<HostRoute> = routes
            .into_iter()
            .filter(|r| names::lab_link_kind(&self.prefix, &r.iface).is_none())
            .collect();
        let recorded: BTreeMap<String, Ipv4Subnet> = self
            .records()?
            .into_iter()
            .map(|r| (r.spec.name, r.spec.subnet))
            .collect();
        Ok(NetEnv {
            lab: lab_identity(&self.dir),
            routes,
            recorded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_fields() {
        let a = tap_alias("web", 2);
        assert_eq!(alias_field(Some(&a), "vm"), Some("web"));
        assert_eq!(alias_field(Some(&a), "nic"), Some("2"));
        assert_eq!(alias_field(Some("vmctl network=lab"), "vm"), None);
        assert_eq!(alias_field(None, "vm"), None);
    }

    #[test]
    fn records_round_trip_and_a_lab_without_networks_runs_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let h = HostNet::new(tmp.path());
        assert!(!h.has_records());
        assert!(h.records().unwrap().is_empty());
        // No records: observe and ensure_taps of a NIC-less VM never run `ip`.
        assert!(h.observe().unwrap().is_empty());
        h.ensure_taps(&VmSpec::diag("a")).unwrap();
        h.remove_vm_taps("a").unwrap();
        let net = NetworkSpec::new("lab", "10.20.0.0/24".parse().unwrap());
        h.write_record(&net).unwrap();
        let recs = h.records().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].spec, net);
        assert_eq!(recs[0].bridge, h.bridge("lab"));
        let env = h.net_env().unwrap();
        assert_eq!(env.recorded.get("lab"), Some(&net.subnet));
        assert_eq!(env.lab, lab_identity(tmp.path()));
    }
}
