//! The ACPI Generic Event Device's event register at `GED_BASE`: a 32-bit
//! register of pending event bits; a read returns them and clears them. The
//! VMM sets bit 3 (power button) to ask the guest to shut down. Linux reads it
//! from the DSDT's `_EVT` after the GED interrupt; the diag guest polls it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::devices::{BusDevice, Interrupt};

/// Bytes of MMIO space the register block claims.
pub const GED_LEN: u64 = 0x10;
/// Event bits (as the DSDT's `_EVT` decodes them, crate::acpi::dsdt).
pub const GED_CPU_HOTPLUG: u32 = 1 << 0;
pub const GED_MEMORY_HOTPLUG: u32 = 1 << 1;
pub const GED_POWER_BUTTON: u32 = 1 << 3;

/// Shared pending bits, so the VMM can raise events while the bus owns the
/// device.
#[derive(Clone, Default)]
pub struct GedEvents(Arc<AtomicU32>);

impl GedEvents {
    pub fn raise(&self, bits: u32) {
        self.0.fetch_or(bits, Ordering::SeqCst);
    }

    pub fn pending(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    fn take(&self) -> u32 {
        self.0.swap(0, Ordering::SeqCst)
    }
}

pub struct GedDevice {
    events: GedEvents,
    irq: Option<Arc<dyn Interrupt>>,
}

impl GedDevice {
    pub fn new(events: GedEvents, irq: Option<Arc<dyn Interrupt>>) -> Self {
        GedDevice { events, irq }
    }

    /// Raise `bits` and, when the guest takes interrupts, the GED interrupt.
    pub fn notify(events: &GedEvents, irq: Option<&Arc<dyn Interrupt>>, bits: u32) {
        events.raise(bits);
        if let Some(irq) = irq {
            irq.trigger();
        }
    }

    pub fn irq(&self) -> Option<&Arc<dyn Interrupt>> {
        self.irq.as_ref()
    }
}

impl BusDevice for GedDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            let value = self.events.take().to_le_bytes();
            let n = data.len().min(4);
            data[..n].copy_from_slice(&value[..n]);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_returns_and_clears() {
        let ev = GedEvents::default();
        let mut d = GedDevice::new(ev.clone(), None);
        ev.raise(GED_POWER_BUTTON);
        let mut b = [0u8; 4];
        d.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 8);
        d.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        ev.raise(GED_POWER_BUTTON);
        d.read(4, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(ev.pending(), 8);
    }
}
