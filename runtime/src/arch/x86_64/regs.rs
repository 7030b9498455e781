//! Register state of the boot vCPU at the 64-bit entry: long mode with paging
//! on, the boot GDT, identity-mapping page tables for the first 4 GiB (2 MiB
//! pages), RSI pointing at the zero page, and a sane FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt::{self, BOOT_CS, BOOT_DS};
use super::layout::{BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Page-table entry flags: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// A 2 MiB page: present, writable, page size.
const PDE_2MIB: u64 = 0x83;
/// How many page directories cover 4 GiB.
pub const PD_COUNT: u64 = 4;

/// The boot page tables as `(guest address, bytes)` chunks: one PML4 entry, four
/// PDPT entries and four page directories of 2 MiB pages mapping `[0, 4 GiB)`
/// onto itself.
pub fn page_tables() -> Vec<(u64, Vec<u8>)> {
    let pml4 = (PDPTE_START | PTE_PRESENT_RW).to_le_bytes().to_vec();
    let pdpt: Vec<u8> = (0..PD_COUNT)
        .flat_map(|i| ((PDE_START + i * 0x1000) | PTE_PRESENT_RW).to_le_bytes())
        .collect();
    let pds: Vec<u8> = (0..PD_COUNT * 512)
        .flat_map(|i| ((i << 21) | PDE_2MIB).to_le_bytes())
        .collect();
    vec![(PML4_START, pml4), (PDPTE_START, pdpt), (PDE_START, pds)]
}

/// Special registers for the 64-bit entry, starting from what KVM reports.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = gdt::kvm_segment_from_gdt(gdt::BOOT_GDT[usize::from(BOOT_CS / 8)], BOOT_CS);
    let data = gdt::kvm_segment_from_gdt(gdt::BOOT_GDT[usize::from(BOOT_DS / 8)], BOOT_DS);
    gdt::load_boot_segments(&mut sregs, code, data);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the entry: RIP, a boot stack, RSI = zero page.
pub fn entry_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// x87 control word and MXCSR as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(bytes: &[u8], i: usize) -> u64 {
        u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap())
    }

    #[test]
    fn page_tables_identity_map_4gib_with_2mib_pages() {
        let t = page_tables();
        assert_eq!(t[0], (0x9000, 0xa003u64.to_le_bytes().to_vec()));
        assert_eq!(t[1].0, 0xa000);
        assert_eq!(
            (0..4).map(|i| u64_at(&t[1].1, i)).collect::<Vec<_>>(),
            vec![0xb003, 0xc003, 0xd003, 0xe003]
        );
        let (addr, pds) = &t[2];
        assert_eq!(*addr, 0xb000);
        assert_eq!(pds.len(), 4 * 4096);
        assert!(addr + pds.len() as u64 <= 0xf000);
        assert_eq!(u64_at(pds, 0), 0x83);
        assert_eq!(u64_at(pds, 1), 0x20_0083);
        // 0xfee0_0000 (local APIC) lies in the last PD.
        let apic = 0xfee0_0000u64 >> 21;
        assert_eq!(u64_at(pds, apic as usize), 0xfee0_0000 | 0x83);
        assert_eq!(u64_at(pds, 2047), 0xffe0_0000 | 0x83);
    }

    #[test]
    fn sregs_enter_long_mode() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l), (0x10, 1));
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn rsi_points_at_the_zero_page() {
        let r = entry_regs(0x20_0000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x20_0000, 0x7000, 2));
    }
}
