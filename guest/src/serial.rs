//! Polled 16550 UART output and input (no interrupts: IER stays 0). COM1 is
//! the console, COM2 the agent channel.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering, fence};

use crate::clock::Deadline;
use crate::cpu::{inb, inl, outb, outl, outsb, pause};
use crate::layout::{BATCH_MAGIC, BATCH_MAX, BATCH_PORT};

const LSR: u16 = 5;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// How long to wait for the transmitter before writing anyway.
const TX_WAIT_MS: u64 = 2;
/// A 16550A's transmit FIFO: after THRE, this many bytes may be written
/// at once.
const TX_FIFO: usize = 16;

/// The batch buffer: an 8-byte header, then the bytes. diag runs
/// identity-mapped, so its address is its guest-physical address.
#[repr(C, align(8))]
struct BatchBuf(UnsafeCell<[u8; 8 + BATCH_MAX]>);
// SAFETY: only the holder of BATCH_BUSY touches the buffer.
unsafe impl Sync for BatchBuf {}
static BATCH_BUF: BatchBuf = BatchBuf(UnsafeCell::new([0; 8 + BATCH_MAX]));
static BATCH_BUSY: AtomicBool = AtomicBool::new(false);
/// 0: not asked yet; 1: the VMM has the batch port; 2: it has not.
static BATCH_STATE: AtomicU8 = AtomicU8::new(0);

fn batch_available() -> bool {
    match BATCH_STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let yes = inl(BATCH_PORT) == BATCH_MAGIC;
            BATCH_STATE.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
            yes
        }
    }
}

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

    /// Waits (briefly) until the transmitter has room for a FIFO's worth.
    fn wait_tx(&self) {
        if inb(self.base + LSR) & LSR_THR_EMPTY == 0 {
            let mut deadline = Deadline::after_ms(TX_WAIT_MS);
            while inb(self.base + LSR) & LSR_THR_EMPTY == 0 && !deadline.expired() {
                pause();
            }
        }
    }

    /// Up to a FIFO's worth of bytes, in one `rep outsb`: under a VMM that
    /// is two exits (the LSR read and the string write) instead of two per
    /// byte. Each exit costs this project's nested host ~0.2 ms, and diag's
    /// boot output was most of a boot's host CPU time.
    fn write_chunk(&self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.wait_tx();
        outsb(self.base, chunk);
    }

    pub fn write_byte(&self, b: u8) {
        self.wait_tx();
        outb(self.base, b);
    }

    pub fn write(&self, bytes: &[u8]) {
        self.send(bytes, true);
    }

    /// Writes raw bytes (no `\r` added): the agent channel is parsed by
    /// the VMM.
    pub fn write_raw(&self, bytes: &[u8]) {
        self.send(bytes, false);
    }

    /// `bytes` (with `\r` before each `\n` when `crlf`): through vmctl's
    /// batch port when the VMM has it (one exit per 2 KiB), else a FIFO's
    /// worth per `rep outsb`.
    fn send(&self, bytes: &[u8], crlf: bool) {
        if batch_available()
            && BATCH_BUSY
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: BATCH_BUSY is ours until the store below.
            let buf = unsafe { &mut *BATCH_BUF.0.get() };
            let sent = self.send_batched(buf, bytes, crlf);
            BATCH_BUSY.store(false, Ordering::Release);
            if sent {
                return;
            }
        }
        let mut chunk = [0u8; TX_FIFO];
        let mut n = 0;
        for_each_out(bytes, crlf, |c| {
            if n == chunk.len() {
                self.write_chunk(&chunk);
                n = 0;
            }
            chunk[n] = c;
            n += 1;
        });
        self.write_chunk(&chunk[..n]);
    }

    /// Fills and flushes the batch buffer; false (nothing sent) when its
    /// address does not fit the port's 32 bits.
    fn send_batched(&self, buf: &mut [u8; 8 + BATCH_MAX], bytes: &[u8], crlf: bool) -> bool {
        let Ok(addr) = u32::try_from(buf.as_ptr() as u64) else {
            return false;
        };
        let mut n = 0;
        for_each_out(bytes, crlf, |c| {
            if n == BATCH_MAX {
                self.flush_batch(buf, n, addr);
                n = 0;
            }
            buf[8 + n] = c;
            n += 1;
        });
        self.flush_batch(buf, n, addr);
        true
    }

    fn flush_batch(&self, buf: &mut [u8; 8 + BATCH_MAX], n: usize, addr: u32) {
        if n == 0 {
            return;
        }
        buf[0..2].copy_from_slice(&self.base.to_le_bytes());
        buf[2..4].copy_from_slice(&(n as u16).to_le_bytes());
        buf[4..8].fill(0);
        // The VMM reads the buffer when the port write exits.
        fence(Ordering::SeqCst);
        outl(BATCH_PORT, addr);
    }

    /// A received byte, if one is waiting.
    pub fn try_read(&self) -> Option<u8> {
        (inb(self.base + LSR) & LSR_DATA_READY != 0).then(|| inb(self.base))
    }
}

/// Calls `f` with each byte to send: `bytes`, with `\r` before each `\n`
/// when `crlf`.
fn for_each_out(bytes: &[u8], crlf: bool, mut f: impl FnMut(u8)) {
    for &b in bytes {
        if crlf && b == b'\n' {
            f(b'\r');
        }
        f(b);
    }
}
