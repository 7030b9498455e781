//! The numbers the diag guest shares with the VMM: guest physical addresses,
//! ports and boot-params offsets. They are COPIES of
//! `runtime/src/arch/x86_64/layout.rs` and of the "Interfaces between the
//! parts" section at the tail of `docs/design.md`; change them together.

/// Linux boot params (the "zero page"); the VMM also passes it in RSI. (At
/// the PVH entry the VMM passes its `hvm_start_info`, at 0x6000, in EBX
/// instead; `pvh.rs` reads whatever address it gets.)
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Offset of `e820_entries` (u8) in boot params.
pub const BP_E820_ENTRIES: u64 = 0x1e8;
/// Offset of `hdr.cmd_line_ptr` (u32) in boot params.
pub const BP_CMD_LINE_PTR: u64 = 0x228;
/// Offset of `hdr.cmdline_size` (u32) in boot params.
pub const BP_CMDLINE_SIZE: u64 = 0x238;
/// Offset of `e820_table` in boot params: 20-byte entries {addr, size, type}.
pub const BP_E820_TABLE: u64 = 0x2d0;
/// Capacity of the zero page's e820 table.
pub const E820_MAX_ENTRIES: usize = 128;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// Boot GDT, page tables, command line: low memory the AP trampoline must
/// not overwrite.
pub const BOOT_GDT_START: u64 = 0x500;
pub const PML4_START: u64 = 0x9000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;

/// Where the AP start-up trampoline is copied: a free 4 KiB page below 1 MiB
/// (not the zero page 0x7000, boot stack ~0x8ff0, page tables 0x9000-0xefff,
/// or the command line at 0x20000). SIPI vector = this >> 12.
pub const AP_TRAMPOLINE: u64 = 0x10000;

/// ACPI: the RSDP lives in the BIOS read-only area.
pub const RSDP_SCAN_START: u64 = 0xe0000;
pub const RSDP_SCAN_END: u64 = 0x10_0000;

/// virtio-mmio device `i` at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_MMIO_MAX_DEVICES: usize = 16;

/// ACPI GED event register (32-bit, read clears): bit 0 = CPU hotplug,
/// bit 1 = memory hotplug, bit 3 = power button. Whoever reads it must act on
/// every bit it got (/work/notes/hotplug-contract.md).
pub const GED_BASE: u64 = 0xd010_0000;
pub const GED_EVENT_CPU_HOTPLUG: u32 = 1 << 0;
pub const GED_EVENT_MEMORY_HOTPLUG: u32 = 1 << 1;
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 3;

// The CPU and memory hotplug controllers: cloud-hypervisor's register layout
// with a 32-bit selection, as in the issue-11 contract shared with the VMM
// devices and the DSDT AML (/work/notes/hotplug-contract.md). The bases are
// copies of `runtime/src/arch/x86_64/layout.rs`; the offsets and bits are
// copies of the contract (the runtime's device module owns the other copy).
// Little-endian MMIO; unknown offsets read 0, out-of-range selections read
// status 0.

/// CPU hotplug controller, 12 bytes.
pub const CPU_HOTPLUG_BASE: u64 = 0xd010_1000;
pub const CPU_HOTPLUG_SIZE: u64 = 0xc;
/// u32: write selects a CPU index (= MADT processor UID = APIC ID); read
/// returns the selection.
pub const CPU_HP_CSEL: u64 = 0x0;
/// u8 status of the selected CPU.
pub const CPU_HP_STATUS: u64 = 0x4;
/// u8, reserved (reads 0).
pub const CPU_HP_CCMD: u64 = 0x5;
/// u32, reserved (reads 0).
pub const CPU_HP_CDAT: u64 = 0x8;
/// Status read: vCPU present/enabled.
pub const CPU_HP_CPEN: u8 = 1 << 0;
/// Status read: being inserted; write 1: ack the insertion.
pub const CPU_HP_CINS: u8 = 1 << 1;
/// Status read: being removed; write 1: ack the removal.
pub const CPU_HP_CRMV: u8 = 1 << 2;
/// Status write: eject the selected CPU (CPEN clears, the VMM parks it).
pub const CPU_HP_CEJ0: u8 = 1 << 3;

/// Memory hotplug controller, 24 bytes.
pub const MEMORY_HOTPLUG_BASE: u64 = 0xd010_2000;
pub const MEMORY_HOTPLUG_SIZE: u64 = 0x18;
/// u32: write selects a slot (MSEL); read is the slot's base, low half (MHBL).
pub const MEM_HP_SEL_BASE_LO: u64 = 0x0;
/// u32: base, high half (MHBH).
pub const MEM_HP_BASE_HI: u64 = 0x4;
/// u32: length, low half (MHLL).
pub const MEM_HP_LEN_LO: u64 = 0x8;
/// u32: length, high half (MHLH).
pub const MEM_HP_LEN_HI: u64 = 0xc;
/// u32: proximity domain (MHPX, 0).
pub const MEM_HP_PROXIMITY: u64 = 0x10;
/// u8 status of the selected slot.
pub const MEM_HP_STATUS: u64 = 0x14;
/// Status read: slot populated.
pub const MEM_HP_MEN: u8 = 1 << 0;
/// Status read: being inserted; write 1: ack the insertion.
pub const MEM_HP_MINS: u8 = 1 << 1;
/// Status read: being removed; write 1: ack the removal.
pub const MEM_HP_MRMV: u8 = 1 << 2;
/// Status write: eject (ignored: memory eject is unsupported).
pub const MEM_HP_MEJ0: u8 = 1 << 3;
/// Slots the controller has at least.
pub const MEMORY_HOTPLUG_SLOTS: u32 = 8;

/// Local APIC (xAPIC MMIO).
pub const APIC_START: u64 = 0xfee0_0000;

/// Serial ports: COM1 is the console, COM2 the guest agent channel.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM2_PORT: u16 = 0x2f8;

/// ACPI sleep control register; writing S5 | SLP_EN powers off.
pub const POWER_PORT: u16 = 0x600;
/// The VMM's idle port: a 32-bit write of N asks the VMM to park this vCPU
/// for up to N ms (diag has no interrupts, so it cannot `hlt`). A VMM
/// without it ignores the write and diag waits on the TSC instead.
pub const IDLE_PORT: u16 = 0x610;
/// A VMM that sleeps for the guest answers a 32-bit read of the idle port
/// with "IDLE".
pub const IDLE_MAGIC: u32 = 0x454c_4449;
/// vmctl's serial batch port: a 32-bit write of the guest-physical address
/// of `{u16 port, u16 len, u32 0, bytes}` sends the bytes to that UART in
/// one exit; a 32-bit read answers "BTCH" where the VMM has it.
pub const BATCH_PORT: u16 = 0x612;
pub const BATCH_MAGIC: u32 = 0x4843_5442;
/// The most bytes one batch carries.
pub const BATCH_MAX: usize = 2048;
pub const POWER_OFF_VALUE: u8 = (5 << 2) | (1 << 5);

/// The identity map the VMM sets up covers the first 4 GiB (PML4 at
/// `PML4_START`, one PDPT, four page directories of 2 MiB pages); diag adds
/// page directories of its own for RAM above it (`paging.rs`).
pub const IDENTITY_MAP_END: u64 = 0x1_0000_0000;

/// The 32-bit MMIO hole: never RAM.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
