//! virtio-net RX and TX (docs/networking.md): the guest controls both
//! queues' descriptor tables and available rings and every buffer byte; the
//! "TAP" (a datagram socketpair) holds frames of any length and content.
//! Properties (beyond no panic): every frame that reaches the TAP is a
//! whole frame — 12 zero header bytes, then 14 to 65535 bytes — whatever
//! header the guest wrote; the counters agree with what crossed (TX packets
//! = frames the TAP got; RX delivered + dropped <= frames offered). (What
//! lands in guest memory is not checked: a hostile guest may point RX
//! buffers at its own rings.)
//!
//! Input: flags (bit 0 EVENT_IDX on both queues), log2 of the RX and of the
//! TX queue size, the number of TAP frames N (0..=7) and N frames as (u16
//! length, bytes), then the guest memory image from address 0: RX rings at
//! `vmctl_fuzz::ring_layout`, TX rings the same from `TX_RINGS`.
#![no_main]

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmctl_fuzz::{Reader, TX_RINGS, guest_memory, ready_queue, ring_layout};
use vmctl_runtime::devices::virtio::VirtioDevice;
use vmctl_runtime::devices::virtio::net::tap::TapIo;
use vmctl_runtime::devices::virtio::net::{
    MAX_FRAME_LEN, MIN_FRAME_LEN, Mac, Net, NetCounters, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN,
};

/// The device's end of the socketpair.
struct FakeTap(UnixDatagram);

impl TapIo for FakeTap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.0.send(frame)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let rx_size = 1u16 << (r.u8() % 9);
    let tx_size = 1u16 << (r.u8() % 9);
    let mut frames = Vec::new();
    for _ in 0..r.u8() % 8 {
        let len = usize::from(r.u16() % 2048);
        frames.push((0..len).map(|_| r.u8()).collect::<Vec<u8>>());
    }
    let mem = guest_memory(r.rest());
    let Ok((dev_end, host)) = UnixDatagram::pair() else {
        return;
    };
    if dev_end.set_nonblocking(true).is_err() || host.set_nonblocking(true).is_err() {
        return;
    }
    for f in &frames {
        let _ = host.send(f);
    }
    let counters = Arc::new(NetCounters::default());
    let mut net = Net::new(
        Mac([0x52, 0x54, 0, 0, 0, 1]),
        Box::new(FakeTap(dev_end)),
        counters.clone(),
    );
    let event_idx = flags & 1 != 0;
    let (desc, avail, used) = ring_layout(rx_size);
    let Some(mut rx) = ready_queue(rx_size, desc, avail, used, event_idx) else {
        return;
    };
    let (desc, avail, used) = ring_layout(tx_size);
    let Some(mut tx) = ready_queue(
        tx_size,
        TX_RINGS + desc,
        TX_RINGS + avail,
        TX_RINGS + used,
        event_idx,
    ) else {
        return;
    };
    for _ in 0..2 {
        net.process_queue(RX_QUEUE, &mut rx, &mem);
        net.process_queue(TX_QUEUE, &mut tx, &mem);
    }

    let mut sent = 0u64;
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN + 1];
    while let Ok(n) = host.recv(&mut buf) {
        assert!(
            (VNET_HDR_LEN + MIN_FRAME_LEN..=VNET_HDR_LEN + MAX_FRAME_LEN).contains(&n),
            "a {n}-byte frame reached the TAP"
        );
        assert_eq!(
            &buf[..VNET_HDR_LEN],
            &[0u8; VNET_HDR_LEN],
            "guest header passed on"
        );
        sent += 1;
    }
    let s = counters.snapshot();
    assert_eq!(s.tx_packets, sent);
    assert!(s.rx_packets + s.rx_dropped <= frames.len() as u64, "{s:?}");
});
