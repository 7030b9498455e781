//! Entry points for the fuzz targets in `fuzz/` (docs/fuzzing.md).
//!
//! The targets live in their own workspace and can only call public items;
//! this module makes the few crate-private steps they check reachable without
//! copying them. It is not an API: hidden from the docs, it changes whenever
//! the fuzz targets need it to.

use std::ops::Deref;

use virtio_queue::DescriptorChain;

use crate::GuestMemory;
use crate::devices::virtio::block::request;

pub use request::MAX_DESCRIPTORS;

/// What the virtio-blk request parser made of one descriptor chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainWalk {
    /// Longer than [`MAX_DESCRIPTORS`], or cut short by the walker (a loop,
    /// a `next` outside the table): dropped without a status.
    TooLong,
    /// Rejected (a buffer outside guest memory, readable after writable):
    /// answered IOERR.
    Rejected,
    /// The device-readable buffers and the device-writable data buffers (the
    /// status byte taken off), each as `(guest address, length)`.
    Segments {
        readable: Vec<(u64, u64)>,
        writable: Vec<(u64, u64)>,
    },
}

/// Walk `chain` the way virtio-blk does before it touches a disk.
pub fn walk_blk_chain<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> ChainWalk
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let Some(descs) = request::descriptors(chain) else {
        return ChainWalk::TooLong;
    };
    let pairs = |segs: Vec<request::Seg>| -> Vec<(u64, u64)> {
        segs.iter().map(|s| (s.addr.0, s.len)).collect()
    };
    match request::parse(mem, &descs) {
        Ok((readable, writable)) => ChainWalk::Segments {
            readable: pairs(readable),
            writable: pairs(writable),
        },
        Err(_) => ChainWalk::Rejected,
    }
}
