//! The crash test's scenario: which VMs the lab declares from round to round
//! and what their data disks must contain.
//!
//! Kept apart from the driver (no processes, no KVM) so the state machine,
//! its KDL and the content model are unit-tested on their own, and so a
//! seed replays the same sequence of desired states whatever the timing of
//! the kills was (those draw from a different generator).

use std::fmt::Write as _;

/// A small deterministic PRNG (xorshift64), so a printed seed replays.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift never leaves 0; mix the seed so nearby seeds differ.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// FNV-1a 64, as diag reports sector 0 (`sector0_fnv1a`).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub const MIB: u64 = 1 << 20;
/// The data disk of `tmp`, imported from the pattern like `src`'s.
pub const TMP_DISK_MIB: u64 = 4;
/// `src`'s disk grows by 1 MiB steps up to this.
const SRC_DISK_MAX_MIB: u64 = 64;
/// `hot`'s hot-add headroom.
pub const HOT_MAX_CPUS: u32 = 2;
pub const HOT_MAX_MIB: u64 = 384;

/// The image every data disk is created from (`source=`): random data, a
/// 512 KiB hole (so a sparse copy must still get the tail right), random
/// data again.
pub fn pattern(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0x7061_7474_6572_6e00);
    let mut p = rng.bytes(256 << 10);
    p.resize(768 << 10, 0);
    p.extend(rng.bytes(256 << 10));
    p
}

/// What one round declares.
///
/// - `src`: 64 MiB, a data disk imported from the pattern that only grows
///   (resize-disk), the copy source;
/// - `hot`: vCPUs and memory within hot-add headroom (hot-add-cpu,
///   hot-remove-cpu, hot-add-memory; memory down is a restart);
/// - `rs`: memory with no headroom, so every change is a restart;
/// - `cp`: `copy-from "src"`, declared or not (copy, destroy);
/// - `tmp`: a plain VM with an imported disk, declared or not (create,
///   destroy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub src_disk_mib: u64,
    pub hot_cpus: u32,
    pub hot_mib: u64,
    pub rs_mib: u64,
    pub with_copy: bool,
    pub with_tmp: bool,
}

/// What the guest of one VM must report once the lab converged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub name: &'static str,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Size of its one data disk, if it has one.
    pub disk_mib: Option<u64>,
}

impl Desired {
    pub fn initial() -> Desired {
        Desired {
            src_disk_mib: 8,
            hot_cpus: 1,
            hot_mib: 128,
            rs_mib: 64,
            with_copy: false,
            with_tmp: true,
        }
    }

    /// The next round's state: some fields changed at random, at least one.
    /// Disks only grow; memory moves in 128 MiB steps within `hot`'s max.
    pub fn next(&self, rng: &mut Rng) -> Desired {
        loop {
            let mut n = self.clone();
            if rng.chance(35) && n.src_disk_mib < SRC_DISK_MAX_MIB {
                n.src_disk_mib += 1;
            }
            if rng.chance(40) {
                n.with_copy = !n.with_copy;
            }
            if rng.chance(40) {
                n.with_tmp = !n.with_tmp;
            }
            if rng.chance(45) {
                n.hot_cpus = if n.hot_cpus == 1 { HOT_MAX_CPUS } else { 1 };
            }
            if rng.chance(45) {
                let others: Vec<u64> = [128, 256, HOT_MAX_MIB]
                    .into_iter()
                    .filter(|&m| m != n.hot_mib)
                    .collect();
                n.hot_mib = others[rng.below(others.len() as u64) as usize];
            }
            if rng.chance(35) {
                n.rs_mib = if n.rs_mib == 64 { 96 } else { 64 };
            }
            if n != *self {
                return n;
            }
        }
    }

    pub fn kdl(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "vm \"src\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"{}MiB\" source=\"pattern.raw\"\n}}\n",
            self.src_disk_mib
        );
        let _ = write!(
            s,
            "vm \"hot\" {{\n    os \"diag\"\n    cpus {} max={HOT_MAX_CPUS}\n    memory \"{}MiB\" max=\"{HOT_MAX_MIB}MiB\"\n}}\n",
            self.hot_cpus, self.hot_mib
        );
        let _ = write!(
            s,
            "vm \"rs\" {{\n    os \"diag\"\n    memory \"{}MiB\"\n}}\n",
            self.rs_mib
        );
        if self.with_copy {
            s.push_str("vm \"cp\" {\n    copy-from \"src\"\n    memory \"96MiB\"\n}\n");
        }
        if self.with_tmp {
            let _ = write!(
                s,
                "vm \"tmp\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"{TMP_DISK_MIB}MiB\" source=\"pattern.raw\"\n}}\n"
            );
        }
        s
    }

    /// Every VM this state declares, with what its guest must report.
    pub fn expect(&self) -> Vec<Expect> {
        let mut v = vec![
            Expect {
                name: "src",
                cpus: 1,
                memory_mib: 64,
                disk_mib: Some(self.src_disk_mib),
            },
            Expect {
                name: "hot",
                cpus: self.hot_cpus,
                memory_mib: self.hot_mib,
                disk_mib: None,
            },
            Expect {
                name: "rs",
                cpus: 1,
                memory_mib: self.rs_mib,
                disk_mib: None,
            },
        ];
        if self.with_copy {
            v.push(Expect {
                name: "cp",
                cpus: 1,
                memory_mib: 96,
                disk_mib: Some(self.src_disk_mib),
            });
        }
        if self.with_tmp {
            v.push(Expect {
                name: "tmp",
                cpus: 1,
                memory_mib: 64,
                disk_mib: Some(TMP_DISK_MIB),
            });
        }
        v
    }
}

/// One host-side write into a VM's data disk between rounds.
#[derive(Debug, Clone)]
pub struct Marker {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Two markers for a disk of `size` bytes: one 512-byte block somewhere
/// past the first 4 KiB (sector 0 is left alone: diag reads it only at boot
/// and on a capacity change, so the guest's checksum would go stale) and one
/// in the last sector, the old end that a grow must keep.
pub fn markers(size: u64, rng: &mut Rng) -> Vec<Marker> {
    let sectors = size / 512;
    let mut v = Vec::new();
    if sectors > 9 {
        let s = 8 + rng.below(sectors - 9);
        v.push(Marker {
            offset: s * 512,
            bytes: rng.bytes(512),
        });
    }
    v.push(Marker {
        offset: size.saturating_sub(512),
        bytes: rng.bytes(512),
    });
    v
}

/// Apply `markers` to a content model.
pub fn apply_markers(model: &mut [u8], markers: &[Marker]) {
    for m in markers {
        let start = m.offset as usize;
        if let Some(dst) = model.get_mut(start..start + m.bytes.len()) {
            dst.copy_from_slice(&m.bytes);
        }
    }
}

/// The content a disk of `size` bytes created from `source` has: the
/// source, then zeros.
pub fn imported(source: &[u8], size: u64) -> Vec<u8> {
    let mut v = source.to_vec();
    v.resize(size as usize, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_of_a_zero_sector_is_what_diag_documents() {
        assert_eq!(fnv1a(&[0u8; 512]), "7da144b97d054b25");
    }

    #[test]
    fn a_seed_replays_the_same_states_and_every_step_changes_something() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut d = Desired::initial();
            let mut v = Vec::new();
            for _ in 0..50 {
                let n = d.next(&mut rng);
                assert_ne!(n, d);
                assert!(n.src_disk_mib >= d.src_disk_mib, "disks only grow");
                assert!(n.hot_mib <= HOT_MAX_MIB && n.hot_mib.is_multiple_of(128));
                d = n;
                v.push(d.clone());
            }
            v
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn kdl_declares_exactly_the_expected_vms() {
        let mut d = Desired::initial();
        d.with_copy = true;
        let kdl = d.kdl();
        for e in d.expect() {
            assert!(kdl.contains(&format!("vm \"{}\"", e.name)), "{kdl}");
        }
        assert!(kdl.contains("copy-from \"src\""));
        d.with_copy = false;
        d.with_tmp = false;
        assert!(!d.kdl().contains("\"cp\"") && !d.kdl().contains("\"tmp\""));
        assert_eq!(d.expect().len(), 3);
    }

    #[test]
    fn markers_stay_inside_the_disk_and_off_sector_0() {
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let size = (1 + rng.below(64)) * MIB;
            for m in markers(size, &mut rng) {
                assert!(m.offset >= 4096);
                assert!(m.offset + m.bytes.len() as u64 <= size);
            }
        }
        let mut model = imported(&pattern(1), 2 * MIB);
        let ms = markers(2 * MIB, &mut rng);
        apply_markers(&mut model, &ms);
        assert_eq!(model.len() as u64, 2 * MIB);
        assert_eq!(&model[(2 * MIB - 512) as usize..], &ms[1].bytes[..]);
    }
}
