//! virtio-blk request parsing and execution: the guest controls the
//! descriptor table, the available ring and every request byte; the disk's
//! file is longer than the capacity the guest is told. Properties (beyond no
//! panic): nothing past the capacity is read into guest memory or written,
//! the file keeps its length, a read-only disk is never written.
//!
//! Input: flags (bit 0 read-only, bit 1 EVENT_IDX), log2 of the queue size,
//! then the guest memory image from address 0 (rings laid out by
//! `vmctl_fuzz::ring_layout`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmctl_fuzz::{DiskFixture, Reader, guest_memory, ready_queue, ring_layout};
use vmctl_runtime::devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let size = 1u16 << (r.u8() % 9);
    let image = r.rest();
    let read_only = flags & 1 != 0;
    let mem = guest_memory(image);
    let (desc, avail, used) = ring_layout(size);
    let Some(mut queue) = ready_queue(size, desc, avail, used, flags & 2 != 0) else {
        return;
    };
    let disk = DiskFixture::get();
    let mut block = disk.block(read_only);
    block.process_queue(0, &mut queue, &mem);
    disk.check(read_only, image, &mem);
});
