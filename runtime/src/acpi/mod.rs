//! ACPI tables: how the guest discovers CPUs, serial ports, virtio-mmio devices
//! and the power button.
//!
//! Stock distribution kernels find virtio-mmio devices only through ACPI, and
//! CPU hot-add needs the MADT to list every *possible* vCPU up front, so the
//! VMM writes a small, hardware-reduced ACPI table set into guest memory
//! before boot:
//!
//! ```text
//! RSDP @ layout::RSDP_START -> XSDT -> FADT -> DSDT
//!                                   -> MADT
//! ```
//!
//! [`build_tables`] is pure (bytes and addresses per table, for tests and for
//! the iasl round trip); [`write_tables`] places them in guest memory. Both
//! reject configurations that do not fit below `layout::ACPI_TABLES_END`
//! instead of panicking. docs/acpi.md explains what Linux needs from each
//! table.
//!
//! Hot-add (cloud-hypervisor's design): [`hotplug`] adds the CPU and memory
//! hotplug controllers and their processor / memory devices to the DSDT, and
//! the GED's `_EVT` method dispatches their bits ([`dsdt::GED_EVENT_CPU`],
//! [`dsdt::GED_EVENT_MEMORY`]) to their scan methods.

pub mod dsdt;
pub mod fadt;
pub mod hotplug;
pub mod madt;

#[cfg(test)]
mod iasl_tests;

use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;
use crate::arch::x86_64::{layout, memory};

/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"VMCTL ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// GSI of the ACPI Generic Event Device (`ACPI0013`): the last pin of KVM's
/// 24-pin IOAPIC, clear of the serial IRQs (3, 4) and the virtio-mmio GSIs
/// (`layout::VIRTIO_GSI_BASE ..+ VIRTIO_MMIO_MAX_DEVICES` = 5..=20).
pub const GED_GSI: u32 = 23;
/// Size of the GED register window at `layout::GED_BASE` (one 32-bit event
/// register).
pub const GED_REGISTER_SIZE: u64 = 4;

/// Table alignment inside the ACPI area.
const TABLE_ALIGN: u64 = 16;

/// One virtio-mmio device as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Guest physical base of its register window.
    pub base: u64,
    /// Length of the window (`layout::VIRTIO_MMIO_SIZE`).
    pub size: u64,
    /// The GSI it raises.
    pub gsi: u32,
}

impl MmioDeviceInfo {
    /// Device `i` of the fixed virtio-mmio layout (disks in declaration order).
    pub fn at_index(i: u32) -> Self {
        Self {
            base: layout::VIRTIO_MMIO_BASE + u64::from(i) * layout::VIRTIO_MMIO_SIZE,
            size: layout::VIRTIO_MMIO_SIZE,
            gsi: layout::VIRTIO_GSI_BASE + i,
        }
    }
}

/// Memory hot-add: the guest physical range reserved for it and the number
/// of memory devices (slots) the DSDT lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryHotplugInfo {
    /// Start of the reserved range (`memory::hotplug_region`). Not RAM at
    /// boot and not in e820; no table names it today (the slots' `_CRS`
    /// report each hot-added range at run time).
    pub base: u64,
    /// Length of the reserved range.
    pub size: u64,
    /// `PNP0C80` devices (normally `layout::MEMORY_HOTPLUG_SLOTS`).
    pub slots: u32,
}

/// Most memory hotplug slots the DSDT can name (`M000`..`MFFF`).
pub const MAX_MEMORY_SLOTS: u32 = 0x1000;

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs online at boot (MADT entries with the Enabled flag).
    pub boot_cpus: u32,
    /// Possible vCPUs (`max`); the ones above `boot_cpus` are Online Capable.
    /// `max_cpus > boot_cpus` also adds the CPU hotplug controller to the
    /// DSDT (see [`hotplug`]).
    pub max_cpus: u32,
    /// virtio-mmio devices, listed in the DSDT as `LNRO0005`.
    pub virtio_mmio: Vec<MmioDeviceInfo>,
    /// GSI of the Generic Event Device (normally [`GED_GSI`]).
    pub ged_gsi: u32,
    /// Memory hot-add, when `max` memory exceeds boot memory: adds the memory
    /// hotplug controller and its slots to the DSDT.
    pub memory_hotplug: Option<MemoryHotplugInfo>,
}

impl AcpiConfig {
    /// A configuration with `devices` virtio-mmio devices at their layout
    /// addresses, the GED on [`GED_GSI`] and no memory hot-add.
    pub fn new(boot_cpus: u32, max_cpus: u32, devices: u32) -> Self {
        Self {
            boot_cpus,
            max_cpus,
            virtio_mmio: (0..devices).map(MmioDeviceInfo::at_index).collect(),
            ged_gsi: GED_GSI,
            memory_hotplug: None,
        }
    }

    /// Memory hot-add from `boot_ram_bytes` up to `max_ram_bytes`: the range
    /// of [`memory::hotplug_region`] with `layout::MEMORY_HOTPLUG_SLOTS`
    /// slots; none when `max <= boot`.
    pub fn with_memory_hotplug(mut self, boot_ram_bytes: u64, max_ram_bytes: u64) -> Self {
        self.memory_hotplug =
            memory::hotplug_region(boot_ram_bytes, max_ram_bytes).map(|(base, size)| {
                MemoryHotplugInfo {
                    base,
                    size,
                    slots: layout::MEMORY_HOTPLUG_SLOTS as u32,
                }
            });
        self
    }

    /// Whether vCPUs can be hot-added (`max_cpus > boot_cpus`): the DSDT then
    /// has the CPU hotplug controller and the VMM must register its device.
    pub fn cpu_hotplug(&self) -> bool {
        self.max_cpus > self.boot_cpus
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("invalid vCPU counts: boot {boot} max {max} (need 1 <= boot <= max)")]
    CpuCount { boot: u32, max: u32 },
    #[error(
        "virtio-mmio device {index} at {base:#x}+{size:#x} is not addressable by a 32-bit ACPI descriptor"
    )]
    MmioOutOfRange { index: usize, base: u64, size: u64 },
    #[error("{0} virtio-mmio devices; the DSDT names at most 4096")]
    TooManyDevices(usize),
    #[error(
        "invalid memory hot-add: {slots} slots (need 1..={MAX_MEMORY_SLOTS}) over {base:#x}+{size:#x}"
    )]
    MemoryHotplug { base: u64, size: u64, slots: u32 },
    #[error(
        "ACPI tables need {needed:#x} bytes from {start:#x} but only {available:#x} are reserved"
    )]
    TooLarge {
        start: u64,
        needed: u64,
        available: u64,
    },
    #[error("writing the {table} table at {addr:#x} to guest memory failed: {reason}")]
    GuestMemory {
        table: &'static str,
        addr: u64,
        reason: String,
    },
}

/// One table's bytes and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The 4-byte signature ("RSD PTR " for the RSDP).
    pub signature: &'static str,
    pub addr: GuestAddress,
    pub bytes: Vec<u8>,
}

/// The complete table set, ready to copy into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub rsdp: Table,
    pub xsdt: Table,
    pub fadt: Table,
    pub madt: Table,
    pub dsdt: Table,
}

impl Tables {
    /// Every table, in address order.
    pub fn all(&self) -> [&Table; 5] {
        [&self.rsdp, &self.xsdt, &self.fadt, &self.madt, &self.dsdt]
    }

    /// One past the last byte used.
    pub fn end(&self) -> u64 {
        self.dsdt.addr.0 + self.dsdt.bytes.len() as u64
    }
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.boot_cpus == 0 || cfg.boot_cpus > cfg.max_cpus || cfg.max_cpus > madt::MAX_CPUS {
        return Err(AcpiError::CpuCount {
            boot: cfg.boot_cpus,
            max: cfg.max_cpus,
        });
    }
    if cfg.virtio_mmio.len() > dsdt::MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyDevices(cfg.virtio_mmio.len()));
    }
    if let Some(m) = cfg.memory_hotplug {
        let ok = m.slots > 0
            && m.slots <= MAX_MEMORY_SLOTS
            && m.size > 0
            && m.base.checked_add(m.size).is_some();
        if !ok {
            return Err(AcpiError::MemoryHotplug {
                base: m.base,
                size: m.size,
                slots: m.slots,
            });
        }
    }
    for (index, d) in cfg.virtio_mmio.iter().enumerate() {
        let fits = d.size > 0
            && d.size <= u64::from(u32::MAX)
            && d.base.checked_add(d.size).is_some_and(|end| end <= 1 << 32);
        if !fits {
            return Err(AcpiError::MmioOutOfRange {
                index,
                base: d.base,
                size: d.size,
            });
        }
    }
    Ok(())
}

/// Build every table for `cfg`, laid out from `layout::RSDP_START`.
pub fn build_tables(cfg: &AcpiConfig) -> Result<Tables, AcpiError> {
    validate(cfg)?;
    let dsdt_bytes = dsdt::build(cfg);
    let madt_bytes = madt::build(cfg);

    let rsdp_addr = layout::RSDP_START;
    let xsdt_addr = align_up(rsdp_addr + acpi_tables::rsdp::Rsdp::len() as u64);
    // XSDT: header + one pointer each for FADT and MADT.
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align_up(xsdt_addr + xsdt_len);
    let madt_addr = align_up(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_addr = align_up(madt_addr + madt_bytes.len() as u64);
    let end = dsdt_addr + dsdt_bytes.len() as u64;
    if end > layout::ACPI_TABLES_END {
        return Err(AcpiError::TooLarge {
            start: rsdp_addr,
            needed: end - rsdp_addr,
            available: layout::ACPI_TABLES_END - rsdp_addr,
        });
    }

    let fadt_bytes = fadt::build(dsdt_addr);

    let mut xsdt = acpi_tables::xsdt::XSDT::new(OEM_ID, *b"VMCTLXSD", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_bytes = to_bytes(&xsdt);
    debug_assert_eq!(xsdt_bytes.len() as u64, xsdt_len);

    let rsdp_bytes = to_bytes(&acpi_tables::rsdp::Rsdp::new(OEM_ID, xsdt_addr));

    Ok(Tables {
        rsdp: Table {
            signature: "RSD PTR ",
            addr: GuestAddress(rsdp_addr),
            bytes: rsdp_bytes,
        },
        xsdt: Table {
            signature: "XSDT",
            addr: GuestAddress(xsdt_addr),
            bytes: xsdt_bytes,
        },
        fadt: Table {
            signature: "FACP",
            addr: GuestAddress(fadt_addr),
            bytes: fadt_bytes,
        },
        madt: Table {
            signature: "APIC",
            addr: GuestAddress(madt_addr),
            bytes: madt_bytes,
        },
        dsdt: Table {
            signature: "DSDT",
            addr: GuestAddress(dsdt_addr),
            bytes: dsdt_bytes,
        },
    })
}

/// Build the tables for `cfg` and write them into `mem`. Returns the RSDP's
/// address (for the boot params' `acpi_rsdp_addr`).
pub fn write_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<GuestAddress, AcpiError> {
    let tables = build_tables(cfg)?;
    for t in tables.all() {
        mem.write_slice(&t.bytes, t.addr)
            .map_err(|e| AcpiError::GuestMemory {
                table: t.signature,
                addr: t.addr.0,
                reason: e.to_string(),
            })?;
    }
    tracing::debug!(
        rsdp = tables.rsdp.addr.0,
        end = tables.end(),
        boot_cpus = cfg.boot_cpus,
        max_cpus = cfg.max_cpus,
        virtio_mmio = cfg.virtio_mmio.len(),
        memory_hotplug_slots = cfg.memory_hotplug.map_or(0, |m| m.slots),
        "ACPI tables written"
    );
    Ok(tables.rsdp.addr)
}

pub(crate) fn to_bytes(aml: &dyn acpi_tables::Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn checksums_lengths_and_pointers_are_consistent() {
        let t = build_tables(&AcpiConfig::new(2, 4, 3)).unwrap();
        // RSDP: both checksums, signature, revision 2, XSDT pointer.
        let r = &t.rsdp.bytes;
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[0..20]), 0);
        assert_eq!(sum(r), 0);
        assert_eq!(r[15], 2);
        assert_eq!(u64_at(r, 24), t.xsdt.addr.0);
        assert_eq!(t.rsdp.addr.0, layout::RSDP_START);
        for table in [&t.xsdt, &t.fadt, &t.madt, &t.dsdt] {
            assert_eq!(&table.bytes[0..4], table.signature.as_bytes());
            assert_eq!(u32_at(&table.bytes, 4) as usize, table.bytes.len());
            assert_eq!(sum(&table.bytes), 0, "{} checksum", table.signature);
            assert_eq!(table.addr.0 % TABLE_ALIGN, 0);
        }
        // XSDT -> FADT, MADT; FADT -> DSDT via X_DSDT (offset 140).
        assert_eq!(u64_at(&t.xsdt.bytes, 36), t.fadt.addr.0);
        assert_eq!(u64_at(&t.xsdt.bytes, 44), t.madt.addr.0);
        assert_eq!(u64_at(&t.fadt.bytes, 140), t.dsdt.addr.0);
        // No overlaps, all below the end of the reserved area.
        let all = t.all();
        for w in all.windows(2) {
            assert!(w[0].addr.0 + w[0].bytes.len() as u64 <= w[1].addr.0);
        }
        assert!(t.end() <= layout::ACPI_TABLES_END);
    }

    #[test]
    fn rejects_bad_configs_without_panicking() {
        for (boot, max) in [(0, 1), (3, 2), (1, madt::MAX_CPUS + 1)] {
            assert_eq!(
                build_tables(&AcpiConfig::new(boot, max, 0)),
                Err(AcpiError::CpuCount { boot, max })
            );
        }
        let mut cfg = AcpiConfig::new(1, 1, 0);
        cfg.virtio_mmio.push(MmioDeviceInfo {
            base: u64::MAX,
            size: 0x1000,
            gsi: 5,
        });
        assert!(matches!(
            build_tables(&cfg),
            Err(AcpiError::MmioOutOfRange { index: 0, .. })
        ));
        // Enough devices to overflow the 128 KiB area.
        let mut cfg = AcpiConfig::new(1, 1, 0);
        cfg.virtio_mmio = (0..4000).map(MmioDeviceInfo::at_index).collect();
        assert!(matches!(
            build_tables(&cfg),
            Err(AcpiError::TooLarge { .. })
        ));
    }

    #[test]
    fn writes_into_guest_memory_or_reports_too_small() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let cfg = AcpiConfig::new(1, 2, 1);
        let rsdp = write_tables(&mem, &cfg).unwrap();
        assert_eq!(rsdp, GuestAddress(layout::RSDP_START));
        let t = build_tables(&cfg).unwrap();
        for table in t.all() {
            let mut buf = vec![0u8; table.bytes.len()];
            mem.read_slice(&mut buf, table.addr).unwrap();
            assert_eq!(buf, table.bytes);
        }

        let small = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write_tables(&small, &cfg),
            Err(AcpiError::GuestMemory {
                table: "RSD PTR ",
                ..
            })
        ));
    }
}

#[cfg(test)]
mod hotplug_config_tests {
    use super::*;

    #[test]
    fn memory_hotplug_config_from_boot_and_max() {
        let cfg = AcpiConfig::new(1, 4, 0).with_memory_hotplug(256 << 20, 1 << 30);
        assert_eq!(
            cfg.memory_hotplug,
            Some(MemoryHotplugInfo {
                base: 256 << 20,
                size: 768 << 20,
                slots: 8
            })
        );
        assert!(cfg.cpu_hotplug());
        let cfg = AcpiConfig::new(2, 2, 0).with_memory_hotplug(1 << 30, 1 << 30);
        assert_eq!(cfg.memory_hotplug, None);
        assert!(!cfg.cpu_hotplug());
    }

    #[test]
    fn rejects_bad_memory_hotplug() {
        for (base, size, slots) in [(0, 1 << 30, 0), (0, 0, 8), (u64::MAX, 2, 8), (0, 1, 0x1001)] {
            let mut cfg = AcpiConfig::new(1, 1, 0);
            cfg.memory_hotplug = Some(MemoryHotplugInfo { base, size, slots });
            assert_eq!(
                build_tables(&cfg),
                Err(AcpiError::MemoryHotplug { base, size, slots })
            );
        }
    }

    #[test]
    fn the_largest_hotplug_config_fits() {
        let cfg = AcpiConfig::new(1, madt::MAX_CPUS, 16).with_memory_hotplug(1 << 30, 64 << 30);
        let t = build_tables(&cfg).unwrap();
        assert!(t.end() <= layout::ACPI_TABLES_END, "{:#x}", t.end());
        println!(
            "1024 vCPUs, 16 disks, memory hot-add: tables end at {:#x}",
            t.end()
        );
        let t = build_tables(&AcpiConfig::new(4, 4, 2)).unwrap();
        println!("4 vCPUs, 2 disks: tables end at {:#x}", t.end());
    }
}
