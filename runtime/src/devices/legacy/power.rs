//! The ACPI sleep-control / reset register at I/O port 0x600
//! (cloud-hypervisor's layout): `1` resets the VM, `(5 << 2) | (1 << 5)` (S5 +
//! SLP_EN) powers it off. The FADT names this port as both registers.

use crate::devices::BusDevice;
use crate::vstate::vcpu::{EventSink, VmEvent};

pub const POWER_PORT: u16 = 0x600;
/// Bytes of I/O space the device claims.
pub const POWER_PORT_LEN: u64 = 8;
pub const RESET_VALUE: u8 = 1;
pub const S5_SLP_EN: u8 = (5 << 2) | (1 << 5);

pub struct PowerDevice {
    events: EventSink,
}

impl PowerDevice {
    pub fn new(events: EventSink) -> Self {
        PowerDevice { events }
    }
}

impl BusDevice for PowerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        match data.first() {
            Some(&RESET_VALUE) => {
                self.events.send(VmEvent::Reset);
            }
            Some(&S5_SLP_EN) => {
                self.events.send(VmEvent::PowerOff);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_1_resets() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut d = PowerDevice::new(tx.into());
        d.write(0, &[0x34]);
        d.write(0, &[1]);
        d.write(0, &[7]);
        d.write(1, &[1]);
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![VmEvent::PowerOff, VmEvent::Reset]
        );
        assert_eq!(S5_SLP_EN, 0x34);
    }
}
