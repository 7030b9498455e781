//! The application processors (APs): starting them (INIT, SIPI, SIPI
//! through the local APIC's ICR, with a real-mode trampoline that takes each
//! AP straight to long mode: PAE, the BSP's CR3, EFER.LME, CR0.PG|PE, far
//! jump), and, for CPU hot-remove, stopping them again.
//!
//! Every AP has a state word in `DIAG_AP_STATE`, indexed by its xAPIC ID
//! (the AP reads it from its own local APIC):
//!
//! ```text
//!            INIT/SIPI (start_ap / start_aps)
//!   OFFLINE ───────────────────────────────▶ ONLINE ──stop_ap──▶ STOP
//!      ▲   ◀── INIT when STOP is not answered ──────────────────┘  │
//!      │                                                  AP answers│
//!      └──── start_ap stores OFFLINE, then INIT/SIPI ─── PARKED ◀───┘
//! ```
//!
//! - ONLINE: the AP runs diag's AP loop. Where the VMM has the idle port
//!   it writes 50 to it (the VMM parks the thread up to 50 ms) and then
//!   looks at its state word; without the idle port it sleeps in
//!   `cli; hlt` (IF=0: only INIT wakes it), exactly as before hot-remove
//!   existed, and a stop request is then carried out with INIT.
//! - STOP: the BSP asks the AP to leave diag's loop (still counted online).
//! - PARKED: the AP answered and now only writes the idle port in a loop
//!   (no memory access, no diag work); not counted online. The VMM may
//!   stop running that vCPU at any time (after CEJ0 it does).
//! - A re-add always goes through INIT/SIPI again: INIT resets the AP from
//!   whatever it was doing (parked loop, `hlt`, wait-for-SIPI) and the
//!   SIPI runs the trampoline, which diag copies to 0x10000 again before
//!   every start. diag never resumes a parked AP through memory.
//!
//! A VMM may also start the APs itself at the ELF entry point; `_start`
//! then sends them to `diag_ap_park`, which checks them in the same way.
//! Every wait is bounded; the BSP never waits for an AP unboundedly.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::clock::{Deadline, sleep_ms};
use crate::cpu::{mmio_read32, mmio_write32, pause, read_cr3};
use crate::layout::{AP_TRAMPOLINE, APIC_START, IDLE_MAGIC, IDLE_PORT};

pub const AP_OFFLINE: u32 = 0;
pub const AP_ONLINE: u32 = 1;
pub const AP_STOP: u32 = 2;
pub const AP_PARKED: u32 = 3;

/// How long an AP asks the VMM to park it between looks at its state.
const AP_IDLE_MS: u32 = 50;

/// Per-xAPIC-ID state (see the module comment). In `.data`, not `.bss`, so
/// the BSP's zeroing of `.bss` cannot erase check-ins of APs the VMM
/// started early.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.diag_ap_state")]
pub static DIAG_AP_STATE: [AtomicU32; 256] = [const { AtomicU32::new(AP_OFFLINE) }; 256];

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
    cli
    cld
    movl ${apic_id_reg}, %eax
    movl (%rax), %ebx
    shrl $24, %ebx
    leaq DIAG_AP_STATE(%rip), %rsi
    leaq (%rsi,%rbx,4), %rsi
    movl ${online}, %eax
    xchgl %eax, (%rsi)
    movw ${idle_port}, %dx
    inl %dx, %eax
    cmpl ${idle_magic}, %eax
    jne 3f
1:
    cmpl ${stop}, (%rsi)
    je 2f
    movl ${idle_ms}, %eax
    outl %eax, %dx
    jmp 1b
2:
    movl ${parked}, %eax
    xchgl %eax, (%rsi)
4:
    movl ${idle_ms}, %eax
    outl %eax, %dx
    jmp 4b
3:
    cli
    hlt
    jmp 3b
"#,
    tramp = const AP_TRAMPOLINE,
    apic_id_reg = const APIC_START + APIC_ID,
    online = const AP_ONLINE,
    stop = const AP_STOP,
    parked = const AP_PARKED,
    idle_port = const IDLE_PORT,
    idle_magic = const IDLE_MAGIC,
    idle_ms = const AP_IDLE_MS,
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

/// How long a stopped AP has to answer before INIT stops it.
const STOP_MS: u64 = 500;

fn state(apic_id: u32) -> Option<&'static AtomicU32> {
    DIAG_AP_STATE.get(apic_id as usize)
}

/// The state word of the AP with this xAPIC ID (`AP_OFFLINE` for IDs diag
/// cannot track).
pub fn ap_state(apic_id: u32) -> u32 {
    state(apic_id).map_or(AP_OFFLINE, |s| s.load(Ordering::SeqCst))
}

/// Whether that AP runs diag code (a stop request it has not answered yet
/// still counts).
pub fn ap_online(apic_id: u32) -> bool {
    matches!(ap_state(apic_id), AP_ONLINE | AP_STOP)
}

/// APs (not the BSP) running diag code.
pub fn aps_online(bsp: u32) -> u32 {
    let mut n = 0;
    for (id, s) in DIAG_AP_STATE.iter().enumerate() {
        if id as u32 != bsp && matches!(s.load(Ordering::SeqCst), AP_ONLINE | AP_STOP) {
            n += 1;
        }
    }
    n
}

/// Forgets every AP not in `keep`: check-ins from before a reset that kept
/// memory must not count. Called once at boot, before any AP is started.
pub fn forget_aps_except(keep: &[u32]) {
    for (id, s) in DIAG_AP_STATE.iter().enumerate() {
        if !keep.contains(&(id as u32)) {
            s.store(AP_OFFLINE, Ordering::SeqCst);
        }
    }
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

/// Copies the trampoline to `AP_TRAMPOLINE` (below 1 MiB) and patches in
/// the BSP's CR3. Done before every start, so the page is intact whatever
/// happened to it since.
fn install_trampoline() -> Result<(), &'static str> {
    let start = &raw const diag_ap_tramp_start as u64;
    let end = &raw const diag_ap_tramp_end as u64;
    let cr3_slot = &raw const diag_ap_cr3 as u64;
    let len = end.saturating_sub(start);
    if len == 0 || len > 4096 || cr3_slot < start || cr3_slot + 4 > end {
        return Err("trampoline does not fit its page");
    }
    let cr3 = read_cr3();
    if cr3 > u64::from(u32::MAX) {
        return Err("page tables above 4 GiB, unreachable from real mode");
    }
    // SAFETY: AP_TRAMPOLINE is a free low-RAM page (see layout.rs) inside
    // the identity map, the source is our own code, and len <= 4096.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, AP_TRAMPOLINE as *mut u8, len as usize);
        core::ptr::write_volatile((AP_TRAMPOLINE + (cr3_slot - start)) as *mut u32, cr3 as u32);
    }
    core::sync::atomic::fence(Ordering::SeqCst);
    Ok(())
}

fn trackable(apic_id: u32) -> Result<(), &'static str> {
    if apic_id > 0xfe {
        return Err("APIC IDs above 254 need x2APIC, which diag does not drive");
    }
    Ok(())
}

/// The outcome of `start_aps`.
pub enum ApStart {
    /// APs checked in (not counting the BSP).
    Started(u32),
    /// Why they could not be started.
    Failed(&'static str),
}

fn online_among(apic_ids: &[u32], bsp: u32) -> u32 {
    apic_ids
        .iter()
        .filter(|&&id| id != bsp && ap_online(id))
        .count() as u32
}

/// Boot: sends INIT-SIPI-SIPI to every AP in `apic_ids` (all but the BSP)
/// at once and waits, bounded, for them to check in.
pub fn start_aps(apic_ids: &[u32]) -> ApStart {
    let bsp = bsp_apic_id();
    let want = apic_ids.iter().filter(|&&id| id != bsp).count() as u32;
    if want == 0 {
        return ApStart::Started(0);
    }
    if online_among(apic_ids, bsp) >= want {
        // The VMM started them at the entry point already.
        return ApStart::Started(want);
    }
    if let Some(e) = apic_ids.iter().find_map(|&id| trackable(id).err()) {
        return ApStart::Failed(e);
    }
    // Every AP that counts now goes through INIT/SIPI below.
    for &id in apic_ids.iter().filter(|&&id| id != bsp) {
        if let Some(s) = state(id) {
            s.store(AP_OFFLINE, Ordering::SeqCst);
        }
    }
    if let Err(e) = install_trampoline() {
        return ApStart::Failed(e);
    }
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
        if online_among(apic_ids, bsp) >= want {
            return ApStart::Started(want);
        }
    }
    let mut deadline = Deadline::after_ms(CHECK_IN_MS);
    while online_among(apic_ids, bsp) < want && !deadline.expired() {
        pause();
    }
    match online_among(apic_ids, bsp) {
        0 => {
            ApStart::Failed("no AP checked in after INIT/SIPI (this KVM may not run real-mode APs)")
        }
        n => ApStart::Started(n.min(want)),
    }
}

/// Later (CPU hot-add): starts one AP with INIT-SIPI-SIPI, whatever state it
/// is in, and waits (bounded) for it to check in.
pub fn start_ap(apic_id: u32) -> Result<(), &'static str> {
    trackable(apic_id)?;
    if apic_id == bsp_apic_id() {
        return Ok(());
    }
    let Some(s) = state(apic_id) else {
        return Err("APIC ID out of range");
    };
    install_trampoline()?;
    // A parked AP never writes its state again, so this cannot be
    // overwritten by a stale answer; the next ONLINE is the new check-in.
    s.store(AP_OFFLINE, Ordering::SeqCst);
    if !send_ipi(apic_id, ICR_INIT) {
        return Err("INIT IPI stayed pending in the local APIC");
    }
    sleep_ms(AFTER_INIT_MS);
    let vector = (AP_TRAMPOLINE >> 12) as u32;
    for _ in 0..2 {
        if !send_ipi(apic_id, ICR_STARTUP | vector) {
            return Err("STARTUP IPI stayed pending in the local APIC");
        }
        sleep_ms(AFTER_SIPI_MS);
        if ap_online(apic_id) {
            return Ok(());
        }
    }
    let mut deadline = Deadline::after_ms(CHECK_IN_MS);
    while !ap_online(apic_id) {
        if deadline.expired() {
            return Err("the AP did not check in after INIT/SIPI");
        }
        pause();
    }
    Ok(())
}

/// How `stop_ap` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApStop {
    /// It was not running diag code anyway.
    NotRunning,
    /// It answered and parked itself.
    Parked,
    /// It did not answer in time (no idle port, or stuck): INIT put it in
    /// wait-for-SIPI.
    Inited,
    /// Not even INIT could be sent; it is forgotten all the same.
    Lost,
}

/// CPU hot-remove: makes the AP stop running diag code. Afterwards it no
/// longer counts as online, whatever happened.
pub fn stop_ap(apic_id: u32) -> ApStop {
    let Some(s) = state(apic_id) else {
        return ApStop::NotRunning;
    };
    if apic_id == bsp_apic_id() {
        return ApStop::NotRunning;
    }
    match s.compare_exchange(AP_ONLINE, AP_STOP, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) | Err(AP_STOP) => {}
        Err(_) => return ApStop::NotRunning,
    }
    let mut deadline = Deadline::after_ms(STOP_MS);
    while !deadline.expired() {
        if s.load(Ordering::SeqCst) == AP_PARKED {
            return ApStop::Parked;
        }
        pause();
    }
    let sent = send_ipi(apic_id, ICR_INIT);
    s.store(AP_OFFLINE, Ordering::SeqCst);
    if sent { ApStop::Inited } else { ApStop::Lost }
}
