//! PVH boot (Xen's `hvm_start_info` protocol, xen/include/public/arch-x86/
//! hvm/start_info.h), the entry Firecracker, cloud-hypervisor and QEMU
//! microvm use for ELF kernels with an `XEN_ELFNOTE_PHYS32_ENTRY` note:
//! the boot vCPU starts in 32-bit protected mode, paging off, flat 4 GiB
//! segments, EBX = guest address of the start info, which points at the
//! command line, the memory map (the same e820 map the zero page carries)
//! and the RSDP. Byte layout and register state live here; `vmm/boot.rs`
//! decides when to use them.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use super::boot_params::E820Entry;
use super::gdt;
use super::layout::{PVH_INFO_END, PVH_INFO_START};

/// `hvm_start_info.magic` ("xEn3" with the top bit of each byte cleared).
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Version 1 has the memory map fields.
pub const START_INFO_VERSION: u32 = 1;
/// Size of `hvm_start_info` (version 1).
pub const START_INFO_SIZE: u64 = 56;
/// Size of one `hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: u64 = 24;
/// Where the memory map starts: right after the start info, 8-aligned.
pub const MEMMAP_START: u64 = PVH_INFO_START + 64;
/// How many memory map entries fit before `PVH_INFO_END`.
pub const MEMMAP_MAX_ENTRIES: u64 = (PVH_INFO_END - MEMMAP_START) / MEMMAP_ENTRY_SIZE;

/// A start info that cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PvhError {
    #[error("the memory map has {entries} entries; the PVH start info page holds {max}")]
    MemmapTooLong { entries: usize, max: u64 },
}

/// What the start info points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInfoInputs<'a> {
    pub cmdline_addr: u64,
    pub rsdp_addr: Option<u64>,
    pub memmap: &'a [E820Entry],
}

/// The start info and its memory map as `(guest address, bytes)` chunks,
/// all inside `[PVH_INFO_START, PVH_INFO_END)`.
pub fn start_info(inputs: &StartInfoInputs<'_>) -> Result<Vec<(u64, Vec<u8>)>, PvhError> {
    let entries = inputs.memmap.len();
    if entries as u64 > MEMMAP_MAX_ENTRIES {
        return Err(PvhError::MemmapTooLong {
            entries,
            max: MEMMAP_MAX_ENTRIES,
        });
    }
    let mut info = Vec::with_capacity(START_INFO_SIZE as usize);
    info.extend_from_slice(&START_INFO_MAGIC.to_le_bytes());
    info.extend_from_slice(&START_INFO_VERSION.to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&0u32.to_le_bytes()); // nr_modules
    info.extend_from_slice(&0u64.to_le_bytes()); // modlist_paddr
    info.extend_from_slice(&inputs.cmdline_addr.to_le_bytes());
    info.extend_from_slice(&inputs.rsdp_addr.unwrap_or(0).to_le_bytes());
    info.extend_from_slice(&MEMMAP_START.to_le_bytes());
    info.extend_from_slice(&(entries as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes()); // reserved
    let map: Vec<u8> = inputs
        .memmap
        .iter()
        .flat_map(|e| {
            let mut b = Vec::with_capacity(MEMMAP_ENTRY_SIZE as usize);
            b.extend_from_slice(&e.addr.to_le_bytes());
            b.extend_from_slice(&e.size.to_le_bytes());
            b.extend_from_slice(&e.kind.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b
        })
        .collect();
    Ok(vec![(PVH_INFO_START, info), (MEMMAP_START, map)])
}

/// A flat 4 GiB 32-bit segment (`type_` 0xb = code, 0x3 = data).
fn flat32(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        padding: 0,
        unusable: 0,
    }
}

/// Special registers at the PVH entry, starting from what KVM reports:
/// protected mode, paging off, flat segments, no long mode.
pub fn protected_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = flat32(0x8, 0xb);
    let data = flat32(0x10, 0x3);
    gdt::load_boot_segments(&mut sregs, code, data);
    sregs.cr0 = (sregs.cr0 | 0x1 | 0x10) & !0x8000_0000; // PE | ET, no PG
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers at the PVH entry: EIP, EBX = start info.
pub fn entry_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_START,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::boot_params::e820_map;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn start_info_layout_matches_the_xen_header() {
        let map = e820_map(128 << 20);
        let chunks = start_info(&StartInfoInputs {
            cmdline_addr: 0x20000,
            rsdp_addr: Some(0xe0000),
            memmap: &map,
        })
        .unwrap();
        let (at, info) = &chunks[0];
        assert_eq!((*at, info.len() as u64), (0x6000, START_INFO_SIZE));
        assert_eq!(u32_at(info, 0), 0x336e_c578);
        assert_eq!(u32_at(info, 4), 1);
        assert_eq!(u64_at(info, 24), 0x20000, "cmdline_paddr");
        assert_eq!(u64_at(info, 32), 0xe0000, "rsdp_paddr");
        assert_eq!(u64_at(info, 40), MEMMAP_START, "memmap_paddr");
        assert_eq!(u32_at(info, 48) as usize, map.len(), "memmap_entries");
        let (at, bytes) = &chunks[1];
        assert_eq!(*at, MEMMAP_START);
        assert!(*at >= PVH_INFO_START + START_INFO_SIZE);
        assert!(at + bytes.len() as u64 <= PVH_INFO_END);
        assert_eq!(bytes.len() as u64, map.len() as u64 * MEMMAP_ENTRY_SIZE);
        for (i, e) in map.iter().enumerate() {
            let o = i * 24;
            assert_eq!(
                (
                    u64_at(bytes, o),
                    u64_at(bytes, o + 8),
                    u32_at(bytes, o + 16)
                ),
                (e.addr, e.size, e.kind)
            );
        }
    }

    #[test]
    fn a_memory_map_that_does_not_fit_is_refused() {
        let e = E820Entry {
            addr: 0,
            size: 1,
            kind: 1,
        };
        let fits = vec![e; MEMMAP_MAX_ENTRIES as usize];
        let last = start_info(&StartInfoInputs {
            cmdline_addr: 0,
            rsdp_addr: None,
            memmap: &fits,
        })
        .unwrap();
        assert!(last[1].0 + last[1].1.len() as u64 <= PVH_INFO_END);
        let too_many = vec![e; MEMMAP_MAX_ENTRIES as usize + 1];
        assert!(matches!(
            start_info(&StartInfoInputs {
                cmdline_addr: 0,
                rsdp_addr: None,
                memmap: &too_many,
            }),
            Err(PvhError::MemmapTooLong { .. })
        ));
    }

    #[test]
    fn registers_enter_32bit_protected_mode_with_ebx_at_the_start_info() {
        let s = protected_mode_sregs(kvm_sregs {
            cr0: 0x8000_0000,
            efer: 0x500,
            ..Default::default()
        });
        assert_eq!(s.cr0 & 0x8000_0001, 1, "PE on, PG off");
        assert_eq!((s.efer, s.cr4, s.cr3), (0, 0, 0));
        assert_eq!(
            (s.cs.db, s.cs.l, s.cs.limit, s.cs.type_),
            (1, 0, 0xffff_ffff, 0xb)
        );
        assert_eq!((s.ss.db, s.ds.type_), (1, 0x3));
        let r = entry_regs(0x20_2917);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x20_2917, 0x6000, 2));
    }
}
