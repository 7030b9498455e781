//! FNV-1a 64: the checksum of sector 0 that diag reports, so a test on the
//! host can check that the guest reads the disk content it expects.

pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
pub const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `data`.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash = OFFSET_BASIS;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn zero_sector() {
        // What a fresh sparse disk reports; host tests compare against this.
        // XOR with 0 is a no-op, so a zero sector is 512 multiplications.
        assert_eq!(fnv1a64(&[0u8; 512]), zero_sector_expected());
    }

    fn zero_sector_expected() -> u64 {
        let mut h = OFFSET_BASIS;
        for _ in 0..512 {
            h = h.wrapping_mul(PRIME);
        }
        h
    }
}
