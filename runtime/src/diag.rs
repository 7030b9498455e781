//! The built-in diag guest: vmctl's own freestanding x86-64 kernel, built
//! from `guest/` by `build.rs` and embedded here. The VMM boots it for
//! `os "diag"` VMs: load the ELF at its physical addresses and enter its PVH
//! entry (32-bit, EBX = start info), or `e_entry` in 64-bit mode with RSI =
//! boot params when the PVH note is absent. What it reports and how: see
//! docs/diag-guest.md.

/// The diag kernel, an ELF64 executable linked at 0x200000.
pub static KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/diag.elf"));

/// ELF program header type of a note segment.
const PT_NOTE: u32 = 4;

/// A copy of an ELF64 `kernel` whose note segments are turned into
/// `PT_NULL`, so a VMM no longer sees its PVH note and boots it through the
/// Linux 64-bit entry: how tests and `cargo xtask bench` exercise that path
/// with the same diag. `None` if the bytes are not a well-formed ELF64 or
/// have no note segment.
pub fn without_pvh_note(kernel: &[u8]) -> Option<Vec<u8>> {
    let field = |off: usize, len: usize| kernel.get(off..off.checked_add(len)?);
    if field(0, 5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = usize::try_from(u64::from_le_bytes(field(32, 8)?.try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16::from_le_bytes(field(54, 2)?.try_into().ok()?));
    let phnum = usize::from(u16::from_le_bytes(field(56, 2)?.try_into().ok()?));
    if phentsize < 4 {
        return None;
    }
    let mut out = kernel.to_vec();
    let mut patched = false;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = out.get_mut(ph..ph.checked_add(4)?)?;
        if u32::from_le_bytes(p_type[..4].try_into().ok()?) == PT_NOTE {
            p_type.copy_from_slice(&0u32.to_le_bytes());
            patched = true;
        }
    }
    patched.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::{KERNEL, without_pvh_note};

    #[test]
    fn the_pvh_note_can_be_hidden_and_garbage_is_refused() {
        let plain = without_pvh_note(KERNEL).expect("diag has a PVH note segment");
        assert_eq!(plain.len(), KERNEL.len());
        assert_eq!(without_pvh_note(&plain), None, "no note left");
        assert_eq!(without_pvh_note(b"\x7fELF\x02"), None);
        assert_eq!(without_pvh_note(&KERNEL[..100]), None);
        let mut huge = KERNEL.to_vec();
        huge[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        huge[32..40].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        assert_eq!(without_pvh_note(&huge), None);
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn is_a_static_x86_64_elf_linked_at_2mib() {
        assert_eq!(&KERNEL[..4], b"\x7fELF");
        assert_eq!(KERNEL[4], 2, "ELFCLASS64");
        assert_eq!(u16_at(KERNEL, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(KERNEL, 18), 62, "EM_X86_64");
        let entry = u64_at(KERNEL, 24);
        let phoff = u64_at(KERNEL, 32) as usize;
        let phentsize = u16_at(KERNEL, 54) as usize;
        let phnum = u16_at(KERNEL, 56) as usize;
        let mut loads = 0;
        let mut entry_covered = false;
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            if u32_at(KERNEL, ph) != 1 {
                continue;
            }
            loads += 1;
            let vaddr = u64_at(KERNEL, ph + 16);
            let paddr = u64_at(KERNEL, ph + 24);
            let memsz = u64_at(KERNEL, ph + 40);
            assert_eq!(vaddr, paddr, "PT_LOAD paddr must equal vaddr");
            assert!(paddr >= 0x20_0000, "loaded below 2 MiB: {paddr:#x}");
            assert!(paddr + memsz < 0x100_0000, "diag should fit below 16 MiB");
            entry_covered |= (vaddr..vaddr + memsz).contains(&entry);
        }
        assert!(loads >= 1);
        assert!(entry_covered, "e_entry {entry:#x} outside every PT_LOAD");
    }

    /// `_start` zeroes `.bss` with `rep stosb`, which the nested host
    /// emulates page by page: 234 KiB of buffers that had crept into `.bss`
    /// were most of a boot's host CPU and of the first-byte time
    /// (docs/benchmarks.md). Big buffers belong in `.data`.
    #[test]
    fn bss_stays_small() {
        let phoff = u64_at(KERNEL, 32) as usize;
        let phentsize = u16_at(KERNEL, 54) as usize;
        let phnum = u16_at(KERNEL, 56) as usize;
        let zeroed: u64 = (0..phnum)
            .map(|i| phoff + i * phentsize)
            .filter(|&ph| u32_at(KERNEL, ph) == 1)
            .map(|ph| u64_at(KERNEL, ph + 40) - u64_at(KERNEL, ph + 32))
            .sum();
        assert!(
            zeroed <= 32 << 10,
            "diag's .bss is {zeroed} bytes: move big buffers to .data (link_section)"
        );
    }

    /// This machine's KVM cannot emulate SSE stores: the guest must contain
    /// no instruction that touches an xmm register.
    #[test]
    fn contains_no_sse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diag.elf");
        std::fs::write(&path, KERNEL).unwrap();
        let out = match std::process::Command::new("objdump")
            .arg("-d")
            .arg(&path)
            .output()
        {
            Ok(out) if out.status.success() => out,
            _ => {
                eprintln!("objdump not available: SSE check skipped");
                return;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().count() > 100,
            "objdump produced no disassembly"
        );
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("xmm")
                    || l.contains("ymm")
                    || l.contains("xgetbv")
                    || l.contains("cmpxchg16b")
                    || l.contains("\tsti")
            })
            .collect();
        assert!(
            bad.is_empty(),
            "forbidden instructions in diag:\n{}",
            bad.join("\n")
        );
    }
}
