//! x86-64: the guest physical memory map, registers, CPUID and boot params.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod memory;
pub mod msr;
pub mod regs;
