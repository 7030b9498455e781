//! What diag tells the host: one JSON object per line on COM2 (the guest
//! agent channel, format in docs/design.md and docs/diag-guest.md) and a
//! human summary on COM1. A new report (next `seq`) is sent whenever what
//! diag sees changes.

use crate::layout::VIRTIO_MMIO_MAX_DEVICES;
use crate::netproto::{Cidr, Ip, MAX_NICS, MAX_PINGS, Mac};
use crate::text::Text;

/// virtio-blk GET_ID returns at most 20 bytes.
pub const DISK_ID_LEN: usize = 20;

/// One virtio-blk disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    /// virtio-mmio slot (= index of the disk in the VM's declaration).
    pub index: u32,
    /// GET_ID answer up to its first NUL; empty if the device gave none.
    pub id: [u8; DISK_ID_LEN],
    pub id_len: u8,
    pub size_bytes: u64,
    /// FNV-1a 64 of sector 0; `None` if it could not be read.
    pub sector0_fnv1a: Option<u64>,
    /// The whole disk's checksum, read at boot and on every capacity
    /// change: FNV-1a 64 over its little-endian 64-bit words (xor a word,
    /// multiply by the prime) — word-wise because every guest instruction
    /// is expensive under the emulating KVMs diag runs on. `None` above
    /// [`WHOLE_HASH_MAX`] or if unreadable.
    pub fnv1a: Option<u64>,
}

/// Disks up to this size are hashed whole (~1.5 s for 1 MiB on this
/// project's CI KVM).
pub const WHOLE_HASH_MAX: u64 = 1 << 20;

/// `diag.seqwrite`: what the sequence sector held at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqLog {
    /// The valid record's number, `None` if empty or corrupt.
    pub found: Option<u64>,
    /// The sector held something that is not a valid record.
    pub corrupt: bool,
}

impl Disk {
    pub fn id(&self) -> &[u8] {
        self.id.get(..usize::from(self.id_len)).unwrap_or(&[])
    }

    pub fn set_id(&mut self, raw: &[u8]) {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let n = end.min(DISK_ID_LEN);
        self.id = [0; DISK_ID_LEN];
        for (dst, &src) in self.id.iter_mut().zip(raw.iter().take(n)) {
            *dst = src;
        }
        self.id_len = n as u8;
    }
}

/// One ping target of a NIC (`vmctl.ping=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PingReport {
    pub target: Ip,
    /// The MAC its ARP reply gave; None until one came.
    pub mac: Option<Mac>,
    pub arp_requests: u32,
    pub echo_sent: u32,
    /// Distinct echo requests answered with diag's payload intact.
    pub echo_replies: u32,
    /// Echo replies from the target that were not such an answer.
    pub bad_replies: u32,
}

/// One virtio-net NIC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicReport {
    /// virtio-mmio slot.
    pub index: u32,
    pub mac: Mac,
    /// Its `vmctl.net=` address; None: it only reports its MAC.
    pub addr: Option<Cidr>,
    /// ARP requests for its address it answered.
    pub arp_answered: u32,
    /// Echo requests to its address it answered.
    pub echo_answered: u32,
    pub pings: [Option<PingReport>; MAX_PINGS],
}

/// Everything diag reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The CPUs online (`cpus_online`) once diag runs its APs; before that,
    /// with `diag.nosmp`, or if no AP could be started at boot, the CPUs
    /// present (MADT enabled, or the hotplug controller's CPEN bits).
    pub cpus: u32,
    pub max_cpus: u32,
    /// CPUs running diag code after the boot start-up (BSP + APs that
    /// checked in); `None` until APs were started, or if they could not be.
    pub cpus_started: Option<u32>,
    /// CPUs running diag code now: the BSP + APs checked in and not
    /// stopped by a hot-remove.
    pub cpus_online: u32,
    /// e820 RAM + verified hot-added memory.
    pub memory_bytes: u64,
    pub memory_mib: u64,
    /// Boot RAM ranges whose samples all read back + hot-added memory that
    /// verified, in MiB (rounded as `memory_mib`).
    pub memory_verified_mib: u64,
    /// Indexed by virtio-mmio slot.
    pub disks: [Option<Disk>; VIRTIO_MMIO_MAX_DEVICES],
    /// The virtio-net NICs diag drives, in slot order.
    pub nics: [Option<NicReport>; MAX_NICS],
    /// Only with `diag.seqwrite`.
    pub seqlog: Option<SeqLog>,
}

/// Big enough for 16 disks with the longest ids (and whole-disk checksums),
/// all escaped, 4 NICs with 4 ping targets each, and the sequence log.
pub const JSON_CAPACITY: usize = 9216;

fn mac_text<const N: usize>(out: &mut Text<N>, m: &Mac) {
    for (i, b) in m.iter().enumerate() {
        if i > 0 {
            out.byte(b':');
        }
        out.hex(u64::from(*b), 2);
    }
}

fn ip_text<const N: usize>(out: &mut Text<N>, ip: &Ip) {
    for (i, b) in ip.iter().enumerate() {
        if i > 0 {
            out.byte(b'.');
        }
        out.dec(u64::from(*b));
    }
}

impl Report {
    pub fn disk_count(&self) -> usize {
        self.disks.iter().flatten().count()
    }

    /// The COM2 line, without the trailing newline.
    pub fn write_json<const N: usize>(&self, seq: u64, out: &mut Text<N>) {
        out.str("{\"agent\":\"diag\",\"seq\":").dec(seq);
        out.str(",\"commands\":").str(crate::agentcmd::COMMANDS);
        out.str(",\"cpus\":").dec(u64::from(self.cpus));
        out.str(",\"max_cpus\":").dec(u64::from(self.max_cpus));
        out.str(",\"cpus_started\":");
        match self.cpus_started {
            Some(n) => out.dec(u64::from(n)),
            None => out.str("null"),
        };
        out.str(",\"cpus_online\":")
            .dec(u64::from(self.cpus_online));
        out.str(",\"memory_mib\":").dec(self.memory_mib);
        out.str(",\"memory_bytes\":").dec(self.memory_bytes);
        out.str(",\"memory_verified_mib\":")
            .dec(self.memory_verified_mib);
        out.str(",\"disks\":[");
        for (n, disk) in self.disks.iter().flatten().enumerate() {
            if n > 0 {
                out.byte(b',');
            }
            out.str("{\"index\":").dec(u64::from(disk.index));
            out.str(",\"id\":").json_str(disk.id());
            out.str(",\"size_bytes\":").dec(disk.size_bytes);
            out.str(",\"sector0_fnv1a\":");
            match disk.sector0_fnv1a {
                Some(h) => {
                    out.byte(b'"').hex(h, 16).byte(b'"');
                }
                None => {
                    out.str("null");
                }
            }
            out.str(",\"whole_fnv1a\":");
            match disk.fnv1a {
                Some(h) => {
                    out.byte(b'"').hex(h, 16).byte(b'"');
                }
                None => {
                    out.str("null");
                }
            }
            out.byte(b'}');
        }
        out.str("],\"nics\":[");
        for (n, nic) in self.nics.iter().flatten().enumerate() {
            if n > 0 {
                out.byte(b',');
            }
            out.str("{\"index\":").dec(u64::from(nic.index));
            out.str(",\"mac\":\"");
            mac_text(out, &nic.mac);
            out.str("\",\"ip\":");
            match nic.addr {
                Some(a) => {
                    out.byte(b'"');
                    ip_text(out, &a.ip);
                    out.byte(b'/').dec(u64::from(a.prefix)).byte(b'"');
                }
                None => {
                    out.str("null");
                }
            }
            out.str(",\"arp_answered\":")
                .dec(u64::from(nic.arp_answered));
            out.str(",\"echo_answered\":")
                .dec(u64::from(nic.echo_answered));
            out.str(",\"pings\":[");
            for (k, p) in nic.pings.iter().flatten().enumerate() {
                if k > 0 {
                    out.byte(b',');
                }
                out.str("{\"target\":\"");
                ip_text(out, &p.target);
                out.str("\",\"mac\":");
                match &p.mac {
                    Some(m) => {
                        out.byte(b'"');
                        mac_text(out, m);
                        out.byte(b'"');
                    }
                    None => {
                        out.str("null");
                    }
                }
                out.str(",\"arp_requests\":").dec(u64::from(p.arp_requests));
                out.str(",\"echo_sent\":").dec(u64::from(p.echo_sent));
                out.str(",\"echo_replies\":").dec(u64::from(p.echo_replies));
                out.str(",\"bad_replies\":").dec(u64::from(p.bad_replies));
                out.byte(b'}');
            }
            out.str("]}");
        }
        out.byte(b']');
        if let Some(s) = self.seqlog {
            out.str(",\"seqlog\":{\"found\":");
            match s.found {
                Some(n) => out.dec(n),
                None => out.str("null"),
            };
            out.str(",\"corrupt\":")
                .str(if s.corrupt { "true" } else { "false" });
            out.byte(b'}');
        }
        out.byte(b'}');
    }

    /// One COM1 line per NIC, without the trailing newline.
    pub fn write_nic_line<const N: usize>(nic: &NicReport, out: &mut Text<N>) {
        out.str("diag: nic ").dec(u64::from(nic.index)).str(" mac=");
        mac_text(out, &nic.mac);
        if let Some(a) = nic.addr {
            out.str(" ip=");
            ip_text(out, &a.ip);
            out.byte(b'/').dec(u64::from(a.prefix));
        }
        out.str(" answered arp=").dec(u64::from(nic.arp_answered));
        out.str(" echo=").dec(u64::from(nic.echo_answered));
        for p in nic.pings.iter().flatten() {
            out.str(" ping ");
            ip_text(out, &p.target);
            out.str(if p.mac.is_some() {
                " arp=ok"
            } else {
                " arp=no"
            });
            out.str(" replies=")
                .dec(u64::from(p.echo_replies))
                .byte(b'/')
                .dec(u64::from(p.echo_sent));
        }
    }

    /// The COM1 summary line, without the trailing newline.
    pub fn write_summary<const N: usize>(&self, out: &mut Text<N>) {
        out.str("diag: cpus=").dec(u64::from(self.cpus));
        out.str(" max_cpus=").dec(u64::from(self.max_cpus));
        if let Some(n) = self.cpus_started {
            out.str(" cpus_started=").dec(u64::from(n));
        }
        out.str(" cpus_online=").dec(u64::from(self.cpus_online));
        out.str(" memory_mib=").dec(self.memory_mib);
        out.str(" memory_verified_mib=")
            .dec(self.memory_verified_mib);
        out.str(" disks=").dec(self.disk_count() as u64);
    }

    /// One COM1 line per disk, without the trailing newline.
    pub fn write_disk_line<const N: usize>(disk: &Disk, out: &mut Text<N>) {
        out.str("diag: disk ").dec(u64::from(disk.index));
        out.str(" id=").printable(disk.id());
        out.str(" size_bytes=").dec(disk.size_bytes);
        out.str(" sector0_fnv1a=");
        match disk.sector0_fnv1a {
            Some(h) => out.hex(h, 16),
            None => out.str("unreadable"),
        };
        if let Some(h) = disk.fnv1a {
            out.str(" whole_fnv1a=").hex(h, 16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<const N: usize>(t: &Text<N>) -> String {
        String::from_utf8(t.as_bytes().to_vec()).unwrap()
    }

    fn sample() -> Report {
        let mut disk = Disk {
            index: 0,
            size_bytes: 10 << 30,
            sector0_fnv1a: Some(0x0123_4567_89ab_cdef),
            ..Disk::default()
        };
        disk.set_id(b"root\0\0\0");
        let mut odd = Disk {
            index: 3,
            size_bytes: 512,
            ..Disk::default()
        };
        odd.set_id(b"a\"b\\c\x01\xffdefghijklmnoprstuvwxyz");
        let mut r = Report {
            cpus: 2,
            max_cpus: 4,
            cpus_started: None,
            cpus_online: 1,
            memory_bytes: 0x9fc00 + (127 << 20),
            memory_mib: 128,
            memory_verified_mib: 128,
            ..Report::default()
        };
        r.disks[0] = Some(disk);
        r.disks[3] = Some(odd);
        r
    }

    #[test]
    fn json_line() {
        let mut t = Text::<JSON_CAPACITY>::new();
        sample().write_json(7, &mut t);
        assert_eq!(
            text(&t),
            r#"{"agent":"diag","seq":7,"commands":["ping","freeze","thaw"],"cpus":2,"max_cpus":4,"cpus_started":null,"cpus_online":1,"memory_mib":128,"memory_bytes":133823488,"memory_verified_mib":128,"disks":[{"index":0,"id":"root","size_bytes":10737418240,"sector0_fnv1a":"0123456789abcdef","whole_fnv1a":null},{"index":3,"id":"a\"b\\c\u0001\u00ffdefghijklmnop","size_bytes":512,"sector0_fnv1a":null,"whole_fnv1a":null}],"nics":[]}"#
        );
    }

    #[test]
    fn json_is_valid_and_fits_with_sixteen_worst_case_disks() {
        let mut r = sample();
        for (i, slot) in r.disks.iter_mut().enumerate() {
            let mut d = Disk {
                index: i as u32,
                size_bytes: u64::MAX,
                sector0_fnv1a: Some(u64::MAX),
                fnv1a: Some(u64::MAX),
                ..Disk::default()
            };
            d.set_id(&[0x01; 20]);
            *slot = Some(d);
        }
        r.cpus_started = Some(u32::MAX);
        r.cpus = u32::MAX;
        r.max_cpus = u32::MAX;
        r.cpus_online = u32::MAX;
        r.memory_bytes = u64::MAX;
        r.memory_mib = u64::MAX;
        r.memory_verified_mib = u64::MAX;
        for (i, nic) in r.nics.iter_mut().enumerate() {
            let ping = PingReport {
                target: [255; 4],
                mac: Some([0xff; 6]),
                arp_requests: u32::MAX,
                echo_sent: u32::MAX,
                echo_replies: u32::MAX,
                bad_replies: u32::MAX,
            };
            *nic = Some(NicReport {
                index: i as u32,
                mac: [0xff; 6],
                addr: Some(Cidr {
                    ip: [255; 4],
                    prefix: 30,
                }),
                arp_answered: u32::MAX,
                echo_answered: u32::MAX,
                pings: [Some(ping); MAX_PINGS],
            });
        }
        r.seqlog = Some(SeqLog {
            found: Some(u64::MAX),
            corrupt: true,
        });
        let mut t = Text::<JSON_CAPACITY>::new();
        r.write_json(u64::MAX, &mut t);
        assert!(!t.overflowed());
        // Well-formed: balanced, and the escapes are the ones JSON allows.
        let s = text(&t);
        assert_eq!(s.matches('{').count(), s.matches('}').count());
        assert_eq!(s.matches("\\u0001").count(), 16 * 20);
    }

    #[test]
    fn json_with_a_whole_disk_hash_and_a_seqlog() {
        let mut r = Report {
            seqlog: Some(SeqLog {
                found: Some(42),
                corrupt: false,
            }),
            ..Report::default()
        };
        r.disks[0] = Some(Disk {
            size_bytes: 512,
            sector0_fnv1a: Some(1),
            fnv1a: Some(2),
            ..Disk::default()
        });
        let mut t = Text::<JSON_CAPACITY>::new();
        r.write_json(1, &mut t);
        assert!(text(&t).ends_with(
            r#""disks":[{"index":0,"id":"","size_bytes":512,"sector0_fnv1a":"0000000000000001","whole_fnv1a":"0000000000000002"}],"nics":[],"seqlog":{"found":42,"corrupt":false}}"#
        ));
    }

    #[test]
    fn json_after_hot_add() {
        // 2 boot CPUs + 1 hot-added, 128 MiB + 128 MiB hot-added.
        let r = Report {
            cpus: 3,
            max_cpus: 4,
            cpus_started: Some(2),
            cpus_online: 3,
            memory_bytes: 0x9fc00 + (127 << 20) + (128 << 20),
            memory_mib: 256,
            memory_verified_mib: 256,
            ..Report::default()
        };
        let mut t = Text::<JSON_CAPACITY>::new();
        r.write_json(3, &mut t);
        assert_eq!(
            text(&t),
            r#"{"agent":"diag","seq":3,"commands":["ping","freeze","thaw"],"cpus":3,"max_cpus":4,"cpus_started":2,"cpus_online":3,"memory_mib":256,"memory_bytes":268041216,"memory_verified_mib":256,"disks":[],"nics":[]}"#
        );
        // Any change is a different report (a new seq is sent).
        assert_ne!(
            r,
            Report {
                cpus_online: 2,
                ..r
            }
        );
        assert_ne!(
            r,
            Report {
                memory_verified_mib: 128,
                ..r
            }
        );
    }

    #[test]
    fn json_with_a_nic() {
        let mut r = Report::default();
        let mut pings = [None; MAX_PINGS];
        pings[0] = Some(PingReport {
            target: [10, 77, 0, 3],
            mac: Some([0x52, 0x54, 0, 0xab, 0, 1]),
            arp_requests: 2,
            echo_sent: 3,
            echo_replies: 3,
            bad_replies: 0,
        });
        pings[1] = Some(PingReport {
            target: [10, 77, 0, 9],
            arp_requests: 100,
            ..PingReport::default()
        });
        r.nics[0] = Some(NicReport {
            index: 1,
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            addr: Some(Cidr {
                ip: [10, 77, 0, 2],
                prefix: 24,
            }),
            arp_answered: 1,
            echo_answered: 4,
            pings,
        });
        r.nics[1] = Some(NicReport {
            index: 2,
            mac: [2, 0, 0, 0, 0, 1],
            ..NicReport::default()
        });
        let mut t = Text::<JSON_CAPACITY>::new();
        r.write_json(1, &mut t);
        let s = text(&t);
        let nics = &s[s.find("\"nics\"").unwrap()..];
        assert_eq!(
            nics,
            r#""nics":[{"index":1,"mac":"52:54:00:12:34:56","ip":"10.77.0.2/24","arp_answered":1,"echo_answered":4,"pings":[{"target":"10.77.0.3","mac":"52:54:00:ab:00:01","arp_requests":2,"echo_sent":3,"echo_replies":3,"bad_replies":0},{"target":"10.77.0.9","mac":null,"arp_requests":100,"echo_sent":0,"echo_replies":0,"bad_replies":0}]},{"index":2,"mac":"02:00:00:00:00:01","ip":null,"arp_answered":0,"echo_answered":0,"pings":[]}]}"#
        );
        let mut line = Text::<256>::new();
        Report::write_nic_line(r.nics[0].as_ref().unwrap(), &mut line);
        assert_eq!(
            text(&line),
            "diag: nic 1 mac=52:54:00:12:34:56 ip=10.77.0.2/24 answered arp=1 echo=4 ping 10.77.0.3 arp=ok replies=3/3 ping 10.77.0.9 arp=no replies=0/0"
        );
    }

    #[test]
    fn summary_lines() {
        let r = sample();
        let mut t = Text::<256>::new();
        r.write_summary(&mut t);
        assert_eq!(
            text(&t),
            "diag: cpus=2 max_cpus=4 cpus_online=1 memory_mib=128 memory_verified_mib=128 disks=2"
        );
        t.clear();
        Report::write_disk_line(r.disks[3].as_ref().unwrap(), &mut t);
        assert_eq!(
            text(&t),
            "diag: disk 3 id=a\"b\\c??defghijklmnop size_bytes=512 sector0_fnv1a=unreadable"
        );
    }
}
