//! The diag guest's entry points: `_start` (the ELF entry the VMM jumps to in
//! 64-bit mode with RSI = boot params) and `diag_pvh_start` (the PVH entry,
//! 32-bit, EBX = start info), the panic handler, and the mem*
//! functions the compiler may call (there is no libc). Everything else is
//! in the library (src/lib.rs).

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;

use diag::layout::COM1_PORT;
use diag::serial::Serial;
use diag::text::Text;

// BSP: interrupts off, direction flag clear, zero .bss (a VM reset may
// reuse memory), switch to our own 64 KiB stack, call `diag_main(rsi)`.
// An AP a VMM started at the entry point (IA32_APIC_BASE.BSP clear) is
// counted and parked instead, touching neither the stack nor .bss.
global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    cli
    cld
    mov r12, rsi
    xor r13d, r13d
diag_start_common:
    mov ecx, 0x1b
    rdmsr
    test eax, 0x100
    jz diag_ap_park
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + _end]
    sub rcx, rdi
    xor eax, eax
    rep stosb
    lea rsp, [rip + diag_stack_top]
    xor ebp, ebp
    mov rdi, r12
    mov rsi, r13
    call diag_main
2:
    pause
    jmp 2b

    // In .data, not .bss: a stack need not start zeroed, and zeroing its
    // 16 pages at boot costs a nested-KVM exit per page (paging.rs, POOL).
    .section .data.diag_stack, "aw", @progbits
    .balign 16
diag_stack_bottom:
    .skip 65536
diag_stack_top:
"#
);

// PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`, type 18, owner "Xen"): the VMM
// starts the BSP here in 32-bit protected mode, paging off, flat segments,
// EBX = `hvm_start_info`. Load a GDT with a 64-bit code segment, turn on
// PAE + long mode + paging with the identity map below (first 4 GiB in
// 2 MiB pages: PML4 -> PDPT -> four page directories, the same shape as the
// VMM's, so paging.rs extends it the same way), far-jump to 64-bit code and
// join `_start` after its RSI read with R12 = start info, R13 = 1 (PVH).
// No stack is used before `_start` sets one. The tables live in .data (not
// .bss, which `_start` zeroes while they are in use).
global_asm!(
    r#"
    .section .note.Xen, "aR", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long diag_pvh_start
    .balign 4

    .section .text.diag_pvh_start, "ax"
    .code32
    .global diag_pvh_start
diag_pvh_start:
    cli
    cld
    movl %ebx, %edi
    lgdt diag_pvh_gdt_desc
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $diag_pvh_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmp $0x08, $diag_pvh_start64

    .code64
diag_pvh_start64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl %edi, %r12d
    movl $1, %r13d
    jmp diag_start_common

    .section .data.diag_pvh, "aw", @progbits
    .balign 8
diag_pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
diag_pvh_gdt_desc:
    .word 23
    .long diag_pvh_gdt
    .balign 4096
diag_pvh_pml4:
    .quad diag_pvh_pdpt + 3
    .fill 511, 8, 0
diag_pvh_pdpt:
    .quad diag_pvh_pd + 3
    .quad diag_pvh_pd + 0x1000 + 3
    .quad diag_pvh_pd + 0x2000 + 3
    .quad diag_pvh_pd + 0x3000 + 3
    .fill 508, 8, 0
diag_pvh_pd:
    .set diag_pvh_i, 0
    .rept 2048
    .quad (diag_pvh_i << 21) | 0x83
    .set diag_pvh_i, diag_pvh_i + 1
    .endr
"#,
    options(att_syntax)
);

/// `protocol`: 0 = Linux boot params in `boot` (64-bit entry), 1 = PVH
/// start info in `boot`.
#[unsafe(no_mangle)]
extern "C" fn diag_main(boot: u64, protocol: u64) -> ! {
    if protocol == 1 {
        diag::kernel::run_pvh(boot)
    } else {
        diag::kernel::run(boot)
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let com1 = Serial::new(COM1_PORT);
    let mut t = Text::<256>::new();
    t.str("diag: PANIC");
    if let Some(loc) = info.location() {
        t.str(" at ")
            .str(loc.file())
            .byte(b':')
            .dec(u64::from(loc.line()));
    }
    if let Some(msg) = info.message().as_str() {
        t.str(": ").str(msg);
    }
    com1.write(t.as_bytes());
    com1.write(b"\ndiag: powering off\n");
    diag::cpu::power_off()
}

// The compiler lowers copies and fills to these. String instructions, not
// loops: a loop here could be recognised as memcpy and call itself.

/// # Safety
/// Standard C `memcpy` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// Standard C `memmove` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is safe when dest is below src or disjoint.
        unsafe { memcpy(dest, src, n) }
    } else {
        // SAFETY: overlapping with dest above src: copy backwards (DF=1),
        // then restore DF=0 as the ABI requires.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
        dest
    }
}

/// # Safety
/// Standard C `memset` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// Standard C `memcmp` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes;
        // volatile keeps this loop from being turned back into memcmp.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// Standard C `bcmp` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
