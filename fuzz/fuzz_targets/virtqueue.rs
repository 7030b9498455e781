//! The virtqueue walker: rust-vmm's `Queue` popping chains from a guest
//! controlled descriptor table and available ring (any size, any ring
//! addresses, indirect tables, loops), and virtio-blk's walk of each chain
//! (`vmctl_runtime::fuzzing::walk_blk_chain`). Properties: every buffer the
//! walk yields lies in guest memory and is non-empty, a chain yields at most
//! `MAX_DESCRIPTORS` buffers, no more chains are popped than the ring holds
//! (when the used ring does not overwrite the available one), and a popped
//! head goes back to the used ring unless it is out of range.
//!
//! Input: flags (bit 0 EVENT_IDX, bits 1..3 put the descriptor table /
//! available ring / used ring above 4 GiB), queue size (u16), the three ring
//! addresses (u32 each), then the guest memory image from address 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vmctl_fuzz::{Reader, guest_memory, in_memory, ready_queue};
use vmctl_runtime::fuzzing::{ChainWalk, MAX_DESCRIPTORS, walk_blk_chain};

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let size = r.u16();
    let high = |bit: u8| {
        if flags & (1 << bit) != 0 {
            0xffff_ffff_0000_0000
        } else {
            0
        }
    };
    let desc = u64::from(r.u32()) | high(1);
    let avail = u64::from(r.u32()) | high(2);
    let used = u64::from(r.u32()) | high(3);
    let mem = guest_memory(r.rest());
    let Some(mut queue) = ready_queue(size, desc, avail, used, flags & 1 != 0) else {
        return;
    };
    // The transport refuses to make such a queue ready.
    if !queue.is_valid(&mem) {
        return;
    }
    let n = u64::from(size);
    let avail_ring = (avail, 6 + 2 * n);
    let used_ring = (used, 6 + 8 * n);
    let bounded = !overlap(avail_ring, used_ring);
    let mut popped = 0u32;
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        popped += 1;
        if bounded {
            assert!(
                popped <= u32::from(size),
                "popped more chains than the ring holds"
            );
        } else if popped > 4 * 65536 {
            break;
        }
        let head = chain.head_index();
        match walk_blk_chain(&mem, chain) {
            ChainWalk::Segments { readable, writable } => {
                assert!(readable.len() + writable.len() <= MAX_DESCRIPTORS);
                for &(addr, len) in readable.iter().chain(&writable) {
                    assert!(len > 0, "an empty buffer was yielded");
                    assert!(
                        in_memory(&mem, addr, len),
                        "buffer {addr:#x}+{len:#x} lies outside guest memory"
                    );
                }
            }
            ChainWalk::TooLong | ChainWalk::Rejected => {}
        }
        if queue.add_used(&mem, head, 0).is_err() {
            assert!(head >= size, "a valid head {head} could not be used");
            break;
        }
    }
});
