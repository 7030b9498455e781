//! virtio-blk driven end to end through the virtio-mmio registers, the way a
//! guest driver does it, against plain (non-KVM) guest memory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::request::{S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::*;
use crate::devices::virtio::mmio::{MMIO_MAGIC, MmioTransport, reg};
use crate::devices::virtio::{interrupt_status, status};
use crate::devices::{BusDevice, Interrupt};

const MEM_SIZE: usize = 1 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x4000;
const STATUS: u64 = 0x5000;
const DATA: u64 = 0x10000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

#[derive(Default)]
struct Counter(AtomicUsize);
impl Interrupt for Counter {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Harness {
    t: MmioTransport<Block>,
    mem: GuestMemory,
    irq: Arc<Counter>,
    file: tempfile::NamedTempFile,
    next_desc: u16,
    avail_idx: u16,
}

fn disk_file(size: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(size).unwrap();
    f
}

impl Harness {
    fn new(read_only: bool) -> Self {
        let file = disk_file(64 * 1024);
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let block = Block::new(file.path(), read_only, "root").unwrap();
        let irq = Arc::new(Counter::default());
        let t = MmioTransport::new(block, mem.clone(), Some(irq.clone()));
        Self {
            t,
            mem,
            irq,
            file,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn active(read_only: bool) -> Self {
        let mut h = Self::new(read_only);
        h.handshake();
        h
    }

    fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    fn handshake(&mut self) {
        self.wr(reg::STATUS, 0);
        self.wr(reg::STATUS, status::ACKNOWLEDGE);
        self.wr(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2 {
            self.wr(reg::DEVICE_FEATURES_SEL, sel);
            let f = self.rd(reg::DEVICE_FEATURES);
            self.wr(reg::DRIVER_FEATURES_SEL, sel);
            self.wr(reg::DRIVER_FEATURES, f);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.wr(reg::STATUS, s);
        assert_eq!(self.rd(reg::STATUS), s, "FEATURES_OK accepted");
        self.wr(reg::QUEUE_SEL, 0);
        assert_eq!(self.rd(reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        self.wr(reg::QUEUE_NUM, u32::from(QSIZE));
        self.wr(reg::QUEUE_DESC_LOW, DESC as u32);
        self.wr(reg::QUEUE_DESC_HIGH, 0);
        self.wr(reg::QUEUE_DRIVER_LOW, AVAIL as u32);
        self.wr(reg::QUEUE_DRIVER_HIGH, 0);
        self.wr(reg::QUEUE_DEVICE_LOW, USED as u32);
        self.wr(reg::QUEUE_DEVICE_HIGH, 0);
        self.wr(reg::QUEUE_READY, 1);
        assert_eq!(self.rd(reg::QUEUE_READY), 1);
        self.wr(reg::STATUS, s | status::DRIVER_OK);
        assert!(self.t.is_activated());
        self.next_desc = 0;
        self.avail_idx = 0;
    }

    /// Put a chain of (addr, len, flags-without-NEXT) in the ring and notify;
    /// returns the used element (id, len) it produced.
    fn submit(&mut self, chain: &[(u64, u32, u16)]) -> (u32, u32) {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in chain.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == chain.len();
            let next = (idx + 1) % QSIZE;
            let flags = if last { flags } else { flags | F_NEXT };
            let d = DESC + u64::from(idx) * 16;
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        self.next_desc = (head + chain.len() as u16) % QSIZE;
        let slot = AVAIL + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.wr(reg::QUEUE_NOTIFY, 0);
        let used_idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, self.avail_idx, "request completed synchronously");
        let e = USED + 4 + u64::from(used_idx.wrapping_sub(1) % QSIZE) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
        assert_eq!(id, u32::from(head));
        (id, len)
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// A well-formed request: header, data, status. Returns (status, used len).
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, u16)]) -> (u8, u32) {
        self.header(kind, sector);
        let mut chain = vec![(HDR, 16, 0)];
        chain.extend_from_slice(data);
        chain.push((STATUS, 1, F_WRITE));
        let (_, len) = self.submit(&chain);
        (self.status(), len)
    }
}

#[test]
fn register_handshake_and_identity() {
    let mut h = Harness::new(false);
    assert_eq!(h.rd(reg::MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(h.rd(reg::VERSION), 2);
    assert_eq!(h.rd(reg::DEVICE_ID), 2);
    h.wr(reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(h.rd(reg::DEVICE_FEATURES) & 1, 1, "VIRTIO_F_VERSION_1");
    h.wr(reg::DEVICE_FEATURES_SEL, 0);
    let f = h.rd(reg::DEVICE_FEATURES);
    for bit in [features::FLUSH, features::BLK_SIZE, features::SEG_MAX] {
        assert_ne!(f & (1 << bit), 0);
    }
    assert_eq!(f & (1 << features::RO), 0);
    // Config space: capacity in sectors, seg_max, blk_size.
    let mut cap = [0u8; 8];
    h.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 128);
    assert_eq!(h.rd(0x100 + 12), SEG_MAX);
    assert_eq!(h.rd(0x100 + 20), 512);
    let mut past = [0xaau8; 4];
    h.t.read(0x100 + 0x200, &mut past);
    assert_eq!(past, [0; 4]);
    // Unaligned / odd-width register accesses read zero.
    let mut b2 = [0xffu8; 2];
    h.t.read(reg::MAGIC_VALUE, &mut b2);
    assert_eq!(b2, [0, 0]);
    h.handshake();
    assert_eq!(h.irq.0.load(Ordering::SeqCst), 0);
}

#[test]
fn features_ok_refused_without_version_1_or_with_unknown_bits() {
    let mut h = Harness::new(false);
    h.wr(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    h.wr(reg::DRIVER_FEATURES_SEL, 0);
    h.wr(reg::DRIVER_FEATURES, 1 << features::FLUSH);
    h.wr(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(h.rd(reg::STATUS) & status::FEATURES_OK, 0);

    h.wr(reg::STATUS, 0);
    h.wr(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    h.wr(reg::DRIVER_FEATURES_SEL, 1);
    h.wr(reg::DRIVER_FEATURES, 1 | 1 << 7); // VERSION_1 + an unoffered bit
    h.wr(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(h.rd(reg::STATUS) & status::FEATURES_OK, 0);

    // DRIVER_OK without FEATURES_OK is ignored; queues stay unconfigurable.
    h.wr(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert!(!h.t.is_activated());
}

#[test]
fn queue_configuration_is_validated() {
    let mut h = Harness::new(false);
    h.wr(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    h.wr(reg::DRIVER_FEATURES_SEL, 1);
    h.wr(reg::DRIVER_FEATURES, 1);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    h.wr(reg::STATUS, s);
    assert_eq!(h.rd(reg::STATUS), s);
    // A queue that does not exist.
    h.wr(reg::QUEUE_SEL, 7);
    assert_eq!(h.rd(reg::QUEUE_NUM_MAX), 0);
    h.wr(reg::QUEUE_READY, 1);
    assert_eq!(h.rd(reg::QUEUE_READY), 0);
    h.wr(reg::QUEUE_SEL, 0);
    // Rings outside guest memory: never ready.
    h.wr(reg::QUEUE_NUM, 16);
    h.wr(reg::QUEUE_DESC_LOW, 0);
    h.wr(reg::QUEUE_DESC_HIGH, 0x10);
    h.wr(reg::QUEUE_DRIVER_LOW, AVAIL as u32);
    h.wr(reg::QUEUE_DEVICE_LOW, USED as u32);
    h.wr(reg::QUEUE_READY, 1);
    assert_eq!(h.rd(reg::QUEUE_READY), 0);
    // Bad sizes are ignored (the ring at the end of memory would not fit a
    // 256-entry queue, so a size change that stuck would make it invalid).
    h.wr(reg::QUEUE_DESC_HIGH, 0);
    h.wr(reg::QUEUE_DESC_LOW, (MEM_SIZE - 16 * 16) as u32);
    for bad in [0, 3, 512, 0x1_0000] {
        h.wr(reg::QUEUE_NUM, bad);
    }
    h.wr(reg::QUEUE_READY, 1);
    assert_eq!(h.rd(reg::QUEUE_READY), 1);
    // Once ready, its addresses are frozen.
    h.wr(reg::QUEUE_DESC_LOW, 0xffff_fff0);
    h.wr(reg::STATUS, s | status::DRIVER_OK);
    assert!(h.t.is_activated());
    // Reset clears everything.
    h.wr(reg::STATUS, 0);
    assert_eq!(h.rd(reg::STATUS), 0);
    assert_eq!(h.rd(reg::QUEUE_READY), 0);
}

#[test]
fn write_then_read_round_trip_against_the_file() {
    let mut h = Harness::active(false);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    h.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    // Two data descriptors of 512 bytes each.
    let (st, len) = h.request(T_OUT, 2, &[(DATA, 512, 0), (DATA + 512, 512, 0)]);
    assert_eq!((st, len), (S_OK, 1));
    let mut on_disk = vec![0u8; 1024];
    let mut f = h.file.reopen().unwrap();
    f.seek(SeekFrom::Start(1024)).unwrap();
    f.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, pattern);

    let (st, len) = h.request(T_IN, 2, &[(DATA + 0x1000, 1024, F_WRITE)]);
    assert_eq!((st, len), (S_OK, 1025));
    let mut back = vec![0u8; 1024];
    h.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(back, pattern);
    assert!(h.irq.0.load(Ordering::SeqCst) >= 2);
    assert_ne!(
        h.rd(reg::INTERRUPT_STATUS) & interrupt_status::USED_BUFFER,
        0
    );
    h.wr(reg::INTERRUPT_ACK, interrupt_status::USED_BUFFER);
    assert_eq!(h.rd(reg::INTERRUPT_STATUS), 0);

    // The last sector is readable, one past it is not.
    assert_eq!(h.request(T_IN, 127, &[(DATA, 512, F_WRITE)]).0, S_OK);
    assert_eq!(h.request(T_IN, 128, &[(DATA, 512, F_WRITE)]).0, S_IOERR);
}

#[test]
fn get_id_flush_and_unsupported() {
    let mut h = Harness::active(false);
    h.mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
    let (st, len) = h.request(T_GET_ID, 0, &[(DATA, 20, F_WRITE)]);
    assert_eq!((st, len), (S_OK, 21));
    let mut id = [0u8; 21];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..4], b"root");
    assert_eq!(&id[4..20], &[0; 16]);
    assert_eq!(id[20], 0xee, "nothing written past 20 bytes");

    assert_eq!(h.request(T_FLUSH, 0, &[]), (S_OK, 1));
    assert_eq!(h.request(11, 0, &[]), (S_UNSUPP, 1));
}

#[test]
fn out_of_range_and_overflowing_sectors_are_io_errors() {
    let mut h = Harness::active(false);
    for sector in [128, 1 << 60, u64::MAX, u64::MAX / 512] {
        assert_eq!(h.request(T_IN, sector, &[(DATA, 512, F_WRITE)]).0, S_IOERR);
        assert_eq!(h.request(T_OUT, sector, &[(DATA, 512, 0)]).0, S_IOERR);
    }
}

#[test]
fn malformed_chains_get_error_status_and_are_returned() {
    let mut h = Harness::active(false);
    // Header too short.
    h.header(T_IN, 0);
    h.submit(&[(HDR, 8, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)]);
    assert_eq!(h.status(), S_IOERR);
    // Header device-writable.
    h.header(T_IN, 0);
    h.submit(&[
        (HDR, 16, F_WRITE),
        (DATA, 512, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(h.status(), S_IOERR);
    // IN into a device-readable buffer; OUT from a device-writable one.
    assert_eq!(h.request(T_IN, 0, &[(DATA, 512, 0)]).0, S_IOERR);
    assert_eq!(h.request(T_OUT, 0, &[(DATA, 512, F_WRITE)]).0, S_IOERR);
    // Not a whole number of sectors.
    assert_eq!(h.request(T_IN, 0, &[(DATA, 100, F_WRITE)]).0, S_IOERR);
    // Huge lengths / buffers outside guest memory.
    assert_eq!(
        h.request(T_IN, 0, &[(DATA, 0xffff_fe00, F_WRITE)]).0,
        S_IOERR
    );
    assert_eq!(
        h.request(T_IN, 0, &[(u64::MAX - 511, 512, F_WRITE)]).0,
        S_IOERR
    );
    assert_eq!(
        h.request(T_IN, 0, &[(MEM_SIZE as u64, 512, F_WRITE)]).0,
        S_IOERR
    );
    // GET_ID with no buffer.
    assert_eq!(h.request(T_GET_ID, 0, &[]).0, S_IOERR);
    // Header outside memory.
    h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    h.submit(&[(u64::MAX - 8, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(h.status(), S_IOERR);
    // Missing status (last descriptor device-readable): returned, len 0.
    h.header(T_IN, 0);
    let (_, len) = h.submit(&[(HDR, 16, 0), (DATA, 512, 0)]);
    assert_eq!(len, 0);
    assert_eq!(h.status(), 0xff, "nothing written");
    // Status outside guest memory.
    h.header(T_FLUSH, 0);
    let (_, len) = h.submit(&[(HDR, 16, 0), (MEM_SIZE as u64, 1, F_WRITE)]);
    assert_eq!(len, 0);
    // A lone descriptor.
    let (_, len) = h.submit(&[(STATUS, 1, F_WRITE)]);
    assert_eq!(len, 1);
    assert_eq!(h.status(), S_IOERR);
    // The device still works afterwards.
    assert_eq!(h.request(T_FLUSH, 0, &[]).0, S_OK);
}

#[test]
fn read_only_disks_refuse_writes() {
    let mut h = Harness::active(true);
    h.wr(reg::DEVICE_FEATURES_SEL, 0);
    assert_ne!(h.rd(reg::DEVICE_FEATURES) & (1 << features::RO), 0);
    assert_eq!(h.request(T_OUT, 0, &[(DATA, 512, 0)]).0, S_IOERR);
    assert_eq!(h.request(T_IN, 0, &[(DATA, 512, F_WRITE)]).0, S_OK);
    assert_eq!(h.request(T_FLUSH, 0, &[]).0, S_OK);
    assert!(h.t.device_mut().resize(1 << 20).is_err());
}

#[test]
fn resize_updates_capacity_and_signals_config_change() {
    let mut h = Harness::active(false);
    let before = h.irq.0.load(Ordering::SeqCst);
    let generation = h.rd(reg::CONFIG_GENERATION);
    h.t.device_mut().resize(1 << 20).unwrap();
    h.t.notify_config_change();
    assert_eq!(h.rd(reg::CONFIG_GENERATION), generation.wrapping_add(1));
    assert_ne!(
        h.rd(reg::INTERRUPT_STATUS) & interrupt_status::CONFIG_CHANGE,
        0
    );
    assert_eq!(h.irq.0.load(Ordering::SeqCst), before + 1);
    let mut cap = [0u8; 8];
    h.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
    assert_eq!(h.file.as_file().metadata().unwrap().len(), 1 << 20);
    // The new space is usable.
    assert_eq!(h.request(T_OUT, 2047, &[(DATA, 512, 0)]).0, S_OK);
    // set_capacity beyond the file: reads past EOF are zeros.
    h.t.device_mut().set_capacity(2 << 20);
    h.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(h.request(T_IN, 3000, &[(DATA, 512, F_WRITE)]).0, S_OK);
    let mut b = [1u8; 512];
    h.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert_eq!(b, [0u8; 512]);
}

#[test]
fn opening_a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Block::new(&dir.path().join("nope.raw"), false, "x"),
        Err(BlockError::Open { .. })
    ));
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&[0u8; 1000]).unwrap();
    let b = Block::new(f.path(), true, "a-very-long-disk-name-over-20").unwrap();
    assert_eq!(b.capacity_bytes(), 512, "partial sector ignored");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random register traffic, interleaved with notifies, never panics.
    #[test]
    fn random_register_writes_never_panic(
        ops in proptest::collection::vec((0u64..0x140, prop_oneof![Just(1usize), Just(2), Just(4), Just(8)], any::<u32>(), any::<bool>()), 0..200)
    ) {
        let mut h = Harness::new(false);
        for (off, width, v, is_read) in ops {
            let off = off & !3;
            let bytes = u64::from(v).to_le_bytes();
            if is_read {
                let mut b = vec![0u8; width];
                h.t.read(off, &mut b);
            } else {
                h.t.write(off, &bytes[..width]);
            }
        }
        h.wr(reg::QUEUE_NOTIFY, 0);
    }

    /// Random descriptor tables and avail rings behind a ready queue never
    /// panic and never hang.
    #[test]
    fn random_descriptor_tables_never_panic(
        table in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u16>(), any::<u16>()), QSIZE as usize),
        ring in proptest::collection::vec(any::<u16>(), QSIZE as usize),
        avail_idx in any::<u16>(),
        headers in proptest::collection::vec((prop_oneof![Just(T_IN), Just(T_OUT), Just(T_FLUSH), Just(T_GET_ID), any::<u32>()], 0u64..256), 4),
        in_memory in any::<bool>(),
    ) {
        let mut h = Harness::active(false);
        for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
            // Half the time keep addresses inside guest memory so requests
            // get past the first checks.
            let addr = if in_memory { addr % MEM_SIZE as u64 } else { addr };
            let len = if in_memory { len % 4096 } else { len };
            let d = DESC + i as u64 * 16;
            h.mem.write_obj(addr, GuestAddress(d)).unwrap();
            h.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            h.mem.write_obj(flags & 0x7, GuestAddress(d + 12)).unwrap();
            h.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        for (i, &(kind, sector)) in headers.iter().enumerate() {
            // Headers at a few addresses the random descriptors may hit.
            let a = 0x20000 + (i as u64) * 0x2000;
            h.mem.write_obj(kind, GuestAddress(a)).unwrap();
            h.mem.write_obj(sector, GuestAddress(a + 8)).unwrap();
        }
        for (i, &r) in ring.iter().enumerate() {
            h.mem.write_obj(r, GuestAddress(AVAIL + 4 + i as u64 * 2)).unwrap();
        }
        h.mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).unwrap();
        h.wr(reg::QUEUE_NOTIFY, 0);
        h.wr(reg::QUEUE_NOTIFY, 0);
    }
}

#[test]
fn transport_sits_on_the_shared_bus() {
    use std::sync::Mutex;

    use crate::arch::x86_64::layout;
    use crate::devices::Bus;

    let file = disk_file(4096);
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let block = Block::new(file.path(), false, "data").unwrap();
    let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(MmioTransport::new(block, mem, None)));
    let mut bus = Bus::new();
    let base = layout::VIRTIO_MMIO_BASE + layout::VIRTIO_MMIO_SIZE;
    bus.insert(dev, base, layout::VIRTIO_MMIO_SIZE).unwrap();
    let mut b = [0u8; 4];
    assert!(bus.read(base, &mut b));
    assert_eq!(u32::from_le_bytes(b), MMIO_MAGIC);
    let mut cap = [0u8; 8];
    assert!(bus.read(base + 0x100, &mut cap));
    assert_eq!(u64::from_le_bytes(cap), 8);
    // Writes without an interrupt line do not panic.
    assert!(bus.write(base + reg::STATUS, &1u32.to_le_bytes()));
}

#[test]
fn framing_is_free_header_data_and_status_may_share_descriptors() {
    let mut h = Harness::active(false);
    // OUT: header and 512 bytes of data in one readable descriptor.
    h.header(T_OUT, 5);
    h.mem
        .write_slice(&[0x5a; 512], GuestAddress(HDR + 16))
        .unwrap();
    h.submit(&[(HDR, 16 + 512, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(h.status(), S_OK);
    // IN: header split over two descriptors; data and status in one
    // writable descriptor (status = its last byte).
    h.header(T_IN, 5);
    let (_, len) = h.submit(&[(HDR, 10, 0), (HDR + 10, 6, 0), (DATA, 513, F_WRITE)]);
    assert_eq!(len, 513);
    let mut b = [0u8; 513];
    h.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert_eq!(&b[..512], &[0x5a; 512]);
    assert_eq!(b[512], S_OK);
    // GET_ID into 8 + 12 bytes, status in its own descriptor.
    h.header(T_GET_ID, 0);
    h.submit(&[
        (HDR, 16, 0),
        (DATA, 8, F_WRITE),
        (DATA + 0x100, 12, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(h.status(), S_OK);
    let mut id = [0u8; 8];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..5], b"root\0");
    // Readable after writable is refused.
    h.header(T_OUT, 0);
    h.submit(&[
        (HDR, 16, 0),
        (DATA, 512, F_WRITE),
        (DATA + 0x1000, 512, 0),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(h.status(), S_IOERR);
    // Extra readable data on an IN is refused.
    h.header(T_IN, 0);
    h.submit(&[
        (HDR, 16 + 512, 0),
        (DATA, 512, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!(h.status(), S_IOERR);
}
