//! virtio-net backed by a host TAP: the device half of a vmctl NIC
//! (docs/networking.md).
//!
//! Two queues: RX (0, frames to the guest) and TX (1, frames from it).
//! Offered features: VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MAC only — no
//! checksum or segmentation offloads, no mergeable RX buffers, no control
//! queue. So every frame is a whole, checksummed Ethernet frame of at most
//! [`MAX_FRAME_LEN`] bytes behind a 12-byte `virtio_net_hdr_v1`, and the
//! header carries nothing the device needs:
//!
//! - TX: the guest's header is never passed on. The device writes a zeroed
//!   header in its place, so the host kernel never parses guest-controlled
//!   GSO or checksum fields.
//! - RX: the kernel's header is replaced by zeros with `num_buffers = 1`
//!   (what virtio 1.2, 5.1.6.4 asks without MRG_RXBUF); a frame the kernel
//!   marked as GSO (it should not, no offloads were set) is dropped.
//!
//! Every chain is hostile ([`super::chain`]): at most `MAX_DESCRIPTORS`
//! long, every buffer inside guest memory, TX chains device-readable only,
//! RX chains device-writable only, lengths within bounds. A bad chain goes
//! back to the used ring with length 0 and is counted in `bad_chains`; it
//! never panics and never stops the device.
//!
//! Buffering is bounded: the device holds at most one frame (its own
//! 64 KiB buffer) and reads from the TAP only once it has popped a guest
//! RX buffer to put the frame in; frames beyond that wait in the kernel's
//! TAP queue (`txqueuelen`), which drops when full. RX does at most
//! [`RX_BUDGET`] frames per pass and then reports [`VirtioDevice::has_more`]
//! so the I/O thread can serve other queues in between.

pub mod tap;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use self::tap::TapIo;
use super::chain::{self, Seg};
use super::{DEVICE_ID_NET, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::GuestMemory;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (VERSION_1 always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Shortest frame passed on: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Longest frame passed on either way (the largest MTU a TAP takes, plus
/// the Ethernet header, fits).
pub const MAX_FRAME_LEN: usize = 65535;
/// Frames moved to the guest per RX pass before other events are served.
pub const RX_BUDGET: u32 = 256;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod features {
    pub const MAC: u32 = 5;
}

/// Offset of `gso_type` in the header.
const HDR_GSO_TYPE: usize = 1;
/// Offset of `num_buffers` in the header.
const HDR_NUM_BUFFERS: usize = 10;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parse the `52:54:00:12:34:56` form (exactly six two-digit hex groups).
    pub fn parse(s: &str) -> Option<Mac> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next()?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(out))
    }

    /// Not a group (multicast/broadcast) address and not all zeros: what a
    /// NIC may have as its own.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Live counters of one NIC, shared with the control socket's `status`.
#[derive(Debug, Default)]
pub struct NetCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    bad_chains: AtomicU64,
}

/// A snapshot of [`NetCounters`]; bytes are Ethernet frame bytes (no
/// virtio header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames from the TAP that could not be delivered (too big for the
    /// guest's buffer, malformed).
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames from the guest the TAP refused.
    pub tx_dropped: u64,
    /// Descriptor chains refused (wrong direction, outside guest memory,
    /// too long, bad length); returned to the guest with length 0.
    pub bad_chains: u64,
}

impl NetCounters {
    pub fn snapshot(&self) -> NetStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_packets: g(&self.rx_packets),
            rx_bytes: g(&self.rx_bytes),
            rx_dropped: g(&self.rx_dropped),
            tx_packets: g(&self.tx_packets),
            tx_bytes: g(&self.tx_bytes),
            tx_dropped: g(&self.tx_dropped),
            bad_chains: g(&self.bad_chains),
        }
    }
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// A virtio-net device over one TAP (or any [`TapIo`]).
pub struct Net {
    mac: Mac,
    tap: Box<dyn TapIo>,
    counters: Arc<NetCounters>,
    acked_features: u64,
    queue_sizes: [u16; 2],
    /// The one frame in flight, header included.
    buf: Box<[u8]>,
    /// RX stopped at its budget with frames perhaps left.
    rx_more: bool,
}

impl Net {
    /// A device with MAC `mac` moving frames to and from `tap`, counting in
    /// `counters` (shared with whoever reports status; kept across reboots).
    pub fn new(mac: Mac, tap: Box<dyn TapIo>, counters: Arc<NetCounters>) -> Self {
        Net {
            mac,
            tap,
            counters,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; 2],
            // One byte more than the largest frame: a read that fills the
            // buffer was cut short and is dropped, not delivered truncated.
            buf: vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN + 1].into_boxed_slice(),
            rx_more: false,
        }
    }

    pub fn mac(&self) -> Mac {
        self.mac
    }

    pub fn counters(&self) -> &Arc<NetCounters> {
        &self.counters
    }

    /// Move frames from the TAP into the guest's RX buffers while both
    /// last (and at most [`RX_BUDGET`]).
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        self.rx_more = false;
        let mut used_any = false;
        for _ in 0..RX_BUDGET {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return used_any;
            };
            let head = chain.head_index();
            let segs = chain::descriptors(chain).and_then(|d| chain::uniform(mem, &d, true));
            let Some(segs) =
                segs.filter(|s| chain::total(s) >= (VNET_HDR_LEN + MIN_FRAME_LEN) as u64)
            else {
                tracing::debug!(head, "virtio-net: bad RX chain returned unused");
                bump(&self.counters.bad_chains, 1);
                if !self.used(queue, mem, head, 0) {
                    return used_any;
                }
                used_any = true;
                continue;
            };
            let n = match self.tap.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    // Nothing to read (WouldBlock) or the TAP failed: the
                    // buffer stays the guest's for the next frame.
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::warn!(error = %e, "virtio-net: TAP read failed");
                    }
                    queue.go_to_previous_position();
                    return used_any;
                }
            };
            let len = self.deliver(mem, &segs, n);
            if !self.used(queue, mem, head, len) {
                return used_any;
            }
            used_any = true;
        }
        self.rx_more = true;
        used_any
    }

    /// Put the `n`-byte frame in `self.buf` into `segs`; the used length.
    fn deliver(&mut self, mem: &GuestMemory, segs: &[Seg], n: usize) -> u32 {
        let frame_ok = (VNET_HDR_LEN + MIN_FRAME_LEN..=VNET_HDR_LEN + MAX_FRAME_LEN).contains(&n)
            && self.buf[HDR_GSO_TYPE] == 0;
        if !frame_ok || n as u64 > chain::total(segs) {
            tracing::debug!(
                n,
                "virtio-net: RX frame dropped (malformed or too big for the buffer)"
            );
            bump(&self.counters.rx_dropped, 1);
            return 0;
        }
        self.buf[..VNET_HDR_LEN].fill(0);
        self.buf[HDR_NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        if !chain::scatter(mem, segs, &self.buf[..n]) {
            bump(&self.counters.rx_dropped, 1);
            return 0;
        }
        bump(&self.counters.rx_packets, 1);
        bump(&self.counters.rx_bytes, (n - VNET_HDR_LEN) as u64);
        n as u32
    }

    /// Send every frame the guest queued for transmission.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used_any = false;
        // Bounded: each pop consumes one available entry, and the avail
        // index only moves when the guest writes it.
        for _ in 0..u32::from(QUEUE_SIZE) * 2 {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let segs = chain::descriptors(chain).and_then(|d| chain::uniform(mem, &d, false));
            let range =
                (VNET_HDR_LEN + MIN_FRAME_LEN) as u64..=(VNET_HDR_LEN + MAX_FRAME_LEN) as u64;
            match segs.filter(|s| range.contains(&chain::total(s))) {
                Some(segs) => self.send(mem, &segs),
                None => {
                    tracing::debug!(head, "virtio-net: bad TX chain dropped");
                    bump(&self.counters.bad_chains, 1);
                }
            }
            if !self.used(queue, mem, head, 0) {
                break;
            }
            used_any = true;
        }
        used_any
    }

    /// Send the frame in `segs` (its length already checked) to the TAP.
    fn send(&mut self, mem: &GuestMemory, segs: &[Seg]) {
        // total() <= VNET_HDR_LEN + MAX_FRAME_LEN < buf.len(), checked.
        let n = chain::total(segs) as usize;
        let Some(frame) = self.buf.get_mut(..n) else {
            return;
        };
        if !chain::gather(mem, segs, frame) {
            bump(&self.counters.bad_chains, 1);
            return;
        }
        // The guest's header is not passed on (see the module doc).
        frame[..VNET_HDR_LEN].fill(0);
        match self.tap.send(frame) {
            Ok(_) => {
                bump(&self.counters.tx_packets, 1);
                bump(&self.counters.tx_bytes, (n - VNET_HDR_LEN) as u64);
            }
            Err(e) => {
                tracing::debug!(error = %e, "virtio-net: TAP write failed, frame dropped");
                bump(&self.counters.tx_dropped, 1);
            }
        }
    }

    fn used(&self, queue: &mut Queue, mem: &GuestMemory, head: u16, len: u32) -> bool {
        match queue.add_used(mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "virtio-net: cannot add to used ring");
                false
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1 << features::MAC)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6]; nothing else is offered.
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.mac.0.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // VERSION_1 drivers do not write the MAC; nothing is writable.
        tracing::trace!(offset, len = data.len(), "virtio-net: config write ignored");
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => false,
        }
    }

    fn reset(&mut self) {
        self.acked_features = 0;
        self.rx_more = false;
    }

    fn has_more(&self, index: usize) -> bool {
        index == RX_QUEUE && self.rx_more
    }
}

#[cfg(test)]
mod tests;
