//! Just enough Ethernet, ARP, IPv4 and ICMP for diag to prove a vmctl NIC
//! works (docs/diag-guest.md, "Network"): parse its `vmctl.net=` and
//! `vmctl.ping=` options, answer ARP and ICMP echo requests for its own
//! address, and build and check its own ARP requests and echo requests.
//!
//! Every received frame is untrusted: lengths, header lengths, checksums
//! and addresses are all checked before a byte is used; anything else is
//! [`Frame::Other`]. Pure functions over byte slices, so `cargo test --lib`
//! runs them on the host.

/// NICs diag drives and reports.
pub const MAX_NICS: usize = 4;
/// Ping targets per VM.
pub const MAX_PINGS: usize = 4;
/// Echo requests diag wants answered per target.
pub const ECHO_COUNT: u32 = 3;
/// Longest frame diag sends or accepts (Ethernet, no FCS, no VLAN).
pub const MAX_FRAME: usize = 1514;
/// The ICMP identifier of diag's echo requests ("vd").
pub const ECHO_ID: u16 = 0x7664;
/// Bytes of payload in diag's echo requests.
pub const ECHO_PAYLOAD_LEN: usize = 32;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;
const IP_PROTO_ICMP: u8 = 1;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const BROADCAST: [u8; 6] = [0xff; 6];

pub type Ip = [u8; 4];
pub type Mac = [u8; 6];

/// An address with its prefix length (`10.77.0.2/24`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cidr {
    pub ip: Ip,
    pub prefix: u8,
}

impl Cidr {
    /// True when `other` is in this address's subnet.
    pub fn contains(&self, other: Ip) -> bool {
        let mask = match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        };
        u32::from_be_bytes(self.ip) & mask == u32::from_be_bytes(other) & mask
    }
}

/// The network options on diag's command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOptions {
    /// `vmctl.net=IP/LEN[,IP/LEN...]`: the address of the first, second...
    /// NIC (in virtio-mmio slot order).
    pub addrs: [Option<Cidr>; MAX_NICS],
    /// `vmctl.ping=IP[,IP...]`: whom to ARP for and ping, each from the NIC
    /// whose subnet holds it (else the first).
    pub pings: [Option<Ip>; MAX_PINGS],
}

/// Parse a dotted quad.
pub fn parse_ip(s: &[u8]) -> Option<Ip> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for o in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = p
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
        *o = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Parse `IP/LEN` (LEN 1..=30: room for the host and at least one peer).
pub fn parse_cidr(s: &[u8]) -> Option<Cidr> {
    let slash = s.iter().position(|&b| b == b'/')?;
    let ip = parse_ip(s.get(..slash)?)?;
    let len = s.get(slash + 1..)?;
    if len.is_empty() || len.len() > 2 || !len.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let prefix = len.iter().fold(0u8, |acc, &d| acc * 10 + (d - b'0'));
    (1..=30).contains(&prefix).then_some(Cidr { ip, prefix })
}

/// The `vmctl.net=` and `vmctl.ping=` options of `cmdline`; malformed
/// entries are skipped, extra ones ignored.
pub fn parse_options(cmdline: &[u8]) -> NetOptions {
    let mut o = NetOptions::default();
    for word in cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n') {
        if let Some(list) = word.strip_prefix(b"vmctl.net=") {
            let mut slots = o.addrs.iter_mut();
            for item in list.split(|&b| b == b',').filter_map(parse_cidr) {
                match slots.next() {
                    Some(s) => *s = Some(item),
                    None => break,
                }
            }
        } else if let Some(list) = word.strip_prefix(b"vmctl.ping=") {
            let mut slots = o.pings.iter_mut();
            for item in list.split(|&b| b == b',').filter_map(parse_ip) {
                match slots.next() {
                    Some(s) => *s = Some(item),
                    None => break,
                }
            }
        }
    }
    o
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The payload diag puts in echo request `seq`: what a correct reply
/// carries back.
pub fn echo_payload(seq: u16) -> [u8; ECHO_PAYLOAD_LEN] {
    let mut p = [0u8; ECHO_PAYLOAD_LEN];
    p[..10].copy_from_slice(b"vmctl-diag");
    for (i, b) in p.iter_mut().enumerate().skip(10) {
        *b = (i as u8).wrapping_mul(31) ^ (seq as u8) ^ ((seq >> 8) as u8);
    }
    p
}

/// What a received frame is, as far as diag cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    ArpRequest {
        sender_mac: Mac,
        sender_ip: Ip,
        target_ip: Ip,
    },
    ArpReply {
        sender_mac: Mac,
        sender_ip: Ip,
    },
    /// An echo request or reply; `payload` is the ICMP data after the
    /// 8-byte header, checksum verified.
    Echo {
        reply: bool,
        src_mac: Mac,
        src_ip: Ip,
        dst_ip: Ip,
        id: u16,
        seq: u16,
        payload: &'a [u8],
    },
    Other,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn arr<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Classify `frame` (an Ethernet frame without FCS).
pub fn parse(frame: &[u8]) -> Frame<'_> {
    parse_checked(frame).unwrap_or(Frame::Other)
}

fn parse_checked(frame: &[u8]) -> Option<Frame<'_>> {
    let src_mac: Mac = arr(frame, 6)?;
    match be16(frame, 12)? {
        ETHERTYPE_ARP => {
            let a = frame.get(ETH_HLEN..ETH_HLEN + ARP_LEN)?;
            // Ethernet / IPv4, 6- and 4-byte addresses.
            if be16(a, 0)? != 1 || be16(a, 2)? != ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4 {
                return None;
            }
            let sender_mac: Mac = arr(a, 8)?;
            let sender_ip: Ip = arr(a, 14)?;
            let target_ip: Ip = arr(a, 24)?;
            match be16(a, 6)? {
                1 => Some(Frame::ArpRequest {
                    sender_mac,
                    sender_ip,
                    target_ip,
                }),
                2 => Some(Frame::ArpReply {
                    sender_mac,
                    sender_ip,
                }),
                _ => None,
            }
        }
        ETHERTYPE_IPV4 => {
            let ip = frame.get(ETH_HLEN..)?;
            let ihl = usize::from(*ip.first()? & 0x0f) * 4;
            if *ip.first()? >> 4 != 4 || ihl < 20 {
                return None;
            }
            let total = usize::from(be16(ip, 2)?);
            if total < ihl || total > ip.len() || checksum(ip.get(..ihl)?) != 0 {
                return None;
            }
            // Fragments are not reassembled: more-fragments or an offset.
            if be16(ip, 6)? & 0x3fff != 0 || *ip.get(9)? != IP_PROTO_ICMP {
                return None;
            }
            let icmp = ip.get(ihl..total)?;
            if icmp.len() < 8 || checksum(icmp) != 0 || icmp[1] != 0 {
                return None;
            }
            let reply = match icmp[0] {
                ICMP_ECHO_REPLY => true,
                ICMP_ECHO_REQUEST => false,
                _ => return None,
            };
            Some(Frame::Echo {
                reply,
                src_mac,
                src_ip: arr(ip, 12)?,
                dst_ip: arr(ip, 16)?,
                id: be16(icmp, 4)?,
                seq: be16(icmp, 6)?,
                payload: icmp.get(8..)?,
            })
        }
        _ => None,
    }
}

/// Write an ARP frame into `out`; its length (0 if `out` is too small).
fn arp(
    out: &mut [u8],
    op: u16,
    dst: Mac,
    src: Mac,
    src_ip: Ip,
    target: Mac,
    target_ip: Ip,
) -> usize {
    let len = ETH_HLEN + ARP_LEN;
    let Some(f) = out.get_mut(..len) else {
        return 0;
    };
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&src);
    f[28..32].copy_from_slice(&src_ip);
    f[32..38].copy_from_slice(&target);
    f[38..42].copy_from_slice(&target_ip);
    len
}

/// "Who has `target_ip`? Tell `src_ip`" (broadcast).
pub fn arp_request(out: &mut [u8], src: Mac, src_ip: Ip, target_ip: Ip) -> usize {
    arp(out, 1, BROADCAST, src, src_ip, [0; 6], target_ip)
}

/// "`src_ip` is at `src`", to the asker.
pub fn arp_reply(out: &mut [u8], src: Mac, src_ip: Ip, to: Mac, to_ip: Ip) -> usize {
    arp(out, 2, to, src, src_ip, to, to_ip)
}

/// An ICMP echo request or reply carrying `payload`; its length (0 if it
/// does not fit `out` or [`MAX_FRAME`]).
#[allow(clippy::too_many_arguments)]
pub fn echo(
    out: &mut [u8],
    reply: bool,
    src: Mac,
    dst: Mac,
    src_ip: Ip,
    dst_ip: Ip,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> usize {
    let ip_len = 20 + 8 + payload.len();
    let len = ETH_HLEN + ip_len;
    if len > MAX_FRAME {
        return 0;
    }
    let Some(f) = out.get_mut(..len) else {
        return 0;
    };
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut f[ETH_HLEN..];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes()); // identification
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[8] = 64;
    ip[9] = IP_PROTO_ICMP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&dst_ip);
    let c = checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut ip[20..];
    icmp[0] = if reply {
        ICMP_ECHO_REPLY
    } else {
        ICMP_ECHO_REQUEST
    };
    icmp[1] = 0;
    icmp[2..4].fill(0);
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

/// The answer to `frame` for a NIC with address `me` at `mac`, if it needs
/// one: an ARP reply to a request for `me`, an echo reply to an echo
/// request to `me`. Written into `out`; returns its length.
pub fn answer(frame: &Frame<'_>, mac: Mac, me: Ip, out: &mut [u8]) -> Option<usize> {
    let n = match *frame {
        Frame::ArpRequest {
            sender_mac,
            sender_ip,
            target_ip,
        } if target_ip == me => arp_reply(out, mac, me, sender_mac, sender_ip),
        Frame::Echo {
            reply: false,
            src_mac,
            src_ip,
            dst_ip,
            id,
            seq,
            payload,
        } if dst_ip == me => echo(out, true, mac, src_mac, me, src_ip, id, seq, payload),
        _ => return None,
    };
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 0xb];
    const IP_A: Ip = [10, 77, 0, 2];
    const IP_B: Ip = [10, 77, 0, 3];

    #[test]
    fn options() {
        let o = parse_options(b"console=ttyS0 vmctl.net=10.77.0.2/24,192.168.9.1/16 vmctl.ping=10.77.0.3,bad,10.77.0.1 diag.nosmp");
        assert_eq!(
            o.addrs[0],
            Some(Cidr {
                ip: IP_A,
                prefix: 24
            })
        );
        assert_eq!(
            o.addrs[1],
            Some(Cidr {
                ip: [192, 168, 9, 1],
                prefix: 16
            })
        );
        assert_eq!(o.addrs[2], None);
        assert_eq!(o.pings[..3], [Some(IP_B), Some([10, 77, 0, 1]), None]);
        assert_eq!(
            parse_options(b"vmctl.ping=1.2.3.4,1.2.3.5,1.2.3.6,1.2.3.7,1.2.3.8").pings[3],
            Some([1, 2, 3, 7])
        );
        for bad in [
            &b"10.77.0.256"[..],
            b"10.77.0",
            b"10.77.0.1.1",
            b"10..0.1",
            b"a.b.c.d",
            b"1234.0.0.1",
            b"",
        ] {
            assert_eq!(parse_ip(bad), None, "{bad:?}");
        }
        for bad in [
            &b"10.77.0.2"[..],
            b"10.77.0.2/",
            b"10.77.0.2/0",
            b"10.77.0.2/31",
            b"10.77.0.2/240",
            b"10.77.0.2/x",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad:?}");
        }
        let c = Cidr {
            ip: IP_A,
            prefix: 24,
        };
        assert!(c.contains(IP_B) && c.contains([10, 77, 0, 1]) && !c.contains([10, 78, 0, 1]));
    }

    #[test]
    fn checksum_matches_rfc1071_examples() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(checksum(&[0xff]), !0xff00);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn arp_round_trip_and_answer() {
        let mut f = [0u8; 64];
        let n = arp_request(&mut f, A, IP_A, IP_B);
        assert_eq!(n, 42);
        assert_eq!(&f[..6], &[0xff; 6]);
        let req = parse(&f[..n]);
        assert_eq!(
            req,
            Frame::ArpRequest {
                sender_mac: A,
                sender_ip: IP_A,
                target_ip: IP_B
            }
        );
        // Not for A: no answer; for B: a reply to A.
        let mut out = [0u8; 64];
        assert_eq!(answer(&req, A, IP_A, &mut out), None);
        let m = answer(&req, B, IP_B, &mut out).unwrap();
        assert_eq!(&out[..6], &A, "unicast to the asker");
        assert_eq!(
            parse(&out[..m]),
            Frame::ArpReply {
                sender_mac: B,
                sender_ip: IP_B
            }
        );
    }

    #[test]
    fn echo_round_trip_and_answer_with_the_same_payload() {
        let mut f = [0u8; 128];
        let p = echo_payload(7);
        let n = echo(&mut f, false, A, B, IP_A, IP_B, ECHO_ID, 7, &p);
        assert_eq!(n, 14 + 20 + 8 + 32);
        let req = parse(&f[..n]);
        let Frame::Echo {
            reply: false,
            src_ip,
            dst_ip,
            id,
            seq,
            payload,
            ..
        } = req
        else {
            panic!("{req:?}");
        };
        assert_eq!(
            (src_ip, dst_ip, id, seq, payload),
            (IP_A, IP_B, ECHO_ID, 7, &p[..])
        );
        let mut out = [0u8; 128];
        let m = answer(&req, B, IP_B, &mut out).unwrap();
        assert_eq!(&out[..6], &A);
        match parse(&out[..m]) {
            Frame::Echo {
                reply: true,
                src_ip,
                dst_ip,
                id,
                seq,
                payload,
                src_mac,
            } => {
                assert_eq!(
                    (src_ip, dst_ip, id, seq, src_mac),
                    (IP_B, IP_A, ECHO_ID, 7, B)
                );
                assert_eq!(payload, &p[..]);
            }
            other => panic!("{other:?}"),
        }
        assert_ne!(echo_payload(7), echo_payload(8));
        assert_ne!(echo_payload(7), echo_payload(7 + 256));
    }

    #[test]
    fn a_linux_ping_request_is_understood() {
        // What `ping` sends: 56 bytes of payload, an odd identifier.
        let mut f = [0u8; 128];
        let payload: [u8; 56] = core::array::from_fn(|i| i as u8);
        let n = echo(
            &mut f,
            false,
            B,
            A,
            [10, 77, 0, 1],
            IP_A,
            0x1234,
            1,
            &payload,
        );
        let mut out = [0u8; 128];
        let m = answer(&parse(&f[..n]), A, IP_A, &mut out).unwrap();
        assert_eq!(m, n);
        assert!(matches!(
            parse(&out[..m]),
            Frame::Echo {
                reply: true,
                id: 0x1234,
                seq: 1,
                ..
            }
        ));
    }

    #[test]
    fn malformed_frames_are_other_never_a_panic() {
        let mut good = [0u8; 128];
        let n = echo(&mut good, false, A, B, IP_A, IP_B, 1, 1, &[9; 10]);
        // Every truncation, and every single-byte corruption of the IP or
        // ICMP part that a checksum covers, is refused.
        for len in 0..n {
            assert_eq!(parse(&good[..len]), Frame::Other, "truncated to {len}");
        }
        for at in 14..n {
            let mut bad = good;
            bad[at] ^= 0x40;
            match parse(&bad[..n]) {
                Frame::Other => {}
                // Flipping a byte of the ICMP type turns a request into a
                // reply only with a matching checksum, which a single flip
                // never gives.
                other => panic!("corruption at {at} accepted: {other:?}"),
            }
        }
        // IHL below 5, total length beyond the frame, fragments.
        for (at, v) in [(14, 0x44u8), (16, 0xff), (20, 0x20)] {
            let mut bad = good;
            bad[at] = v;
            assert_eq!(parse(&bad[..n]), Frame::Other);
        }
        let mut arp_f = [0u8; 64];
        let m = arp_request(&mut arp_f, A, IP_A, IP_B);
        for len in 0..m {
            assert_eq!(parse(&arp_f[..len]), Frame::Other);
        }
        arp_f[21] = 3; // op 3
        assert_eq!(parse(&arp_f[..m]), Frame::Other);
        // Too small an output buffer: nothing written.
        assert_eq!(
            echo(&mut [0u8; 40], false, A, B, IP_A, IP_B, 1, 1, &[0; 8]),
            0
        );
        assert_eq!(
            echo(&mut [0u8; 2000], false, A, B, IP_A, IP_B, 1, 1, &[0; 1500]),
            0
        );
        assert_eq!(arp_request(&mut [0u8; 41], A, IP_A, IP_B), 0);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: no dependencies in this crate.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut buf = [0u8; 256];
        for round in 0..20_000 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            // Steer some towards the interesting ethertypes.
            match round % 3 {
                0 => buf[12..14].copy_from_slice(&[8, 0]),
                1 => buf[12..14].copy_from_slice(&[8, 6]),
                _ => {}
            }
            buf[14] = if round % 2 == 0 { 0x45 } else { buf[14] };
            let len = (x as usize) % buf.len();
            let f = parse(&buf[..len]);
            let mut out = [0u8; 256];
            let _ = answer(&f, A, IP_A, &mut out);
        }
    }
}
