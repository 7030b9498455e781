//! Reading `network "name" { subnet "..."; nat #true }` at the top level and
//! `nic "network" ip="..." mac="..."` inside a `vm`.
//!
//! Each value is checked on its own here (subnet, IP and MAC syntax); which
//! network a NIC names, addresses inside subnets, clashes and the automatic
//! choices are cross-node rules, decided in `resolve_net`.

use std::net::Ipv4Addr;

use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use super::{Reader, Spanned, example};
use crate::diagnostic::Diag;
use crate::net::{Ipv4Subnet, MacAddr, MacError, SubnetError};

pub(crate) const NETWORK_NODES: &[&str] = &["subnet", "nat"];
pub(crate) const NIC_PROPS: &[&str] = &["ip", "mac"];

#[derive(Debug)]
pub(crate) struct RawNetwork {
    pub name: Spanned<String>,
    pub subnet: Option<Spanned<Ipv4Subnet>>,
    /// A `subnet` was written but refused: no automatic one is chosen
    /// (and nothing else is reported about this network's subnet).
    pub subnet_reported: bool,
    pub nat: bool,
}

#[derive(Debug)]
pub(crate) struct RawNic {
    pub network: Spanned<String>,
    pub ip: Option<Spanned<Ipv4Addr>>,
    pub mac: Option<Spanned<MacAddr>>,
    /// The whole node's name (`nic`), for NIC-level messages.
    pub span: SourceSpan,
}

impl Reader<'_> {
    pub(super) fn read_network(&mut self, node: &KdlNode) -> Option<RawNetwork> {
        let (args, _) = self.split(node, &[]);
        let name = self.dns_name_arg(node, &args, "network", "vmctl::spec::bad-network-name");
        let mut net = RawNetwork {
            name: Spanned {
                val: String::new(),
                span: node.name().span(),
            },
            subnet: None,
            subnet_reported: false,
            nat: false,
        };
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for child in node.iter_children() {
            if !self.accept_child(child, "`network`", NETWORK_NODES, &[], &mut seen) {
                continue;
            }
            match child.name().value() {
                "subnet" => {
                    let s = self.string_node(child);
                    net.subnet_reported = true;
                    if let Some(s) = s {
                        net.subnet = self.subnet(&s);
                        net.subnet_reported = net.subnet.is_none();
                    }
                }
                _ => {
                    self.no_children(child);
                    let (args, _) = self.split(child, &[]);
                    if let Some(e) = self.one_arg(child, &args) {
                        net.nat = self.boolean(e, "nat").unwrap_or(false);
                    }
                }
            }
        }
        net.name = name?;
        Some(net)
    }

    fn subnet(&mut self, s: &Spanned<String>) -> Option<Spanned<Ipv4Subnet>> {
        match s.val.parse::<Ipv4Subnet>() {
            Ok(v) => Some(Spanned {
                val: v,
                span: s.span,
            }),
            Err(e) => {
                let help = match &e {
                    SubnetError::HostBits(n) => format!("did you mean subnet \"{n}\"?"),
                    SubnetError::Prefix => {
                        "vmctl networks are /8 to /30, e.g. subnet \"10.20.0.0/24\"".to_string()
                    }
                    SubnetError::Syntax => format!("for example: {}", example("subnet")),
                };
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::bad-subnet",
                        format!("`{}` is not a usable subnet: {e}", s.val),
                    )
                    .label(s.span, "bad subnet")
                    .help(help),
                );
                None
            }
        }
    }

    pub(super) fn read_nic(&mut self, node: &KdlNode) -> Option<RawNic> {
        self.no_children(node);
        let (args, props) = self.split(node, NIC_PROPS);
        let network = self
            .one_arg(node, &args)
            .and_then(|e| self.string(e, "nic"));
        let mut nic = RawNic {
            network: network.clone().unwrap_or(Spanned {
                val: String::new(),
                span: node.name().span(),
            }),
            ip: None,
            mac: None,
            span: node.name().span(),
        };
        for (k, e) in props {
            match k {
                "ip" => nic.ip = self.ip(e),
                _ => nic.mac = self.mac(e),
            }
        }
        network.map(|_| nic)
    }

    fn ip(&mut self, e: &KdlEntry) -> Option<Spanned<Ipv4Addr>> {
        let s = self.string(e, "ip=")?;
        if let Ok(ip) = s.val.parse::<Ipv4Addr>() {
            return Some(Spanned {
                val: ip,
                span: s.span,
            });
        }
        let help = if s.val.contains('/') {
            "give the address alone; the prefix comes from the network's subnet".to_string()
        } else {
            "an IPv4 address in the network's subnet, e.g. ip=\"10.20.0.10\"".to_string()
        };
        self.sink.push(
            Diag::error(
                "vmctl::spec::bad-ip",
                format!("`{}` is not an IPv4 address", s.val),
            )
            .label(s.span, "not an IPv4 address")
            .help(help),
        );
        None
    }

    fn mac(&mut self, e: &KdlEntry) -> Option<Spanned<MacAddr>> {
        let s = self.string(e, "mac=")?;
        match s.val.parse::<MacAddr>() {
            Ok(m) => Some(Spanned {
                val: m,
                span: s.span,
            }),
            Err(err) => {
                let help = match err {
                    MacError::Multicast => {
                        "a NIC's MAC must be unicast: clear the lowest bit of the first byte \
                         (locally administered addresses start with x2, x6, xa or xe)"
                    }
                    _ => {
                        "six hex bytes like mac=\"02:00:00:00:00:01\"; or leave mac= out and \
                         vmctl derives a stable one"
                    }
                };
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::bad-mac",
                        format!("`{}` is not a usable MAC address: {err}", s.val),
                    )
                    .label(s.span, "bad MAC")
                    .help(help),
                );
                None
            }
        }
    }

    /// The name of `network "name"` (also `host`, `cluster`): a DNS label,
    /// like a VM's; `code` is the diagnostic of a bad one.
    pub(super) fn dns_name_arg(
        &mut self,
        node: &KdlNode,
        args: &[&KdlEntry],
        what: &str,
        code: &'static str,
    ) -> Option<Spanned<String>> {
        let e = self.one_arg(node, args)?;
        let s = self.string(e, node.name().value())?;
        if let Some(why) = crate::names::vm_name_problem(&s.val) {
            self.sink.push(
                Diag::error(
                    code,
                    format!("{:?} is not a valid {what} name: {why}", s.val),
                )
                .label(s.span, format!("bad {what} name"))
                .help(format!(
                    "1-63 of a-z, 0-9 and `-`, starting with a letter or digit, not ending \
                     with `-`; try `{what} \"{}\"`",
                    crate::names::suggest_vm_name(&s.val)
                )),
            );
            return None;
        }
        Some(s)
    }
}
