//! Device emulation and the bus that routes vCPU exits to devices.
//!
//! Every device implements [`BusDevice`]; the vCPU loop looks the exit address
//! up on the PIO or MMIO [`Bus`] and calls the device with the offset inside its
//! range. Devices raise interrupts through [`Interrupt`], which the VMM backs
//! with KVM (irqfd or irq line) — or with nothing, for guests that poll.

pub mod agent;
pub mod bus;
pub mod legacy;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, Interrupt};
