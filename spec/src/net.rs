//! Network values and the deterministic choices behind them.
//!
//! Declared networks and NICs need three things the file may leave out: a
//! subnet, a NIC's IP address and its MAC address. Each is chosen by a pure
//! function of stable inputs (the lab's identity, the network, VM and NIC
//! names) so that a re-create, a re-plan or another machine reading the same
//! state directory gets the same answer. The host's routing table only enters
//! through [`NetEnv`], which the caller fills in (the CLI reads
//! `/proc/net/route`; tests pass what they like), so this crate stays pure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// FNV-1a, 64 bits: a hash that never changes between Rust releases or
/// machines (std's `DefaultHasher` makes no such promise). Used for MACs,
/// automatic IPs and subnets here and for interface names in vmctl-hostnet.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // A separator no name contains, so ("ab","c") != ("a","bc").
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// An IPv4 subnet `a.b.c.d/p` whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

/// The smallest network vmctl accepts: a /30 has the network address, the
/// host's `.1`, one VM and the broadcast address.
pub const MAX_PREFIX: u8 = 30;
/// The largest: a /8.
pub const MIN_PREFIX: u8 = 8;

/// Why a subnet text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("not of the form a.b.c.d/prefix")]
    Syntax,
    #[error("the prefix length must be from {MIN_PREFIX} to {MAX_PREFIX}")]
    Prefix,
    /// Host bits are set; the field is the subnet that was probably meant.
    #[error("host bits are set (the network address is {0})")]
    HostBits(Ipv4Subnet),
}

impl Ipv4Subnet {
    /// A subnet from an address and prefix (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Ipv4Subnet {
        let prefix = prefix.min(32);
        Ipv4Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    pub fn network(self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// Number of addresses (including network and broadcast).
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// The host side's address: the first address after the network's.
    pub fn host_ip(self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The `n`th address of the subnet (wrapping inside it).
    pub fn nth(self, n: u64) -> Ipv4Addr {
        let off = (n % self.size()) as u32;
        Ipv4Addr::from(u32::from(self.network) | off)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    pub fn overlaps(self, other: Ipv4Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.network) & mask(p) == u32::from(other.network) & mask(p)
    }

    /// Addresses a VM may take: all but network, host (`.1`) and broadcast.
    pub fn is_vm_address(self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.host_ip() && ip != self.broadcast()
    }

    /// The first and last address a VM may take.
    pub fn vm_range(self) -> (Ipv4Addr, Ipv4Addr) {
        (self.nth(2), self.nth(self.size() - 2))
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or(SubnetError::Syntax)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| SubnetError::Syntax)?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SubnetError::Syntax);
        }
        let prefix: u8 = p.parse().map_err(|_| SubnetError::Syntax)?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(SubnetError::Prefix);
        }
        let net = Ipv4Subnet::new(addr, prefix);
        if net.network != addr {
            return Err(SubnetError::HostBits(net));
        }
        Ok(net)
    }
}

impl TryFrom<String> for Ipv4Subnet {
    type Error = SubnetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Subnet> for String {
    fn from(s: Ipv4Subnet) -> String {
        s.to_string()
    }
}

/// A MAC address, written `02:ab:cd:ef:01:23` (lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("not six hex bytes separated by `:`")]
    Syntax,
    #[error("it is a multicast address (the first byte is odd)")]
    Multicast,
    #[error("it is all zeros")]
    Zero,
}

impl MacAddr {
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// The MAC vmctl gives a NIC that declares none: locally administered
    /// (bit 1 of the first byte set), unicast (bit 0 clear), the rest from a
    /// stable hash of the lab's identity, the VM and the NIC (its network and
    /// which NIC on that network it is), so a re-created VM keeps it.
    pub fn derived(lab: &str, vm: &str, network: &str, nth_on_network: usize) -> MacAddr {
        let h = stable_hash(&[lab, vm, network, &nth_on_network.to_string()]).to_be_bytes();
        MacAddr([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in &mut out {
            let p = parts.next().ok_or(MacError::Syntax)?;
            if p.len() != 2 {
                return Err(MacError::Syntax);
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| MacError::Syntax)?;
        }
        if parts.next().is_some() {
            return Err(MacError::Syntax);
        }
        if out == [0; 6] {
            return Err(MacError::Zero);
        }
        if out[0] & 1 == 1 {
            return Err(MacError::Multicast);
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = MacError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// One IPv4 route of the namespace vmctl runs in (a line of
/// `/proc/net/route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub iface: String,
    pub dest: Ipv4Subnet,
}

/// What resolving networks needs from outside the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetEnv {
    /// The lab's identity: the canonical path of its state directory
    /// (docs/networking-hosts.md). Seeds derived MACs and automatic subnets.
    pub lab: String,
    /// The host's routes, minus the routes of this lab's own bridges: a
    /// declared subnet that overlaps one is warned about, an automatic one
    /// avoids them.
    pub routes: Vec<HostRoute>,
    /// Subnets recorded for networks that declare none (from the state
    /// directory): kept as long as they collide with nothing, so an
    /// automatic subnet does not move when the host's routes change.
    pub recorded: BTreeMap<String, Ipv4Subnet>,
}

/// Parse `/proc/net/route` text: every route with a non-zero prefix (the
/// default route overlaps everything and says nothing). Bad lines are
/// skipped.
pub fn parse_proc_net_route(text: &str) -> Vec<HostRoute> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dest), Some(m)) = (f.first(), f.get(1), f.get(7)) else {
            continue;
        };
        // The kernel prints the raw network-order word as a native integer.
        let (Ok(dest), Ok(m)) = (u32::from_str_radix(dest, 16), u32::from_str_radix(m, 16)) else {
            continue;
        };
        let m = u32::from_be_bytes(m.to_ne_bytes());
        let dest = Ipv4Addr::from(dest.to_ne_bytes());
        let prefix = m.leading_ones() as u8;
        if prefix == 0 {
            continue;
        }
        out.push(HostRoute {
            iface: (*iface).to_string(),
            dest: Ipv4Subnet::new(dest, prefix),
        });
    }
    out
}

/// The automatic subnet of a network: a 10.x.y.0/24 picked by a stable hash
/// of (lab, network), the next free one (wrapping through all 65,536) when it
/// is taken by `taken` or a host route. `None` when everything is taken.
pub fn auto_subnet(
    lab: &str,
    network: &str,
    taken: &[Ipv4Subnet],
    routes: &[HostRoute],
) -> Option<Ipv4Subnet> {
    let start = stable_hash(&[lab, network]) % 65_536;
    (0..65_536u64).find_map(|i| {
        let n = (start + i) % 65_536;
        let cand = Ipv4Subnet::new(Ipv4Addr::new(10, (n >> 8) as u8, n as u8, 0), 24);
        let free = !taken.iter().any(|t| t.overlaps(cand))
            && !routes.iter().any(|r| r.dest.overlaps(cand));
        free.then_some(cand)
    })
}

/// The automatic IP of a NIC: an address of `subnet` that a VM may take,
/// picked by a stable hash of (VM, network, which NIC on it), the next free
/// one (wrapping) when `taken`. `None` when the subnet is full.
pub fn auto_ip(
    subnet: Ipv4Subnet,
    vm: &str,
    network: &str,
    nth_on_network: usize,
    taken: &dyn Fn(Ipv4Addr) -> bool,
) -> Option<Ipv4Addr> {
    // Offsets 2 ..= size-2 (network, host and broadcast excluded).
    let count = subnet.size().saturating_sub(3);
    if count == 0 {
        return None;
    }
    let start = stable_hash(&[vm, network, &nth_on_network.to_string()]) % count;
    (0..count).find_map(|i| {
        let ip = subnet.nth(2 + (start + i) % count);
        (!taken(ip)).then_some(ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_compute() {
        let s: Ipv4Subnet = "10.20.0.0/24".parse().unwrap();
        assert_eq!(s.host_ip(), Ipv4Addr::new(10, 20, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 20, 0, 255));
        assert_eq!(
            s.vm_range(),
            (Ipv4Addr::new(10, 20, 0, 2), Ipv4Addr::new(10, 20, 0, 254))
        );
        assert!(s.is_vm_address(Ipv4Addr::new(10, 20, 0, 10)));
        assert!(!s.is_vm_address(Ipv4Addr::new(10, 20, 0, 1)));
        assert!(!s.is_vm_address(Ipv4Addr::new(10, 20, 1, 10)));
        assert_eq!(
            "10.20.0.5/24".parse::<Ipv4Subnet>(),
            Err(SubnetError::HostBits(s))
        );
        assert_eq!(
            "10.20.0.0/31".parse::<Ipv4Subnet>(),
            Err(SubnetError::Prefix)
        );
        assert_eq!("10.20.0.0".parse::<Ipv4Subnet>(), Err(SubnetError::Syntax));
        assert_eq!(
            "10.20.0.0/+4".parse::<Ipv4Subnet>(),
            Err(SubnetError::Syntax)
        );
        let big: Ipv4Subnet = "10.0.0.0/8".parse().unwrap();
        assert!(big.overlaps(s) && s.overlaps(big));
        let other: Ipv4Subnet = "10.21.0.0/24".parse().unwrap();
        assert!(!other.overlaps(s));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"10.20.0.0/24\"");
    }

    #[test]
    fn macs_parse_and_derive() {
        let m: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:cd:00:01:ff");
        assert_eq!(
            "03:00:00:00:00:01".parse::<MacAddr>(),
            Err(MacError::Multicast)
        );
        assert_eq!("00:00:00:00:00:00".parse::<MacAddr>(), Err(MacError::Zero));
        assert_eq!("02:00:00:00:00".parse::<MacAddr>(), Err(MacError::Syntax));
        assert_eq!(
            "02:00:00:00:00:00:00".parse::<MacAddr>(),
            Err(MacError::Syntax)
        );
        let a = MacAddr::derived("/lab/.vmctl", "web", "lab", 0);
        assert_eq!(a, MacAddr::derived("/lab/.vmctl", "web", "lab", 0));
        assert_ne!(a, MacAddr::derived("/other/.vmctl", "web", "lab", 0));
        assert_ne!(a, MacAddr::derived("/lab/.vmctl", "web", "lab", 1));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn hash_is_stable() {
        // Pinned: interface names, MACs and IPs in existing labs depend on it.
        assert_eq!(stable_hash(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
    }

    #[test]
    fn proc_net_route_lines() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    garbage\n";
        let r = parse_proc_net_route(text);
        assert_eq!(
            r,
            vec![HostRoute {
                iface: "eth0".into(),
                dest: "192.168.1.0/24".parse().unwrap()
            }]
        );
    }

    #[test]
    fn automatic_choices_avoid_what_is_taken() {
        let first = auto_subnet("lab", "n", &[], &[]).unwrap();
        let again = auto_subnet("lab", "n", &[first], &[]).unwrap();
        assert_ne!(first, again);
        let routes = [HostRoute {
            iface: "eth0".into(),
            dest: first,
        }];
        assert_eq!(auto_subnet("lab", "n", &[], &routes), Some(again));

        let s: Ipv4Subnet = "10.0.0.0/30".parse().unwrap();
        let ip = auto_ip(s, "a", "n", 0, &|_| false).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(auto_ip(s, "a", "n", 0, &|x| x == ip), None);
    }
}
