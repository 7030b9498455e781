//! virtio-net driven through the virtio-mmio registers the way a guest
//! driver does it, against plain (non-KVM) guest memory, with a datagram
//! socketpair standing in for the TAP (one datagram = one frame, like a TAP
//! descriptor).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::BusDevice;
use crate::devices::virtio::io_thread::{IoThread, Notifier, Readable};
use crate::devices::virtio::mmio::{MmioTransport, reg};
use crate::devices::virtio::status;

impl TapIo for UnixDatagram {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        UnixDatagram::recv(self, buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        UnixDatagram::send(self, frame)
    }
}

const MEM_SIZE: usize = 4 << 20;
/// Rings of queue q: desc, avail, used at RING + q * 0x10000 + 0, 0x1000, 0x2000
/// (room for 256 entries each).
const RING: u64 = 0x10000;
const DATA: u64 = 0x100000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

fn desc(q: usize) -> u64 {
    RING + q as u64 * 0x10000
}
fn avail(q: usize) -> u64 {
    desc(q) + 0x1000
}
fn used(q: usize) -> u64 {
    desc(q) + 0x2000
}

struct Harness {
    t: Arc<Mutex<MmioTransport<Net>>>,
    /// A second descriptor of the device's end, for the I/O thread to watch.
    dev_fd: OwnedFd,
    mem: GuestMemory,
    /// The host's end of the "TAP".
    host: UnixDatagram,
    counters: Arc<NetCounters>,
    qsize: u16,
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
    used_seen: [u16; 2],
}

fn pair() -> (UnixDatagram, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

impl Harness {
    fn new(qsize: u16) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (dev_end, host) = pair();
        let counters = Arc::new(NetCounters::default());
        let dev_fd = dev_end.try_clone().unwrap().into();
        let net = Net::new(MAC, Box::new(dev_end), counters.clone());
        Self {
            t: Arc::new(Mutex::new(MmioTransport::new(net, mem.clone(), None))),
            dev_fd,
            mem,
            host,
            counters,
            qsize,
            next_desc: [0; 2],
            avail_idx: [0; 2],
            used_seen: [0; 2],
        }
    }

    fn active(qsize: u16) -> Self {
        let mut h = Self::new(qsize);
        h.handshake();
        h
    }

    fn t(&self) -> std::sync::MutexGuard<'_, MmioTransport<Net>> {
        self.t.lock().unwrap()
    }

    fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t().read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, v: u32) {
        self.t().write(off, &v.to_le_bytes());
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
        for q in 0..2 {
            self.wr(reg::QUEUE_SEL, q as u32);
            assert_eq!(self.rd(reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
            self.wr(reg::QUEUE_NUM, u32::from(self.qsize));
            self.wr(reg::QUEUE_DESC_LOW, desc(q) as u32);
            self.wr(reg::QUEUE_DRIVER_LOW, avail(q) as u32);
            self.wr(reg::QUEUE_DEVICE_LOW, used(q) as u32);
            self.wr(reg::QUEUE_READY, 1);
            assert_eq!(self.rd(reg::QUEUE_READY), 1);
        }
        self.wr(reg::STATUS, s | status::DRIVER_OK);
        assert!(self.t().is_activated());
    }

    /// Put a chain of (addr, len, flags-without-NEXT) in queue `q`'s ring;
    /// returns its head. Does not notify.
    fn post(&mut self, q: usize, chain: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc[q];
        for (i, &(addr, len, flags)) in chain.iter().enumerate() {
            let idx = (head + i as u16) % self.qsize;
            let next = (idx + 1) % self.qsize;
            let flags = if i + 1 == chain.len() {
                flags
            } else {
                flags | F_NEXT
            };
            let d = desc(q) + u64::from(idx) * 16;
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        self.next_desc[q] = (head + chain.len() as u16) % self.qsize;
        let slot = avail(q) + 4 + u64::from(self.avail_idx[q] % self.qsize) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(avail(q) + 2))
            .unwrap();
        head
    }

    fn notify(&mut self, q: usize) {
        self.wr(reg::QUEUE_NOTIFY, q as u32);
    }

    /// Used elements (id, len) of queue `q` not seen yet.
    fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(used(q) + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let e = used(q) + 4 + u64::from(self.used_seen[q] % self.qsize) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
            out.push((id, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    /// Send one frame (`hdr` + `payload`) as the guest, in one descriptor
    /// per part; returns the used elements.
    fn transmit(&mut self, hdr: [u8; VNET_HDR_LEN], payload: &[u8]) -> Vec<(u32, u32)> {
        self.mem.write_slice(&hdr, GuestAddress(DATA)).unwrap();
        self.mem
            .write_slice(payload, GuestAddress(DATA + 0x100))
            .unwrap();
        self.post(
            TX_QUEUE,
            &[
                (DATA, VNET_HDR_LEN as u32, 0),
                (DATA + 0x100, payload.len() as u32, 0),
            ],
        );
        self.notify(TX_QUEUE);
        self.take_used(TX_QUEUE)
    }

    fn host_recv(&self) -> Option<Vec<u8>> {
        let mut b = vec![0u8; 70000];
        let n = self.host.recv(&mut b).ok()?;
        b.truncate(n);
        Some(b)
    }

    /// A frame as the TAP would hand it over: header then `payload`.
    fn host_send(&self, hdr: [u8; VNET_HDR_LEN], payload: &[u8]) {
        let mut f = hdr.to_vec();
        f.extend_from_slice(payload);
        self.host.send(&f).unwrap();
    }

    fn stats(&self) -> NetStats {
        self.counters.snapshot()
    }
}

/// An Ethernet frame of `len` bytes: broadcast destination, our MAC as
/// source, then a pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&MAC.0);
    f.extend((12..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

#[test]
fn identity_features_and_mac_in_config_space() {
    let mut h = Harness::new(16);
    assert_eq!(h.rd(reg::DEVICE_ID), 1);
    h.wr(reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        h.rd(reg::DEVICE_FEATURES),
        1 << features::MAC,
        "MAC, no offloads"
    );
    h.wr(reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(h.rd(reg::DEVICE_FEATURES), 1, "VERSION_1");
    let mut mac = [0u8; 6];
    h.t().read(0x100, &mut mac);
    assert_eq!(mac, MAC.0);
    let mut b = [0xaau8; 4];
    h.t().read(0x104, &mut b);
    assert_eq!(b, [0x34, 0x56, 0, 0], "bytes past the MAC read as zero");
    h.t().write(0x100, &[1, 2, 3, 4, 5, 6]);
    h.t().read(0x100, &mut mac);
    assert_eq!(mac, MAC.0, "the MAC is not writable");
    h.handshake();
}

#[test]
fn mac_parsing() {
    assert_eq!(Mac::parse("52:54:00:12:34:56"), Some(MAC));
    assert_eq!(MAC.to_string(), "52:54:00:12:34:56");
    assert_eq!(
        Mac::parse("52:54:00:AB:cd:EF").unwrap().to_string(),
        "52:54:00:ab:cd:ef"
    );
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "5:54:00:12:34:56",
        "52-54-00-12-34-56",
        "zz:54:00:12:34:56",
        "+1:54:00:12:34:56",
    ] {
        assert_eq!(Mac::parse(bad), None, "{bad}");
    }
    assert!(MAC.is_unicast());
    assert!(!Mac([0x01, 0, 0x5e, 0, 0, 1]).is_unicast(), "multicast");
    assert!(!Mac([0xff; 6]).is_unicast(), "broadcast");
    assert!(!Mac([0; 6]).is_unicast());
}

#[test]
fn transmit_passes_the_frame_with_a_zeroed_header() {
    let mut h = Harness::active(16);
    let f = frame(98, 1);
    // A guest header claiming GSO and checksum offload: never passed on.
    let evil = [0xff, 4, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 1, 0];
    let used = h.transmit(evil, &f);
    assert_eq!(used, vec![(0, 0)]);
    let got = h.host_recv().expect("the frame reached the TAP");
    assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
    assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
    // Header and frame in one descriptor works as well (free framing).
    let mut one = vec![0u8; VNET_HDR_LEN];
    one.extend_from_slice(&f);
    h.mem.write_slice(&one, GuestAddress(DATA)).unwrap();
    h.post(TX_QUEUE, &[(DATA, one.len() as u32, 0)]);
    h.notify(TX_QUEUE);
    assert_eq!(h.take_used(TX_QUEUE).len(), 1);
    assert_eq!(h.host_recv().unwrap(), one);
    let s = h.stats();
    assert_eq!((s.tx_packets, s.tx_bytes, s.bad_chains), (2, 196, 0));
}

#[test]
fn receive_fills_a_posted_buffer_and_sets_num_buffers() {
    let mut h = Harness::active(16);
    let f = frame(60, 2);
    // The kernel's header (DATA_VALID flag, leftover bytes) is replaced.
    h.host_send([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x77, 0x77], &f);
    let head = h.post(RX_QUEUE, &[(DATA, 1526, F_WRITE)]);
    h.notify(RX_QUEUE);
    let used = h.take_used(RX_QUEUE);
    assert_eq!(used, vec![(u32::from(head), (VNET_HDR_LEN + 60) as u32)]);
    let mut got = vec![0u8; VNET_HDR_LEN + 60];
    h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..VNET_HDR_LEN], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
    let s = h.stats();
    assert_eq!((s.rx_packets, s.rx_bytes), (1, 60));
}

#[test]
fn a_buffer_posted_before_any_frame_waits_for_one() {
    let mut h = Harness::active(16);
    // Two buffers, split header/data the way Linux's small-buffer mode is not,
    // to show scatter across descriptors.
    let head = h.post(
        RX_QUEUE,
        &[(DATA, 12, F_WRITE), (DATA + 0x1000, 1514, F_WRITE)],
    );
    h.notify(RX_QUEUE);
    assert!(
        h.take_used(RX_QUEUE).is_empty(),
        "no frame yet: the buffer stays available"
    );
    let f = frame(200, 3);
    h.host_send([0; VNET_HDR_LEN], &f);
    // What the I/O thread does when the TAP becomes readable.
    h.t().process_queue(RX_QUEUE as u32);
    assert_eq!(h.take_used(RX_QUEUE), vec![(u32::from(head), 212)]);
    let mut got = vec![0u8; 200];
    h.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, f);
    // Frames with no buffer wait in the TAP; they are not lost.
    h.host_send([0; VNET_HDR_LEN], &frame(100, 4));
    h.host_send([0; VNET_HDR_LEN], &frame(101, 5));
    h.t().process_queue(RX_QUEUE as u32);
    assert!(h.take_used(RX_QUEUE).is_empty());
    h.post(RX_QUEUE, &[(DATA, 2048, F_WRITE)]);
    h.post(RX_QUEUE, &[(DATA + 0x1000, 2048, F_WRITE)]);
    h.notify(RX_QUEUE);
    let lens: Vec<u32> = h.take_used(RX_QUEUE).iter().map(|u| u.1).collect();
    assert_eq!(lens, vec![112, 113]);
    assert_eq!(h.stats().rx_packets, 3);
}

#[test]
fn bad_chains_are_returned_counted_and_harmless() {
    let mut h = Harness::active(16);
    let f = frame(64, 6);
    let mut bad = 0;
    // TX: a device-writable buffer.
    h.mem.write_slice(&f, GuestAddress(DATA + 0x100)).unwrap();
    h.post(TX_QUEUE, &[(DATA, 12, 0), (DATA + 0x100, 64, F_WRITE)]);
    // TX: shorter than header + Ethernet header.
    h.post(TX_QUEUE, &[(DATA, 12, 0), (DATA + 0x100, 13, 0)]);
    // TX: longer than the largest frame.
    h.post(TX_QUEUE, &[(DATA, 12, 0), (DATA + 0x100, 65536, 0)]);
    // TX: outside guest memory; and an address that overflows.
    h.post(TX_QUEUE, &[(DATA, 12, 0), (MEM_SIZE as u64 - 10, 64, 0)]);
    h.post(TX_QUEUE, &[(u64::MAX - 8, 76, 0)]);
    h.notify(TX_QUEUE);
    let used = h.take_used(TX_QUEUE);
    assert_eq!(used.len(), 5);
    assert!(used.iter().all(|u| u.1 == 0));
    bad += 5;
    assert!(h.host_recv().is_none(), "nothing reached the TAP");
    // TX: a chain that loops forever (the ring is 16 long: walked once,
    // then the walk stops).
    let d = desc(TX_QUEUE) + u64::from(h.next_desc[TX_QUEUE]) * 16;
    let head = h.post(TX_QUEUE, &[(DATA, 76, 0)]);
    h.mem.write_obj(F_NEXT, GuestAddress(d + 12)).unwrap();
    h.mem.write_obj(head, GuestAddress(d + 14)).unwrap();
    h.notify(TX_QUEUE);
    assert_eq!(h.take_used(TX_QUEUE).len(), 1);
    bad += 1;

    // RX: a device-readable buffer; too small for even a header and an
    // Ethernet header; outside memory. Refused before any frame is read.
    h.host_send([0; VNET_HDR_LEN], &f);
    h.post(RX_QUEUE, &[(DATA, 1526, 0)]);
    h.post(RX_QUEUE, &[(DATA, 25, F_WRITE)]);
    h.post(RX_QUEUE, &[(MEM_SIZE as u64 - 100, 1526, F_WRITE)]);
    h.notify(RX_QUEUE);
    assert_eq!(h.take_used(RX_QUEUE), vec![(0, 0), (1, 0), (2, 0)]);
    bad += 3;
    // RX: a frame bigger than the (valid) buffer is dropped, the buffer
    // comes back empty.
    h.post(RX_QUEUE, &[(DATA, 40, F_WRITE)]);
    h.notify(RX_QUEUE);
    assert_eq!(h.take_used(RX_QUEUE), vec![(3, 0)]);
    // RX: a frame the kernel marked GSO (no offload was negotiated).
    h.host_send([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &f);
    h.post(RX_QUEUE, &[(DATA, 1526, F_WRITE)]);
    h.notify(RX_QUEUE);
    assert_eq!(h.take_used(RX_QUEUE), vec![(4, 0)]);
    // A runt frame from the host.
    h.host.send(&[0u8; 20]).unwrap();
    h.post(RX_QUEUE, &[(DATA, 1526, F_WRITE)]);
    h.notify(RX_QUEUE);
    assert_eq!(h.take_used(RX_QUEUE), vec![(5, 0)]);
    // The largest frame fits a big enough buffer; one byte more is dropped.
    h.host_send([0; VNET_HDR_LEN], &frame(MAX_FRAME_LEN, 8));
    h.host_send([0; VNET_HDR_LEN], &frame(MAX_FRAME_LEN + 1, 9));
    h.post(RX_QUEUE, &[(DATA, 70000, F_WRITE)]);
    h.post(RX_QUEUE, &[(DATA, 70000, F_WRITE)]);
    h.notify(RX_QUEUE);
    assert_eq!(
        h.take_used(RX_QUEUE),
        vec![(6, (VNET_HDR_LEN + MAX_FRAME_LEN) as u32), (7, 0)]
    );

    let s = h.stats();
    assert_eq!(s.bad_chains, bad);
    assert_eq!(s.rx_dropped, 4);
    assert_eq!((s.rx_packets, s.tx_packets), (1, 0));
    // The device still works.
    h.host_send([0; VNET_HDR_LEN], &f);
    h.post(RX_QUEUE, &[(DATA, 1526, F_WRITE)]);
    h.notify(RX_QUEUE);
    assert_eq!(h.take_used(RX_QUEUE), vec![(8, 76)]);
    assert_eq!(h.transmit([0; VNET_HDR_LEN], &f).len(), 1);
    assert_eq!(h.host_recv().unwrap().len(), 76);
}

#[test]
fn a_tap_that_refuses_writes_counts_tx_drops() {
    let mut h = Harness::active(16);
    // Fill the socket's buffer until it refuses: the guest's frames are
    // then dropped, not queued in the VMM.
    let f = frame(1500, 7);
    let mut sent = 0;
    while h.stats().tx_dropped == 0 && sent < 100_000 {
        h.transmit([0; VNET_HDR_LEN], &f);
        sent += 1;
    }
    assert!(h.stats().tx_dropped >= 1);
    assert_eq!(h.stats().tx_packets + h.stats().tx_dropped, sent);
}

#[test]
fn rx_stops_at_its_budget_and_says_so() {
    let mut h = Harness::active(256);
    for i in 0..(RX_BUDGET + 10) {
        h.host_send([0; VNET_HDR_LEN], &frame(60, i as u8));
    }
    // 256 buffers (the whole ring), then 10 more after the first pass.
    for i in 0..256u64 {
        h.post(RX_QUEUE, &[(DATA + i * 2048, 2048, F_WRITE)]);
    }
    h.notify(RX_QUEUE);
    assert_eq!(h.take_used(RX_QUEUE).len(), RX_BUDGET as usize);
    assert!(h.t().device().has_more(RX_QUEUE));
    for i in 0..10u64 {
        h.post(RX_QUEUE, &[(DATA + i * 2048, 2048, F_WRITE)]);
    }
    h.t().process_queue(RX_QUEUE as u32);
    assert_eq!(h.take_used(RX_QUEUE).len(), 10);
    assert!(!h.t().device().has_more(RX_QUEUE));
    assert_eq!(h.stats().rx_packets, u64::from(RX_BUDGET) + 10);
}

/// The I/O thread delivers a frame that arrives on the TAP into a buffer
/// the guest posted earlier (nobody notifies), runs TX on its notifier
/// eventfd (as KVM's ioeventfd signals it), and delivers frames that waited
/// for buffers once RX is notified — edge-triggered, nothing is lost.
#[test]
fn the_io_thread_moves_frames_both_ways_by_itself() {
    let mut h = Harness::active(16);
    let rx_kick = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_kick = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let handler = h.t.clone();
    let io = IoThread::spawn_with(
        vec![
            Notifier {
                fd: rx_kick.try_clone().unwrap(),
                queue: RX_QUEUE as u32,
                handler: handler.clone(),
            },
            Notifier {
                fd: tx_kick.try_clone().unwrap(),
                queue: TX_QUEUE as u32,
                handler: handler.clone(),
            },
        ],
        vec![Readable {
            fd: h.dev_fd.try_clone().unwrap(),
            queue: RX_QUEUE as u32,
            handler,
        }],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let wait_used = |h: &mut Harness, q: usize, n: usize| {
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "queue {q}: {} of {n} used",
                got.len()
            );
            got.extend(h.take_used(q));
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    };
    h.post(RX_QUEUE, &[(DATA, 1526, F_WRITE)]);
    let f = frame(90, 9);
    h.host_send([0; VNET_HDR_LEN], &f);
    assert_eq!(wait_used(&mut h, RX_QUEUE, 1), vec![(0, 102)]);

    // Three frames while the guest has no buffer: the thread is not woken
    // in a loop, and the frames are delivered once buffers come.
    for i in 0..3 {
        h.host_send([0; VNET_HDR_LEN], &frame(60, i));
    }
    for i in 0..3u64 {
        h.post(RX_QUEUE, &[(DATA + 0x1000 * i, 1526, F_WRITE)]);
    }
    rx_kick.write(1).unwrap();
    assert_eq!(wait_used(&mut h, RX_QUEUE, 3).len(), 3);

    h.mem.write_slice(&f, GuestAddress(DATA + 0x8000)).unwrap();
    h.post(TX_QUEUE, &[(DATA + 0x7000, 12, 0), (DATA + 0x8000, 90, 0)]);
    tx_kick.write(1).unwrap();
    assert_eq!(wait_used(&mut h, TX_QUEUE, 1), vec![(0, 0)]);
    assert_eq!(&h.host_recv().unwrap()[VNET_HDR_LEN..], &f[..]);
    drop(io);
    let s = h.stats();
    assert_eq!((s.rx_packets, s.tx_packets), (4, 1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random register traffic, interleaved with notifies, never panics.
    #[test]
    fn random_register_writes_never_panic(
        ops in proptest::collection::vec((0u64..0x140, prop_oneof![Just(1usize), Just(2), Just(4), Just(8)], any::<u32>(), any::<bool>()), 0..200)
    ) {
        let mut h = Harness::new(16);
        h.host_send([0; VNET_HDR_LEN], &frame(60, 0));
        for (off, width, v, is_read) in ops {
            let off = off & !3;
            let bytes = u64::from(v).to_le_bytes();
            if is_read {
                let mut b = vec![0u8; width];
                h.t().read(off, &mut b);
            } else {
                h.t().write(off, &bytes[..width]);
            }
        }
        h.notify(RX_QUEUE);
        h.notify(TX_QUEUE);
    }

    /// Random descriptor tables and avail rings behind both ready queues,
    /// with frames waiting on the TAP, never panic and never hang; whatever
    /// reached the TAP is a whole frame with a zeroed header.
    #[test]
    fn random_descriptor_tables_never_panic(
        table in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u16>(), any::<u16>()), 32),
        ring in proptest::collection::vec(any::<u16>(), 32),
        avail_idx in (any::<u16>(), any::<u16>()),
        frames in proptest::collection::vec(0usize..2000, 0..8),
        in_memory in any::<bool>(),
    ) {
        let mut h = Harness::active(16);
        for (i, &len) in frames.iter().enumerate() {
            let mut f = vec![0u8; len];
            f.iter_mut().enumerate().for_each(|(j, b)| *b = (i + j) as u8);
            let _ = h.host.send(&f);
        }
        for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
            let addr = if in_memory { addr % MEM_SIZE as u64 } else { addr };
            let len = if in_memory { len % 4096 } else { len };
            let q = i / 16;
            let d = desc(q) + (i as u64 % 16) * 16;
            h.mem.write_obj(addr, GuestAddress(d)).unwrap();
            h.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            h.mem.write_obj(flags & 0x7, GuestAddress(d + 12)).unwrap();
            h.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        for (i, &r) in ring.iter().enumerate() {
            let q = i / 16;
            h.mem.write_obj(r, GuestAddress(avail(q) + 4 + (i as u64 % 16) * 2)).unwrap();
        }
        h.mem.write_obj(avail_idx.0, GuestAddress(avail(RX_QUEUE) + 2)).unwrap();
        h.mem.write_obj(avail_idx.1, GuestAddress(avail(TX_QUEUE) + 2)).unwrap();
        for _ in 0..2 {
            h.notify(RX_QUEUE);
            h.notify(TX_QUEUE);
        }
        while let Some(got) = h.host_recv() {
            prop_assert!(got.len() >= VNET_HDR_LEN + MIN_FRAME_LEN);
            prop_assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        }
    }
}
