//! x86-64: the guest physical memory map, registers, CPUID and boot params.

pub mod layout;
