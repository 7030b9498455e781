//! The two 16550A UARTs (vm-superio): COM1 is the console — its output is
//! appended to `console.log` and copied to attached console clients, its input
//! comes from them — and COM2 is the guest agent channel, where the guest
//! writes one JSON object per line: reports, of which the VMM keeps the
//! latest as the guest report, and replies to the commands the VMM sends
//! it on the same port (crate::devices::agent).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use super::agent::AgentLink;
use super::{BusDevice, Interrupt};

/// Longest agent line kept; longer lines are dropped whole.
pub const MAX_AGENT_LINE: usize = 64 * 1024;

/// The serial interrupt: a KVM-backed line, or nothing for guests that poll.
#[derive(Clone, Default)]
pub struct SerialIrq(pub Option<Arc<dyn Interrupt>>);

impl Trigger for SerialIrq {
    type E = io::Error;
    fn trigger(&self) -> Result<(), io::Error> {
        if let Some(irq) = &self.0 {
            irq.trigger();
        }
        Ok(())
    }
}

/// Most bytes [`SerialDevice::send`] keeps waiting for the guest to read.
pub const MAX_PENDING_INPUT: usize = 2 * super::agent::MAX_COMMAND_LINE;

/// A UART on the PIO bus, writing what the guest transmits to `W`.
pub struct SerialDevice<W: Write + Send> {
    serial: Serial<SerialIrq, vm_superio::serial::NoEvents, W>,
    /// Input that did not fit the 64-byte receive FIFO yet: moved into it
    /// as the guest reads (see [`SerialDevice::send`]).
    pending: VecDeque<u8>,
    /// Told of every input byte, for a guest that polls with its UART
    /// interrupts off (the VMM's idle-port wake; None with an irqchip).
    wake: Option<Arc<dyn Interrupt>>,
}

impl<W: Write + Send> SerialDevice<W> {
    pub fn new(irq: SerialIrq, out: W) -> Self {
        SerialDevice {
            serial: Serial::new(irq, out),
            pending: VecDeque::new(),
            wake: None,
        }
    }

    /// Also signal `wake` whenever input arrives (a polled guest: its UART
    /// raises no interrupt because the guest never enables one).
    pub fn with_wake(mut self, wake: Option<Arc<dyn Interrupt>>) -> Self {
        self.wake = wake;
        self
    }

    fn woken(&self) {
        if let Some(w) = &self.wake {
            w.trigger();
        }
    }

    /// Queue bytes for the guest to read; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = self.serial.enqueue_raw_bytes(bytes).unwrap_or(0);
        if n > 0 {
            self.woken();
        }
        n
    }

    /// Send `bytes` to the guest whole: what does not fit the receive FIFO
    /// now is kept and fed in as the guest reads. Bounded: when the new
    /// bytes would take the backlog past [`MAX_PENDING_INPUT`], the backlog
    /// the guest never read is dropped first.
    pub fn send(&mut self, bytes: &[u8]) {
        if self.pending.len() + bytes.len() > MAX_PENDING_INPUT {
            tracing::debug!(
                dropped = self.pending.len(),
                "serial input the guest did not read was dropped"
            );
            self.pending.clear();
        }
        let keep = bytes.len().min(MAX_PENDING_INPUT);
        self.pending.extend(&bytes[bytes.len() - keep..]);
        self.feed();
        if !bytes.is_empty() {
            self.woken();
        }
    }

    /// Move pending input into the receive FIFO as far as it has room.
    fn feed(&mut self) {
        if self.pending.is_empty() || self.serial.fifo_capacity() == 0 {
            return;
        }
        let taken = self
            .serial
            .enqueue_raw_bytes(self.pending.make_contiguous())
            .unwrap_or(0);
        self.pending.drain(..taken.min(self.pending.len()));
    }

    /// Bytes sent but not yet in the receive FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    pub fn writer(&self) -> &W {
        self.serial.writer()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(off);
        }
        // A read may have made room in the FIFO.
        self.feed();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(off) = u8::try_from(offset) else {
            return;
        };
        // A string write (`rep outsb`) to the data register arrives as one
        // exit with every byte: each goes to the UART in turn, so a guest
        // sends a FIFO's worth of output for one exit instead of one per
        // byte (the diag guest does; docs/runtime.md). A UART has no 16-bit
        // registers, so a wider write to it is taken the same way.
        let bytes = if off == 0 {
            data
        } else {
            &data[..data.len().min(1)]
        };
        for &value in bytes {
            if let Err(e) = self.serial.write(off, value) {
                tracing::debug!(error = ?e, "serial write failed");
            }
        }
    }
}

/// What COM1's log may hold before it is rotated (`console.log` →
/// `console.log.1`, one old file kept): at most about twice this per VM,
/// however much a guest prints.
pub const CONSOLE_LOG_MAX: u64 = 4 << 20;

/// An append-only log with a size cap: a write that would take the file
/// past `max_bytes` first renames it to `<name>.1` (replacing the previous
/// one) and starts a new file, so the newest bytes are always kept and the
/// two files together stay under about `2 * max_bytes`.
#[derive(Debug)]
pub struct RotatingLog {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    len: u64,
    max_bytes: u64,
}

impl RotatingLog {
    pub fn open(path: &std::path::Path, max_bytes: u64) -> io::Result<Self> {
        let file = Self::open_file(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file: Some(file),
            len,
            max_bytes: max_bytes.max(1),
        })
    }

    fn open_file(path: &std::path::Path) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// The rotated file: `console.log` → `console.log.1`.
    pub fn rotated_path(path: &std::path::Path) -> std::path::PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        p.into()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let renamed = std::fs::rename(&self.path, Self::rotated_path(&self.path));
        let file = Self::open_file(&self.path)?;
        if renamed.is_err() {
            // Cannot keep an old file: start over rather than grow forever.
            file.set_len(0)?;
        }
        self.len = file.metadata()?.len();
        self.file = Some(file);
        renamed
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len > 0
            && self.len.saturating_add(buf.len() as u64) > self.max_bytes
            && let Err(e) = self.rotate()
        {
            tracing::warn!(path = %self.path.display(), error = %e, "console log rotation");
        }
        // Only the newest `max_bytes` of one oversized write are kept.
        let keep = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let tail = &buf[buf.len().saturating_sub(keep)..];
        let Some(file) = &mut self.file else {
            return Err(io::Error::other("the console log is not open"));
        };
        file.write_all(tail)?;
        self.len += tail.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM1's output: `console.log` plus every attached console client.
pub struct ConsoleOutput {
    /// Shared by every boot of the VM (a reboot keeps the same log).
    pub log: Option<Arc<Mutex<RotatingLog>>>,
    pub clients: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(log) = &self.log {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.write_all(buf)?;
        }
        if let Ok(mut clients) = self.clients.lock() {
            // A client that cannot take the bytes is dropped, never waited for.
            clients.retain_mut(|c| c.write_all(buf).is_ok());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The latest JSON object the guest wrote on the agent channel.
pub type GuestReport = Arc<Mutex<Option<serde_json::Value>>>;

/// COM2's output: assembles lines; a JSON object with a top-level `id` is
/// a reply to a command (routed by `link`), any other object is a report
/// (the latest is kept).
pub struct AgentChannel {
    line: Vec<u8>,
    overflowed: bool,
    report: GuestReport,
    link: AgentLink,
}

impl AgentChannel {
    pub fn new(report: GuestReport, link: AgentLink) -> Self {
        AgentChannel {
            line: Vec::new(),
            overflowed: false,
            report,
            link,
        }
    }

    fn finish_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overflowed) {
            tracing::debug!("dropped an over-long agent line");
            return;
        }
        match parse_agent_line(&line) {
            Some(serde_json::Value::Object(obj)) if super::agent::is_reply(&obj) => {
                self.link.reply(obj, line.len());
            }
            Some(obj) => {
                if let Ok(mut r) = self.report.lock() {
                    *r = Some(obj);
                }
            }
            None => {}
        }
    }
}

/// One agent line: a JSON object (anything else is ignored).
pub fn parse_agent_line(line: &[u8]) -> Option<serde_json::Value> {
    let text = std::str::from_utf8(line).ok()?.trim();
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Some(v),
        _ => None,
    }
}

impl Write for AgentChannel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.finish_line();
            } else if self.line.len() >= MAX_AGENT_LINE {
                self.overflowed = true;
                self.line.clear();
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_log_rotates_keeping_the_newest_bytes_under_the_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        std::fs::write(&path, b"from an earlier boot\n").unwrap();
        let mut log = RotatingLog::open(&path, 100).unwrap();
        let mut all = b"from an earlier boot\n".to_vec();
        for i in 0..1000u32 {
            let line = format!("line {i}\n");
            // Byte by byte, as the UART writes.
            for b in line.bytes() {
                log.write_all(&[b]).unwrap();
            }
            all.extend_from_slice(line.as_bytes());
        }
        let cur = std::fs::read(&path).unwrap();
        let old = std::fs::read(RotatingLog::rotated_path(&path)).unwrap();
        assert!(
            cur.len() <= 100 && old.len() <= 100,
            "{} {}",
            cur.len(),
            old.len()
        );
        let both = [old.clone(), cur.clone()].concat();
        assert!(all.ends_with(&both), "old + current is the newest output");
        assert!(both.len() > 100, "one full old file is kept");
        // An oversized single write keeps its newest bytes.
        log.write_all(&[b'x'; 500]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'x'; 100]);
    }

    fn feed(bytes: &[u8]) -> Option<serde_json::Value> {
        let report = GuestReport::default();
        let mut ch = AgentChannel::new(report.clone(), AgentLink::default());
        ch.write_all(bytes).unwrap();
        report.lock().unwrap().clone()
    }

    #[test]
    fn keeps_the_latest_object() {
        let r = feed(b"{\"seq\":1}\n{\"seq\":2,\"cpus\":4}\r\n");
        assert_eq!(r, Some(serde_json::json!({"seq":2,"cpus":4})));
    }

    #[test]
    fn ignores_garbage_partial_lines_and_non_objects() {
        assert_eq!(feed(b"hello\n[1,2]\n42\n\xff\xfe\n"), None);
        assert_eq!(
            feed(b"{\"seq\":1}\nnot json\n{\"seq\":2"),
            Some(serde_json::json!({"seq":1}))
        );
    }

    #[test]
    fn drops_over_long_lines_and_recovers() {
        let mut long = vec![b' '; MAX_AGENT_LINE + 10];
        long.extend_from_slice(b"{\"seq\":9}\n{\"seq\":3}\n");
        assert_eq!(feed(&long), Some(serde_json::json!({"seq":3})));
    }

    #[test]
    fn serial_transmits_to_the_writer() {
        let report = GuestReport::default();
        let mut dev = SerialDevice::new(
            SerialIrq::default(),
            AgentChannel::new(report.clone(), AgentLink::default()),
        );
        for b in b"{\"a\":1}\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(*report.lock().unwrap(), Some(serde_json::json!({"a":1})));
        // LSR: transmitter empty.
        let mut lsr = [0u8; 1];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn a_string_write_to_the_data_register_sends_every_byte() {
        let mut dev = SerialDevice::new(SerialIrq::default(), Vec::<u8>::new());
        dev.write(0, b"hello, ");
        dev.write(0, b"w");
        dev.write(0, b"orld");
        // Other registers take one byte: a 2-byte write to IER is IER only.
        dev.write(1, &[0, b'x']);
        assert_eq!(dev.serial.writer(), b"hello, world");
    }

    #[test]
    fn input_wakes_a_polling_guest() {
        #[derive(Default)]
        struct Count(std::sync::atomic::AtomicUsize);
        impl Interrupt for Count {
            fn trigger(&self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count::default());
        let mut dev = SerialDevice::new(SerialIrq::default(), Vec::<u8>::new())
            .with_wake(Some(count.clone()));
        dev.send(b"{\"id\":1,\"cmd\":\"ping\"}\n");
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        dev.send(b"");
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_reply_goes_to_its_command_and_reports_keep_flowing() {
        let report = GuestReport::default();
        let link = AgentLink::default();
        let mut ch = AgentChannel::new(report.clone(), link.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let line = link
            .begin(
                &serde_json::json!({"cmd":"ping"}),
                std::time::Duration::from_secs(5),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
        assert_eq!(line, b"{\"id\":1,\"cmd\":\"ping\"}\n");
        ch.write_all(b"{\"agent\":\"diag\",\"seq\":5}\n{\"id\":7,\"ok\":true}\n")
            .unwrap();
        assert!(rx.try_recv().is_err(), "id 7 is not outstanding");
        ch.write_all(b"{\"id\":1,\"ok\":true,\"seq\":5}\r\n{\"seq\":6}\n")
            .unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            Ok(serde_json::json!({"id":1,"ok":true,"seq":5}))
        );
        // Neither reply became the report.
        assert_eq!(*report.lock().unwrap(), Some(serde_json::json!({"seq":6})));
    }

    /// Input longer than the 64-byte receive FIFO reaches the guest whole,
    /// in order, as it reads; input it never reads stays bounded.
    #[test]
    fn sent_input_is_fed_as_the_guest_reads_and_stays_bounded() {
        let mut dev = SerialDevice::new(SerialIrq::default(), Vec::<u8>::new());
        let line: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
        dev.send(&line);
        assert_eq!(dev.pending_input(), 200 - 64);
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        for _ in 0..1000 {
            dev.read(5, &mut b);
            if b[0] & 1 == 0 {
                break;
            }
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, line);
        assert_eq!(dev.pending_input(), 0);
        // A guest that never reads: at most MAX_PENDING_INPUT kept.
        for _ in 0..100 {
            dev.send(&line);
        }
        assert!(dev.pending_input() <= MAX_PENDING_INPUT);
        dev.send(&vec![b'x'; MAX_PENDING_INPUT * 3]);
        assert!(dev.pending_input() <= MAX_PENDING_INPUT);
    }
}
