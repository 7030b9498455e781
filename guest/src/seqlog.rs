//! `diag.seqwrite`: the sequence record diag keeps rewriting on its first
//! disk, so a host test can show that a live copy of a running, writing VM
//! holds one consistent record (docs/diag-guest.md, docs/disks.md).
//!
//! Sector [`SECTOR`] of the disk in the first virtio slot holds
//! `"VMCTLSEQ"`, the sequence number (u64 LE), the FNV-1a 64 (u64 LE) of
//! the rest of the sector (bytes 0..16 and 24..512), and 488 bytes of a
//! pattern that depends on the number — so a write torn between two records
//! fails the checksum. The layout is mirrored by the host tests.

use crate::fnv::{OFFSET_BASIS, PRIME};

pub const SECTOR: u64 = 1;
pub const MAGIC: &[u8; 8] = b"VMCTLSEQ";
const LEN: usize = 512;

/// What the sector held when diag booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// All zero: never written.
    Empty,
    /// A record whose checksum holds.
    Valid(u64),
    /// Anything else: a torn or foreign sector.
    Corrupt,
}

fn checksum(sector: &[u8; LEN]) -> u64 {
    let mut h = OFFSET_BASIS;
    for (i, &b) in sector.iter().enumerate() {
        if (16..24).contains(&i) {
            continue;
        }
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The record for `seq`.
pub fn encode(seq: u64) -> [u8; LEN] {
    let mut s = [0u8; LEN];
    s[..8].copy_from_slice(MAGIC);
    s[8..16].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in s.iter_mut().enumerate().skip(24) {
        *b = (seq as u8).wrapping_add(i as u8);
    }
    let c = checksum(&s);
    s[16..24].copy_from_slice(&c.to_le_bytes());
    s
}

/// What `sector` holds.
pub fn decode(sector: &[u8; LEN]) -> Found {
    if sector.iter().all(|&b| b == 0) {
        return Found::Empty;
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&sector[16..24]);
    if &sector[..8] != MAGIC || u64::from_le_bytes(word) != checksum(sector) {
        return Found::Corrupt;
    }
    word.copy_from_slice(&sector[8..16]);
    Found::Valid(u64::from_le_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_writes() {
        assert_eq!(decode(&[0; LEN]), Found::Empty);
        let r = encode(41);
        assert_eq!(decode(&r), Found::Valid(41));
        // Half of record 42 over record 41: detected.
        let mut torn = r;
        torn[256..].copy_from_slice(&encode(42)[256..]);
        assert_eq!(decode(&torn), Found::Corrupt);
        let mut flipped = encode(7);
        flipped[9] ^= 1;
        assert_eq!(decode(&flipped), Found::Corrupt);
    }
}
