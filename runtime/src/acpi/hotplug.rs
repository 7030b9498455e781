//! DSDT AML for CPU and memory hotplug: the controllers' register fields and
//! the methods and devices Linux's ACPI processor and memory hotplug drivers
//! use. The VMM side of the same registers is in
//! `devices::legacy::{cpu_hotplug, memory_hotplug}`; the register contract
//! is in docs/acpi.md.
//!
//! ```text
//! \_SB_.PRES   PNP0A06 CPU hotplug controller: OpRegion PRST at CPU_HOTPLUG_BASE,
//!              CSEL CPEN CINS CRMV CEJ0 CCMD CDAT, Mutex CPLK        (only if max > boot)
//! \_SB_.CPUS   ACPI0010 processor container, _CID PNP0A05
//!   CSTA(i) CTFY(i, ev) CEJ0(i) CSCN()                                 (only if max > boot)
//!   Cxxx       ACPI0007, _UID i (= MADT processor UID = APIC id), _MAT (enabled LAPIC),
//!              _STA = CSTA(i) and _EJ0 -> CEJ0(i) (not for CPU 0)   when max > boot
//! \_SB_.MHPC   PNP0A06 memory hotplug controller: OpRegion MHPR at MEMORY_HOTPLUG_BASE,
//!              MHBL MHBH MHLL MHLH MHPX MEN_ MINS MRMV MEJ0 MSEL, Mutex MLCK,
//!              MSTA(s) MCRS(s) MTFY(s, ev) MSCN()                     (only with hot-add memory)
//!   Mxxx       PNP0C80, _UID s, _STA = MSTA(s), _CRS = MCRS(s)
//! ```
//!
//! Processor devices are emitted for every possible vCPU even without
//! hot-add (as QEMU and cloud-hypervisor do): Linux enumerates CPUs from the
//! MADT either way, and one layout keeps `_UID`/`_MAT` in one place. Without
//! hot-add they have no `_STA` (ACPI's default: present and enabled) and no
//! `_EJ0`, so nothing depends on a controller the VMM did not register.
//! With hot-add, `_STA` reads CPEN from the controller: the VMM must register
//! the CPU hotplug device (boot CPUs present) before the guest boots.

use acpi_tables::Aml;
use acpi_tables::aml::{
    self, Acquire, Add, AddressSpace, AddressSpaceCacheable, CreateQWordField, Device, EISAName,
    Equal, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, LessThan, Local,
    Memory32Fixed, Method, MethodCall, Mutex, Name, Notify, OpRegion, OpRegionSpace, Or, Path,
    Release, ResourceTemplate, Return, ShiftLeft, Store, Subtract, While,
};

use super::{AcpiConfig, MemoryHotplugInfo, madt, to_bytes};
use crate::arch::x86_64::layout;

/// Notify values (ACPI 6.5 table 5.166).
const NOTIFY_DEVICE_CHECK: u8 = 1;
const NOTIFY_EJECT_REQUEST: u8 = 3;
/// `_STA`: present, enabled, shown, functioning.
const STA_PRESENT: u8 = 0xf;
/// Mutex Acquire timeout: wait forever.
const WAIT_FOREVER: u16 = 0xffff;

/// Processor device name of vCPU `i` (`i < madt::MAX_CPUS`, i.e. `C000`..`C3FF`).
pub fn cpu_device_name(i: u32) -> String {
    format!("C{:03X}", i % 0x1000)
}

/// Memory device name of slot `s` (`M000`..).
pub fn memory_device_name(s: u32) -> String {
    format!("M{:03X}", s % 0x1000)
}

/// Already-encoded AML spliced into a parent's children.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// `_MAT`: the MADT entry of vCPU `i` with the Enabled flag, whatever the
/// MADT says. Linux (6.1) ignores an Online Capable MADT entry on hot-add and
/// takes the APIC id from `_MAT`, which must be enabled.
pub fn mat_entry(i: u32) -> Vec<u8> {
    const ENABLED: u32 = 1;
    match u8::try_from(i) {
        Ok(id) if i <= madt::MAX_XAPIC_ID => vec![0, 8, id, id, ENABLED as u8, 0, 0, 0],
        _ => {
            let mut v = vec![9, 16, 0, 0];
            v.extend(i.to_le_bytes()); // x2APIC id
            v.extend(ENABLED.to_le_bytes());
            v.extend(i.to_le_bytes()); // processor UID
            v
        }
    }
}

/// `Acquire (lock, 0xFFFF)`, `body`, `Release (lock)` as one method body.
fn locked<'a>(
    acquire: &'a Acquire,
    release: &'a Release,
    body: Vec<&'a dyn Aml>,
) -> Vec<&'a dyn Aml> {
    let mut v: Vec<&dyn Aml> = vec![acquire];
    v.extend(body);
    v.push(release);
    v
}

/// A controller device holding an OpRegion over its MMIO window.
fn controller(
    path: &str,
    uid: &'static str,
    base: u64,
    size: u64,
    inner: Vec<&dyn Aml>,
) -> Vec<u8> {
    // Both windows sit in the 32-bit MMIO hole (layout.rs).
    let mem = Memory32Fixed::new(true, base as u32, size as u32);
    let crs = ResourceTemplate::new(vec![&mem]);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A06"));
    let uid = Name::new("_UID".into(), &uid);
    let crs = Name::new("_CRS".into(), &crs);
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid, &crs];
    children.extend(inner);
    to_bytes(&Device::new(path.into(), children))
}

/// `\_SB_.PRES`: the CPU hotplug controller's registers and lock.
fn cpu_controller() -> Vec<u8> {
    let base = layout::CPU_HOTPLUG_BASE as usize;
    let size = layout::CPU_HOTPLUG_SIZE as usize;
    let mutex = Mutex::new("CPLK".into(), 0);
    let region = OpRegion::new("PRST".into(), OpRegionSpace::SystemMemory, &base, &size);
    // Status byte at 0x4: a write of one bit writes that bit alone (the
    // others as zeros), which is what the device's ack/eject bits expect.
    let status = aml::Field::new(
        "PRST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Reserved(32),
            FieldEntry::Named(*b"CPEN", 1),
            FieldEntry::Named(*b"CINS", 1),
            FieldEntry::Named(*b"CRMV", 1),
            FieldEntry::Named(*b"CEJ0", 1),
            FieldEntry::Reserved(4),
            FieldEntry::Named(*b"CCMD", 8),
        ],
    );
    let select = aml::Field::new(
        "PRST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(*b"CSEL", 32),
            FieldEntry::Reserved(32),
            FieldEntry::Named(*b"CDAT", 32),
        ],
    );
    controller(
        "_SB_.PRES",
        "CPU Hotplug Controller",
        layout::CPU_HOTPLUG_BASE,
        layout::CPU_HOTPLUG_SIZE,
        vec![&mutex, &region, &status, &select],
    )
}

/// The methods under `\_SB_.CPUS` that talk to the controller.
fn cpu_methods(max_cpus: u32) -> Vec<u8> {
    let lock = "\\_SB_.PRES.CPLK";
    let csel = Path::new("\\_SB_.PRES.CSEL");
    let cpen = Path::new("\\_SB_.PRES.CPEN");
    let cins = Path::new("\\_SB_.PRES.CINS");
    let crmv = Path::new("\\_SB_.PRES.CRMV");
    let cej0 = Path::new("\\_SB_.PRES.CEJ0");
    let acquire = Acquire::new(lock.into(), WAIT_FOREVER);
    let release = Release::new(lock.into());
    let mut out = Vec::new();

    // CSTA(i): 0xF if CPU i is present, else 0.
    let sel_arg = Store::new(&csel, &aml::Arg(0));
    let zero_l0 = Store::new(&Local(0), &aml::ZERO);
    let sta = Store::new(&Local(0), &STA_PRESENT);
    let is_enabled = Equal::new(&cpen, &aml::ONE);
    let if_enabled = If::new(&is_enabled, vec![&sta]);
    let mut body = locked(&acquire, &release, vec![&sel_arg, &zero_l0, &if_enabled]);
    let ret = Return::new(&Local(0));
    body.push(&ret);
    out.extend(to_bytes(&Method::new("CSTA".into(), 1, true, body)));

    // CTFY(i, event): Notify the processor device of CPU i. Notify needs a
    // fixed object, hence one If per CPU.
    let names: Vec<Path> = (0..max_cpus)
        .map(|i| cpu_device_name(i).as_str().into())
        .collect();
    let ids: Vec<u64> = (0..max_cpus).map(u64::from).collect();
    let notifies: Vec<Notify> = names.iter().map(|n| Notify::new(n, &aml::Arg(1))).collect();
    let conds: Vec<Equal> = ids.iter().map(|i| Equal::new(&aml::Arg(0), i)).collect();
    let ifs: Vec<If> = conds
        .iter()
        .zip(&notifies)
        .map(|(c, n)| If::new(c, vec![n]))
        .collect();
    let ifs: Vec<&dyn Aml> = ifs.iter().map(|i| i as &dyn Aml).collect();
    out.extend(to_bytes(&Method::new("CTFY".into(), 2, true, ifs)));

    // CEJ0(i): eject CPU i (the device clears CPEN, the VMM parks the vCPU).
    let set_ej = Store::new(&cej0, &aml::ONE);
    let body = locked(&acquire, &release, vec![&sel_arg, &set_ej]);
    out.extend(to_bytes(&Method::new("CEJ0".into(), 1, true, body)));

    // CSCN(): for every possible CPU, notify and ack insertions (device
    // check) and removal requests (eject request).
    let sel_l0 = Store::new(&csel, &Local(0));
    let inserting = Equal::new(&cins, &aml::ONE);
    let tfy_ins = MethodCall::new("CTFY".into(), vec![&Local(0), &NOTIFY_DEVICE_CHECK]);
    let ack_ins = Store::new(&cins, &aml::ONE);
    let on_ins = If::new(&inserting, vec![&tfy_ins, &ack_ins]);
    let removing = Equal::new(&crmv, &aml::ONE);
    let tfy_rmv = MethodCall::new("CTFY".into(), vec![&Local(0), &NOTIFY_EJECT_REQUEST]);
    let ack_rmv = Store::new(&crmv, &aml::ONE);
    let on_rmv = If::new(&removing, vec![&tfy_rmv, &ack_rmv]);
    let next = Add::new(&Local(0), &Local(0), &aml::ONE);
    let max = u64::from(max_cpus);
    let more = LessThan::new(&Local(0), &max);
    let walk = While::new(&more, vec![&sel_l0, &on_ins, &on_rmv, &next]);
    let body = locked(&acquire, &release, vec![&zero_l0, &walk]);
    out.extend(to_bytes(&Method::new("CSCN".into(), 0, true, body)));
    out
}

/// `\_SB_.CPUS.Cxxx` for vCPU `i`.
fn cpu_device(i: u32, hotplug: bool) -> Vec<u8> {
    let uid = u64::from(i);
    let hid = Name::new("_HID".into(), &"ACPI0007");
    let uid_name = Name::new("_UID".into(), &uid);
    let mat = aml::BufferData::new(mat_entry(i));
    let mat = Name::new("_MAT".into(), &mat);
    let csta = MethodCall::new("CSTA".into(), vec![&uid]);
    let ret = Return::new(&csta);
    let sta = Method::new("_STA".into(), 0, false, vec![&ret]);
    let cej0 = MethodCall::new("CEJ0".into(), vec![&uid]);
    let ej0 = Method::new("_EJ0".into(), 1, false, vec![&cej0]);
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid_name];
    if hotplug {
        children.push(&sta);
    }
    children.push(&mat);
    if hotplug && i != 0 {
        children.push(&ej0);
    }
    to_bytes(&Device::new(cpu_device_name(i).as_str().into(), children))
}

/// `\_SB_.PRES` (with hot-add) and `\_SB_.CPUS` with one processor device
/// per possible vCPU. `cfg` must be validated.
pub fn cpus(cfg: &AcpiConfig) -> Vec<u8> {
    let hotplug = cfg.cpu_hotplug();
    let mut out = Vec::new();
    if hotplug {
        out.extend(cpu_controller());
    }
    let hid = Name::new("_HID".into(), &"ACPI0010");
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A05"));
    let methods = Raw(if hotplug {
        cpu_methods(cfg.max_cpus)
    } else {
        Vec::new()
    });
    let devices = Raw((0..cfg.max_cpus.min(madt::MAX_CPUS))
        .flat_map(|i| cpu_device(i, hotplug))
        .collect());
    out.extend(to_bytes(&Device::new(
        "_SB_.CPUS".into(),
        vec![&hid, &cid, &methods, &devices],
    )));
    out
}

/// The methods under `\_SB_.MHPC`.
fn memory_methods(slots: u32) -> Vec<u8> {
    let lock = "\\_SB_.MHPC.MLCK";
    let msel = Path::new("\\_SB_.MHPC.MSEL");
    let men = Path::new("\\_SB_.MHPC.MEN_");
    let mins = Path::new("\\_SB_.MHPC.MINS");
    let mrmv = Path::new("\\_SB_.MHPC.MRMV");
    let acquire = Acquire::new(lock.into(), WAIT_FOREVER);
    let release = Release::new(lock.into());
    let mut out = Vec::new();

    // MSTA(s): 0xF if slot s is populated, else 0.
    let sel_arg = Store::new(&msel, &aml::Arg(0));
    let zero_l0 = Store::new(&Local(0), &aml::ZERO);
    let sta = Store::new(&Local(0), &STA_PRESENT);
    let is_enabled = Equal::new(&men, &aml::ONE);
    let if_enabled = If::new(&is_enabled, vec![&sta]);
    let mut body = locked(&acquire, &release, vec![&sel_arg, &zero_l0, &if_enabled]);
    let ret = Return::new(&Local(0));
    body.push(&ret);
    out.extend(to_bytes(&Method::new("MSTA".into(), 1, true, body)));

    // MCRS(s): a QWordMemory descriptor for slot s, filled from the
    // registers with 64-bit arithmetic (DSDT revision 2).
    let template = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::Cacheable,
        true,
        0,
        0xffff_ffff_ffff_fffe,
        None,
    );
    let template = ResourceTemplate::new(vec![&template]);
    let mr64 = Name::new("MR64".into(), &template);
    let buf = Path::new("MR64");
    let (min, max, len) = (Path::new("MIN_"), Path::new("MAX_"), Path::new("LEN_"));
    // QWord address space descriptor: minimum at byte 14, maximum at 22,
    // length at 38.
    let (o_min, o_max, o_len) = (14u8, 22u8, 38u8);
    let f_min = CreateQWordField::new(&min, &buf, &o_min);
    let f_max = CreateQWordField::new(&max, &buf, &o_max);
    let f_len = CreateQWordField::new(&len, &buf, &o_len);
    let (mhbl, mhbh) = (Path::new("\\_SB_.MHPC.MHBL"), Path::new("\\_SB_.MHPC.MHBH"));
    let (mhll, mhlh) = (Path::new("\\_SB_.MHPC.MHLL"), Path::new("\\_SB_.MHPC.MHLH"));
    let thirty_two = 32u8;
    let base_hi = ShiftLeft::new(&Local(0), &mhbh, &thirty_two);
    let base = Or::new(&Local(0), &Local(0), &mhbl);
    let len_hi = ShiftLeft::new(&Local(1), &mhlh, &thirty_two);
    let length = Or::new(&Local(1), &Local(1), &mhll);
    let set_min = Store::new(&min, &Local(0));
    let set_len = Store::new(&len, &Local(1));
    let end = Add::new(&Local(2), &Local(0), &Local(1));
    let last = Subtract::new(&max, &Local(2), &aml::ONE);
    let mut body = locked(
        &acquire,
        &release,
        vec![
            &sel_arg, &mr64, &f_min, &f_max, &f_len, &base_hi, &base, &len_hi, &length, &set_min,
            &set_len, &end, &last,
        ],
    );
    let ret = Return::new(&buf);
    body.push(&ret);
    out.extend(to_bytes(&Method::new("MCRS".into(), 1, true, body)));

    // MTFY(s, event): Notify memory device s.
    let names: Vec<Path> = (0..slots)
        .map(|s| memory_device_name(s).as_str().into())
        .collect();
    let ids: Vec<u64> = (0..slots).map(u64::from).collect();
    let notifies: Vec<Notify> = names.iter().map(|n| Notify::new(n, &aml::Arg(1))).collect();
    let conds: Vec<Equal> = ids.iter().map(|i| Equal::new(&aml::Arg(0), i)).collect();
    let ifs: Vec<If> = conds
        .iter()
        .zip(&notifies)
        .map(|(c, n)| If::new(c, vec![n]))
        .collect();
    let ifs: Vec<&dyn Aml> = ifs.iter().map(|i| i as &dyn Aml).collect();
    out.extend(to_bytes(&Method::new("MTFY".into(), 2, true, ifs)));

    // MSCN(): notify and ack every inserting (and removing) slot.
    let sel_l0 = Store::new(&msel, &Local(0));
    let inserting = Equal::new(&mins, &aml::ONE);
    let tfy_ins = MethodCall::new("MTFY".into(), vec![&Local(0), &NOTIFY_DEVICE_CHECK]);
    let ack_ins = Store::new(&mins, &aml::ONE);
    let on_ins = If::new(&inserting, vec![&tfy_ins, &ack_ins]);
    let removing = Equal::new(&mrmv, &aml::ONE);
    let tfy_rmv = MethodCall::new("MTFY".into(), vec![&Local(0), &NOTIFY_EJECT_REQUEST]);
    let ack_rmv = Store::new(&mrmv, &aml::ONE);
    let on_rmv = If::new(&removing, vec![&tfy_rmv, &ack_rmv]);
    let next = Add::new(&Local(0), &Local(0), &aml::ONE);
    let max = u64::from(slots);
    let more = LessThan::new(&Local(0), &max);
    let walk = While::new(&more, vec![&sel_l0, &on_ins, &on_rmv, &next]);
    let body = locked(&acquire, &release, vec![&zero_l0, &walk]);
    out.extend(to_bytes(&Method::new("MSCN".into(), 0, true, body)));
    out
}

/// `\_SB_.MHPC.Mxxx` for slot `s`.
fn memory_device(s: u32) -> Vec<u8> {
    let uid = u64::from(s);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C80"));
    let uid_name = Name::new("_UID".into(), &uid);
    let msta = MethodCall::new("MSTA".into(), vec![&uid]);
    let ret_sta = Return::new(&msta);
    let sta = Method::new("_STA".into(), 0, false, vec![&ret_sta]);
    let mcrs = MethodCall::new("MCRS".into(), vec![&uid]);
    let ret_crs = Return::new(&mcrs);
    let crs = Method::new("_CRS".into(), 0, false, vec![&ret_crs]);
    to_bytes(&Device::new(
        memory_device_name(s).as_str().into(),
        vec![&hid, &uid_name, &sta, &crs],
    ))
}

/// `\_SB_.MHPC` with its registers, methods and one memory device per slot.
pub fn memory(info: &MemoryHotplugInfo) -> Vec<u8> {
    let base = layout::MEMORY_HOTPLUG_BASE as usize;
    let size = layout::MEMORY_HOTPLUG_SIZE as usize;
    let mutex = Mutex::new("MLCK".into(), 0);
    let region = OpRegion::new("MHPR".into(), OpRegionSpace::SystemMemory, &base, &size);
    let regs = aml::Field::new(
        "MHPR".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(*b"MHBL", 32),
            FieldEntry::Named(*b"MHBH", 32),
            FieldEntry::Named(*b"MHLL", 32),
            FieldEntry::Named(*b"MHLH", 32),
            FieldEntry::Named(*b"MHPX", 32),
        ],
    );
    let status = aml::Field::new(
        "MHPR".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Reserved(160),
            FieldEntry::Named(*b"MEN_", 1),
            FieldEntry::Named(*b"MINS", 1),
            FieldEntry::Named(*b"MRMV", 1),
            FieldEntry::Named(*b"MEJ0", 1),
        ],
    );
    let select = aml::Field::new(
        "MHPR".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(*b"MSEL", 32)],
    );
    let methods = Raw(memory_methods(info.slots));
    let devices = Raw((0..info.slots).flat_map(memory_device).collect());
    controller(
        "_SB_.MHPC",
        "Memory Hotplug Controller",
        layout::MEMORY_HOTPLUG_BASE,
        layout::MEMORY_HOTPLUG_SIZE,
        vec![&mutex, &region, &regs, &status, &select, &methods, &devices],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mat_is_an_enabled_lapic_or_x2apic_entry() {
        assert_eq!(mat_entry(0), vec![0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(mat_entry(3), vec![0, 8, 3, 3, 1, 0, 0, 0]);
        assert_eq!(mat_entry(254), vec![0, 8, 254, 254, 1, 0, 0, 0]);
        assert_eq!(
            mat_entry(0x123),
            vec![9, 16, 0, 0, 0x23, 1, 0, 0, 1, 0, 0, 0, 0x23, 1, 0, 0]
        );
        assert_eq!(cpu_device_name(0x3ff), "C3FF");
        assert_eq!(memory_device_name(7), "M007");
    }

    #[test]
    fn mat_matches_the_madt_entry_but_enabled() {
        let cfg = AcpiConfig::new(1, 300, 0);
        let b = madt::build(&cfg);
        let mut off = 44;
        let mut cpu = 0u32;
        while off < b.len() {
            let (t, len) = (b[off], b[off + 1] as usize);
            let entry = &b[off..off + len];
            if t == 0 || t == 9 {
                let mat = mat_entry(cpu);
                // Same type, length, ids; only the flags differ.
                let flags_at = if t == 0 { 4 } else { 8 };
                let mut expect = entry.to_vec();
                expect[flags_at..flags_at + 4].copy_from_slice(&1u32.to_le_bytes());
                assert_eq!(mat, expect, "cpu {cpu}");
                cpu += 1;
            }
            off += len;
        }
        assert_eq!(cpu, 300);
    }
}
