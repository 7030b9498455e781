//! virtio-mmio register writes against guest memory: any sequence of
//! register reads and writes (any offset, size and alignment, the config
//! space included), status changes, queue set-up and notifies, with a
//! virtio-blk device behind the transport. Properties: the identification
//! registers never change, DRIVER_OK is never set without FEATURES_OK nor
//! FEATURES_OK without DRIVER, `is_activated` agrees with the status, and
//! the virtio-blk disk properties of the `virtio_blk` target hold.
//!
//! Input: the number of operations N, N operations of 6 bytes (kind,
//! offset, a u32 value), then the guest memory image from address 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmctl_fuzz::{DiskFixture, Reader, guest_memory, ring_layout};
use vmctl_runtime::devices::BusDevice;
use vmctl_runtime::devices::virtio::block::Block;
use vmctl_runtime::devices::virtio::mmio::{MMIO_MAGIC, MMIO_VERSION, MmioTransport, reg};
use vmctl_runtime::devices::virtio::{DEVICE_ID_BLOCK, status};

fn rd(t: &mut MmioTransport<Block>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport<Block>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// What a Linux driver does up to DRIVER_OK, with a queue of `size` at
/// `ring_layout(size)`.
fn handshake(t: &mut MmioTransport<Block>, size: u16) {
    wr(t, reg::STATUS, 0);
    wr(t, reg::STATUS, status::ACKNOWLEDGE);
    wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        wr(t, reg::DEVICE_FEATURES_SEL, sel);
        let f = rd(t, reg::DEVICE_FEATURES);
        wr(t, reg::DRIVER_FEATURES_SEL, sel);
        wr(t, reg::DRIVER_FEATURES, f);
    }
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(t, reg::STATUS, s);
    wr(t, reg::QUEUE_SEL, 0);
    wr(t, reg::QUEUE_NUM, u32::from(size));
    let (desc, avail, used) = ring_layout(size);
    for (lo, hi, a) in [
        (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, desc),
        (reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, avail),
        (reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, used),
    ] {
        wr(t, lo, a as u32);
        wr(t, hi, (a >> 32) as u32);
    }
    wr(t, reg::QUEUE_READY, 1);
    wr(t, reg::STATUS, s | status::DRIVER_OK);
}

fn check(t: &mut MmioTransport<Block>) {
    assert_eq!(rd(t, reg::MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(rd(t, reg::VERSION), MMIO_VERSION);
    assert_eq!(rd(t, reg::DEVICE_ID), DEVICE_ID_BLOCK);
    let s = rd(t, reg::STATUS);
    assert_eq!(s, t.status());
    if s & status::DRIVER_OK != 0 {
        assert!(
            s & status::FEATURES_OK != 0,
            "DRIVER_OK without FEATURES_OK: {s:#x}"
        );
    }
    if s & status::FEATURES_OK != 0 {
        assert!(
            s & status::DRIVER != 0,
            "FEATURES_OK without DRIVER: {s:#x}"
        );
    }
    assert_eq!(
        t.is_activated(),
        s & status::DRIVER_OK != 0 && s & status::FAILED == 0
    );
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let n = r.u8();
    let ops: Vec<(u8, u8, u32)> = (0..n).map(|_| (r.u8(), r.u8(), r.u32())).collect();
    let image = r.rest();
    let mem = guest_memory(image);
    let disk = DiskFixture::get();
    let mut t = MmioTransport::new(disk.block(false), mem.clone(), None);
    for (kind, off, v) in ops {
        let off = u64::from(off);
        match kind % 8 {
            0 => wr(&mut t, off * 4, v),
            1 => {
                rd(&mut t, off * 4);
            }
            2 => {
                let len = usize::from(v as u8 % 9);
                let bytes = u64::from(v).to_le_bytes();
                t.write(off * 4, &bytes[..len]);
                let mut buf = [0u8; 8];
                t.read(off * 4, &mut buf[..len]);
            }
            3 => wr(&mut t, off * 4 + 1 + u64::from(v % 3), v),
            4 => handshake(&mut t, 1 << (v % 9)),
            5 => wr(&mut t, reg::QUEUE_NOTIFY, v % 2),
            6 => wr(&mut t, reg::STATUS, v),
            _ => t.notify_config_change(),
        }
        check(&mut t);
    }
    disk.check(false, image, &mem);
});
