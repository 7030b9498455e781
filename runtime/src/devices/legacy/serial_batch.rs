//! The serial batch port (vmctl's own, I/O 0x612): a guest that prints a
//! lot through a polled UART pays one VM exit per byte, which on this
//! project's nested hosts is ~0.3 ms of host CPU each — most of a diag
//! boot's cost. With this port the guest puts a line in its memory and
//! writes the line's guest-physical address here: one exit, and the VMM
//! feeds the bytes to the UART as if they had been written one by one.
//!
//! A 32-bit read answers [`BATCH_MAGIC`] ("BTCH") so a guest knows the
//! port exists (elsewhere it reads all-ones and writes byte by byte).
//!
//! The descriptor at the written address (little-endian, guest-controlled
//! and so checked): `u16 port` (COM1's or COM2's data register only),
//! `u16 len` (at most [`MAX_BATCH`]), `u32` zero, then `len` bytes. Any
//! descriptor outside guest memory, with another port or a longer length
//! is ignored (counted in the log at debug level), never trusted.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::le_u32;
use crate::GuestMemory;
use crate::devices::BusDevice;

/// The port, next to the idle port.
pub const BATCH_PORT: u16 = 0x612;
/// What a 32-bit read of the port returns: "BTCH".
pub const BATCH_MAGIC: u32 = 0x4843_5442;
/// The most bytes one batch may carry.
pub const MAX_BATCH: usize = 2048;
/// The descriptor's header: port, length, reserved.
const HEADER: u64 = 8;

/// A UART the batch may feed: its data-register port and the device.
pub struct Target {
    pub port: u16,
    pub device: Arc<Mutex<dyn BusDevice>>,
}

pub struct SerialBatch {
    memory: GuestMemory,
    targets: Vec<Target>,
}

impl SerialBatch {
    pub fn new(memory: GuestMemory, targets: Vec<Target>) -> Self {
        SerialBatch { memory, targets }
    }

    /// Read and check the descriptor at `addr`; the target and the bytes.
    fn batch(&self, addr: u64) -> Result<(&Target, Vec<u8>), &'static str> {
        let mut header = [0u8; HEADER as usize];
        self.memory
            .read_slice(&mut header, GuestAddress(addr))
            .map_err(|_| "descriptor outside guest memory")?;
        let port = u16::from_le_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_le_bytes([header[2], header[3]]));
        if len > MAX_BATCH {
            return Err("batch longer than 2048 bytes");
        }
        let target = self
            .targets
            .iter()
            .find(|t| t.port == port)
            .ok_or("not a UART data port")?;
        let data_at = addr.checked_add(HEADER).ok_or("address overflow")?;
        let mut bytes = vec![0u8; len];
        self.memory
            .read_slice(&mut bytes, GuestAddress(data_at))
            .map_err(|_| "bytes outside guest memory")?;
        Ok((target, bytes))
    }
}

impl BusDevice for SerialBatch {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let magic = BATCH_MAGIC.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = magic.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.len() != 4 {
            return;
        }
        let addr = u64::from(le_u32(data));
        match self.batch(addr) {
            Ok((target, bytes)) => {
                if let Ok(mut d) = target.device.lock() {
                    // The UART's data register takes a string write whole.
                    d.write(0, &bytes);
                }
            }
            Err(why) => tracing::debug!(addr, why, "serial batch ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sink(Vec<u8>);
    impl BusDevice for Sink {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            assert_eq!(offset, 0);
            self.0.extend_from_slice(data);
        }
    }

    fn setup() -> (SerialBatch, Arc<Mutex<Sink>>, GuestMemory) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let sink = Arc::new(Mutex::new(Sink::default()));
        let dev = SerialBatch::new(
            mem.clone(),
            vec![Target {
                port: 0x3f8,
                device: sink.clone(),
            }],
        );
        (dev, sink, mem)
    }

    fn put(mem: &GuestMemory, addr: u64, port: u16, len: u16, bytes: &[u8]) {
        let mut d = Vec::new();
        d.extend_from_slice(&port.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(bytes);
        mem.write_slice(&d, GuestAddress(addr)).unwrap();
    }

    #[test]
    fn a_batch_reaches_its_uart_and_the_magic_reads_back() {
        let (mut dev, sink, mem) = setup();
        let mut m = [0u8; 4];
        dev.read(0, &mut m);
        assert_eq!(u32::from_le_bytes(m), BATCH_MAGIC);
        put(&mem, 0x1000, 0x3f8, 6, b"hello\n");
        dev.write(0, &0x1000u32.to_le_bytes());
        assert_eq!(sink.lock().unwrap().0, b"hello\n");
    }

    #[test]
    fn hostile_descriptors_are_ignored() {
        let (mut dev, sink, mem) = setup();
        // Another port, too long, running off the end of memory, outside
        // memory altogether, a short write.
        put(&mem, 0x100, 0x2f8, 2, b"no");
        dev.write(0, &0x100u32.to_le_bytes());
        put(&mem, 0x200, 0x3f8, 4096, b"");
        dev.write(0, &0x200u32.to_le_bytes());
        put(&mem, 0xfff8, 0x3f8, 64, b"");
        dev.write(0, &0xfff8u32.to_le_bytes());
        dev.write(0, &0xffff_fff0u32.to_le_bytes());
        dev.write(0, &[0x00, 0x01]);
        assert!(sink.lock().unwrap().0.is_empty());
    }
}
