//! The virtio-mmio transport as a polled driver sees it (virtio 1.x,
//! section 4.2.2, version 2 only): register offsets, probing a slot, the
//! reset → features → queues → DRIVER_OK handshake, and volatile access to
//! the rings in diag's DMA areas. Shared by the virtio-blk and virtio-net
//! drivers.

use core::ptr::{read_volatile, write_volatile};

use crate::clock::Deadline;
use crate::cpu::{mmio_read32, mmio_write32, pause};
use crate::layout::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};

// Registers.
pub const MAGIC: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;

pub const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_BLOCK: u32 = 2;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_FAILED: u32 = 128;

/// VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of feature word 1.
pub const F_VERSION_1_HIGH: u32 = 1;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

const RESET_TIMEOUT_MS: u64 = 100;

/// What sits in a virtio-mmio slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Empty,
    Block,
    Net,
    Other(u32),
}

pub fn slot_base(slot: usize) -> u64 {
    VIRTIO_MMIO_BASE + slot as u64 * VIRTIO_MMIO_SIZE
}

/// Looks at the identification registers of `slot`.
pub fn probe(slot: usize) -> Slot {
    let base = slot_base(slot);
    if mmio_read32(base + MAGIC) != MAGIC_VALUE || mmio_read32(base + VERSION) != 2 {
        return Slot::Empty;
    }
    match mmio_read32(base + DEVICE_ID) {
        0 => Slot::Empty,
        DEVICE_ID_BLOCK => Slot::Block,
        DEVICE_ID_NET => Slot::Net,
        other => Slot::Other(other),
    }
}

/// Reset the device at `base` and negotiate VERSION_1 plus those of
/// `wanted_low` (feature bits 0..32) it offers; returns the status to
/// continue with (ACKNOWLEDGE | DRIVER | FEATURES_OK) and the low feature
/// bits accepted. On failure the device is left FAILED.
pub fn negotiate(base: u64, wanted_low: u32) -> Result<(u32, u32), &'static str> {
    mmio_write32(base + STATUS, 0);
    let mut deadline = Deadline::after_ms(RESET_TIMEOUT_MS);
    while mmio_read32(base + STATUS) != 0 {
        if deadline.expired() {
            return Err("device did not reset");
        }
        pause();
    }
    mmio_write32(base + STATUS, STATUS_ACKNOWLEDGE);
    mmio_write32(base + STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    mmio_write32(base + DEVICE_FEATURES_SEL, 1);
    let high = mmio_read32(base + DEVICE_FEATURES);
    if high & F_VERSION_1_HIGH == 0 {
        mmio_write32(base + STATUS, STATUS_FAILED);
        return Err("device does not offer VIRTIO_F_VERSION_1");
    }
    mmio_write32(base + DEVICE_FEATURES_SEL, 0);
    let low = mmio_read32(base + DEVICE_FEATURES) & wanted_low;
    mmio_write32(base + DRIVER_FEATURES_SEL, 0);
    mmio_write32(base + DRIVER_FEATURES, low);
    mmio_write32(base + DRIVER_FEATURES_SEL, 1);
    mmio_write32(base + DRIVER_FEATURES, F_VERSION_1_HIGH);
    let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    mmio_write32(base + STATUS, status);
    if mmio_read32(base + STATUS) & STATUS_FEATURES_OK == 0 {
        mmio_write32(base + STATUS, STATUS_FAILED);
        return Err("device refused FEATURES_OK");
    }
    Ok((status, low))
}

/// Configure queue `queue` with at most `max_size` entries (a power of
/// two) and fresh rings at `desc`/`avail`/`used` (the caller zeroed them);
/// returns the size used. On failure the device is left FAILED.
pub fn setup_queue(
    base: u64,
    queue: u32,
    max_size: u32,
    desc: u64,
    avail: u64,
    used: u64,
) -> Result<u16, &'static str> {
    mmio_write32(base + QUEUE_SEL, queue);
    if mmio_read32(base + QUEUE_READY) != 0 {
        mmio_write32(base + STATUS, STATUS_FAILED);
        return Err("queue already ready after reset");
    }
    let max = mmio_read32(base + QUEUE_NUM_MAX);
    if max == 0 {
        mmio_write32(base + STATUS, STATUS_FAILED);
        return Err("queue not available (QueueNumMax 0)");
    }
    // Largest power of two <= min(max, max_size).
    let mut qsize = 1u32;
    while qsize * 2 <= max.min(max_size) {
        qsize *= 2;
    }
    w16(avail, VIRTQ_AVAIL_F_NO_INTERRUPT);
    mmio_write32(base + QUEUE_NUM, qsize);
    mmio_write32(base + QUEUE_DESC_LOW, desc as u32);
    mmio_write32(base + QUEUE_DESC_HIGH, (desc >> 32) as u32);
    mmio_write32(base + QUEUE_DRIVER_LOW, avail as u32);
    mmio_write32(base + QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
    mmio_write32(base + QUEUE_DEVICE_LOW, used as u32);
    mmio_write32(base + QUEUE_DEVICE_HIGH, (used >> 32) as u32);
    mmio_write32(base + QUEUE_READY, 1);
    Ok(qsize as u16)
}

/// Set DRIVER_OK on top of `status`.
pub fn driver_ok(base: u64, status: u32) -> Result<(), &'static str> {
    mmio_write32(base + STATUS, status | STATUS_DRIVER_OK);
    if mmio_read32(base + STATUS) & STATUS_FAILED != 0 {
        return Err("device set FAILED / NEEDS_RESET");
    }
    Ok(())
}

/// The interrupt status bit for "the configuration space changed" (a disk
/// resize).
pub const ISR_CONFIG_CHANGE: u32 = 2;

/// Keep the (unused) interrupt line quiet; returns the bits it acked, so a
/// configuration change acked along with a used buffer is not lost.
pub fn ack_interrupts(base: u64) -> u32 {
    let isr = mmio_read32(base + INTERRUPT_STATUS);
    if isr != 0 {
        mmio_write32(base + INTERRUPT_ACK, isr);
    }
    isr
}

/// Write one descriptor of the table at `table`.
pub fn write_desc(table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let d = table + 16 * u64::from(index);
    w64(d, addr);
    w32(d + 8, len);
    w16(d + 12, flags);
    w16(d + 14, next);
}

// Volatile accessors for DMA areas: the device reads and writes them behind
// the compiler's back. Callers pass addresses inside a DMA area the driver
// owns (static, identity-mapped), at offsets aligned for the width.
pub fn w8(addr: u64, v: u8) {
    // SAFETY: `addr` is inside a driver's DMA area (see above).
    unsafe { write_volatile(addr as *mut u8, v) }
}
pub fn w16(addr: u64, v: u16) {
    // SAFETY: as for `w8`; 2-aligned.
    unsafe { write_volatile(addr as *mut u16, v) }
}
pub fn w32(addr: u64, v: u32) {
    // SAFETY: as for `w8`; 4-aligned.
    unsafe { write_volatile(addr as *mut u32, v) }
}
pub fn w64(addr: u64, v: u64) {
    // SAFETY: as for `w8`; 8-aligned.
    unsafe { write_volatile(addr as *mut u64, v) }
}
pub fn r8(addr: u64) -> u8 {
    // SAFETY: as for `w8`.
    unsafe { read_volatile(addr as *const u8) }
}
pub fn r16(addr: u64) -> u16 {
    // SAFETY: as for `w16`.
    unsafe { read_volatile(addr as *const u16) }
}
pub fn r32(addr: u64) -> u32 {
    // SAFETY: as for `w32`.
    unsafe { read_volatile(addr as *const u32) }
}
