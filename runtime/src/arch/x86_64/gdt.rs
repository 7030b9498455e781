//! The boot GDT and the segment registers KVM needs for a 64-bit entry.
//!
//! Linux's 64-bit boot protocol (Documentation/arch/x86/boot.rst) wants
//! `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18 as flat 4 GiB segments, so the
//! table is `[null, null, code, data]` (32 bytes, fits before the boot IDT).
//! The task register is given to KVM directly through `kvm_sregs`; it has no
//! descriptor in the table (the guest loads its own TSS).

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const BOOT_CS: u16 = 0x10;
/// Selector of the data segment.
pub const BOOT_DS: u16 = 0x18;
/// Selector KVM is given for the task register (not in the table).
pub const BOOT_TSS: u16 = 0x20;

/// Build a GDT entry from flags (access byte in bits 0..8, flags in 12..16), base
/// and limit, in the hardware layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT, in order.
pub const BOOT_GDT: [u64; 4] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, present, DPL 0, 4 KiB granularity
    gdt_entry(0xc093, 0, 0xfffff), // data, read/write, 32-bit, 4 KiB granularity
];

/// Decode a GDT entry into the segment KVM loads into its hidden registers.
pub fn kvm_segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// The task register KVM requires to be valid in protected/long mode: a busy
/// 64-bit TSS at base 0.
pub fn boot_tss() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xfffff,
        selector: BOOT_TSS,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 1,
        avl: 0,
        padding: 0,
        unusable: 0,
    }
}

/// The GDT as bytes, for writing into guest memory.
pub fn gdt_bytes() -> Vec<u8> {
    BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// Point `sregs` at the boot GDT and IDT and load `code`/`data` into the
/// segment registers and the boot TSS into TR: what both boot entries (the
/// 64-bit one and PVH's 32-bit one) share; only the descriptors differ.
pub fn load_boot_segments(
    sregs: &mut kvm_bindings::kvm_sregs,
    code: kvm_bindings::kvm_segment,
    data: kvm_bindings::kvm_segment,
) {
    use super::layout::{BOOT_GDT_START, BOOT_IDT_START};
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = boot_tss();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_and_data_segments_are_flat_and_linux_compatible() {
        let cs = kvm_segment_from_gdt(BOOT_GDT[2], BOOT_CS);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.type_, cs.s, cs.present),
            (0, 0xffff_ffff, 1, 0, 0xb, 1, 1)
        );
        let ds = kvm_segment_from_gdt(BOOT_GDT[3], BOOT_DS);
        assert_eq!(
            (ds.base, ds.limit, ds.l, ds.db, ds.type_, ds.s, ds.present),
            (0, 0xffff_ffff, 0, 1, 0x3, 1, 1)
        );
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(usize::from(BOOT_DS) + 8, gdt_bytes().len());
        assert!(
            crate::arch::x86_64::layout::BOOT_GDT_START + gdt_bytes().len() as u64
                <= crate::arch::x86_64::layout::BOOT_IDT_START
        );
    }

    #[test]
    fn null_entry_is_unusable() {
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
