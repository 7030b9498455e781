//! The few privileged instructions diag needs, as small safe-looking
//! wrappers around inline assembly: port I/O, MMIO, MSRs, `pause`. Nothing
//! here enables interrupts: on this machine's KVM an external interrupt
//! kills the guest, so diag runs with IF=0 and polls.

use core::arch::asm;

pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; diag is the only software in
    // the VM, so no other driver owns these ports.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// `rep outsb`: all of `bytes` to `port` in one instruction — one VM exit
/// under KVM, which hands the whole string to the VMM (up to a page).
pub fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: reads exactly `bytes.len()` bytes starting at `bytes`, a live
    // slice; the direction flag is clear (Rust's ABI and diag's entry).
    unsafe {
        asm!(
            "rep outsb",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags, readonly)
        )
    }
}

pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// 32-bit MMIO read. Callers pass addresses of device registers inside the
/// identity map (below 4 GiB).
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: identity-mapped device register (see callers); volatile so
    // every access reaches the VMM.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

pub fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// 8-bit MMIO read (device registers inside the identity map).
pub fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

pub fn mmio_write8(addr: u64, value: u8) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
}

pub fn pause() {
    core::hint::spin_loop();
}

/// Stops this CPU for good: interrupts masked, `hlt` (only INIT or an NMI
/// would wake it, and then it halts again).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: masks interrupts and halts; touches no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers read architectural MSRs that KVM always provides.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reloads CR3 with its own value: flushes the (non-global) TLB after the
/// page tables changed.
pub fn reload_cr3() {
    // SAFETY: the same page tables stay in force; only cached translations
    // are dropped.
    unsafe {
        asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack, preserves_flags))
    }
}

/// IA32_APIC_BASE: bit 8 says "this is the bootstrap processor".
pub const MSR_APIC_BASE: u32 = 0x1b;
pub const APIC_BASE_BSP: u64 = 1 << 8;

/// Masks both 8259 PICs so nothing ever becomes pending from them (diag
/// never sets IF anyway; this is belt and braces).
pub fn mask_pics() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// Stops the VM: ACPI S5 through the VMM's sleep control register, then
/// parks (the VMM is expected to have exited).
pub fn power_off() -> ! {
    outb(crate::layout::POWER_PORT, crate::layout::POWER_OFF_VALUE);
    loop {
        pause();
    }
}
