//! Making RAM above 4 GiB reachable. The VMM's page tables (CR3 = the PML4
//! at 0x9000, one PDPT, four page directories of 2 MiB pages) identity-map
//! only `[0, 4 GiB)`; boot RAM above the MMIO hole and hot-added memory may
//! lie higher. `ensure_mapped` fills in the missing PDPT entries of the
//! first PML4 entry with page directories from a static pool (2 MiB pages,
//! identity), so diag can reach physical addresses up to [`MAP_LIMIT`].
//! Existing entries are never changed. The APs share the BSP's CR3 and
//! never touch that memory. Only the BSP calls this.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::cpu::{read_cr3, reload_cr3};
use crate::layout::IDENTITY_MAP_END;

/// One GiB per page directory.
const GIB: u64 = 1 << 30;
/// Page directories in the pool: GiB 4..64.
const POOL_PAGES: usize = 60;
/// diag can reach physical addresses below this (4 GiB from the VMM's
/// tables + one GiB per pool page).
pub const MAP_LIMIT: u64 = IDENTITY_MAP_END + POOL_PAGES as u64 * GIB;

const PRESENT_RW: u64 = 0x3;
/// Present, writable, 2 MiB page.
const PDE_2MIB: u64 = 0x83;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

#[repr(C, align(4096))]
struct Table([u64; 512]);

/// Only touched through raw pointers by the BSP; every page is written in
/// full (512 entries) before a PDPT entry points at it, so its previous
/// content never matters. In `.data`, not `.bss`: `_start` zeroes `.bss`,
/// and zeroing these 60 pages (each first touch is a costly exit on a
/// nested KVM) took ~80-100 ms of every boot before the first console byte
/// (docs/benchmarks.md).
#[unsafe(link_section = ".data.diag_pool")]
static mut POOL: [Table; POOL_PAGES] = [const { Table([0; 512]) }; POOL_PAGES];
static POOL_USED: AtomicUsize = AtomicUsize::new(0);

/// The GiB-sized PDPT slots `[base, base + len)` touches, or `None` if the
/// range is empty, overflows or reaches `MAP_LIMIT`.
pub fn gibs(base: u64, len: u64) -> Option<core::ops::Range<u64>> {
    let end = base.checked_add(len)?;
    if len == 0 || end > MAP_LIMIT {
        return None;
    }
    Some(base / GIB..(end - 1) / GIB + 1)
}

/// The 2 MiB entries of the page directory that identity-maps GiB `gib`.
pub fn pd_entry(gib: u64, i: u64) -> u64 {
    (gib * GIB + (i << 21)) | PDE_2MIB
}

/// Identity-maps `[base, base + len)` (whole GiBs); false if the range
/// cannot be mapped (beyond `MAP_LIMIT`, pool exhausted, page tables not
/// where the VMM puts them).
pub fn ensure_mapped(base: u64, len: u64) -> bool {
    let Some(gibs) = gibs(base, len) else {
        return false;
    };
    let pml4 = read_cr3() & ADDR_MASK;
    if pml4 == 0 || pml4 >= IDENTITY_MAP_END {
        return false;
    }
    // SAFETY: the PML4 is the page the CPU walks, inside the identity map.
    let pml4e = unsafe { core::ptr::read_volatile(pml4 as *const u64) };
    let pdpt = pml4e & ADDR_MASK;
    if pml4e & 1 == 0 || pdpt == 0 || pdpt >= IDENTITY_MAP_END {
        return false;
    }
    let mut changed = false;
    for gib in gibs {
        let slot = (pdpt + gib * 8) as *mut u64;
        // SAFETY: gib < 512 (MAP_LIMIT), so the slot lies in the PDPT page.
        if unsafe { core::ptr::read_volatile(slot) } & 1 != 0 {
            continue;
        }
        let used = POOL_USED.load(Ordering::Relaxed);
        if used >= POOL_PAGES {
            return false;
        }
        // SAFETY: pool page `used` is not referenced by any page table yet;
        // only the BSP runs this.
        let page = unsafe { &raw mut POOL[used] };
        for i in 0..512u64 {
            // SAFETY: i < 512, inside the page.
            unsafe {
                core::ptr::write_volatile((page as *mut u64).add(i as usize), pd_entry(gib, i))
            };
        }
        POOL_USED.store(used + 1, Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::SeqCst);
        // Identity map: the pool's virtual address is its physical one.
        // SAFETY: writes a not-present PDPT entry; nothing maps through it yet.
        unsafe { core::ptr::write_volatile(slot, page as u64 | PRESENT_RW) };
        changed = true;
    }
    if changed {
        reload_cr3();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gib_slots() {
        assert_eq!(gibs(0x1_0000_0000, 1 << 30), Some(4..5));
        assert_eq!(gibs(0x1_0000_0000, (1 << 30) + 1), Some(4..6));
        assert_eq!(gibs(0x1_3fe0_0000, 0x40_0000), Some(4..6));
        assert_eq!(gibs(0, 0x1000), Some(0..1));
        assert_eq!(gibs(63 << 30, 1 << 30), Some(63..64));
        assert_eq!(MAP_LIMIT, 64 << 30);
        assert_eq!(gibs(63 << 30, (1 << 30) + 1), None);
        assert_eq!(gibs(0x1000, 0), None);
        assert_eq!(gibs(u64::MAX, 2), None);
    }

    #[test]
    fn entries_identity_map_2mib_pages() {
        assert_eq!(pd_entry(4, 0), 0x1_0000_0083);
        assert_eq!(pd_entry(4, 511), 0x1_3fe0_0083);
        assert_eq!(pd_entry(63, 1), (63 << 30) + 0x20_0083);
    }
}
