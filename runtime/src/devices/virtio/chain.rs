//! Walking a guest's descriptor chain safely: the pieces every device needs
//! before it touches a buffer (virtio-blk requests, virtio-net frames).
//!
//! A chain is hostile input: its length is capped at [`MAX_DESCRIPTORS`]
//! whatever the guest linked, every buffer is checked to lie inside guest
//! memory before it is used, and buffers become [`Seg`]s that the device
//! splits and copies with overflow-checked arithmetic.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::GuestMemory;

/// Longest chain we look at (an indirect table may list 65535 descriptors).
pub const MAX_DESCRIPTORS: usize = 1024;

/// A guest buffer: `len` bytes at `addr`, known to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) addr: GuestAddress,
    pub(crate) len: u64,
}

/// Total bytes of `segs`.
pub(crate) fn total(segs: &[Seg]) -> u64 {
    // Each length is a u32 and there are at most MAX_DESCRIPTORS: no overflow.
    segs.iter().map(|s| s.len).sum()
}

/// Split `segs` after `at` bytes (`at <= total(segs)`).
pub(crate) fn split(segs: &[Seg], at: u64) -> (Vec<Seg>, Vec<Seg>) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut left = at;
    for s in segs {
        if left >= s.len {
            head.push(*s);
            left -= s.len;
        } else if left == 0 {
            tail.push(*s);
        } else {
            head.push(Seg {
                addr: s.addr,
                len: left,
            });
            tail.push(Seg {
                addr: s.addr.unchecked_add(left),
                len: s.len - left,
            });
            left = 0;
        }
    }
    (head, tail)
}

/// True when all of `d`'s buffer lies in guest memory.
pub(crate) fn in_memory(mem: &GuestMemory, d: &Descriptor) -> bool {
    usize::try_from(d.len())
        .is_ok_and(|len| vm_memory::GuestMemoryBackend::check_range(mem, d.addr(), len))
}

/// Walk `chain`: its descriptors, or None when it is longer than
/// [`MAX_DESCRIPTORS`] (the walk stops there, whatever the guest linked) or
/// was cut short by the walker — a loop, or a `next` outside the table:
/// the last descriptor returned still has NEXT set.
pub(crate) fn descriptors<M>(chain: DescriptorChain<M>) -> Option<Vec<Descriptor>>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let descs: Vec<Descriptor> = chain.take(MAX_DESCRIPTORS + 1).collect();
    let cut = descs.last().is_some_and(|d| d.has_next());
    (descs.len() <= MAX_DESCRIPTORS && !cut).then_some(descs)
}

/// The non-empty buffers of `descs` as segments, all of them device-readable
/// (`writable` false) or all device-writable (`writable` true), each inside
/// guest memory; None otherwise. What virtio-net asks of its TX and RX
/// chains.
pub(crate) fn uniform(mem: &GuestMemory, descs: &[Descriptor], writable: bool) -> Option<Vec<Seg>> {
    descs
        .iter()
        .filter(|d| d.len() > 0)
        .map(|d| {
            (d.is_write_only() == writable && in_memory(mem, d)).then_some(Seg {
                addr: d.addr(),
                len: u64::from(d.len()),
            })
        })
        .collect()
}

/// Copy `segs` (in order) into `out`, which must be at least `total(segs)`
/// long; false when guest memory refused a read.
pub(crate) fn gather(mem: &GuestMemory, segs: &[Seg], out: &mut [u8]) -> bool {
    let mut at = 0usize;
    for s in segs {
        let Ok(n) = usize::try_from(s.len) else {
            return false;
        };
        let Some(dst) = at.checked_add(n).and_then(|end| out.get_mut(at..end)) else {
            return false;
        };
        if mem.read_slice(dst, s.addr).is_err() {
            return false;
        }
        at += n;
    }
    true
}

/// Copy `data` into `segs` (in order), which must hold at least
/// `data.len()` bytes; false when guest memory refused a write.
pub(crate) fn scatter(mem: &GuestMemory, segs: &[Seg], data: &[u8]) -> bool {
    let mut rest = data;
    for s in segs {
        if rest.is_empty() {
            break;
        }
        let n = usize::try_from(s.len).map_or(rest.len(), |l| l.min(rest.len()));
        let (now, later) = rest.split_at(n);
        if mem.write_slice(now, s.addr).is_err() {
            return false;
        }
        rest = later;
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u64) -> Seg {
        Seg {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn split_cuts_inside_and_between_segments() {
        let s = [seg(0x100, 10), seg(0x200, 10)];
        assert_eq!(split(&s, 0), (vec![], s.to_vec()));
        assert_eq!(split(&s, 10), (vec![s[0]], vec![s[1]]));
        assert_eq!(
            split(&s, 15),
            (vec![s[0], seg(0x200, 5)], vec![seg(0x205, 5)])
        );
        assert_eq!(split(&s, 20), (s.to_vec(), vec![]));
        assert_eq!(split(&s, 99), (s.to_vec(), vec![]));
    }

    #[test]
    fn gather_and_scatter_round_trip_and_refuse_short_buffers() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let segs = [seg(0x100, 3), seg(0x800, 5)];
        assert!(scatter(&mem, &segs, b"abcdefgh"));
        let mut out = [0u8; 8];
        assert!(gather(&mem, &segs, &mut out));
        assert_eq!(&out, b"abcdefgh");
        let mut short = [0u8; 7];
        assert!(!gather(&mem, &segs, &mut short));
        assert!(!scatter(&mem, &segs, b"abcdefghi"), "does not fit");
        assert!(!scatter(&mem, &[seg(0x20000, 4)], b"ab"), "outside memory");
    }
}
