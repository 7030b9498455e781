//! Where the declared RAM goes in guest physical memory: below the 32-bit MMIO
//! hole, and whatever does not fit there above 4 GiB.

use super::layout::{MEMORY_HOTPLUG_ALIGN, MMIO_HOLE_END, MMIO_HOLE_START};

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

/// The guest physical range `(start, len)` reserved at boot for hot-added
/// RAM, when `max_ram_bytes` exceeds `boot_ram_bytes`; `None` otherwise (or
/// when the numbers overflow the address space).
///
/// - `len` is `max - boot` rounded up to [`MEMORY_HOTPLUG_ALIGN`] (128 MiB).
/// - `start` is the end of boot RAM rounded up to 128 MiB. If boot RAM reaches
///   the 32-bit MMIO hole (ends at or above [`MMIO_HOLE_START`]), that is the
///   end of the RAM above 4 GiB. If a region starting below the hole would
///   run into it, the region goes to 4 GiB instead: it is never split and
///   never overlaps the hole.
///
/// The range is not RAM at boot and never appears in the e820 map; the memory
/// hotplug controller hands it out, one slot per hot-add.
pub fn hotplug_region(boot_ram_bytes: u64, max_ram_bytes: u64) -> Option<(u64, u64)> {
    if max_ram_bytes <= boot_ram_bytes {
        return None;
    }
    let len = align_up(max_ram_bytes - boot_ram_bytes)?;
    // End of boot RAM as ram_regions lays it out.
    let end = if boot_ram_bytes > MMIO_HOLE_START {
        MMIO_HOLE_END.checked_add(boot_ram_bytes - MMIO_HOLE_START)?
    } else {
        boot_ram_bytes
    };
    let mut start = align_up(end)?;
    if start < MMIO_HOLE_END && start.checked_add(len)? > MMIO_HOLE_START {
        start = MMIO_HOLE_END;
    }
    start.checked_add(len)?;
    Some((start, len))
}

fn align_up(v: u64) -> Option<u64> {
    v.checked_next_multiple_of(MEMORY_HOTPLUG_ALIGN)
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

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn hotplug_region_follows_boot_ram() {
        assert_eq!(hotplug_region(256 * MIB, 256 * MIB), None);
        assert_eq!(hotplug_region(GIB, 512 * MIB), None);
        // 256 MiB boot, 1 GiB max: right after boot RAM.
        assert_eq!(hotplug_region(256 * MIB, GIB), Some((256 * MIB, 768 * MIB)));
        // Unaligned sizes round up to 128 MiB (start and length).
        assert_eq!(
            hotplug_region(300 * MIB, 400 * MIB),
            Some((384 * MIB, 128 * MIB))
        );
        // Fits exactly below the hole.
        assert_eq!(hotplug_region(2 * GIB, 3 * GIB), Some((2 * GIB, GIB)));
        // Would run into the hole: moves to 4 GiB.
        assert_eq!(
            hotplug_region(2 * GIB, 3 * GIB + 1),
            Some((4 * GIB, GIB + 128 * MIB))
        );
        assert_eq!(
            hotplug_region(2900 * MIB, 4 * GIB),
            Some((4 * GIB, 1280 * MIB))
        );
        // Boot RAM reaching the hole: above 4 GiB, after the high RAM.
        assert_eq!(hotplug_region(3 * GIB, 4 * GIB), Some((4 * GIB, GIB)));
        assert_eq!(
            hotplug_region(3584 * MIB, 8 * GIB),
            Some((4 * GIB + 512 * MIB, 4608 * MIB))
        );
        assert_eq!(hotplug_region(4 * GIB, 6 * GIB), Some((5 * GIB, 2 * GIB)));
        assert_eq!(
            hotplug_region(4 * GIB + 1, 6 * GIB),
            Some((5 * GIB + 128 * MIB, 2 * GIB))
        );
        assert_eq!(hotplug_region(0, u64::MAX), None);
        assert_eq!(hotplug_region(u64::MAX - 1, u64::MAX), None);
    }

    #[test]
    fn hotplug_region_never_overlaps_ram_or_the_hole() {
        for boot in (0..48).map(|i| i * 100 * MIB + 7 * MIB) {
            for extra in [1, 128 * MIB, GIB, 3 * GIB] {
                let (start, len) = hotplug_region(boot, boot + extra).unwrap();
                assert_eq!(start % MEMORY_HOTPLUG_ALIGN, 0);
                assert_eq!(len % MEMORY_HOTPLUG_ALIGN, 0);
                assert!(len >= extra);
                let end = start + len;
                assert!(end <= MMIO_HOLE_START || start >= MMIO_HOLE_END);
                for (rs, rl) in ram_regions(boot) {
                    assert!(end <= rs || start >= rs + rl, "boot {boot:#x}");
                }
            }
        }
    }
}
