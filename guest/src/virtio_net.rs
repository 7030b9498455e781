//! A polled virtio-net driver over virtio-mmio: enough for diag to send and
//! receive Ethernet frames on a vmctl NIC (docs/diag-guest.md, "Network").
//!
//! Features: VERSION_1 and MAC only (the VMM offers no more), so every
//! frame sits behind a 12-byte `virtio_net_hdr_v1` of zeros and needs one
//! buffer. Per NIC, a static DMA area (identity-mapped, so addresses are
//! guest-physical) holds an RX and a TX queue of up to 8 entries and one
//! 2 KiB buffer per entry. All RX buffers stay posted; a received frame is
//! copied out and its buffer posted again at once. Nothing waits for an
//! interrupt: RX is found by polling the used ring, and a TX buffer is
//! reused only after the device returned it (bounded wait).
//!
//! The device is hostile too: a used-ring entry with an id or length out of
//! range is skipped, never followed.

use core::cell::UnsafeCell;
use core::sync::atomic::{Ordering, fence};

use crate::clock::Deadline;
use crate::cpu::{mmio_read8, mmio_write32, pause};
use crate::netproto::{MAX_FRAME, MAX_NICS, Mac};
use crate::virtio_mmio::{
    CONFIG, QUEUE_NOTIFY, VIRTQ_DESC_F_WRITE, ack_interrupts, driver_ok, negotiate, r16, r32,
    setup_queue, slot_base, w8, w16, w64, write_desc,
};

/// VIRTIO_NET_F_MAC.
const F_MAC: u32 = 1 << 5;
const RX: u32 = 0;
const TX: u32 = 1;
const QUEUE_MAX: u32 = 8;
const BUF_LEN: usize = 2048;
/// `struct virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// How long a TX buffer may stay with the device before diag gives up on it.
const TX_TIMEOUT_MS: u64 = 500;

// Ring layout inside a ring page.
const DESC_OFF: u64 = 0x000;
const AVAIL_OFF: u64 = 0x400;
const USED_OFF: u64 = 0x800;

#[repr(C, align(4096))]
struct NicDma {
    rx_ring: [u8; 4096],
    tx_ring: [u8; 4096],
    rx_bufs: [[u8; BUF_LEN]; QUEUE_MAX as usize],
    tx_bufs: [[u8; BUF_LEN]; QUEUE_MAX as usize],
}

struct Dma(UnsafeCell<[NicDma; MAX_NICS]>);

// SAFETY: diag's drivers run on the BSP only; APs never touch these areas.
unsafe impl Sync for Dma {}

/// In `.data`, not `.bss`: `_start` zeroes `.bss` with `rep stosb`, which
/// this project's nested host emulates page by page — zeroing these 40
/// pages took most of a diag boot's host CPU even on VMs without a NIC
/// (docs/benchmarks.md). The driver writes what it uses before the device
/// reads it.
#[unsafe(link_section = ".data.diag_net_dma")]
static DMA: Dma = Dma(UnsafeCell::new(
    [const {
        NicDma {
            rx_ring: [0; 4096],
            tx_ring: [0; 4096],
            rx_bufs: [[0; BUF_LEN]; QUEUE_MAX as usize],
            tx_bufs: [[0; BUF_LEN]; QUEUE_MAX as usize],
        }
    }; MAX_NICS],
));

fn area(index: usize) -> Option<u64> {
    (index < MAX_NICS)
        .then(|| DMA.0.get() as u64 + (index as u64) * core::mem::size_of::<NicDma>() as u64)
}

/// One split virtqueue in a ring page, with its buffers.
#[derive(Clone, Copy, Debug)]
struct Ring {
    page: u64,
    bufs: u64,
    size: u16,
    /// Next avail index the driver publishes.
    avail: u16,
    /// Used entries consumed so far.
    used: u16,
}

impl Ring {
    fn buf(&self, id: u16) -> u64 {
        self.bufs + u64::from(id) * BUF_LEN as u64
    }

    fn publish(&mut self, id: u16) {
        let slot = u64::from(self.avail % self.size);
        w16(self.page + AVAIL_OFF + 4 + 2 * slot, id);
        fence(Ordering::SeqCst);
        self.avail = self.avail.wrapping_add(1);
        w16(self.page + AVAIL_OFF + 2, self.avail);
        fence(Ordering::SeqCst);
    }

    fn device_used(&self) -> u16 {
        r16(self.page + USED_OFF + 2)
    }

    /// The next used entry (id, len), if the device returned one.
    fn next_used(&mut self) -> Option<(u32, u32)> {
        if self.device_used() == self.used {
            return None;
        }
        fence(Ordering::SeqCst);
        let e = self.page + USED_OFF + 4 + 8 * u64::from(self.used % self.size);
        self.used = self.used.wrapping_add(1);
        Some((r32(e), r32(e + 4)))
    }
}

/// A virtio-net device the driver has set up.
#[derive(Clone, Copy, Debug)]
pub struct Nic {
    slot: usize,
    base: u64,
    mac: Mac,
    rx: Ring,
    tx: Ring,
    /// Frames dropped because the device did not return a TX buffer, or
    /// returned an RX entry out of range.
    pub errors: u32,
}

impl Nic {
    /// Set up the virtio-net device in `slot` as diag's NIC number `index`
    /// (its DMA area): handshake, both queues, every RX buffer posted.
    pub fn init(slot: usize, index: usize) -> Result<Nic, &'static str> {
        let dma = area(index).ok_or("too many NICs")?;
        let base = slot_base(slot);
        let (status, low) = negotiate(base, F_MAC)?;
        let mut mac = [0u8; 6];
        if low & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = mmio_read8(base + CONFIG + i as u64);
            }
        }
        let rx_page = dma + core::mem::offset_of!(NicDma, rx_ring) as u64;
        let tx_page = dma + core::mem::offset_of!(NicDma, tx_ring) as u64;
        for off in (0..4096).step_by(8) {
            w64(rx_page + off, 0);
            w64(tx_page + off, 0);
        }
        let rx_size = setup_queue(
            base,
            RX,
            QUEUE_MAX,
            rx_page + DESC_OFF,
            rx_page + AVAIL_OFF,
            rx_page + USED_OFF,
        )?;
        let tx_size = setup_queue(
            base,
            TX,
            QUEUE_MAX,
            tx_page + DESC_OFF,
            tx_page + AVAIL_OFF,
            tx_page + USED_OFF,
        )?;
        let mut rx = Ring {
            page: rx_page,
            bufs: dma + core::mem::offset_of!(NicDma, rx_bufs) as u64,
            size: rx_size,
            avail: 0,
            used: 0,
        };
        let tx = Ring {
            page: tx_page,
            bufs: dma + core::mem::offset_of!(NicDma, tx_bufs) as u64,
            size: tx_size,
            avail: 0,
            used: 0,
        };
        driver_ok(base, status)?;
        for id in 0..rx.size {
            write_desc(
                rx.page + DESC_OFF,
                id,
                rx.buf(id),
                BUF_LEN as u32,
                VIRTQ_DESC_F_WRITE,
                0,
            );
            rx.publish(id);
        }
        mmio_write32(base + QUEUE_NOTIFY, RX);
        Ok(Nic {
            slot,
            base,
            mac,
            rx,
            tx,
            errors: 0,
        })
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Copy the next received frame (without its header) into `out`;
    /// its length, or None when nothing arrived. The buffer goes back to
    /// the device at once.
    pub fn recv(&mut self, out: &mut [u8; MAX_FRAME]) -> Option<usize> {
        loop {
            let (id, len) = self.rx.next_used()?;
            let id16 = u16::try_from(id).ok().filter(|&i| i < self.rx.size);
            let Some(id) = id16 else {
                // Not one of ours: nothing to re-post.
                self.errors = self.errors.saturating_add(1);
                continue;
            };
            let len = len as usize;
            let frame_len = len.saturating_sub(HDR_LEN).min(MAX_FRAME);
            let ok = len > HDR_LEN && len <= BUF_LEN;
            if ok {
                let src = self.rx.buf(id) + HDR_LEN as u64;
                for (i, b) in out.iter_mut().take(frame_len).enumerate() {
                    *b = crate::virtio_mmio::r8(src + i as u64);
                }
            } else {
                self.errors = self.errors.saturating_add(1);
            }
            // The descriptor still points at the same buffer: post it again.
            self.rx.publish(id);
            mmio_write32(self.base + QUEUE_NOTIFY, RX);
            ack_interrupts(self.base);
            if ok {
                return Some(frame_len);
            }
        }
    }

    /// Send `frame` (an Ethernet frame of at most [`MAX_FRAME`] bytes).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), &'static str> {
        if frame.len() > MAX_FRAME {
            return Err("frame too long");
        }
        // Reclaim what the device returned; wait (bounded) if every buffer
        // is still out.
        let mut deadline = Deadline::after_ms(TX_TIMEOUT_MS);
        loop {
            while self.tx.next_used().is_some() {}
            if self.tx.avail.wrapping_sub(self.tx.used) < self.tx.size {
                break;
            }
            if deadline.expired() {
                self.errors = self.errors.saturating_add(1);
                return Err("no TX buffer came back");
            }
            pause();
        }
        let id = self.tx.avail % self.tx.size;
        let buf = self.tx.buf(id);
        for i in 0..HDR_LEN as u64 {
            w8(buf + i, 0);
        }
        for (i, &b) in frame.iter().enumerate() {
            w8(buf + (HDR_LEN + i) as u64, b);
        }
        write_desc(
            self.tx.page + DESC_OFF,
            id,
            buf,
            (HDR_LEN + frame.len()) as u32,
            0,
            0,
        );
        self.tx.publish(id);
        mmio_write32(self.base + QUEUE_NOTIFY, TX);
        ack_interrupts(self.base);
        Ok(())
    }
}
