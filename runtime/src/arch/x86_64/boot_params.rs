//! Linux boot params (the "zero page") and the e820 memory map in it.
//!
//! Follows Documentation/arch/x86/boot.rst for the 64-bit boot protocol: the
//! VMM fills `setup_header` (copied from a bzImage, or synthesized for an ELF
//! kernel), points at the command line and initrd, and describes exactly the
//! declared RAM in e820 — the guest's `MemTotal` comes from here.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::layout::{
    ACPI_TABLES_END, EBDA_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START, RSDP_START,
};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// "HdrS", the setup header magic.
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "Undefined" boot loader: boot.rst reserves 0xff for loaders without an ID.
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Kernel alignment we advertise for ELF kernels (2 MiB, like x86 defconfig).
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0020_0000;
/// boot.rst: if `initrd_addr_max` is not given (old protocols), 0x37FFFFFF.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Boot protocol version we speak when the kernel gave none (ELF).
pub const BOOT_PROTOCOL_VERSION: u16 = 0x020f;
/// loadflags bit 0: the protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 0x01;
/// loadflags bit 7: heap_end_ptr is valid.
pub const CAN_USE_HEAP: u8 = 0x80;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map for `ram_bytes` of RAM laid out by [`super::memory::ram_regions`]:
/// `[0, EBDA_START)` usable, the EBDA/ROM area reserved (the ACPI tables live
/// there), `[HIMEM_START, min(ram, hole))` usable, and `[4 GiB, 4 GiB + rest)`
/// usable. RAM is at least 2 MiB (the spec requires a multiple of 2 MiB).
pub fn e820_map(ram_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: RSDP_START - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: RSDP_START,
            size: ACPI_TABLES_END - RSDP_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = ram_bytes.min(MMIO_HOLE_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if ram_bytes > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: ram_bytes - MMIO_HOLE_START,
            kind: E820_RAM,
        });
    }
    map
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BootParamsError {
    #[error("too many e820 entries ({0})")]
    TooManyE820Entries(usize),
    #[error("the initrd ({size} bytes) does not fit below {max:#x} in guest RAM")]
    InitrdTooBig { size: u64, max: u64 },
}

/// What the boot params point at.
#[derive(Debug, Clone, Default)]
pub struct BootInputs {
    /// The bzImage's own setup header (None for an ELF kernel).
    pub setup_header: Option<setup_header>,
    pub cmdline_addr: u64,
    /// Length of the command line without its NUL.
    pub cmdline_len: u32,
    /// `(address, size)` of the initrd in guest memory.
    pub initrd: Option<(u64, u64)>,
    pub ram_bytes: u64,
}

/// Build the zero page.
pub fn build(inputs: &BootInputs) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    let mut hdr = inputs.setup_header.unwrap_or_default();
    if inputs.setup_header.is_none() {
        hdr.version = BOOT_PROTOCOL_VERSION;
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        hdr.initrd_addr_max = DEFAULT_INITRD_ADDR_MAX as u32;
        hdr.loadflags = LOADED_HIGH;
    }
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = inputs.cmdline_addr as u32;
    hdr.cmdline_size = inputs.cmdline_len;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some((addr, size)) = inputs.initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.hdr = hdr;
    params.ext_cmd_line_ptr = (inputs.cmdline_addr >> 32) as u32;

    let map = e820_map(inputs.ram_bytes);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Where an initrd of `size` bytes goes: as high as possible below the MMIO
/// hole, the end of low RAM and `initrd_addr_max`, page aligned, and above
/// `kernel_end` (boot.rst: "as high as possible").
pub fn initrd_address(
    size: u64,
    ram_bytes: u64,
    initrd_addr_max: u64,
    kernel_end: u64,
) -> Result<u64, BootParamsError> {
    let limit = ram_bytes
        .min(MMIO_HOLE_START)
        .min(initrd_addr_max.saturating_add(1));
    let too_big = BootParamsError::InitrdTooBig { size, max: limit };
    let start = limit.checked_sub(size).ok_or(too_big.clone())? & !0xfff;
    if start < kernel_end.max(HIMEM_START) {
        return Err(too_big);
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn e820_describes_exactly_the_declared_ram() {
        for mib in [128u64, 1024, 3072, 3584, 8192] {
            let ram = mib << 20;
            let map = e820_map(ram);
            // Everything except the legacy hole between EBDA and 1 MiB is usable.
            assert_eq!(usable(&map), ram - (HIMEM_START - EBDA_START), "{mib} MiB");
            let end = map
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.addr + e.size)
                .max();
            let expect_end = if ram > MMIO_HOLE_START {
                ram - MMIO_HOLE_START + MMIO_HOLE_END
            } else {
                ram
            };
            assert_eq!(end, Some(expect_end));
            for e in &map {
                assert!(e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END);
            }
        }
    }

    #[test]
    fn e820_map_for_3584_mib() {
        let map = e820_map(3584 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x40400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0xe0000,
                    size: 0x20000,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: 0xbff0_0000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x1_0000_0000,
                    size: 0x2000_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn boot_params_for_an_elf_kernel() {
        let p = build(&BootInputs {
            setup_header: None,
            cmdline_addr: 0x20000,
            cmdline_len: 14,
            initrd: Some((0x7000_0000, 0x1234)),
            ram_bytes: 2 << 30,
        })
        .unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 14);
        assert_eq!({ hdr.ramdisk_image }, 0x7000_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.e820_entries }, 4);
        let e = p.e820_table[3];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (0x100000, (2 << 30) - 0x100000, 1)
        );
    }

    #[test]
    fn boot_params_keep_the_bzimage_header() {
        let hdr = setup_header {
            version: 0x020f,
            kernel_alignment: 0x100_0000,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        let p = build(&BootInputs {
            setup_header: Some(hdr),
            ram_bytes: 256 << 20,
            ..Default::default()
        })
        .unwrap();
        assert_eq!({ p.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
    }

    #[test]
    fn initrd_goes_high_below_the_hole_and_the_limit() {
        assert_eq!(
            initrd_address(0x1800, 128 << 20, DEFAULT_INITRD_ADDR_MAX, 0x300000),
            Ok((128 << 20) - 0x2000)
        );
        assert_eq!(
            initrd_address(0x1000, 8 << 30, 0x7fff_ffff, 0x300000),
            Ok(0x8000_0000 - 0x1000)
        );
        assert_eq!(
            initrd_address(0x1000, 8 << 30, u32::MAX as u64, 0x300000),
            Ok(MMIO_HOLE_START - 0x1000)
        );
        assert!(initrd_address(200 << 20, 128 << 20, DEFAULT_INITRD_ADDR_MAX, 0x300000).is_err());
        assert!(initrd_address(100 << 20, 128 << 20, DEFAULT_INITRD_ADDR_MAX, 64 << 20).is_err());
    }
}
