//! Just enough of the i8042 keyboard controller for the classic PC reset:
//! writing 0xFE to the command port (0x64) pulses the reset line. Status reads
//! say "no data, input buffer empty", so guests probing it move on.

use crate::devices::BusDevice;
use crate::vstate::vcpu::{EventSink, VmEvent};

/// The device covers ports 0x60..=0x64.
pub const I8042_BASE: u16 = 0x60;
pub const I8042_LEN: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042Device {
    events: EventSink,
}

impl I8042Device {
    pub fn new(events: EventSink) -> Self {
        I8042Device { events }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.events.send(VmEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fe_on_the_command_port_resets() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut d = I8042Device::new(tx.into());
        d.write(0, &[0xfe]);
        d.write(4, &[0xfe]);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![VmEvent::Reset]);
    }
}
