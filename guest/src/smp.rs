//! Starting the application processors (APs) the MADT lists, to prove they
//! run: INIT, SIPI, SIPI through the local APIC's ICR, with a real-mode
//! trampoline that takes each AP straight to long mode (PAE, the BSP's CR3,
//! EFER.LME, CR0.PG|PE, far jump), where it increments a counter and parks
//! with `cli; hlt` (IF=0, so it sleeps until the VM ends, costing the host
//! no CPU). Optional: `diag.nosmp` skips it. If the APs do not check in
//! within a bounded wait, diag says so and reports `cpus_started: null`;
//! the BSP never waits unboundedly here.
//!
//! A VMM may also start the APs itself at the ELF entry point; `_start`
//! then sends them to `diag_ap_park`, which counts them the same way.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::clock::{Deadline, sleep_ms};
use crate::cpu::{mmio_read32, mmio_write32, pause, read_cr3};
use crate::layout::{AP_TRAMPOLINE, APIC_START};

/// APs that reached diag code. In `.data`, not `.bss`, so the BSP's
/// zeroing of `.bss` cannot erase check-ins of APs the VMM started early.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.diag_ap_count")]
pub static DIAG_AP_COUNT: AtomicU32 = AtomicU32::new(0);

global_asm!(
    r#"
    .section .text.diag_ap_trampoline, "ax"
    .global diag_ap_tramp_start
    .global diag_ap_tramp_end
    .global diag_ap_cr3
    .code16
diag_ap_tramp_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (diag_ap_gdtr - diag_ap_tramp_start)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (diag_ap_cr3 - diag_ap_tramp_start), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmpl $0x08, $diag_ap_long_entry
    .balign 8
diag_ap_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
diag_ap_gdtr:
    .word 23
    .long {tramp} + (diag_ap_gdt - diag_ap_tramp_start)
    .balign 4
diag_ap_cr3:
    .long 0
diag_ap_tramp_end:

    .code64
    .section .text.diag_ap_long_entry, "ax"
    .global diag_ap_park
diag_ap_long_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
diag_ap_park:
    lock incl DIAG_AP_COUNT(%rip)
1:
    cli
    hlt
    jmp 1b
"#,
    tramp = const AP_TRAMPOLINE,
    options(att_syntax)
);

unsafe extern "C" {
    static diag_ap_tramp_start: u8;
    static diag_ap_tramp_end: u8;
    static diag_ap_cr3: u8;
}

const APIC_ID: u64 = 0x20;
const APIC_ICR_LOW: u64 = 0x300;
const APIC_ICR_HIGH: u64 = 0x310;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0x0000_4500;
const ICR_STARTUP: u32 = 0x0000_4600;

/// Bounded waits (the SDM's INIT-SIPI-SIPI timing: 10 ms, 200 µs).
const IPI_IDLE_MS: u64 = 10;
const AFTER_INIT_MS: u64 = 10;
const AFTER_SIPI_MS: u64 = 1;
const CHECK_IN_MS: u64 = 1_000;

pub fn aps_checked_in() -> u32 {
    DIAG_AP_COUNT.load(Ordering::SeqCst)
}

/// This CPU's xAPIC ID.
pub fn bsp_apic_id() -> u32 {
    mmio_read32(APIC_START + APIC_ID) >> 24
}

fn send_ipi(apic_id: u32, low: u32) -> bool {
    mmio_write32(APIC_START + APIC_ICR_HIGH, apic_id << 24);
    mmio_write32(APIC_START + APIC_ICR_LOW, low);
    let mut deadline = Deadline::after_ms(IPI_IDLE_MS);
    while mmio_read32(APIC_START + APIC_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
        if deadline.expired() {
            return false;
        }
        pause();
    }
    true
}

/// The outcome of `start_aps`.
pub enum ApStart {
    /// APs checked in (not counting the BSP).
    Started(u32),
    /// Why they could not be started.
    Failed(&'static str),
}

/// Copies the trampoline below 1 MiB, sends INIT-SIPI-SIPI to every AP in
/// `apic_ids` (all but the BSP) and waits, bounded, for them to check in.
pub fn start_aps(apic_ids: &[u32]) -> ApStart {
    let bsp = bsp_apic_id();
    let want = apic_ids.iter().filter(|&&id| id != bsp).count() as u32;
    if want == 0 {
        return ApStart::Started(0);
    }
    if aps_checked_in() >= want {
        // The VMM started them at the entry point already.
        return ApStart::Started(want);
    }
    // Forget check-ins from before a reset that kept memory: every AP
    // that counts now goes through INIT/SIPI below.
    DIAG_AP_COUNT.store(0, Ordering::SeqCst);
    if apic_ids.iter().any(|&id| id > 0xfe) {
        return ApStart::Failed("APIC IDs above 254 need x2APIC, which diag does not drive");
    }
    let start = &raw const diag_ap_tramp_start as u64;
    let end = &raw const diag_ap_tramp_end as u64;
    let cr3_slot = &raw const diag_ap_cr3 as u64;
    let len = end.saturating_sub(start);
    if len == 0 || len > 4096 || cr3_slot < start || cr3_slot + 4 > end {
        return ApStart::Failed("trampoline does not fit its page");
    }
    let cr3 = read_cr3();
    if cr3 > u64::from(u32::MAX) {
        return ApStart::Failed("page tables above 4 GiB, unreachable from real mode");
    }
    // SAFETY: AP_TRAMPOLINE is a free low-RAM page (see layout.rs) inside
    // the identity map, the source is our own code, and len <= 4096.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, AP_TRAMPOLINE as *mut u8, len as usize);
        core::ptr::write_volatile((AP_TRAMPOLINE + (cr3_slot - start)) as *mut u32, cr3 as u32);
    }
    core::sync::atomic::fence(Ordering::SeqCst);

    let vector = (AP_TRAMPOLINE >> 12) as u32;
    for &id in apic_ids.iter().filter(|&&id| id != bsp) {
        if !send_ipi(id, ICR_INIT) {
            return ApStart::Failed("INIT IPI stayed pending in the local APIC");
        }
    }
    sleep_ms(AFTER_INIT_MS);
    for _ in 0..2 {
        for &id in apic_ids.iter().filter(|&&id| id != bsp) {
            if !send_ipi(id, ICR_STARTUP | vector) {
                return ApStart::Failed("STARTUP IPI stayed pending in the local APIC");
            }
        }
        sleep_ms(AFTER_SIPI_MS);
        if aps_checked_in() >= want {
            return ApStart::Started(want);
        }
    }
    let mut deadline = Deadline::after_ms(CHECK_IN_MS);
    while aps_checked_in() < want && !deadline.expired() {
        pause();
    }
    match aps_checked_in() {
        0 => {
            ApStart::Failed("no AP checked in after INIT/SIPI (this KVM may not run real-mode APs)")
        }
        n => ApStart::Started(n.min(want)),
    }
}
