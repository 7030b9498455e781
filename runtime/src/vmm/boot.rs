//! Putting a kernel into guest memory the way Linux's 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst) expects: a bzImage's protected-mode part
//! at `HIMEM_START` entered at `+0x200`, or an ELF at its own addresses entered
//! at `e_entry`; the command line, the initrd high in low RAM, the zero page,
//! the boot GDT/IDT and the identity page tables.

use std::io::Cursor;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{KernelLoader, KernelLoaderResult, bzimage::BzImage, elf::Elf};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;
use crate::arch::x86_64::boot_params::{
    self, BootInputs, BootParamsError, DEFAULT_INITRD_ADDR_MAX,
};
use crate::arch::x86_64::layout::{
    BOOT_GDT_START, BOOT_IDT_START, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, ZERO_PAGE_START,
};
use crate::arch::x86_64::{gdt, regs};

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

/// Load everything; returns the 64-bit entry address for the boot vCPU.
/// `rsdp` is where the ACPI tables' RSDP was written, if any.
pub fn load(
    mem: &GuestMemory,
    image: &BootImage,
    ram_bytes: u64,
    rsdp: Option<u64>,
) -> Result<u64, BootError> {
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

fn load_kernel(mem: &GuestMemory, kernel: &[u8]) -> Result<(KernelLoaderResult, u64), BootError> {
    let mut cursor = Cursor::new(kernel);
    if is_bzimage(kernel) {
        let r = BzImage::load(mem, None, &mut cursor, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| BootError::Kernel(format!("bzImage: {e}")))?;
        let entry = r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET;
        Ok((r, entry))
    } else {
        let r = Elf::load(mem, None, &mut cursor, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| BootError::Kernel(format!("not a bzImage, and as ELF: {e}")))?;
        let entry = r.kernel_load.0;
        Ok((r, entry))
    }
}
