//! The PVH boot protocol (Xen's `hvm_start_info`), diag's second way in:
//! QEMU (`-M microvm -kernel diag`), Firecracker and cloud-hypervisor start
//! an ELF with an `XEN_ELFNOTE_PHYS32_ENTRY` note in 32-bit protected mode
//! with EBX = the start info. diag reads everything else from Linux boot
//! params, so this module turns a start info into a zero page (an e820
//! table and a command line pointer): one source of truth for the rest.
//! Every field comes from the VMM and is bounds-checked.

use crate::layout::{
    BP_CMD_LINE_PTR, BP_CMDLINE_SIZE, BP_E820_ENTRIES, BP_E820_TABLE, E820_MAX_ENTRIES,
};
use crate::phys::PhysMem;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Offsets in `hvm_start_info` (version 1).
pub const SI_VERSION: u64 = 4;
pub const SI_CMDLINE_PADDR: u64 = 24;
pub const SI_MEMMAP_PADDR: u64 = 40;
pub const SI_MEMMAP_ENTRIES: u64 = 48;
/// Size of one `hvm_memmap_table_entry` {addr u64, size u64, type u32, reserved u32}.
pub const MEMMAP_ENTRY_SIZE: u64 = 24;
/// Size of the zero page built here.
pub const ZERO_PAGE_SIZE: usize = 4096;

/// Why a start info was not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvhError {
    /// The pointer does not lead to readable memory.
    Unreadable,
    /// The magic number is wrong.
    BadMagic(u32),
}

/// What was converted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// Memory map entries copied (capped at the zero page's 128).
    pub entries: u32,
    /// Command line bytes copied (without the NUL).
    pub cmdline_len: u32,
    /// The start info's version.
    pub version: u32,
}

/// Fills `zero_page` (all zero first) from the start info at `start_info`:
/// the memory map becomes the e820 table; the command line is copied into
/// `cmdline` (NUL-terminated, truncated to fit) and the zero page points at
/// `cmdline_addr`, where the caller keeps that buffer. Without a memory map
/// (version 0, or none given) the e820 table stays empty.
pub fn to_zero_page(
    mem: &impl PhysMem,
    start_info: u64,
    zero_page: &mut [u8; ZERO_PAGE_SIZE],
    cmdline: &mut [u8],
    cmdline_addr: u32,
) -> Result<Converted, PvhError> {
    zero_page.fill(0);
    let magic = mem.read_u32(start_info).ok_or(PvhError::Unreadable)?;
    if magic != START_INFO_MAGIC {
        return Err(PvhError::BadMagic(magic));
    }
    let mut out = Converted {
        version: mem
            .read_u32(start_info + SI_VERSION)
            .ok_or(PvhError::Unreadable)?,
        ..Converted::default()
    };

    if out.version >= 1 {
        let table = mem.read_u64(start_info + SI_MEMMAP_PADDR).unwrap_or(0);
        let count = mem.read_u32(start_info + SI_MEMMAP_ENTRIES).unwrap_or(0);
        let count = (count as usize).min(E820_MAX_ENTRIES);
        for i in 0..count {
            let mut raw = [0u8; MEMMAP_ENTRY_SIZE as usize];
            let Some(at) = table.checked_add(i as u64 * MEMMAP_ENTRY_SIZE) else {
                break;
            };
            if table == 0 || !mem.read(at, &mut raw) {
                break;
            }
            // e820 entry: {addr u64, size u64, type u32} = the first 20 bytes.
            let dst = BP_E820_TABLE as usize + 20 * i;
            let Some(slot) = zero_page.get_mut(dst..dst + 20) else {
                break;
            };
            slot.copy_from_slice(&raw[..20]);
            out.entries += 1;
        }
    }
    if let Some(b) = zero_page.get_mut(BP_E820_ENTRIES as usize) {
        // At most 128: fits.
        *b = out.entries as u8;
    }

    let ptr = mem.read_u64(start_info + SI_CMDLINE_PADDR).unwrap_or(0);
    let room = cmdline.len().saturating_sub(1);
    let mut len = 0;
    if ptr != 0 {
        while len < room {
            let Some(b) = ptr.checked_add(len as u64).and_then(|a| mem.read_u8(a)) else {
                break;
            };
            if b == 0 {
                break;
            }
            cmdline[len] = b;
            len += 1;
        }
    }
    if let Some(nul) = cmdline.get_mut(len) {
        *nul = 0;
    }
    out.cmdline_len = len as u32;
    put_u32(zero_page, BP_CMD_LINE_PTR, cmdline_addr);
    put_u32(zero_page, BP_CMDLINE_SIZE, (len + 1) as u32);
    Ok(out)
}

fn put_u32(page: &mut [u8; ZERO_PAGE_SIZE], at: u64, v: u32) {
    let at = at as usize;
    if let Some(dst) = page.get_mut(at..at + 4) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootparams::{read_cmdline, read_e820};
    use crate::phys::Fake;

    const SI: u64 = 0x6000;
    const MAP: u64 = 0x6100;
    const CMD: u64 = 0x6800;

    fn start_info(entries: &[(u64, u64, u32)], cmdline: &[u8]) -> Fake {
        let mut m = Fake::new(SI, 0x1000);
        m.write(SI, &START_INFO_MAGIC.to_le_bytes());
        m.write(SI + SI_VERSION, &1u32.to_le_bytes());
        m.write(SI + SI_CMDLINE_PADDR, &CMD.to_le_bytes());
        m.write(SI + SI_MEMMAP_PADDR, &MAP.to_le_bytes());
        m.write(
            SI + SI_MEMMAP_ENTRIES,
            &(entries.len() as u32).to_le_bytes(),
        );
        for (i, &(a, s, k)) in entries.iter().enumerate() {
            let at = MAP + MEMMAP_ENTRY_SIZE * i as u64;
            m.write(at, &a.to_le_bytes());
            m.write(at + 8, &s.to_le_bytes());
            m.write(at + 16, &k.to_le_bytes());
            m.write(at + 20, &0xdead_beefu32.to_le_bytes());
        }
        m.write(CMD, cmdline);
        m
    }

    /// The zero page plus the command line buffer at `cmd_at`, as memory.
    fn as_memory(zp: &[u8; ZERO_PAGE_SIZE], cmd_at: u64, cmd: &[u8]) -> Fake {
        let mut m = Fake::new(0x7000, 0x2000);
        m.write(0x7000, zp);
        m.write(cmd_at, cmd);
        m
    }

    #[test]
    fn memory_map_and_cmdline_become_a_zero_page() {
        let m = start_info(
            &[
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0x10_0000, 127 << 20, 1),
            ],
            b"diag.nosmp quiet\0",
        );
        let mut zp = [0xffu8; ZERO_PAGE_SIZE];
        let mut cmd = [0u8; 64];
        let got = to_zero_page(&m, SI, &mut zp, &mut cmd, 0x8000).unwrap();
        assert_eq!(got.entries, 3);
        assert_eq!(got.version, 1);
        assert_eq!(&cmd[..17], b"diag.nosmp quiet\0");
        let mem = as_memory(&zp, 0x8000, &cmd);
        let e820 = read_e820(&mem, 0x7000);
        assert_eq!((e820.ram_entries, e820.mib()), (2, 128));
        let mut buf = [0u8; 128];
        assert_eq!(read_cmdline(&mem, 0x7000, &mut buf), b"diag.nosmp quiet");
    }

    #[test]
    fn hostile_start_info_is_refused_or_bounded() {
        let mut zp = [0u8; ZERO_PAGE_SIZE];
        let mut cmd = [0u8; 8];
        // Unreadable and wrong magic.
        let m = start_info(&[], b"\0");
        assert_eq!(
            to_zero_page(&m, 0x10, &mut zp, &mut cmd, 0),
            Err(PvhError::Unreadable)
        );
        let mut bad = start_info(&[], b"\0");
        bad.write(SI, &1u32.to_le_bytes());
        assert_eq!(
            to_zero_page(&bad, SI, &mut zp, &mut cmd, 0),
            Err(PvhError::BadMagic(1))
        );
        // A huge count stops at the end of readable memory; a command line
        // without NUL is truncated to the buffer.
        let mut m = start_info(&[(0x10_0000, 1 << 20, 1)], &[b'x'; 100]);
        m.write(SI + SI_MEMMAP_ENTRIES, &u32::MAX.to_le_bytes());
        let got = to_zero_page(&m, SI, &mut zp, &mut cmd, 0).unwrap();
        assert!(got.entries <= 128);
        assert_eq!(got.cmdline_len, 7);
        assert_eq!(cmd[7], 0);
        // A table pointer that wraps reads nothing.
        m.write(SI + SI_MEMMAP_PADDR, &(u64::MAX - 8).to_le_bytes());
        assert_eq!(
            to_zero_page(&m, SI, &mut zp, &mut cmd, 0).unwrap().entries,
            0
        );
    }
}
