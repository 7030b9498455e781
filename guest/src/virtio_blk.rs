//! A polled virtio-blk driver over virtio-mmio (version 2 only): enough to
//! read a disk's capacity, its id (GET_ID) and sector 0. One split
//! virtqueue of at most 8 entries per device lives in a static page
//! (identity-mapped, so its address is its guest-physical address).
//! Completion is found by polling the used ring — never by interrupt — and
//! every wait is bounded.

use core::cell::UnsafeCell;
use core::ptr::read_volatile;
use core::sync::atomic::{Ordering, fence};

use crate::clock::Deadline;
use crate::cpu::{mmio_read32, mmio_write32, pause};
use crate::layout::VIRTIO_MMIO_MAX_DEVICES;
use crate::virtio_mmio::{
    CONFIG, CONFIG_GENERATION, ISR_CONFIG_CHANGE, QUEUE_NOTIFY, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE, ack_interrupts, driver_ok, negotiate, r8, r16, setup_queue, w8, w16, w32,
    w64, write_desc,
};
pub use crate::virtio_mmio::{Slot, probe, slot_base};

pub const REQ_IN: u32 = 0;
pub const REQ_OUT: u32 = 1;
pub const REQ_GET_ID: u32 = 8;
pub const SECTOR_SIZE: usize = 512;

const MAX_QUEUE_SIZE: u32 = 8;
/// How long a request may take before it is declared lost (the VMM
/// completes requests synchronously on QueueNotify, so this is generous).
const REQUEST_TIMEOUT_MS: u64 = 2_000;

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

/// Bytes read per request by [`Blk::hash_whole`].
pub const BULK_BYTES: usize = 64 * 1024;

#[repr(C, align(4096))]
struct BulkBuf(UnsafeCell<[u8; BULK_BYTES]>);

// SAFETY: used by the BSP's driver only, one request at a time.
unsafe impl Sync for BulkBuf {}

/// The data buffer of whole-disk reads (identity-mapped, so its address is
/// its guest-physical address). In `.data` like `DMA`: the device writes
/// it before diag reads it, so it need not be zeroed at boot, and zeroing
/// its 16 pages was a share of every boot's host CPU (docs/benchmarks.md).
#[unsafe(link_section = ".data.diag_bulk")]
static BULK: BulkBuf = BulkBuf(UnsafeCell::new([0; BULK_BYTES]));

fn page_addr(slot: usize) -> Option<u64> {
    (slot < VIRTIO_MMIO_MAX_DEVICES)
        .then(|| DMA.0.get() as u64 + (slot as u64) * core::mem::size_of::<Page>() as u64)
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
    /// A configuration-change interrupt was acked by a request and not yet
    /// taken by [`Blk::config_changed`].
    config_changed: bool,
}

impl Blk {
    /// Resets the device and runs the driver handshake up to DRIVER_OK.
    pub fn init(slot: usize) -> Result<Blk, &'static str> {
        let page = page_addr(slot).ok_or("no such slot")?;
        let base = slot_base(slot);
        let (status, _) = negotiate(base, 0)?;
        // Fresh rings.
        for off in (0..HEADER_OFF).step_by(8) {
            w64(page + off, 0);
        }
        let qsize = setup_queue(
            base,
            0,
            MAX_QUEUE_SIZE,
            page + DESC_OFF,
            page + AVAIL_OFF,
            page + USED_OFF,
        )?;
        driver_ok(base, status)?;
        Ok(Blk {
            slot,
            base,
            page,
            qsize,
            next_avail: 0,
            last_used: 0,
            wedged: false,
            config_changed: false,
        })
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn capacity_sectors(&self) -> u64 {
        capacity_sectors(self.slot)
    }

    /// Whether the device said its configuration (capacity) changed since
    /// the last call: one register read, so the idle loop can ask every
    /// pass instead of re-probing every slot.
    pub fn config_changed(&mut self) -> bool {
        let now = ack_interrupts(self.base) & ISR_CONFIG_CHANGE != 0;
        core::mem::take(&mut self.config_changed) || now
    }

    /// Issues one request (header, `len` device-writable data bytes,
    /// status) and waits for it. Returns the data on success.
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        len: u32,
    ) -> Result<[u8; SECTOR_SIZE], &'static str> {
        if len as usize > SECTOR_SIZE {
            return Err("request too large");
        }
        let page = self.page;
        for off in (0..SECTOR_SIZE as u64).step_by(8) {
            w64(page + DATA_OFF + off, 0);
        }
        self.submit(kind, sector, page + DATA_OFF, len, true)?;
        let mut data = [0u8; SECTOR_SIZE];
        for (i, b) in data.iter_mut().enumerate() {
            *b = r8(page + DATA_OFF + i as u64);
        }
        Ok(data)
    }

    /// Issues one request (header, `len` data bytes at `data` — written by
    /// the device when `device_writes`, read by it otherwise — status) and
    /// waits for it.
    fn submit(
        &mut self,
        kind: u32,
        sector: u64,
        data: u64,
        len: u32,
        device_writes: bool,
    ) -> Result<(), &'static str> {
        if self.wedged {
            return Err("an earlier request was lost");
        }
        let page = self.page;
        // Header: type, reserved, sector.
        w32(page + HEADER_OFF, kind);
        w32(page + HEADER_OFF + 4, 0);
        w64(page + HEADER_OFF + 8, sector);
        w8(page + STATUS_OFF, 0xff);
        let data_flags = if device_writes {
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE
        } else {
            VIRTQ_DESC_F_NEXT
        };
        // Descriptors 0 -> 1 -> 2.
        let chain: [(u64, u32, u16); 3] = [
            (page + HEADER_OFF, 16, VIRTQ_DESC_F_NEXT),
            (data, len, data_flags),
            (page + STATUS_OFF, 1, VIRTQ_DESC_F_WRITE),
        ];
        for (i, &(addr, dlen, flags)) in chain.iter().enumerate() {
            let next = if flags & VIRTQ_DESC_F_NEXT != 0 {
                i as u16 + 1
            } else {
                0
            };
            write_desc(page + DESC_OFF, i as u16, addr, dlen, flags, next);
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
        if ack_interrupts(self.base) & ISR_CONFIG_CHANGE != 0 {
            self.config_changed = true;
        }
        let status = r8(page + STATUS_OFF);
        if status != 0 {
            return Err(if status == 2 {
                "request unsupported"
            } else {
                "request failed"
            });
        }
        Ok(())
    }

    /// Read sector `sector`.
    pub fn read_sector(&mut self, sector: u64) -> Result<[u8; SECTOR_SIZE], &'static str> {
        self.request(REQ_IN, sector, SECTOR_SIZE as u32)
    }

    /// Write `data` to sector `sector`.
    pub fn write_sector(
        &mut self,
        sector: u64,
        data: &[u8; SECTOR_SIZE],
    ) -> Result<(), &'static str> {
        let page = self.page;
        for (i, &b) in data.iter().enumerate() {
            w8(page + DATA_OFF + i as u64, b);
        }
        self.submit(REQ_OUT, sector, page + DATA_OFF, SECTOR_SIZE as u32, false)
    }

    /// The checksum of the first `bytes` bytes of the disk (a multiple of
    /// 512), read [`BULK_BYTES`] at a time: FNV-1a 64 over little-endian
    /// 64-bit words (crate::report::Disk::fnv1a).
    pub fn hash_whole(&mut self, bytes: u64) -> Result<u64, &'static str> {
        let buf = BULK.0.get() as u64;
        let mut hash = crate::fnv::OFFSET_BASIS;
        let mut at = 0u64;
        while at < bytes {
            let len = (bytes - at).min(BULK_BYTES as u64);
            self.submit(REQ_IN, at / SECTOR_SIZE as u64, buf, len as u32, true)?;
            fence(Ordering::SeqCst);
            // Word by word: guest instructions are expensive on the
            // emulating KVMs diag must run on (docs/diag-guest.md).
            for off in (0..len).step_by(8) {
                // SAFETY: `off + 8` <= len <= BULK_BYTES (len is a multiple
                // of 512): inside the buffer, which the device finished
                // writing (the used ring moved; fenced above).
                let w = unsafe { read_volatile((buf + off) as *const u64) };
                hash ^= w;
                hash = hash.wrapping_mul(crate::fnv::PRIME);
            }
            at += len;
        }
        Ok(hash)
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
