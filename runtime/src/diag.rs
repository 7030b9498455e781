//! The built-in diag guest: vmctl's own freestanding x86-64 kernel, built
//! from `guest/` by `build.rs` and embedded here. The VMM boots it for
//! `os "diag"` VMs: load the ELF at its physical addresses, enter `e_entry`
//! in 64-bit mode with RSI = boot params. What it reports and how: see
//! docs/diag-guest.md.

/// The diag kernel, an ELF64 executable linked at 0x200000.
pub static KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/diag.elf"));

#[cfg(test)]
mod tests {
    use super::KERNEL;

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
