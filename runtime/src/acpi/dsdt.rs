//! The DSDT: AML describing the devices the guest cannot discover by probing.
//!
//! ```text
//! \_S5_            Package {5, 0, 0, 0}: SLP_TYP for power-off (see fadt)
//! \_SB_.COM1       PNP0501, IO 0x3f8/8, IRQ 4   (console)
//! \_SB_.COM2       PNP0501, IO 0x2f8/8, IRQ 3   (guest agent channel)
//! \_SB_.Vxxx       LNRO0005, Memory32Fixed base/size, Interrupt gsi  (virtio-mmio, xxx = index in hex)
//! \_SB_.PRES       CPU hotplug controller            (max_cpus > boot_cpus)
//! \_SB_.CPUS       ACPI0010, one ACPI0007 Cxxx per possible vCPU (see super::hotplug)
//! \_SB_.MHPC       memory hotplug controller + PNP0C80 Mxxx slots (memory hot-add)
//! \_SB_.PWRB       PNP0C0C power button
//! \_SB_.GED_       ACPI0013, Interrupt ged_gsi, _EVT reads the event register
//! ```
//!
//! The GED (cloud-hypervisor's design): the VMM sets a bit in the 32-bit event
//! register at `layout::GED_BASE` (read clears) and raises `ged_gsi`; Linux's
//! `acpi_ged` driver runs `_EVT`, which reads the register once into `Local0`
//! and dispatches each bit from it: bit 0 runs `\_SB_.CPUS.CSCN` and bit 1
//! `\_SB_.MHPC.MSCN` (each only when that hot-add is configured), bit 3
//! notifies the power button (`Notify 0x80`), which Linux turns into a
//! KEY_POWER event (orderly shutdown).

use acpi_tables::aml::{
    self, And, Device, EISAName, Equal, FieldAccessType, FieldEntry, FieldLockRule,
    FieldUpdateRule, IO, If, Interrupt, Local, Memory32Fixed, Method, MethodCall, Name, Notify,
    OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Store,
};
use acpi_tables::{Aml, sdt::Sdt};

use super::{AcpiConfig, MmioDeviceInfo, OEM_ID, OEM_REVISION, to_bytes};
use crate::arch::x86_64::layout;

/// GED event register bits (cloud-hypervisor's assignment).
pub const GED_EVENT_CPU: u32 = 1 << 0;
pub const GED_EVENT_MEMORY: u32 = 1 << 1;
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 3;

/// Sleep type value of S5 (soft off) that Linux writes to the sleep control
/// register as `SLP_TYP << 2 | SLP_EN`.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Most virtio-mmio devices the DSDT can name (`V000`..`VFFF`).
pub const MAX_VIRTIO_DEVICES: usize = 0x1000;

/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;

fn serial_port(name: &str, uid: u8, port: u16, irq: u32, ddn: &'static str) -> Vec<u8> {
    let io = IO::new(port, port, 1, 8);
    // Edge triggered, active high, exclusive: ISA serial semantics.
    let int = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&io, &int]);
    let hid = EISAName::new("PNP0501");
    to_bytes(&Device::new(
        Path::new(name),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &uid),
            &Name::new("_DDN".into(), &ddn),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// Device name of virtio-mmio device `index` (`index < MAX_VIRTIO_DEVICES`).
pub fn virtio_device_name(index: usize) -> String {
    format!("V{:03X}", index % MAX_VIRTIO_DEVICES)
}

fn virtio_mmio(index: usize, d: &MmioDeviceInfo) -> Vec<u8> {
    // Validated by the caller: base + size <= 4 GiB.
    let mem = Memory32Fixed::new(true, d.base as u32, d.size as u32);
    // Edge triggered like Firecracker's: the VMM signals each used-buffer
    // notification as one event, and the driver reads InterruptStatus.
    let int = Interrupt::new(true, true, false, false, d.gsi);
    let crs = ResourceTemplate::new(vec![&mem, &int]);
    let uid = index as u64;
    let path = format!("_SB_.{}", virtio_device_name(index));
    to_bytes(&Device::new(
        Path::new(&path),
        vec![
            &Name::new("_HID".into(), &"LNRO0005"),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CCA".into(), &aml::ONE),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn power_button() -> Vec<u8> {
    let hid = EISAName::new("PNP0C0C");
    to_bytes(&Device::new(
        "_SB_.PWRB".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    ))
}

fn ged(cfg: &AcpiConfig) -> Vec<u8> {
    let int = Interrupt::new(true, true, false, false, cfg.ged_gsi);
    let crs = ResourceTemplate::new(vec![&int]);
    let base = layout::GED_BASE as usize;
    let size = super::GED_REGISTER_SIZE as usize;
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemMemory, &base, &size);
    let field = aml::Field::new(
        "GDST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 32)],
    );
    let gdat: Path = "GDAT".into();
    // One read: the register clears on read, so every bit is dispatched
    // from Local0 (Local1..3 hold the masked bits).
    let read = Store::new(&Local(0), &gdat);

    let cpu = GED_EVENT_CPU as usize;
    let cpu_masked = And::new(&Local(1), &Local(0), &cpu);
    let is_cpu = Equal::new(&Local(1), &cpu);
    let cscn = MethodCall::new("\\_SB_.CPUS.CSCN".into(), vec![]);
    let on_cpu = If::new(&is_cpu, vec![&cscn]);

    let mem = GED_EVENT_MEMORY as usize;
    let mem_masked = And::new(&Local(2), &Local(0), &mem);
    let is_mem = Equal::new(&Local(2), &mem);
    let mscn = MethodCall::new("\\_SB_.MHPC.MSCN".into(), vec![]);
    let on_mem = If::new(&is_mem, vec![&mscn]);

    let power = GED_EVENT_POWER_BUTTON as usize;
    let pwrb: Path = "\\_SB_.PWRB".into();
    let notify_power = Notify::new(&pwrb, &0x80usize);
    let power_masked = And::new(&Local(3), &Local(0), &power);
    let is_power = Equal::new(&Local(3), &power);
    let on_power = If::new(&is_power, vec![&notify_power]);

    let mut body: Vec<&dyn Aml> = vec![&read];
    if cfg.cpu_hotplug() {
        body.extend([&cpu_masked as &dyn Aml, &on_cpu]);
    }
    if cfg.memory_hotplug.is_some() {
        body.extend([&mem_masked as &dyn Aml, &on_mem]);
    }
    body.extend([&power_masked as &dyn Aml, &on_power]);
    let evt = Method::new("_EVT".into(), 1, true, body);
    to_bytes(&Device::new(
        "_SB_.GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    ))
}

fn s5() -> Vec<u8> {
    let zero = 0u8;
    let pkg = Package::new(vec![&S5_SLEEP_TYPE, &zero, &zero, &zero]);
    to_bytes(&Name::new("_S5_".into(), &pkg))
}

/// The DSDT bytes. `cfg` must already be validated.
pub fn build(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(s5());
    body.extend(serial_port(
        "_SB_.COM1",
        0,
        layout::COM1_PORT,
        layout::COM1_IRQ,
        "COM1",
    ));
    body.extend(serial_port(
        "_SB_.COM2",
        1,
        layout::COM2_PORT,
        layout::COM2_IRQ,
        "COM2",
    ));
    for (i, d) in cfg.virtio_mmio.iter().enumerate().take(MAX_VIRTIO_DEVICES) {
        body.extend(virtio_mmio(i, d));
    }
    body.extend(super::hotplug::cpus(cfg));
    if let Some(m) = &cfg.memory_hotplug {
        body.extend(super::hotplug::memory(m));
    }
    body.extend(power_button());
    body.extend(ged(cfg));

    let mut sdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        *b"VMCTLDSD",
        OEM_REVISION,
    );
    // One append: Sdt's per-byte sink recomputes the checksum every byte.
    sdt.append_slice(&body);
    let mut out = Vec::with_capacity(sdt.len());
    sdt.to_aml_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn names_every_device() {
        let b = build(&AcpiConfig::new(1, 1, 2));
        assert_eq!(&b[0..4], b"DSDT");
        assert_eq!(b[8], 2);
        for n in [
            &b"_S5_"[..],
            b"COM1",
            b"COM2",
            b"V000",
            b"V001",
            b"LNRO0005",
            b"PWRB",
            b"GED_",
            b"ACPI0013",
            b"_EVT",
        ] {
            assert!(contains(&b, n), "{}", String::from_utf8_lossy(n));
        }
        assert!(!contains(&b, b"V002"));
        assert_eq!(virtio_device_name(0x2a), "V02A");
        // Processor devices always; no hotplug controllers without hot-add.
        for n in [&b"CPUS"[..], b"ACPI0010", b"C000", b"ACPI0007", b"_MAT"] {
            assert!(contains(&b, n), "{}", String::from_utf8_lossy(n));
        }
        for n in [
            &b"C001"[..],
            b"PRES",
            b"CSCN",
            b"_EJ0",
            b"MHPC",
            b"MSCN",
            b"M000",
        ] {
            assert!(!contains(&b, n), "{}", String::from_utf8_lossy(n));
        }
    }

    #[test]
    fn hotplug_adds_the_controllers_and_the_evt_dispatch() {
        let cfg = AcpiConfig::new(1, 4, 0).with_memory_hotplug(256 << 20, 1 << 30);
        let b = build(&cfg);
        for n in [
            &b"PRES"[..],
            b"CPLK",
            b"CSEL",
            b"CPEN",
            b"CINS",
            b"CRMV",
            b"CEJ0",
            b"CSCN",
            b"CTFY",
            b"C003",
            b"_EJ0",
            b"MHPC",
            b"MLCK",
            b"MHBL",
            b"MSEL",
            b"MEN_",
            b"MINS",
            b"MCRS",
            b"MSCN",
            b"M007",
        ] {
            assert!(contains(&b, n), "{}", String::from_utf8_lossy(n));
        }
        assert!(!contains(&b, b"C004"));
        assert!(!contains(&b, b"M008"));
        // Only CPU hot-add: no memory controller, no MSCN call.
        let b = build(&AcpiConfig::new(1, 2, 0));
        assert!(contains(&b, b"CSCN"));
        assert!(!contains(&b, b"MHPC"));
        // Only memory hot-add: static processors, no CPU controller.
        let b = build(&AcpiConfig::new(2, 2, 0).with_memory_hotplug(1 << 30, 2 << 30));
        assert!(contains(&b, b"MSCN") && contains(&b, b"C001"));
        assert!(!contains(&b, b"PRES") && !contains(&b, b"CSCN"));
    }
}
