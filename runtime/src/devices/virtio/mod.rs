//! virtio devices over the virtio-mmio transport.
//!
//! The split is Firecracker's: [`mmio::MmioTransport`] owns the virtio-mmio
//! (version 2) register window, the feature and status handshake and the
//! virtqueues (rust-vmm's `virtio-queue`), and a [`VirtioDevice`]
//! ([`block::Block`], [`net::Net`]) owns the device-specific configuration space and the
//! processing of its queues. Everything the guest writes — registers, ring
//! addresses, descriptor chains — is validated; a misbehaving driver gets
//! error statuses or an ignored write, never a VMM panic.
//!
//! Queues are processed on the I/O thread ([`io_thread`]): each
//! `QueueNotify` register is a KVM ioeventfd, so the guest's notify never
//! leaves KVM and a slow disk delays only its own requests, not the vCPU.
//! Where KVM refuses the ioeventfd, the transport processes the queue inside
//! the vCPU's MMIO write as before.
//!
//! Wiring one disk (device `i` of `layout::VIRTIO_MMIO_BASE`):
//!
//! ```ignore
//! let block = Block::new(&disk_path, read_only, &disk_name)?;
//! let dev = Arc::new(Mutex::new(MmioTransport::new(block, mem.clone(), irq)));
//! mmio_bus.insert(dev.clone(), layout::VIRTIO_MMIO_BASE + i * layout::VIRTIO_MMIO_SIZE,
//!                 layout::VIRTIO_MMIO_SIZE)?;
//! // ACPI: AcpiConfig::new(cpus, max_cpus, disks) lists the same windows.
//! // Live resize later:
//! let mut t = dev.lock()?;
//! t.device_mut().resize(new_bytes)?;
//! t.notify_config_change();
//! ```

pub mod block;
pub mod chain;
pub mod io_thread;
pub mod mmio;
pub mod net;

use virtio_queue::Queue;

use crate::GuestMemory;

/// virtio device ids (virtio 1.2, 5 "Device Types").
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_BLOCK: u32 = 2;

/// Feature bits common to every device (virtio 1.2, 6 "Reserved Feature Bits").
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits of the virtio-mmio transport.
pub mod interrupt_status {
    /// The device used a buffer in at least one queue.
    pub const USED_BUFFER: u32 = 1;
    /// The device's configuration space changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// virtio device id ([`DEVICE_ID_BLOCK`], ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each of the device's queues (its length is the queue count).
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers.
    fn features(&self) -> u64;
    /// The driver accepted `features` (a subset of [`Self::features`]).
    fn ack_features(&mut self, features: u64);
    /// Read `data.len()` bytes of the configuration space at `offset`; bytes
    /// beyond its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the configuration space (most devices ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Handle the available buffers of queue `index`. Returns true when at
    /// least one buffer was put in the used ring.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool;
    /// The driver reset the device.
    fn reset(&mut self);
    /// True when the last [`Self::process_queue`] of queue `index` stopped
    /// at its per-pass budget with work left (virtio-net RX under a flood):
    /// the I/O thread runs it again after serving the other events.
    fn has_more(&self, _index: usize) -> bool {
        false
    }
}
