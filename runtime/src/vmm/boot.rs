//! Putting a kernel into guest memory the way Linux's 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst) expects: a bzImage's protected-mode part
//! at `HIMEM_START` entered at `+0x200`, or an ELF at its own addresses entered
//! at `e_entry`; the command line, the initrd high in low RAM, the zero page,
//! the boot GDT/IDT and the identity page tables. An ELF with a PVH note
//! (`XEN_ELFNOTE_PHYS32_ENTRY`) is entered there instead, in 32-bit mode
//! with a PVH start info (`arch/x86_64/pvh.rs`) next to the zero page.

use std::io::Cursor;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{KernelLoader, KernelLoaderResult, bzimage::BzImage, elf::Elf};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;
use crate::arch::x86_64::boot_params::{
    self, BootInputs, BootParamsError, DEFAULT_INITRD_ADDR_MAX,
};
use crate::arch::x86_64::layout::{
    BOOT_GDT_START, BOOT_IDT_START, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, ZERO_PAGE_START,
};
use crate::arch::x86_64::{gdt, pvh, regs};

/// Offset of the 64-bit entry point from where a bzImage's protected-mode
/// code is loaded (boot.rst, "64-bit BOOT PROTOCOL").
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootImage {
    /// bzImage or ELF bytes.
    pub kernel: std::sync::Arc<[u8]>,
    pub initrd: Option<std::sync::Arc<[u8]>>,
    pub cmdline: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot load the kernel: {0}")]
    Kernel(String),
    #[error("the kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    #[error("cannot write {what} into guest memory: {reason}")]
    Memory { what: &'static str, reason: String },
    #[error("cannot write the ACPI tables: {0}")]
    Acpi(String),
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64(u64),
    /// PVH: 32-bit protected mode, EBX = start info.
    Pvh(u64),
}

impl BootEntry {
    pub fn addr(self) -> u64 {
        match self {
            BootEntry::Linux64(a) | BootEntry::Pvh(a) => a,
        }
    }
}

fn mem_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> BootError {
    move |e| BootError::Memory {
        what,
        reason: e.to_string(),
    }
}

/// Is this a bzImage (has the "HdrS" setup header magic at 0x202)?
pub fn is_bzimage(kernel: &[u8]) -> bool {
    kernel.get(0x202..0x206) == Some(b"HdrS")
}

/// Load everything; returns how the boot vCPU enters the kernel (the PVH
/// entry when an ELF has one, else the 64-bit entry). `rsdp` is where the
/// ACPI tables' RSDP was written, if any.
pub fn load(
    mem: &GuestMemory,
    image: &BootImage,
    ram_bytes: u64,
    rsdp: Option<u64>,
) -> Result<BootEntry, BootError> {
    let (result, entry) = load_kernel(mem, &image.kernel)?;
    let header: Option<setup_header> = result.setup_header;

    // Command line, NUL-terminated.
    let cmd = image.cmdline.as_bytes();
    if cmd.contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let mut max = CMDLINE_MAX_SIZE - 1;
    if let Some(h) = &header {
        let size = { h.cmdline_size } as usize;
        if size > 0 {
            max = max.min(size);
        }
    }
    if cmd.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmd.len(),
            max,
        });
    }
    let mut bytes = cmd.to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(mem_err("the command line"))?;

    // Initrd: as high as allowed, above the (decompressed) kernel.
    let initrd = match &image.initrd {
        None => None,
        Some(data) => {
            let addr_max = header
                .as_ref()
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|&m| m != 0)
                .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
            let init_size = header.as_ref().map(|h| u64::from(h.init_size)).unwrap_or(0);
            let kernel_end = result.kernel_end.max(result.kernel_load.0 + init_size);
            let size = data.len() as u64;
            let addr = boot_params::initrd_address(size, ram_bytes, addr_max, kernel_end)?;
            mem.write_slice(data, GuestAddress(addr))
                .map_err(mem_err("the initrd"))?;
            Some((addr, size))
        }
    };

    let mut params = boot_params::build(&BootInputs {
        setup_header: header,
        cmdline_addr: CMDLINE_START,
        cmdline_len: cmd.len() as u32,
        initrd,
        ram_bytes,
    })?;
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(mem_err("the boot params"))?;
    if let BootEntry::Pvh(_) = entry {
        let map = boot_params::e820_map(ram_bytes);
        for (addr, bytes) in pvh::start_info(&pvh::StartInfoInputs {
            cmdline_addr: CMDLINE_START,
            rsdp_addr: rsdp,
            memmap: &map,
        })? {
            mem.write_slice(&bytes, GuestAddress(addr))
                .map_err(mem_err("the PVH start info"))?;
        }
    }

    mem.write_slice(&gdt::gdt_bytes(), GuestAddress(BOOT_GDT_START))
        .map_err(mem_err("the GDT"))?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(mem_err("the IDT"))?;
    for (addr, bytes) in regs::page_tables() {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(mem_err("the page tables"))?;
    }
    Ok(entry)
}

fn load_kernel(
    mem: &GuestMemory,
    kernel: &[u8],
) -> Result<(KernelLoaderResult, BootEntry), BootError> {
    let mut cursor = Cursor::new(kernel);
    if is_bzimage(kernel) {
        let r = BzImage::load(
            mem,
            Some(GuestAddress(HIMEM_START)),
            &mut cursor,
            Some(GuestAddress(HIMEM_START)),
        )
        .map_err(|e| BootError::Kernel(format!("bzImage: {e}")))?;
        let entry = r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET;
        Ok((r, BootEntry::Linux64(entry)))
    } else {
        let r = Elf::load(mem, None, &mut cursor, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| BootError::Kernel(format!("not a bzImage, and as ELF: {e}")))?;
        let entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh(addr.0),
            _ => BootEntry::Linux64(r.kernel_load.0),
        };
        Ok((r, entry))
    }
}

#[cfg(test)]
mod tests {
    use linux_loader::loader::bootparam::boot_params;
    use vm_memory::GuestMemoryBackend;

    use super::*;

    const RAM: u64 = 64 << 20;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    /// A synthetic bzImage: one setup sector after the boot sector, protocol
    /// 2.15, then a "protected-mode kernel" payload.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut k = vec![0u8; 1024];
        k[0x1f1] = 1; // setup_sects
        k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x211] = 0x01; // LOADED_HIGH
        k[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes()); // code32_start
        k[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        k[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        k[0x238..0x23c].copy_from_slice(&0x7ffu32.to_le_bytes()); // cmdline_size
        k[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
        k.extend_from_slice(payload);
        k
    }

    fn image(kernel: Vec<u8>, initrd: Option<Vec<u8>>, cmdline: &str) -> BootImage {
        BootImage {
            kernel: kernel.into(),
            initrd: initrd.map(Into::into),
            cmdline: cmdline.into(),
        }
    }

    #[test]
    fn bzimage_boots_through_the_64bit_entry_with_its_own_header() {
        let mem = memory();
        let initrd = vec![0xabu8; 5000];
        let img = image(
            bzimage(b"PROTECTED-MODE KERNEL"),
            Some(initrd.clone()),
            "console=ttyS0 quiet",
        );
        let entry = load(&mem, &img, RAM, Some(0xe0000)).unwrap();
        assert_eq!(entry, BootEntry::Linux64(0x100200));
        let mut payload = [0u8; 21];
        mem.read_slice(&mut payload, GuestAddress(0x100000))
            .unwrap();
        assert_eq!(&payload, b"PROTECTED-MODE KERNEL");

        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = p.hdr;
        assert_eq!(
            { hdr.kernel_alignment },
            0x20_0000,
            "the bzImage's own header"
        );
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 19);
        let expect_initrd = (RAM - 5000) & !0xfff;
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (expect_initrd as u32, 5000)
        );
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!({ p.e820_entries }, 4);
        let mut rd = vec![0u8; 5000];
        mem.read_slice(&mut rd, GuestAddress(expect_initrd))
            .unwrap();
        assert_eq!(rd, initrd);

        let mut cmd = [0u8; 20];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0 quiet\0");
        let gdt: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 0x10)).unwrap();
        assert_eq!(gdt, gdt::BOOT_GDT[2]);
        let pml4: u64 = mem.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(pml4, 0xa003);
    }

    #[test]
    fn cmdline_longer_than_the_kernel_accepts_is_refused() {
        let mem = memory();
        let long = "x".repeat(0x800);
        let err = load(&mem, &image(bzimage(b"K"), None, &long), RAM, None).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::CmdlineTooLong {
                    len: 0x800,
                    max: 0x7ff
                }
            ),
            "{err}"
        );
        let err = load(&mem, &image(bzimage(b"K"), None, "a\0b"), RAM, None).unwrap_err();
        assert!(matches!(err, BootError::CmdlineNul));
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused() {
        let mem = memory();
        let err = load(
            &mem,
            &image(bzimage(b"K"), Some(vec![0; 62 << 20]), ""),
            RAM,
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                BootError::BootParams(BootParamsError::InitrdTooBig { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn diag_boots_through_its_pvh_note_with_a_start_info() {
        let mem = memory();
        let img = image(crate::diag::KERNEL.to_vec(), None, "console=ttyS0");
        let entry = load(&mem, &img, RAM, Some(0xe0000)).unwrap();
        let BootEntry::Pvh(eip) = entry else {
            panic!("diag has a PVH note: {entry:?}");
        };
        assert!((0x20_0000..0x100_0000).contains(&eip), "{eip:#x}");
        let magic: u32 = mem.read_obj(GuestAddress(0x6000)).unwrap();
        assert_eq!(magic, pvh::START_INFO_MAGIC);
        let cmdline: u64 = mem.read_obj(GuestAddress(0x6000 + 24)).unwrap();
        assert_eq!(cmdline, CMDLINE_START);
        let entries: u32 = mem.read_obj(GuestAddress(0x6000 + 48)).unwrap();
        assert_eq!(
            entries as usize,
            crate::arch::x86_64::boot_params::e820_map(RAM).len()
        );

        // The same ELF without its note: the 64-bit entry, no start info.
        let mem = memory();
        let plain = crate::diag::without_pvh_note(crate::diag::KERNEL).unwrap();
        let entry = load(&mem, &image(plain, None, ""), RAM, None).unwrap();
        assert!(
            matches!(entry, BootEntry::Linux64(a) if a >= 0x20_0000),
            "{entry:?}"
        );
        let magic: u32 = mem.read_obj(GuestAddress(0x6000)).unwrap();
        assert_eq!(magic, 0);
    }

    #[test]
    fn garbage_is_neither_bzimage_nor_elf() {
        let mem = memory();
        let err = load(&mem, &image(vec![0x42; 4096], None, ""), RAM, None).unwrap_err();
        assert!(matches!(err, BootError::Kernel(_)), "{err}");
        assert!(!is_bzimage(&[0; 10]));
        assert_eq!(mem.num_regions(), 1);
    }
}
