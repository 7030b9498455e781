//! The PIO and MMIO buses: address ranges mapped to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device the vCPU loop can read from and write to. `offset` is relative to
/// the start of the range the device was inserted at. Accesses the device does
/// not implement must read as zeros and ignore writes — never panic: the guest
/// controls every argument.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// How a device asks for the guest's attention (level or edge is the VMM's
/// business).
pub trait Interrupt: Send + Sync {
    fn trigger(&self);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

type Shared = Arc<Mutex<dyn BusDevice>>;

/// Non-overlapping address ranges, each owned by one device.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, Shared)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `[base, base + len)` to `device`.
    pub fn insert(&mut self, device: Shared, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        if let Some((&b, &(l, _))) = self.ranges.range(..end).next_back()
            && b + l > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr`, with the offset of `addr` inside its range.
    pub fn resolve(&self, addr: u64) -> Option<(Shared, u64)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then(|| (dev.clone(), offset))
    }

    /// Dispatch a read; returns false when nothing is mapped at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                if let Ok(mut d) = dev.lock() {
                    d.read(offset, data);
                }
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; returns false when nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                if let Ok(mut d) = dev.lock() {
                    d.write(offset, data);
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data.first().copied().unwrap_or(0);
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(1))), 0x100, 0x10)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(7))), 0x110, 0x10)
            .unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(0))), 0x10f, 2),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 2
            })
        );
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x0, 0).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x102, &mut b));
        assert_eq!(b[0], 3);
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 7);
        assert!(!bus.read(0x120, &mut b));
        assert!(!bus.read(0xff, &mut b));
        assert!(bus.write(0x111, &[42]));
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 42);
    }
}
