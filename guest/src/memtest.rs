//! Checking that RAM is really there: write a pattern that depends on the
//! address to a set of 8-byte words, then read every one back. All words are
//! written before any is read, so two addresses backed by the same memory
//! (aliasing) show up as a mismatch. Which words are checked:
//!
//! - hot-added memory: three words in every 2 MiB of the range
//!   ([`chunk_words`]);
//! - boot RAM: two words (first and last) of up to [`BOOT_SAMPLE_PAGES`]
//!   pages spread evenly over each e820 RAM range, minus what diag and the
//!   boot structures occupy ([`testable_pieces`], [`sample_words`]); the
//!   old contents are restored afterwards.
//!
//! Everything here is pure (memory goes through [`Words`]) so it runs as
//! host unit tests; `kernel.rs` supplies the real memory.

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

pub const PAGE: u64 = 0x1000;
/// Hot-added memory is checked in these steps.
pub const CHUNK: u64 = 0x20_0000;
/// Words checked in every 2 MiB chunk: first, one in the middle (an odd
/// 4 KiB page, an offset that is not a power of two), last.
pub const CHUNK_OFFSETS: [u64; 3] = [0, 0x10_1808, CHUNK - 8];
/// Words checked in every sampled boot page.
pub const PAGE_OFFSETS: [u64; 2] = [0, PAGE - 8];
/// Pages sampled per e820 RAM range (few: every first touch of a page costs
/// the host memory, and boot RAM is the VMM's ordinary mapping).
pub const BOOT_SAMPLE_PAGES: u64 = 64;

/// The value written to `addr`: a 64-bit mix (splitmix64's finaliser) of
/// the address and a per-run salt, so neighbouring words, aliased words
/// and stale values from an earlier run all differ.
pub fn pattern(addr: u64, salt: u64) -> u64 {
    let mut z = (addr ^ salt).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 8-byte words of physical memory.
pub trait Words {
    fn read(&mut self, addr: u64) -> u64;
    fn write(&mut self, addr: u64, value: u64);
}

/// The first word that did not read back what was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub addr: u64,
    pub expected: u64,
    pub found: u64,
}

/// Writes `pattern(addr, salt)` to every address, then reads them all back.
pub fn check<W: Words, I: Iterator<Item = u64> + Clone>(
    mem: &mut W,
    addrs: I,
    salt: u64,
) -> Result<(), Mismatch> {
    for addr in addrs.clone() {
        mem.write(addr, pattern(addr, salt));
    }
    for addr in addrs {
        let expected = pattern(addr, salt);
        let found = mem.read(addr);
        if found != expected {
            return Err(Mismatch {
                addr,
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// The words checked in `[base, base + len)`: [`CHUNK_OFFSETS`] in every
/// whole 2 MiB chunk. `base` and `len` must be validated first
/// ([`validate_hotplug_range`]: 2 MiB aligned, no overflow).
pub fn chunk_words(base: u64, len: u64) -> impl Iterator<Item = u64> + Clone {
    (0..len / CHUNK).flat_map(move |c| {
        CHUNK_OFFSETS
            .iter()
            .map(move |&off| base.wrapping_add(c * CHUNK).wrapping_add(off))
    })
}

/// The words sampled in `[start, end)`: [`PAGE_OFFSETS`] of up to
/// `max_pages` whole pages, the first and the last page included, the rest
/// evenly spaced.
pub fn sample_words(start: u64, end: u64, max_pages: u64) -> impl Iterator<Item = u64> + Clone {
    let first = start
        .checked_add(PAGE - 1)
        .map_or(u64::MAX, |s| s & !(PAGE - 1));
    let last_end = end & !(PAGE - 1);
    let pages = last_end.saturating_sub(first) / PAGE;
    let n = pages.min(max_pages);
    (0..n).flat_map(move |k| {
        // k * (pages - 1) < 2^6 * 2^52: no overflow for any u64 range.
        let page = if n > 1 { k * (pages - 1) / (n - 1) } else { 0 };
        PAGE_OFFSETS
            .iter()
            .map(move |&off| first + page * PAGE + off)
    })
}

/// `[start, end)` minus the `excluded` intervals (each `[a, b)`, sorted,
/// disjoint): at most `excluded.len() + 1` pieces, empty ones as `None`.
pub fn testable_pieces<const N: usize>(
    start: u64,
    end: u64,
    excluded: &[(u64, u64)],
) -> [Option<(u64, u64)>; N] {
    let mut out = [None; N];
    let mut n = 0;
    let mut cur = start;
    let mut push = |a: u64, b: u64, out: &mut [Option<(u64, u64)>; N]| {
        if a < b
            && let Some(slot) = out.get_mut(n)
        {
            *slot = Some((a, b));
            n += 1;
        }
    };
    for &(a, b) in excluded {
        if b <= cur || a >= end {
            continue;
        }
        push(cur, a.min(end), &mut out);
        cur = cur.max(b);
        if cur >= end {
            break;
        }
    }
    push(cur, end, &mut out);
    out
}

/// Whether `[start, start + len)` is something diag may write to at all:
/// no overflow, not in the 32-bit MMIO hole, below `map_limit`.
pub fn boot_range_ok(start: u64, len: u64, map_limit: u64) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    len > 0 && end <= map_limit && (end <= MMIO_HOLE_START || start >= MMIO_HOLE_END)
}

/// Why a hot-added range was not checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    Empty,
    Overflow,
    Unaligned,
    BelowRam,
    InMmioHole,
    OverlapsSlot(u32),
    BeyondMap,
}

impl RangeError {
    pub fn describe(&self) -> &'static str {
        match self {
            RangeError::Empty => "length is 0",
            RangeError::Overflow => "base + length overflows",
            RangeError::Unaligned => "base or length is not a multiple of 2 MiB",
            RangeError::BelowRam => "starts below the end of boot RAM",
            RangeError::InMmioHole => "overlaps the 32-bit MMIO hole",
            RangeError::OverlapsSlot(_) => "overlaps another slot's memory",
            RangeError::BeyondMap => "ends above what diag can map",
        }
    }
}

/// Checks a range the memory hotplug controller reported for slot `slot`:
/// non-empty, 2 MiB aligned, no overflow, at or above `ram_end` (the end of
/// the highest e820 RAM entry), outside the MMIO hole, below `map_limit`, and
/// disjoint from every other slot's range in `others` (indexed by slot).
pub fn validate_hotplug_range(
    slot: u32,
    base: u64,
    len: u64,
    ram_end: u64,
    map_limit: u64,
    others: &[Option<(u64, u64)>],
) -> Result<(), RangeError> {
    if len == 0 {
        return Err(RangeError::Empty);
    }
    let end = base.checked_add(len).ok_or(RangeError::Overflow)?;
    if !base.is_multiple_of(CHUNK) || !len.is_multiple_of(CHUNK) {
        return Err(RangeError::Unaligned);
    }
    if base < ram_end {
        return Err(RangeError::BelowRam);
    }
    if base < MMIO_HOLE_END && end > MMIO_HOLE_START {
        return Err(RangeError::InMmioHole);
    }
    if end > map_limit {
        return Err(RangeError::BeyondMap);
    }
    for (i, other) in others.iter().enumerate() {
        if let Some((b, l)) = *other
            && i as u32 != slot
            && base < b.saturating_add(l)
            && b < end
        {
            return Err(RangeError::OverlapsSlot(i as u32));
        }
    }
    Ok(())
}

/// Bytes to MiB, rounded to the nearest MiB (as `bootparams::Memory::mib`).
pub fn mib(bytes: u64) -> u64 {
    bytes.saturating_add(1 << 19) >> 20
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Sparse fake RAM: `size` bytes from 0; address bits in `alias_mask`
    /// are ignored (a broken or aliased mapping).
    struct Fake {
        words: HashMap<u64, u64>,
        size: u64,
        alias_mask: u64,
        writes: usize,
    }

    impl Fake {
        fn new(size: u64) -> Self {
            Self {
                words: HashMap::new(),
                size,
                alias_mask: 0,
                writes: 0,
            }
        }
    }

    impl Words for Fake {
        fn read(&mut self, addr: u64) -> u64 {
            if addr >= self.size {
                return u64::MAX; // nothing there
            }
            *self.words.get(&(addr & !self.alias_mask)).unwrap_or(&0)
        }
        fn write(&mut self, addr: u64, value: u64) {
            self.writes += 1;
            if addr < self.size {
                self.words.insert(addr & !self.alias_mask, value);
            }
        }
    }

    #[test]
    fn pattern_depends_on_address_and_salt() {
        assert_ne!(pattern(0, 0), pattern(8, 0));
        assert_ne!(pattern(0x20_0000, 0), pattern(0x40_0000, 0));
        assert_ne!(pattern(0x1000, 1), pattern(0x1000, 2));
        // Neither all-zero nor all-ones for the usual addresses.
        for a in (0..64u64).map(|i| i << 21) {
            assert_ne!(pattern(a, 7), 0);
            assert_ne!(pattern(a, 7), u64::MAX);
        }
        // Deterministic.
        assert_eq!(pattern(0x1234, 5), pattern(0x1234, 5));
    }

    #[test]
    fn chunk_words_cover_every_2mib() {
        let words: Vec<u64> = chunk_words(0x1_0000_0000, 3 * CHUNK).collect();
        assert_eq!(words.len(), 9);
        assert_eq!(words[0], 0x1_0000_0000);
        assert_eq!(words[1], 0x1_0010_1808);
        assert_eq!(words[2], 0x1_001f_fff8);
        assert_eq!(words[3], 0x1_0020_0000);
        assert_eq!(*words.last().unwrap(), 0x1_0000_0000 + 3 * CHUNK - 8);
        for w in &words {
            assert_eq!(w % 8, 0);
        }
        assert_eq!(chunk_words(0, 0).count(), 0);
    }

    #[test]
    fn good_memory_passes_and_aliasing_is_caught() {
        let mut m = Fake::new(1 << 30);
        assert_eq!(check(&mut m, chunk_words(0, 1 << 30), 3), Ok(()));
        assert_eq!(m.writes, 512 * 3);

        // Bit 28 ignored: the upper 256 MiB alias the lower.
        let mut m = Fake::new(1 << 30);
        m.alias_mask = 1 << 28;
        let e = check(&mut m, chunk_words(0, 1 << 30), 3).unwrap_err();
        assert!(e.addr < 1 << 28, "{e:?}");

        // Missing memory above 512 MiB.
        let mut m = Fake::new(1 << 29);
        let e = check(&mut m, chunk_words(0, 1 << 30), 3).unwrap_err();
        assert_eq!((e.addr, e.found), (1 << 29, u64::MAX));

        // Neighbouring chunks aliased (address bit 21 ignored).
        let mut m = Fake::new(1 << 30);
        m.alias_mask = 1 << 21;
        let e = check(&mut m, chunk_words(0, 2 * CHUNK), 3).unwrap_err();
        assert_eq!(e.addr, 0);
    }

    #[test]
    fn stale_contents_do_not_pass() {
        // Memory that ignores writes but holds last run's values.
        struct Rom(u64);
        impl Words for Rom {
            fn read(&mut self, addr: u64) -> u64 {
                pattern(addr, self.0)
            }
            fn write(&mut self, _: u64, _: u64) {}
        }
        assert_eq!(check(&mut Rom(1), chunk_words(0, CHUNK), 1), Ok(()));
        assert!(check(&mut Rom(1), chunk_words(0, CHUNK), 2).is_err());
    }

    #[test]
    fn samples_are_spread_and_bounded() {
        let w: Vec<u64> = sample_words(0x30000, 0x9fc00, 64).collect();
        // 0x30000..0x9f000: 111 whole pages, 64 sampled, 2 words each.
        assert_eq!(w.len(), 128);
        assert_eq!(w[0], 0x30000);
        assert_eq!(w[1], 0x30ff8);
        assert_eq!(*w.last().unwrap(), 0x9eff8);
        assert!(w.iter().all(|&a| (0x30000..0x9f000).contains(&a)));
        // Few pages: each once.
        let w: Vec<u64> = sample_words(0x1000, 0x3000, 64).collect();
        assert_eq!(w, [0x1000, 0x1ff8, 0x2000, 0x2ff8]);
        // One page; less than a page; unaligned ends.
        assert_eq!(sample_words(0x1000, 0x2000, 64).count(), 2);
        assert_eq!(sample_words(0x1001, 0x2fff, 64).count(), 0);
        assert_eq!(sample_words(0x1000, 0x1000, 64).count(), 0);
        // Huge range: still bounded, no overflow.
        let w: Vec<u64> = sample_words(0, u64::MAX, 64).collect();
        assert_eq!(w.len(), 128);
        assert_eq!(sample_words(u64::MAX - 5, u64::MAX, 64).count(), 0);
    }

    #[test]
    fn pieces_skip_excluded() {
        let ex = [(0, 0x30000), (0x10_0000, 0x28_0000)];
        let p: [Option<(u64, u64)>; 3] = testable_pieces(0, 0x9fc00, &ex);
        assert_eq!(p, [Some((0x30000, 0x9fc00)), None, None]);
        let p: [Option<(u64, u64)>; 3] = testable_pieces(0x10_0000, 0x800_0000, &ex);
        assert_eq!(p, [Some((0x28_0000, 0x800_0000)), None, None]);
        let p: [Option<(u64, u64)>; 3] = testable_pieces(0, 0x800_0000, &ex);
        assert_eq!(
            p,
            [
                Some((0x30000, 0x10_0000)),
                Some((0x28_0000, 0x800_0000)),
                None
            ]
        );
        let p: [Option<(u64, u64)>; 3] = testable_pieces(0x10_0000, 0x20_0000, &ex);
        assert_eq!(p, [None, None, None]);
        let p: [Option<(u64, u64)>; 3] = testable_pieces(0x1_0000_0000, 0x2_0000_0000, &ex);
        assert_eq!(p, [Some((0x1_0000_0000, 0x2_0000_0000)), None, None]);
    }

    #[test]
    fn boot_ranges_that_may_be_touched() {
        let lim = 64 << 30;
        assert!(boot_range_ok(0x10_0000, 0xbff0_0000, lim));
        assert!(boot_range_ok(0x1_0000_0000, 1 << 30, lim));
        assert!(!boot_range_ok(0xbff0_0000, 0x20_0000, lim)); // into the hole
        assert!(!boot_range_ok(0x1_0000_0000, 64 << 30, lim)); // unmappable
        assert!(!boot_range_ok(u64::MAX, 2, lim));
        assert!(!boot_range_ok(0x1000, 0, lim));
    }

    #[test]
    fn hotplug_range_validation() {
        let ram_end = 0x800_0000; // 128 MiB VM
        let lim = 64 << 30;
        let none = [None; 8];
        let ok = |b, l| validate_hotplug_range(0, b, l, ram_end, lim, &none);
        assert_eq!(ok(0x800_0000, 128 << 20), Ok(()));
        assert_eq!(ok(0x1_0000_0000, 1 << 30), Ok(()));
        assert_eq!(ok(0x800_0000, 0), Err(RangeError::Empty));
        assert_eq!(ok(u64::MAX - CHUNK + 1, CHUNK), Err(RangeError::Overflow));
        assert_eq!(ok(0x800_1000, CHUNK), Err(RangeError::Unaligned));
        assert_eq!(ok(0x800_0000, CHUNK + 8), Err(RangeError::Unaligned));
        assert_eq!(ok(0x400_0000, 128 << 20), Err(RangeError::BelowRam));
        assert_eq!(ok(0xbc00_0000, 128 << 20), Err(RangeError::InMmioHole));
        assert_eq!(ok(0xc000_0000, CHUNK), Err(RangeError::InMmioHole));
        assert_eq!(ok(0xffe0_0000, CHUNK), Err(RangeError::InMmioHole));
        assert_eq!(ok(0x1_0000_0000, CHUNK), Ok(()));
        assert_eq!(ok(63 << 30, 2 << 30), Err(RangeError::BeyondMap));
        // All-ones registers (a missing controller).
        assert_eq!(ok(u64::MAX, u64::MAX), Err(RangeError::Overflow));

        let mut others = [None; 8];
        others[1] = Some((0x1_0000_0000, 1 << 30));
        let v = |slot, b, l| validate_hotplug_range(slot, b, l, ram_end, lim, &others);
        assert_eq!(
            v(0, 0x1_2000_0000, 1 << 30),
            Err(RangeError::OverlapsSlot(1))
        );
        assert_eq!(v(0, 0x1_4000_0000, 1 << 30), Ok(()));
        // Its own earlier record is not an overlap.
        assert_eq!(v(1, 0x1_0000_0000, 1 << 30), Ok(()));
    }

    #[test]
    fn mib_rounds_like_memory_mib() {
        assert_eq!(mib(0x9fc00 + (127 << 20)), 128);
        assert_eq!(mib(128 << 20), 128);
        assert_eq!(mib(u64::MAX), u64::MAX >> 20);
    }
}
