//! The guest physical memory map. One place, because the VMM, the ACPI tables
//! and the built-in diag guest (guest/src, which copies these numbers) must
//! agree on it. Change it here, in guest/, and in docs/design.md together.

/// Where Linux boot params (the "zero page") go.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// PVH boot: the `hvm_start_info` and, right after it, its memory map
/// (the page below the zero page; free in the Linux-protocol layout).
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_INFO_END: u64 = 0x7000;
/// The boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT (empty).
pub const BOOT_IDT_START: u64 = 0x520;
/// Identity-mapping page tables for the 64-bit entry: PML4, PDPTE, PDE.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Boot stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// End of low ("real mode") RAM reported in e820.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI: the RSDP, then the other tables, in the BIOS read-only area.
pub const RSDP_START: u64 = 0xe0000;
pub const ACPI_TABLES_END: u64 = 0x100000;
/// Where a bzImage's protected-mode kernel is loaded.
pub const HIMEM_START: u64 = 0x100000;

/// The 32-bit hole for MMIO: RAM above this goes above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// virtio-mmio device `i` (disks in declaration order) sits at
/// `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE` and raises GSI `VIRTIO_GSI_BASE + i`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = 16;
pub const VIRTIO_GSI_BASE: u32 = 5;

/// Hotplug devices (cloud-hypervisor's register layout; the register contract
/// is in docs/acpi.md): the ACPI GED event register, the CPU hotplug
/// controller and the memory hotplug controller.
pub const GED_BASE: u64 = 0xd010_0000;
pub const CPU_HOTPLUG_BASE: u64 = 0xd010_1000;
/// Bytes of MMIO space the CPU hotplug controller claims.
pub const CPU_HOTPLUG_SIZE: u64 = 0xc;
pub const MEMORY_HOTPLUG_BASE: u64 = 0xd010_2000;
/// Bytes of MMIO space the memory hotplug controller claims.
pub const MEMORY_HOTPLUG_SIZE: u64 = 0x18;
/// Memory hotplug slots (DIMM-like `PNP0C80` devices); one per hot-add.
pub const MEMORY_HOTPLUG_SLOTS: usize = 8;
/// Granularity of hot-added memory: the region's start and every hot-added
/// range are multiples of it. 128 MiB is Linux's x86-64 memory block size
/// for guests below 64 GiB of boot RAM.
pub const MEMORY_HOTPLUG_ALIGN: u64 = vmctl_spec::units::HOT_ADD_BLOCK_MIB << 20;

/// IOAPIC and local APIC, where KVM's in-kernel irqchip puts them.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// The idle port: a guest that polls with interrupts off (diag) writes a
/// 32-bit millisecond count here and the VMM parks the vCPU thread for up to
/// that long (capped at [`IDLE_MAX_MS`]), waking early for pause or stop,
/// and when a device has something for the guest (serial input, a GED event,
/// a used virtio buffer: the interrupts a polled guest does not get). It is
/// what `hlt` is to a guest with a timer interrupt.
pub const IDLE_PORT: u16 = 0x610;
pub const IDLE_MAX_MS: u64 = 1000;
/// What a 32-bit read of the idle port returns ("IDLE"), so a guest knows
/// the VMM sleeps for it and need not wait out the interval itself.
pub const IDLE_MAGIC: u32 = 0x454c_4449;

/// Serial ports: COM1 is the console, COM2 the guest agent channel.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const COM2_PORT: u16 = 0x2f8;
pub const COM2_IRQ: u32 = 3;
