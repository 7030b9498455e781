//! x86-64: the guest physical memory map, registers, CPUID, boot params
//! (Linux 64-bit protocol) and PVH start info.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod memory;
pub mod msr;
pub mod pvh;
pub mod regs;
