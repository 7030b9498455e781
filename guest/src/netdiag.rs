//! diag on the network: per NIC, answer ARP and ICMP echo requests for its
//! address and ping the `vmctl.ping=` targets (ARP, then [`ECHO_COUNT`]
//! echo requests whose replies must carry the payload back), keeping the
//! counts the report shows (docs/diag-guest.md, "Network").
//!
//! Written against [`Link`] so two instances can talk to each other in a
//! host unit test; in the guest the link is a [`crate::virtio_net::Nic`].
//! Every retry is bounded: [`ARP_TRIES`] ARP requests, [`ECHO_TRIES`] echo
//! requests per target. The first [`FAST_TRIES`] of each go out quickly,
//! the rest once a second: a peer that boots late or a host too busy to
//! schedule the other VM for a few seconds (a CI build beside the test)
//! still gets answered, and an answered target costs no more frames.

use crate::clock::Deadline;
use crate::netproto::{
    self, Cidr, ECHO_COUNT, ECHO_ID, Frame, MAX_FRAME, MAX_PINGS, Mac, NetOptions,
};
use crate::report::{NicReport, PingReport};

/// ARP requests per target before diag gives up (about 90 s).
pub const ARP_TRIES: u32 = 100;
/// Echo requests per target at most (about 60 s); below 64, the width of
/// the bitmap of answered sequence numbers.
pub const ECHO_TRIES: u32 = 63;
/// Tries sent at the fast interval before the slow one.
pub const FAST_TRIES: u32 = 10;
pub const ARP_EVERY_MS: u64 = 200;
pub const ECHO_EVERY_MS: u64 = 100;
pub const SLOW_EVERY_MS: u64 = 1000;

/// The wait before the next try, after `tries` tries.
fn interval(tries: u32, fast_ms: u64) -> u64 {
    if tries < FAST_TRIES {
        fast_ms
    } else {
        SLOW_EVERY_MS
    }
}
/// Frames handled per [`NetDiag::poll`].
const FRAMES_PER_POLL: usize = 64;

/// Frame I/O of one NIC.
pub trait Link {
    fn mac(&self) -> Mac;
    /// The next received frame, copied into `out`; its length.
    fn recv(&mut self, out: &mut [u8; MAX_FRAME]) -> Option<usize>;
    fn send(&mut self, frame: &[u8]) -> Result<(), &'static str>;
}

impl Link for crate::virtio_net::Nic {
    fn mac(&self) -> Mac {
        crate::virtio_net::Nic::mac(self)
    }
    fn recv(&mut self, out: &mut [u8; MAX_FRAME]) -> Option<usize> {
        crate::virtio_net::Nic::recv(self, out)
    }
    fn send(&mut self, frame: &[u8]) -> Result<(), &'static str> {
        crate::virtio_net::Nic::send(self, frame)
    }
}

/// One ping target's progress.
struct Ping {
    report: PingReport,
    /// Bit `s` set: a correct reply to echo request `s` came back.
    replied: u64,
    /// When the next ARP or echo request is due; None = now.
    next: Option<Deadline>,
}

/// One NIC's network state.
pub struct NetDiag<L: Link> {
    pub link: L,
    addr: Option<Cidr>,
    pings: [Option<Ping>; MAX_PINGS],
    pub report: NicReport,
}

impl<L: Link> NetDiag<L> {
    /// NIC `nth` (0-based, slot order) in virtio-mmio slot `slot`: its
    /// address is the `nth` of `opts.addrs`; it pings the targets in its
    /// subnet (the first NIC with an address also those in no NIC's subnet).
    pub fn new(link: L, slot: usize, nth: usize, opts: &NetOptions) -> Self {
        let addr = opts.addrs.get(nth).copied().flatten();
        let first_with_addr = opts.addrs.iter().position(Option::is_some);
        let mut pings: [Option<Ping>; MAX_PINGS] = [const { None }; MAX_PINGS];
        if let Some(me) = addr {
            let targets = opts.pings.iter().flatten().filter(|&&t| {
                me.contains(t)
                    || (first_with_addr == Some(nth)
                        && !opts.addrs.iter().flatten().any(|a| a.contains(t)))
            });
            for (slot, &target) in pings.iter_mut().zip(targets) {
                *slot = Some(Ping {
                    report: PingReport {
                        target,
                        ..PingReport::default()
                    },
                    replied: 0,
                    next: None,
                });
            }
        }
        let mut report = NicReport {
            index: slot as u32,
            mac: link.mac(),
            addr,
            ..NicReport::default()
        };
        for (r, p) in report.pings.iter_mut().zip(&pings) {
            *r = p.as_ref().map(|p| p.report);
        }
        NetDiag {
            link,
            addr,
            pings,
            report,
        }
    }

    /// Handle what arrived, send what is due; the report is updated.
    pub fn poll(&mut self) {
        let mut frame = [0u8; MAX_FRAME];
        let mut out = [0u8; MAX_FRAME];
        for _ in 0..FRAMES_PER_POLL {
            let Some(n) = self.link.recv(&mut frame) else {
                break;
            };
            let Some(f) = frame.get(..n) else { break };
            self.handle(netproto::parse(f), &mut out);
        }
        self.drive(&mut out);
        for (r, p) in self.report.pings.iter_mut().zip(&self.pings) {
            *r = p.as_ref().map(|p| p.report);
        }
    }

    fn handle(&mut self, frame: Frame<'_>, out: &mut [u8; MAX_FRAME]) {
        let Some(me) = self.addr else { return };
        if let Some(n) = netproto::answer(&frame, self.link.mac(), me.ip, out) {
            let counter = match frame {
                Frame::ArpRequest { .. } => &mut self.report.arp_answered,
                _ => &mut self.report.echo_answered,
            };
            if self.link.send(out.get(..n).unwrap_or(&[])).is_ok() {
                *counter = counter.saturating_add(1);
            }
            return;
        }
        match frame {
            Frame::ArpReply {
                sender_mac,
                sender_ip,
            } => {
                for p in self.pings.iter_mut().flatten() {
                    if p.report.target == sender_ip && p.report.mac.is_none() {
                        p.report.mac = Some(sender_mac);
                        p.next = None;
                    }
                }
            }
            Frame::Echo {
                reply: true,
                src_ip,
                dst_ip,
                id,
                seq,
                payload,
                ..
            } if dst_ip == me.ip && id == ECHO_ID => {
                let Some(p) = self
                    .pings
                    .iter_mut()
                    .flatten()
                    .find(|p| p.report.target == src_ip)
                else {
                    return;
                };
                // ECHO_TRIES < 64: every sequence number sent has a bit.
                let ours = seq >= 1 && u32::from(seq) <= p.report.echo_sent && seq < 64;
                if ours && payload == netproto::echo_payload(seq) {
                    if p.replied & (1 << seq) == 0 {
                        p.replied |= 1 << seq;
                        p.report.echo_replies += 1;
                    }
                } else {
                    p.report.bad_replies = p.report.bad_replies.saturating_add(1);
                }
            }
            _ => {}
        }
    }

    /// Send the ARP or echo requests that are due.
    fn drive(&mut self, out: &mut [u8; MAX_FRAME]) {
        let Some(me) = self.addr else { return };
        let mac = self.link.mac();
        for p in self.pings.iter_mut().flatten() {
            if let Some(d) = p.next.as_mut()
                && !d.expired()
            {
                continue;
            }
            let r = &mut p.report;
            let n = match r.mac {
                None if r.arp_requests < ARP_TRIES => {
                    r.arp_requests += 1;
                    p.next = Some(Deadline::after_ms(interval(r.arp_requests, ARP_EVERY_MS)));
                    netproto::arp_request(out, mac, me.ip, r.target)
                }
                Some(dst) if r.echo_replies < ECHO_COUNT && r.echo_sent < ECHO_TRIES => {
                    r.echo_sent += 1;
                    let seq = r.echo_sent as u16;
                    p.next = Some(Deadline::after_ms(interval(r.echo_sent, ECHO_EVERY_MS)));
                    netproto::echo(
                        out,
                        false,
                        mac,
                        dst,
                        me.ip,
                        r.target,
                        ECHO_ID,
                        seq,
                        &netproto::echo_payload(seq),
                    )
                }
                // Done, or given up: nothing more to send.
                _ => continue,
            };
            if n > 0 {
                let _ = self.link.send(out.get(..n).unwrap_or(&[]));
            }
        }
    }

    /// True when every target is answered or given up on.
    pub fn pings_done(&self) -> bool {
        self.pings.iter().flatten().all(|p| {
            let r = &p.report;
            (r.mac.is_none() && r.arp_requests >= ARP_TRIES)
                || r.echo_replies >= ECHO_COUNT
                || r.echo_sent >= ECHO_TRIES
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netproto::Ip;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    type Wire = Rc<RefCell<VecDeque<Vec<u8>>>>;

    /// One end of a two-port "switch": what it sends lands in the other's
    /// queue.
    struct End {
        mac: Mac,
        rx: Wire,
        tx: Wire,
    }

    impl Link for End {
        fn mac(&self) -> Mac {
            self.mac
        }
        fn recv(&mut self, out: &mut [u8; MAX_FRAME]) -> Option<usize> {
            let f = self.rx.borrow_mut().pop_front()?;
            out[..f.len()].copy_from_slice(&f);
            Some(f.len())
        }
        fn send(&mut self, frame: &[u8]) -> Result<(), &'static str> {
            self.tx.borrow_mut().push_back(frame.to_vec());
            Ok(())
        }
    }

    fn opts(cmdline: &str) -> NetOptions {
        netproto::parse_options(cmdline.as_bytes())
    }

    #[test]
    fn two_nics_resolve_and_ping_each_other() {
        let (ab, ba): (Wire, Wire) = Default::default();
        let a_mac = [0x52, 0x54, 0, 0, 0, 0xa];
        let b_mac = [0x52, 0x54, 0, 0, 0, 0xb];
        let a = End {
            mac: a_mac,
            rx: ba.clone(),
            tx: ab.clone(),
        };
        let b = End {
            mac: b_mac,
            rx: ab,
            tx: ba,
        };
        let mut a = NetDiag::new(
            a,
            3,
            0,
            &opts("vmctl.net=10.77.0.2/24 vmctl.ping=10.77.0.3,10.77.0.9"),
        );
        let mut b = NetDiag::new(
            b,
            1,
            0,
            &opts("vmctl.net=10.77.0.3/24 vmctl.ping=10.77.0.2"),
        );
        // Echoes go out every ECHO_EVERY_MS, so ECHO_COUNT replies take at
        // least (ECHO_COUNT - 1) of those in wall time: poll until they are
        // in, bounded by a deadline far above that (not a speed check).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            a.poll();
            b.poll();
            std::thread::sleep(std::time::Duration::from_micros(200));
            if a.report.pings[0].is_some_and(|p| p.echo_replies == ECHO_COUNT)
                && b.report.pings[0].is_some_and(|p| p.echo_replies == ECHO_COUNT)
            {
                break;
            }
        }
        let pa = a.report.pings[0].unwrap();
        assert_eq!((pa.target, pa.mac), ([10, 77, 0, 3], Some(b_mac)));
        assert_eq!((pa.echo_replies, pa.bad_replies), (ECHO_COUNT, 0));
        let pb = b.report.pings[0].unwrap();
        assert_eq!(
            (pb.target, pb.mac, pb.echo_replies),
            ([10, 77, 0, 2], Some(a_mac), ECHO_COUNT)
        );
        assert!(b.report.arp_answered >= 1 && b.report.echo_answered >= ECHO_COUNT);
        assert_eq!(a.report.index, 3);
        assert_eq!(a.report.mac, a_mac);
        // 10.77.0.9 never answers: ARP only, no echo sent.
        let dead = a.report.pings[1].unwrap();
        assert_eq!((dead.mac, dead.echo_sent), (None, 0));
        assert!(dead.arp_requests >= 1);
    }

    #[test]
    fn retries_slow_down_and_stay_within_the_bitmap() {
        const { assert!(ECHO_TRIES < 64) };
        assert_eq!(interval(0, ECHO_EVERY_MS), ECHO_EVERY_MS);
        assert_eq!(interval(FAST_TRIES - 1, ARP_EVERY_MS), ARP_EVERY_MS);
        assert_eq!(interval(FAST_TRIES, ARP_EVERY_MS), SLOW_EVERY_MS);
    }

    #[test]
    fn targets_go_to_the_nic_whose_subnet_holds_them() {
        let o = opts("vmctl.net=10.1.0.2/24,10.2.0.2/24 vmctl.ping=10.2.0.1,10.1.0.1,8.8.8.8");
        let end = || End {
            mac: [2, 0, 0, 0, 0, 1],
            rx: Wire::default(),
            tx: Wire::default(),
        };
        let first = NetDiag::new(end(), 0, 0, &o);
        let second = NetDiag::new(end(), 1, 1, &o);
        let third = NetDiag::new(end(), 2, 2, &o);
        let targets = |d: &NetDiag<End>| -> Vec<Ip> {
            d.report.pings.iter().flatten().map(|p| p.target).collect()
        };
        assert_eq!(targets(&first), vec![[10, 1, 0, 1], [8, 8, 8, 8]]);
        assert_eq!(targets(&second), vec![[10, 2, 0, 1]]);
        assert!(targets(&third).is_empty(), "no address, no pings");
        assert_eq!(third.report.addr, None);
    }

    #[test]
    fn wrong_payloads_and_strangers_do_not_count() {
        let (to_a, from_a): (Wire, Wire) = Default::default();
        let a_mac = [0x52, 0x54, 0, 0, 0, 0xa];
        let peer = [0x52, 0x54, 0, 0, 0, 0xb];
        let mut a = NetDiag::new(
            End {
                mac: a_mac,
                rx: to_a.clone(),
                tx: from_a.clone(),
            },
            0,
            0,
            &opts("vmctl.net=10.77.0.2/24 vmctl.ping=10.77.0.3"),
        );
        let mut f = [0u8; MAX_FRAME];
        let n = netproto::arp_reply(&mut f, peer, [10, 77, 0, 3], a_mac, [10, 77, 0, 2]);
        to_a.borrow_mut().push_back(f[..n].to_vec());
        a.poll();
        a.poll();
        assert_eq!(a.report.pings[0].unwrap().mac, Some(peer));
        assert!(a.report.pings[0].unwrap().echo_sent >= 1);
        // A reply with the wrong payload, one for a seq never sent, one from
        // a stranger: none counts as a reply; the first two are bad.
        let wrong = [0u8; 32];
        for (src, seq, payload) in [
            ([10, 77, 0, 3], 1u16, &wrong[..]),
            ([10, 77, 0, 3], 40, &netproto::echo_payload(40)[..]),
            ([10, 77, 0, 4], 1, &netproto::echo_payload(1)[..]),
        ] {
            let n = netproto::echo(
                &mut f,
                true,
                peer,
                a_mac,
                src,
                [10, 77, 0, 2],
                ECHO_ID,
                seq,
                payload,
            );
            to_a.borrow_mut().push_back(f[..n].to_vec());
        }
        a.poll();
        let p = a.report.pings[0].unwrap();
        assert_eq!((p.echo_replies, p.bad_replies), (0, 2));
        // The right one counts once, however often it comes.
        for _ in 0..3 {
            let n = netproto::echo(
                &mut f,
                true,
                peer,
                a_mac,
                [10, 77, 0, 3],
                [10, 77, 0, 2],
                ECHO_ID,
                1,
                &netproto::echo_payload(1),
            );
            to_a.borrow_mut().push_back(f[..n].to_vec());
        }
        a.poll();
        assert_eq!(a.report.pings[0].unwrap().echo_replies, 1);
    }
}
