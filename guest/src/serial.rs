//! Polled 16550 UART output and input (no interrupts: IER stays 0). COM1 is
//! the console, COM2 the agent channel.

use crate::clock::Deadline;
use crate::cpu::{inb, outb, pause};

const LSR: u16 = 5;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// How long to wait for the transmitter before writing anyway.
const TX_WAIT_MS: u64 = 2;

#[derive(Clone, Copy)]
pub struct Serial {
    base: u16,
}

impl Serial {
    pub const fn new(base: u16) -> Self {
        Self { base }
    }

    /// 8N1, interrupts off, FIFOs on. The VMM's UART does not need any of
    /// it, but a real one would.
    pub fn init(&self) {
        outb(self.base + 1, 0x00); // IER: no interrupts, ever
        outb(self.base + 3, 0x80); // DLAB
        outb(self.base, 0x01); // 115200 baud
        outb(self.base + 1, 0x00);
        outb(self.base + 3, 0x03); // 8N1
        outb(self.base + 2, 0xc7); // FIFO on, cleared
        outb(self.base + 4, 0x03); // DTR | RTS, no OUT2 (no IRQ line)
    }

    pub fn write_byte(&self, b: u8) {
        if inb(self.base + LSR) & LSR_THR_EMPTY == 0 {
            let mut deadline = Deadline::after_ms(TX_WAIT_MS);
            while inb(self.base + LSR) & LSR_THR_EMPTY == 0 && !deadline.expired() {
                pause();
            }
        }
        outb(self.base, b);
    }

    pub fn write(&self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
    }

    /// Writes raw bytes (no `\r` added): the agent channel is parsed by
    /// the VMM.
    pub fn write_raw(&self, bytes: &[u8]) {
        for &b in bytes {
            self.write_byte(b);
        }
    }

    /// A received byte, if one is waiting.
    pub fn try_read(&self) -> Option<u8> {
        (inb(self.base + LSR) & LSR_DATA_READY != 0).then(|| inb(self.base))
    }
}
