//! What diag reads from the Linux boot params (zero page) the VMM hands it:
//! the e820 memory map (its RAM entries are the memory the VM was given) and
//! the kernel command line (diag options).

use crate::layout::{
    BP_CMD_LINE_PTR, BP_CMDLINE_SIZE, BP_E820_ENTRIES, BP_E820_TABLE, CMDLINE_MAX_SIZE,
    E820_MAX_ENTRIES, E820_RAM,
};
use crate::phys::PhysMem;

/// The RAM in the e820 map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Sum of the sizes of all type-1 (RAM) entries.
    pub ram_bytes: u64,
    /// Number of entries read (the table's count, capped at 128).
    pub entries: u32,
    /// Number of RAM entries.
    pub ram_entries: u32,
    /// End of the highest RAM entry (hot-added memory must start at or
    /// above it; reserved entries, e.g. for device space, do not count).
    pub end: u64,
}

impl Memory {
    /// RAM in MiB, rounded to the nearest MiB: the VMM leaves the legacy
    /// hole (0x9fc00..0x100000, 385 KiB) out of the map, so a 128 MiB VM has
    /// a little under 128 MiB of e820 RAM.
    pub fn mib(&self) -> u64 {
        self.ram_bytes.saturating_add(1 << 19) >> 20
    }
}

/// Calls `f(addr, size, kind)` for every e820 entry of the boot params at
/// `zero_page` (the table's count capped at 128; stops at an unreadable
/// entry). Returns the number of entries read.
pub fn for_each_e820(mem: &impl PhysMem, zero_page: u64, mut f: impl FnMut(u64, u64, u32)) -> u32 {
    let Some(count) = mem.read_u8(zero_page + BP_E820_ENTRIES) else {
        return 0;
    };
    let count = usize::from(count).min(E820_MAX_ENTRIES);
    let mut read = 0;
    for i in 0..count {
        let entry = zero_page + BP_E820_TABLE + 20 * i as u64;
        let mut raw = [0u8; 20];
        if !mem.read(entry, &mut raw) {
            break;
        }
        read += 1;
        let addr = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let size = u64::from_le_bytes([
            raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
        ]);
        let kind = u32::from_le_bytes([raw[16], raw[17], raw[18], raw[19]]);
        f(addr, size, kind);
    }
    read
}

/// Sums the e820 RAM entries of the boot params at `zero_page`.
pub fn read_e820(mem: &impl PhysMem, zero_page: u64) -> Memory {
    let mut out = Memory::default();
    out.entries = for_each_e820(mem, zero_page, |addr, size, kind| {
        if kind == E820_RAM {
            out.end = out.end.max(addr.saturating_add(size));
            out.ram_entries += 1;
            out.ram_bytes = out.ram_bytes.saturating_add(size);
        }
    });
    out
}

/// Options diag takes on the kernel command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// `diag.nosmp`: do not try to start the application processors.
    pub start_aps: bool,
    /// `diag.seqwrite`: keep rewriting a sequence record on the first disk
    /// (crate::seqlog).
    pub seqwrite: bool,
    /// `diag.halt`: after the first report, where the VMM has no idle port
    /// (QEMU), stop the vCPU with `cli; hlt` instead of polling on the TSC,
    /// so a started guest costs the host nothing. Only for benchmarks that
    /// start many guests under a VMM without the idle port: a halted diag
    /// answers nothing any more.
    pub halt: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            start_aps: true,
            seqwrite: false,
            halt: false,
        }
    }
}

/// Parses diag's options out of a command line.
pub fn parse_options(cmdline: &[u8]) -> Options {
    let mut opts = Options::default();
    for word in cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n') {
        if word == b"diag.nosmp" {
            opts.start_aps = false;
        }
        if word == b"diag.seqwrite" {
            opts.seqwrite = true;
        }
        if word == b"diag.halt" {
            opts.halt = true;
        }
    }
    opts
}

/// Reads the command line the boot params point at into `buf`; returns the
/// bytes before the terminating NUL (empty if there is none to read).
pub fn read_cmdline<'a>(mem: &impl PhysMem, zero_page: u64, buf: &'a mut [u8]) -> &'a [u8] {
    let ptr = mem.read_u32(zero_page + BP_CMD_LINE_PTR).unwrap_or(0);
    let size = mem.read_u32(zero_page + BP_CMDLINE_SIZE).unwrap_or(0) as usize;
    let want = size.min(CMDLINE_MAX_SIZE).min(buf.len());
    let Some(dst) = buf.get_mut(..want) else {
        return &[];
    };
    if ptr == 0 || !mem.read(u64::from(ptr), dst) {
        return &[];
    }
    let end = dst.iter().position(|&b| b == 0).unwrap_or(dst.len());
    dst.get(..end).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::Fake;

    const ZP: u64 = 0x7000;

    fn zero_page(entries: &[(u64, u64, u32)]) -> Fake {
        let mut m = Fake::new(ZP, 4096);
        m.write(ZP + BP_E820_ENTRIES, &[entries.len() as u8]);
        for (i, &(addr, size, kind)) in entries.iter().enumerate() {
            let at = ZP + BP_E820_TABLE + 20 * i as u64;
            m.write(at, &addr.to_le_bytes());
            m.write(at + 8, &size.to_le_bytes());
            m.write(at + 16, &kind.to_le_bytes());
        }
        m
    }

    #[test]
    fn sums_ram_entries_only() {
        let m = zero_page(&[
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0x10_0000, 128 * 1024 * 1024 - 0x10_0000, 1),
        ]);
        let mem = read_e820(&m, ZP);
        assert_eq!(mem.entries, 3);
        assert_eq!(mem.ram_entries, 2);
        assert_eq!(mem.ram_bytes, 0x9fc00 + 127 * 1024 * 1024);
        assert_eq!(mem.mib(), 128);
        assert_eq!(mem.end, 128 * 1024 * 1024);
        // A reserved entry above RAM does not move the end of RAM.
        let high = zero_page(&[(0x10_0000, 0x700_0000, 1), (0xfec0_0000, 0x1000, 2)]);
        assert_eq!(read_e820(&high, ZP).end, 0x710_0000);
        let mut seen = Vec::new();
        for_each_e820(&m, ZP, |a, s, k| seen.push((a, s, k)));
        assert_eq!(seen[1], (0x9fc00, 0x400, 2));
    }

    #[test]
    fn memory_above_the_hole() {
        // 4 GiB VM: 3 GiB below the MMIO hole, 1 GiB above 4 GiB.
        let m = zero_page(&[
            (0, 0x9fc00, 1),
            (0x10_0000, 0xc000_0000 - 0x10_0000, 1),
            (0x1_0000_0000, 0x4000_0000, 1),
        ]);
        assert_eq!(read_e820(&m, ZP).mib(), 4096);
    }

    #[test]
    fn hostile_count_is_capped_and_reads_stay_in_bounds() {
        let mut m = zero_page(&[]);
        m.write(ZP + BP_E820_ENTRIES, &[255]);
        // Table runs past the end of the fake memory: stops, no panic.
        let mem = read_e820(&m, ZP);
        assert!(mem.entries <= 128);
        assert_eq!(mem.ram_bytes, 0);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let m = zero_page(&[(0, u64::MAX, 1), (0, u64::MAX, 1)]);
        assert_eq!(read_e820(&m, ZP).ram_bytes, u64::MAX);
    }

    #[test]
    fn options() {
        assert!(parse_options(b"console=ttyS0").start_aps);
        assert!(!parse_options(b"console=ttyS0 diag.nosmp").start_aps);
        assert!(parse_options(b"diag.nosmpx").start_aps);
        assert!(!parse_options(b"console=ttyS0").halt);
        assert!(parse_options(b"console=ttyS0 diag.halt").halt);
        assert!(!parse_options(b"diag.halted").halt);
    }

    #[test]
    fn cmdline_roundtrip() {
        let mut m = Fake::new(0, 0x30000);
        m.write(ZP + BP_CMD_LINE_PTR, &0x20000u32.to_le_bytes());
        m.write(ZP + BP_CMDLINE_SIZE, &64u32.to_le_bytes());
        m.write(0x20000, b"quiet diag.nosmp\0junk");
        let mut buf = [0u8; 256];
        assert_eq!(read_cmdline(&m, ZP, &mut buf), b"quiet diag.nosmp");
    }
}
