//! A polled virtio-blk driver over virtio-mmio (version 2 only): enough to
//! read a disk's capacity, its id (GET_ID) and sector 0. One split
//! virtqueue of at most 8 entries per device lives in a static page
//! (identity-mapped, so its address is its guest-physical address).
//! Completion is found by polling the used ring — never by interrupt — and
//! every wait is bounded.

use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

use crate::clock::Deadline;
use crate::cpu::{mmio_read32, mmio_write32, pause};
use crate::layout::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_MAX_DEVICES, VIRTIO_MMIO_SIZE};

// virtio-mmio registers (virtio 1.x, section 4.2.2).
const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const DEVICE_ID_BLOCK: u32 = 2;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 128;

/// VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of feature word 1.
const F_VERSION_1_HIGH: u32 = 1;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

pub const REQ_IN: u32 = 0;
pub const REQ_GET_ID: u32 = 8;
pub const SECTOR_SIZE: usize = 512;

const MAX_QUEUE_SIZE: u32 = 8;
/// How long a request may take before it is declared lost (the VMM
/// completes requests synchronously on QueueNotify, so this is generous).
const REQUEST_TIMEOUT_MS: u64 = 2_000;
const RESET_TIMEOUT_MS: u64 = 100;

// Layout of a device's DMA page.
const DESC_OFF: u64 = 0x000;
const AVAIL_OFF: u64 = 0x100;
const USED_OFF: u64 = 0x200;
const HEADER_OFF: u64 = 0x400;
const STATUS_OFF: u64 = 0x410;
const DATA_OFF: u64 = 0x800;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// One DMA page per virtio-mmio slot.
struct DmaPages(UnsafeCell<[Page; VIRTIO_MMIO_MAX_DEVICES]>);

// SAFETY: diag's driver runs on the BSP only; APs never touch these pages.
unsafe impl Sync for DmaPages {}

/// In `.data`, not `.bss`: `init` zeroes what it uses, and zeroing 16
/// pages at every boot costs a nested-KVM exit per page (paging.rs, POOL).
#[unsafe(link_section = ".data.diag_dma")]
static DMA: DmaPages = DmaPages(UnsafeCell::new(
    [const { Page([0; 4096]) }; VIRTIO_MMIO_MAX_DEVICES],
));

fn page_addr(slot: usize) -> Option<u64> {
    (slot < VIRTIO_MMIO_MAX_DEVICES)
        .then(|| DMA.0.get() as u64 + (slot as u64) * core::mem::size_of::<Page>() as u64)
}

// Volatile accessors for a DMA page: the device reads and writes it behind
// the compiler's back. Offsets are constants below 4096 plus ring indices
// reduced modulo the queue size, so every access stays inside the page.
fn w8(addr: u64, v: u8) {
    // SAFETY: `addr` is inside a DMA page (see above).
    unsafe { write_volatile(addr as *mut u8, v) }
}
fn w16(addr: u64, v: u16) {
    // SAFETY: as for `w8`; all offsets used are 2-aligned.
    unsafe { write_volatile(addr as *mut u16, v) }
}
fn w32(addr: u64, v: u32) {
    // SAFETY: as for `w8`; all offsets used are 4-aligned.
    unsafe { write_volatile(addr as *mut u32, v) }
}
fn w64(addr: u64, v: u64) {
    // SAFETY: as for `w8`; all offsets used are 8-aligned.
    unsafe { write_volatile(addr as *mut u64, v) }
}
fn r8(addr: u64) -> u8 {
    // SAFETY: as for `w8`.
    unsafe { read_volatile(addr as *const u8) }
}
fn r16(addr: u64) -> u16 {
    // SAFETY: as for `w16`.
    unsafe { read_volatile(addr as *const u16) }
}

/// What sits in a virtio-mmio slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Empty,
    Block,
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
        other => Slot::Other(other),
    }
}

/// Capacity in 512-byte sectors (config offset 0) of the block device in
/// `slot`, read consistently with the config generation counter.
pub fn capacity_sectors(slot: usize) -> u64 {
    let base = slot_base(slot);
    let mut value = 0;
    for _ in 0..8 {
        let before = mmio_read32(base + CONFIG_GENERATION);
        let lo = mmio_read32(base + CONFIG);
        let hi = mmio_read32(base + CONFIG + 4);
        value = (u64::from(hi) << 32) | u64::from(lo);
        if mmio_read32(base + CONFIG_GENERATION) == before {
            break;
        }
    }
    value
}

/// A virtio-blk device the driver has set up.
#[derive(Clone, Copy, Debug)]
pub struct Blk {
    slot: usize,
    base: u64,
    page: u64,
    qsize: u16,
    next_avail: u16,
    last_used: u16,
    /// A request was lost: the queue state is unknown, issue no more.
    wedged: bool,
}

impl Blk {
    /// Resets the device and runs the driver handshake up to DRIVER_OK.
    pub fn init(slot: usize) -> Result<Blk, &'static str> {
        let page = page_addr(slot).ok_or("no such slot")?;
        let base = slot_base(slot);
        let reg = |off: u64| base + off;

        mmio_write32(reg(STATUS), 0);
        let mut deadline = Deadline::after_ms(RESET_TIMEOUT_MS);
        while mmio_read32(reg(STATUS)) != 0 {
            if deadline.expired() {
                return Err("device did not reset");
            }
            pause();
        }
        mmio_write32(reg(STATUS), STATUS_ACKNOWLEDGE);
        mmio_write32(reg(STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);

        mmio_write32(reg(DEVICE_FEATURES_SEL), 1);
        let high = mmio_read32(reg(DEVICE_FEATURES));
        if high & F_VERSION_1_HIGH == 0 {
            mmio_write32(reg(STATUS), STATUS_FAILED);
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        mmio_write32(reg(DRIVER_FEATURES_SEL), 0);
        mmio_write32(reg(DRIVER_FEATURES), 0);
        mmio_write32(reg(DRIVER_FEATURES_SEL), 1);
        mmio_write32(reg(DRIVER_FEATURES), F_VERSION_1_HIGH);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        mmio_write32(reg(STATUS), status);
        if mmio_read32(reg(STATUS)) & STATUS_FEATURES_OK == 0 {
            mmio_write32(reg(STATUS), STATUS_FAILED);
            return Err("device refused FEATURES_OK");
        }

        mmio_write32(reg(QUEUE_SEL), 0);
        if mmio_read32(reg(QUEUE_READY)) != 0 {
            mmio_write32(reg(STATUS), STATUS_FAILED);
            return Err("queue 0 already ready after reset");
        }
        let max = mmio_read32(reg(QUEUE_NUM_MAX));
        if max == 0 {
            mmio_write32(reg(STATUS), STATUS_FAILED);
            return Err("queue 0 not available (QueueNumMax 0)");
        }
        // Largest power of two <= min(max, 8).
        let mut qsize = 1u32;
        while qsize * 2 <= max.min(MAX_QUEUE_SIZE) {
            qsize *= 2;
        }

        // Fresh rings.
        for off in (0..HEADER_OFF).step_by(8) {
            w64(page + off, 0);
        }
        w16(page + AVAIL_OFF, VIRTQ_AVAIL_F_NO_INTERRUPT);

        let desc = page + DESC_OFF;
        let avail = page + AVAIL_OFF;
        let used = page + USED_OFF;
        mmio_write32(reg(QUEUE_NUM), qsize);
        mmio_write32(reg(QUEUE_DESC_LOW), desc as u32);
        mmio_write32(reg(QUEUE_DESC_HIGH), (desc >> 32) as u32);
        mmio_write32(reg(QUEUE_DRIVER_LOW), avail as u32);
        mmio_write32(reg(QUEUE_DRIVER_HIGH), (avail >> 32) as u32);
        mmio_write32(reg(QUEUE_DEVICE_LOW), used as u32);
        mmio_write32(reg(QUEUE_DEVICE_HIGH), (used >> 32) as u32);
        mmio_write32(reg(QUEUE_READY), 1);
        mmio_write32(reg(STATUS), status | STATUS_DRIVER_OK);
        if mmio_read32(reg(STATUS)) & STATUS_FAILED != 0 {
            return Err("device set FAILED / NEEDS_RESET");
        }
        Ok(Blk {
            slot,
            base,
            page,
            qsize: qsize as u16,
            next_avail: 0,
            last_used: 0,
            wedged: false,
        })
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn capacity_sectors(&self) -> u64 {
        capacity_sectors(self.slot)
    }

    /// Issues one request (header, `len` device-writable data bytes,
    /// status) and waits for it. Returns the data on success.
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        len: u32,
    ) -> Result<[u8; SECTOR_SIZE], &'static str> {
        if self.wedged {
            return Err("an earlier request was lost");
        }
        if len as usize > SECTOR_SIZE {
            return Err("request too large");
        }
        let page = self.page;
        // Header: type, reserved, sector.
        w32(page + HEADER_OFF, kind);
        w32(page + HEADER_OFF + 4, 0);
        w64(page + HEADER_OFF + 8, sector);
        w8(page + STATUS_OFF, 0xff);
        for off in (0..SECTOR_SIZE as u64).step_by(8) {
            w64(page + DATA_OFF + off, 0);
        }
        // Descriptors 0 -> 1 -> 2.
        let chain: [(u64, u32, u16); 3] = [
            (page + HEADER_OFF, 16, VIRTQ_DESC_F_NEXT),
            (page + DATA_OFF, len, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE),
            (page + STATUS_OFF, 1, VIRTQ_DESC_F_WRITE),
        ];
        for (i, &(addr, dlen, flags)) in chain.iter().enumerate() {
            let d = page + DESC_OFF + 16 * i as u64;
            w64(d, addr);
            w32(d + 8, dlen);
            w16(d + 12, flags);
            w16(
                d + 14,
                if flags & VIRTQ_DESC_F_NEXT != 0 {
                    i as u16 + 1
                } else {
                    0
                },
            );
        }
        let ring_slot = u64::from(self.next_avail % self.qsize);
        w16(page + AVAIL_OFF + 4 + 2 * ring_slot, 0);
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        w16(page + AVAIL_OFF + 2, self.next_avail);
        fence(Ordering::SeqCst);
        mmio_write32(self.base + QUEUE_NOTIFY, 0);

        let mut deadline = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        while r16(page + USED_OFF + 2) == self.last_used {
            if deadline.expired() {
                self.wedged = true;
                return Err("request timed out (no used-ring entry)");
            }
            pause();
        }
        fence(Ordering::SeqCst);
        self.last_used = self.last_used.wrapping_add(1);
        // Keep the (unused) interrupt line quiet.
        let isr = mmio_read32(self.base + INTERRUPT_STATUS);
        if isr != 0 {
            mmio_write32(self.base + INTERRUPT_ACK, isr);
        }
        let status = r8(page + STATUS_OFF);
        if status != 0 {
            return Err(if status == 2 {
                "request unsupported"
            } else {
                "request failed"
            });
        }
        let mut data = [0u8; SECTOR_SIZE];
        for (i, b) in data.iter_mut().enumerate() {
            *b = r8(page + DATA_OFF + i as u64);
        }
        Ok(data)
    }

    /// The device id (virtio-blk serial), at most 20 bytes.
    pub fn get_id(&mut self) -> Result<[u8; 20], &'static str> {
        let data = self.request(REQ_GET_ID, 0, 20)?;
        let mut id = [0u8; 20];
        for (dst, &src) in id.iter_mut().zip(data.iter()) {
            *dst = src;
        }
        Ok(id)
    }

    /// The first sector.
    pub fn read_sector0(&mut self) -> Result<[u8; SECTOR_SIZE], &'static str> {
        self.request(REQ_IN, 0, SECTOR_SIZE as u32)
    }
}
