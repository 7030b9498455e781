//! Where the declared RAM goes in guest physical memory: below the 32-bit MMIO
//! hole, and whatever does not fit there above 4 GiB.

use super::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// The guest RAM regions `(start, size)` for `ram_bytes` of RAM, in address
/// order. Their sizes add up to exactly `ram_bytes`.
pub fn ram_regions(ram_bytes: u64) -> Vec<(u64, u64)> {
    let low = ram_bytes.min(MMIO_HOLE_START);
    let mut regions = vec![(0, low)];
    if ram_bytes > MMIO_HOLE_START {
        regions.push((MMIO_HOLE_END, ram_bytes - MMIO_HOLE_START));
    }
    regions
}

/// The end of RAM below the hole (exclusive).
pub fn low_ram_end(ram_bytes: u64) -> u64 {
    ram_bytes.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_above_the_hole_moves_above_4gib() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(3 << 30), vec![(0, 3 << 30)]);
        let r = ram_regions(3584 << 20);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 512 << 20)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 3584 << 20);
    }
}
