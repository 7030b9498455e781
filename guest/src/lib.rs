//! `diag`: vmctl's built-in diagnostic guest, a freestanding x86-64 kernel.
//! It boots through the same 64-bit Linux boot protocol as a real kernel
//! or through PVH (`pvh.rs`, the entry QEMU microvm uses),
//! finds memory (e820), CPUs (ACPI MADT) and disks (virtio-mmio virtio-blk),
//! reports them on COM1 (for people) and COM2 (JSON, for the VMM), and polls
//! for changes and the power button. This machine's KVM kills a guest that
//! takes an external interrupt, so diag never enables them and never uses
//! SSE (see guest/README.md).
//!
//! The library holds everything; `main.rs` only adds the entry point, the
//! panic handler and the mem* functions. The parsers are written against
//! `phys::PhysMem` so `cargo test --lib` runs them on the host.

#![cfg_attr(not(test), no_std)]

pub mod acpi;
pub mod agentcmd;
pub mod bootparams;
pub mod fnv;
pub mod layout;
pub mod memtest;
pub mod netdiag;
pub mod netproto;
pub mod phys;
pub mod pvh;
pub mod report;
pub mod seqlog;
pub mod text;

// Hardware access: builds on the host but only runs in the guest.
pub mod clock;
pub mod cpu;
pub mod hotplug;
pub mod paging;
pub mod serial;
pub mod virtio_blk;
pub mod virtio_mmio;
pub mod virtio_net;

// The trampoline's absolute relocations do not link into a host (PIE) test
// binary, and nothing here is testable off the machine.
#[cfg(not(test))]
pub mod kernel;
#[cfg(not(test))]
pub mod smp;
