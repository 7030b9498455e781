//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): one 4 KiB window
//! per device, registers at 0x000..0x100 and the device's configuration space
//! from 0x100.
//!
//! The transport enforces the initialisation sequence: features can be
//! negotiated only between DRIVER and FEATURES_OK, FEATURES_OK sticks only if
//! the driver accepted a subset of the offered features including
//! VIRTIO_F_VERSION_1, queues can be configured only after FEATURES_OK and
//! while not ready, a queue becomes ready only if its rings lie inside guest
//! memory, and queues are processed only after DRIVER_OK. Writing 0 to Status
//! resets everything. Register accesses that are not aligned 32-bit accesses
//! read as zero and are ignored.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::{VIRTIO_F_VERSION_1, VirtioDevice, interrupt_status, status};
use crate::GuestMemory;
use crate::devices::{BusDevice, Interrupt};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("VMCT" would not fit the PCI-ish
/// convention; QEMU uses 0x554d4551 "QEMU", Firecracker 0).
pub const VENDOR_ID: u32 = 0;
/// Where the device configuration space starts.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Register offsets (virtio 1.2, table 4.1).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
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
}

/// A virtio device `D` behind a virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    interrupt: Option<Arc<dyn Interrupt>>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    driver_features_invalid: bool,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Put `device` behind a transport that reaches guest memory through
    /// `mem` and signals the guest through `interrupt` (None for a guest that
    /// polls: the interrupt status register is still kept).
    pub fn new(device: D, mem: GuestMemory, interrupt: Option<Arc<dyn Interrupt>>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            // Queue::new fails only for sizes that are not a power of two
            // <= 32768; such a queue is kept with maximum 0 (unusable).
            .map(|&max| Queue::new(max).or_else(|_| Queue::new(1)))
            .filter_map(Result::ok)
            .collect();
        Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            driver_features_invalid: false,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
        }
    }

    /// The device, e.g. to resize a disk.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, e.g. to resize a disk; follow a configuration change with
    /// [`Self::notify_config_change`].
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Swap the guest memory view (after memory hot-add).
    pub fn set_memory(&mut self, mem: GuestMemory) {
        self.mem = mem;
    }

    /// The device status the driver last wrote.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// True once the driver finished initialisation (DRIVER_OK, not FAILED).
    pub fn is_activated(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::FAILED == 0
    }

    /// Tell the driver the configuration space changed (disk resize): bump
    /// the configuration generation, set the config-change interrupt status
    /// bit and raise the interrupt.
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt_status |= interrupt_status::CONFIG_CHANGE;
            self.signal();
        }
    }

    /// Process queue `index` as if the driver had notified it.
    pub fn process_queue(&mut self, index: u32) {
        if !self.is_activated() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index as usize) else {
            tracing::debug!(index, "notify for a queue that does not exist");
            return;
        };
        if !queue.ready() {
            return;
        }
        if self.device.process_queue(index as usize, queue, &self.mem) {
            let notify = queue.needs_notification(&self.mem).unwrap_or(true);
            if notify {
                self.interrupt_status |= interrupt_status::USED_BUFFER;
                self.signal();
            }
        }
    }

    fn signal(&self) {
        if let Some(irq) = &self.interrupt {
            irq.trigger();
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// The selected queue, if the driver may configure it now.
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        let s = self.status;
        if s & status::FEATURES_OK == 0 || s & (status::DRIVER_OK | status::FAILED) != 0 {
            return None;
        }
        self.queues
            .get_mut(self.queue_select as usize)
            .filter(|q| !q.ready())
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.driver_features_invalid = false;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn set_status(&mut self, new: u32) {
        if new == 0 {
            tracing::debug!("virtio-mmio device reset by the driver");
            self.reset();
            return;
        }
        let old = self.status;
        // The driver only ever adds bits; anything else is a driver bug we
        // refuse to follow. NEEDS_RESET is the device's bit, not the driver's.
        let driver_bits = old & !status::NEEDS_RESET;
        if new & driver_bits != driver_bits {
            tracing::warn!(
                old,
                new,
                "virtio-mmio: status bits cleared without reset, ignored"
            );
            return;
        }
        let mut new = new & !status::NEEDS_RESET;
        let added = new & !old;
        if added & status::FEATURES_OK != 0 {
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && !self.driver_features_invalid
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
                && old & status::DRIVER != 0;
            if ok {
                self.device.ack_features(self.driver_features);
            } else {
                tracing::warn!(
                    driver = self.driver_features,
                    offered,
                    "virtio-mmio: refusing FEATURES_OK"
                );
                new &= !status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0 && new & status::FEATURES_OK == 0 {
            tracing::warn!("virtio-mmio: DRIVER_OK before FEATURES_OK, ignored");
            new &= !status::DRIVER_OK;
        }
        self.status = new | (old & status::NEEDS_RESET);
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            reg::DRIVER_FEATURES => {
                let s = self.status;
                if s & status::DRIVER == 0 || s & status::FEATURES_OK != 0 {
                    return;
                }
                match self.driver_features_select {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    // Bits beyond 63 are never offered: accepting one makes
                    // FEATURES_OK fail.
                    _ => self.driver_features_invalid |= v != 0,
                }
            }
            reg::QUEUE_SEL => self.queue_select = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    // Rejects 0, > max and non-powers of two (keeps the old size).
                    let _ = u16::try_from(v).map(|n| q.try_set_size(n));
                }
            }
            reg::QUEUE_READY => {
                let mem = self.mem.clone();
                let s = self.status;
                let Some(q) = self.queues.get_mut(self.queue_select as usize) else {
                    return;
                };
                match v {
                    0 => q.set_ready(false),
                    1 if s & status::FEATURES_OK != 0 && s & status::FAILED == 0 => {
                        // is_valid() also requires the ready flag.
                        q.set_ready(true);
                        if !q.is_valid(&mem) {
                            q.set_ready(false);
                            tracing::warn!(
                                "virtio-mmio: queue rings outside guest memory, not ready"
                            );
                        }
                    }
                    _ => {}
                }
            }
            reg::QUEUE_NOTIFY => self.process_queue(v),
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.set_status(v),
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::trace!(
                offset,
                v,
                "virtio-mmio: write to read-only or unknown register"
            ),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.configurable_queue() {
            f(q);
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}
