//! Networks and NICs: cross-node rules and the automatic choices.
//!
//! Order matters for determinism and is fixed: networks in file order
//! (declared subnets first, then automatic ones), then every declared NIC
//! address is checked and taken, then automatic addresses are handed out in
//! file order (VMs, then NICs within a VM), then MACs are derived and every
//! MAC checked for clashes. See docs/kdl.md ("Networks").

use std::collections::HashMap;
use std::net::Ipv4Addr;

use miette::SourceSpan;

use crate::diagnostic::{Diag, Sink};
use crate::model::{NetworkSpec, NicSpec};
use crate::net::{self, Ipv4Subnet, MacAddr, NetEnv};
use crate::suggest::did_you_mean;
use crate::syntax::{RawNetwork, RawVm};

/// Resolve the networks; `None` entries are networks whose subnet could not
/// be settled (already reported).
pub(crate) fn resolve_networks(
    raw: &[RawNetwork],
    env: &NetEnv,
    sink: &mut Sink,
) -> Vec<(NetworkSpec, SourceSpan)> {
    let mut unique: Vec<&RawNetwork> = Vec::new();
    for n in raw {
        if let Some(first) = unique.iter().find(|u| u.name.val == n.name.val) {
            sink.push(
                Diag::error(
                    "vmctl::spec::duplicate-network",
                    format!("network `{}` is declared twice", n.name.val),
                )
                .label(n.name.span, "declared again here")
                .label(first.name.span, "first declared here")
                .help("network names must be unique: rename or remove one of them"),
            );
        } else {
            unique.push(n);
        }
    }

    // Declared subnets: no two may overlap; one that overlaps a host route
    // is a warning (the host would send that traffic two ways).
    let mut taken: Vec<(Ipv4Subnet, &str, SourceSpan)> = Vec::new();
    for n in &unique {
        let Some(s) = &n.subnet else { continue };
        if let Some((other, other_name, other_span)) =
            taken.iter().find(|(t, _, _)| t.overlaps(s.val))
        {
            sink.push(
                Diag::error(
                    "vmctl::spec::overlapping-subnets",
                    format!(
                        "the subnets of networks `{other_name}` ({other}) and `{}` ({}) overlap",
                        n.name.val, s.val
                    ),
                )
                .label(s.span, "overlaps")
                .label(*other_span, "this subnet")
                .help("every network needs its own address range: pick a subnet that shares no address with the others"),
            );
            continue;
        }
        if let Some(r) = env.routes.iter().find(|r| r.dest.overlaps(s.val)) {
            sink.push(
                Diag::warning(
                    "vmctl::spec::subnet-host-route",
                    format!(
                        "subnet {} of network `{}` overlaps this host's route to {} via {}",
                        s.val, n.name.val, r.dest, r.iface
                    ),
                )
                .label(s.span, "collides with a host route")
                .help(format!(
                    "traffic to these addresses would go to the lab's bridge or to {}, not both: \
                     pick another subnet, or leave `subnet` out for a free one",
                    r.iface
                )),
            );
        }
        taken.push((s.val, &n.name.val, s.span));
    }

    let mut out = Vec::new();
    for n in &unique {
        let subnet = match (&n.subnet, n.subnet_reported) {
            (Some(s), _) => s.val,
            (None, true) => continue,
            (None, false) => {
                let in_use: Vec<Ipv4Subnet> = taken.iter().map(|t| t.0).collect();
                let recorded = env
                    .recorded
                    .get(&n.name.val)
                    .filter(|r| !in_use.iter().any(|t| t.overlaps(**r)));
                let chosen = recorded
                    .copied()
                    .or_else(|| net::auto_subnet(&env.lab, &n.name.val, &in_use, &env.routes));
                let Some(chosen) = chosen else {
                    sink.push(
                        Diag::error(
                            "vmctl::spec::no-free-subnet",
                            format!("no free 10.x.y.0/24 is left for network `{}`", n.name.val),
                        )
                        .label(n.name.span, "needs a subnet")
                        .help("declare one: subnet \"192.168.50.0/24\""),
                    );
                    continue;
                };
                taken.push((chosen, &n.name.val, n.name.span));
                chosen
            }
        };
        // Overlapping declared subnets were reported; keep the network so
        // its NICs do not cause follow-up errors.
        out.push((
            NetworkSpec {
                nat: n.nat,
                ..NetworkSpec::new(n.name.val.clone(), subnet)
            },
            n.name.span,
        ));
    }
    out
}

/// One NIC once its network is known.
struct Slot<'a> {
    net: &'a NetworkSpec,
    /// Declared (and accepted) address; `None`: automatic.
    ip: Option<Ipv4Addr>,
    /// Which NIC of this VM on this network (0 for the first).
    nth: usize,
}

/// Resolve every VM's NICs (`vms[i]` → result `[i]`).
pub(crate) fn resolve_nics(
    vms: &[&RawVm],
    networks: &[(NetworkSpec, SourceSpan)],
    declared_names: &[&str],
    env: &NetEnv,
    sink: &mut Sink,
) -> Vec<Vec<NicSpec>> {
    let by_name: HashMap<&str, &NetworkSpec> =
        networks.iter().map(|(n, _)| (n.name.as_str(), n)).collect();

    // Pass 1: which network each NIC is on; declared addresses are checked
    // and taken.
    let mut used: HashMap<Ipv4Addr, SourceSpan> = HashMap::new();
    // Per VM, per NIC: where it goes, or None when it was refused.
    let mut slots: Vec<Vec<Option<Slot<'_>>>> = Vec::new();
    for vm in vms {
        let mut row = Vec::new();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for nic in &vm.nics {
            let name = nic.network.val.as_str();
            let Some(net) = by_name.get(name).copied() else {
                row.push(None);
                if declared_names.contains(&name) {
                    // Declared but its subnet was refused: reported already.
                    continue;
                }
                let help = match did_you_mean(name, declared_names.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if declared_names.is_empty() => format!(
                        "declare it at the top level: network \"{name}\" {{ subnet \"10.20.0.0/24\" }}"
                    ),
                    None => format!(
                        "networks in this file: {}; or declare `network \"{name}\" {{ ... }}`",
                        declared_names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                sink.push(
                    Diag::error(
                        "vmctl::spec::unknown-network",
                        format!(
                            "VM `{}` has a NIC on network `{name}`, which is not declared",
                            vm.name.val
                        ),
                    )
                    .label(nic.network.span, "no network of this name")
                    .help(help),
                );
                continue;
            };
            let nth = count.entry(name).or_default();
            let k = *nth;
            *nth += 1;
            let ip = nic.ip.as_ref().and_then(|ip| {
                check_declared_ip(net, ip.val, ip.span, &vm.name.val, &mut used, sink)
                    .then_some(ip.val)
            });
            // A refused address is not replaced by an automatic one (that
            // would hide the mistake behind a working plan).
            let bad = nic.ip.is_some() && ip.is_none();
            row.push((!bad).then_some(Slot { net, ip, nth: k }));
        }
        slots.push(row);
    }

    // Pass 2: automatic addresses, in file order.
    let mut out: Vec<Vec<NicSpec>> = Vec::with_capacity(vms.len());
    let mut macs: Vec<(MacAddr, SourceSpan, String)> = Vec::new();
    for (vm, row) in vms.iter().zip(slots) {
        let mut nics = Vec::new();
        for (nic, slot) in vm.nics.iter().zip(row) {
            let Some(Slot { net, ip, nth: k }) = slot else {
                continue;
            };
            let ip = match ip {
                Some(ip) => ip,
                None => {
                    let taken = |a: Ipv4Addr| used.contains_key(&a);
                    match net::auto_ip(net.subnet, &vm.name.val, &net.name, k, &taken) {
                        Some(ip) => {
                            used.insert(ip, nic.span);
                            ip
                        }
                        None => {
                            sink.push(
                                Diag::error(
                                    "vmctl::spec::network-full",
                                    format!(
                                        "network `{}` ({}) has no free address for VM `{}`",
                                        net.name, net.subnet, vm.name.val
                                    ),
                                )
                                .label(nic.network.span, "no address left")
                                .help("use a larger subnet (a smaller prefix length)"),
                            );
                            continue;
                        }
                    }
                }
            };
            let (mac, span) = match &nic.mac {
                Some(m) => (m.val, m.span),
                None => (
                    MacAddr::derived(&env.lab, &vm.name.val, &net.name, k),
                    nic.span,
                ),
            };
            let who = format!("VM `{}`", vm.name.val);
            if let Some((_, first, first_vm)) = macs.iter().find(|(m, _, _)| *m == mac) {
                sink.push(
                    Diag::error(
                        "vmctl::spec::duplicate-mac",
                        format!("MAC {mac} is used twice ({first_vm} and {who})"),
                    )
                    .label(span, "used again here")
                    .label(*first, "first used here")
                    .help("every NIC needs its own MAC: change one, or leave mac= out and vmctl derives a unique one"),
                );
                continue;
            }
            macs.push((mac, span, who));
            nics.push(NicSpec {
                network: net.name.clone(),
                ip,
                mac,
            });
        }
        out.push(nics);
    }
    out
}

/// A declared address must be one a VM may take in its network, and free.
fn check_declared_ip(
    net: &NetworkSpec,
    ip: Ipv4Addr,
    span: SourceSpan,
    vm: &str,
    used: &mut HashMap<Ipv4Addr, SourceSpan>,
    sink: &mut Sink,
) -> bool {
    let s = net.subnet;
    let (lo, hi) = s.vm_range();
    if !s.contains(ip) {
        sink.push(
            Diag::error(
                "vmctl::spec::ip-outside-subnet",
                format!(
                    "{ip} (VM `{vm}`) is not in network `{}`'s subnet {s}",
                    net.name
                ),
            )
            .label(span, format!("outside {s}"))
            .help(format!(
                "VMs on `{}` take addresses from {lo} to {hi}; or leave ip= out for an automatic one",
                net.name
            )),
        );
        return false;
    }
    let reserved = if ip == s.network() {
        Some("the network address")
    } else if ip == s.host_ip() {
        Some("the host's address (on its bridge)")
    } else if ip == s.broadcast() {
        Some("the broadcast address")
    } else {
        None
    };
    if let Some(what) = reserved {
        sink.push(
            Diag::error(
                "vmctl::spec::reserved-ip",
                format!("{ip} (VM `{vm}`) is {what} of network `{}`", net.name),
            )
            .label(span, what)
            .help(format!(
                "VMs on `{}` take addresses from {lo} to {hi} ({} is the host's)",
                net.name,
                s.host_ip()
            )),
        );
        return false;
    }
    if let Some(first) = used.get(&ip) {
        sink.push(
            Diag::error(
                "vmctl::spec::duplicate-ip",
                format!("{ip} is given to two NICs"),
            )
            .label(span, "used again here")
            .label(*first, "first used here")
            .help("every NIC needs its own address: change one, or leave ip= out for an automatic one"),
        );
        return false;
    }
    used.insert(ip, span);
    true
}
