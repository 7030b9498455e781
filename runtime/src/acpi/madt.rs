//! The MADT (signature `APIC`): the local APICs of every *possible* vCPU, the
//! IOAPIC and the LINT1 NMI wiring.
//!
//! vCPU `i` has APIC id `i`. Boot vCPUs are Enabled; the ones up to `max` are
//! Online Capable (ACPI 6.3), which is what lets Linux reserve per-CPU state
//! for them and accept them on hot-add without counting them as present at
//! boot. APIC ids above 254 need x2APIC entries (type 9). No interrupt source
//! overrides: KVM routes ISA IRQ *n* to IOAPIC pin *n*, which is Linux's
//! default without overrides (Firecracker does the same).

use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::{Aml, AmlSink};
use zerocopy::{Immutable, IntoBytes};

use super::{AcpiConfig, OEM_ID, OEM_REVISION, to_bytes};
use crate::arch::x86_64::layout;

/// MADT revision of ACPI 6.3+ (the Online Capable flag).
pub const MADT_REVISION: u8 = 5;
/// Most vCPUs the tables describe (KVM's usual `KVM_MAX_VCPUS`).
pub const MAX_CPUS: u32 = 1024;
/// Highest APIC id a (non-x2APIC) Processor Local APIC entry can carry.
pub(crate) const MAX_XAPIC_ID: u32 = 254;
/// IOAPIC id when `max_cpus` would collide with 0xff (broadcast).
const MAX_IOAPIC_ID: u8 = 0xfe;

/// MADT structure types this module writes itself.
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const TYPE_LOCAL_X2APIC: u8 = 9;
const TYPE_LOCAL_X2APIC_NMI: u8 = 0xa;

/// MPS INTI flags for the NMI entries: active high, edge triggered.
const NMI_FLAGS: u16 = (1 << 0) | (1 << 2);
/// The LAPIC pin NMIs arrive on.
const NMI_LINT: u8 = 1;

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalX2Apic {
    r#type: u8,
    length: u8,
    _reserved: u16,
    x2apic_id: u32,
    flags: u32,
    processor_uid: u32,
}

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalX2ApicNmi {
    r#type: u8,
    length: u8,
    flags: u16,
    processor_uid: u32,
    lint: u8,
    _reserved: [u8; 3],
}

macro_rules! raw_aml {
    ($($t:ty),*) => {$(
        impl Aml for $t {
            fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
                sink.vec(self.as_bytes());
            }
        }
    )*};
}
raw_aml!(LocalApicNmi, LocalX2Apic, LocalX2ApicNmi);

/// The Enabled / Online Capable status of vCPU `i`.
pub fn cpu_status(cfg: &AcpiConfig, i: u32) -> EnabledStatus {
    if i < cfg.boot_cpus {
        EnabledStatus::Enabled
    } else {
        EnabledStatus::DisabledOnlineCapable
    }
}

/// The MADT bytes. `cfg` must already be validated (`max_cpus <= MAX_CPUS`).
pub fn build(cfg: &AcpiConfig) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"VMCTLAPI",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_START as u32),
    );
    for i in 0..cfg.max_cpus.min(MAX_CPUS) {
        let status = cpu_status(cfg, i);
        match u8::try_from(i) {
            Ok(id) if i <= MAX_XAPIC_ID => {
                madt.add_structure(ProcessorLocalApic::new(id, id, status));
            }
            _ => madt.add_structure(LocalX2Apic {
                r#type: TYPE_LOCAL_X2APIC,
                length: 16,
                _reserved: 0,
                x2apic_id: i,
                flags: status as u32,
                processor_uid: i,
            }),
        }
    }
    let ioapic_id = u8::try_from(cfg.max_cpus)
        .unwrap_or(MAX_IOAPIC_ID)
        .min(MAX_IOAPIC_ID);
    madt.add_structure(IoApic::new(ioapic_id, layout::IOAPIC_START as u32, 0));
    // LINT1 is the NMI pin on every processor (uid 0xff / 0xffffffff = all).
    madt.add_structure(LocalApicNmi {
        r#type: TYPE_LOCAL_APIC_NMI,
        length: 6,
        processor_uid: 0xff,
        flags: NMI_FLAGS,
        lint: NMI_LINT,
    });
    if cfg.max_cpus > MAX_XAPIC_ID + 1 {
        madt.add_structure(LocalX2ApicNmi {
            r#type: TYPE_LOCAL_X2APIC_NMI,
            length: 12,
            flags: NMI_FLAGS,
            processor_uid: u32::MAX,
            lint: NMI_LINT,
            _reserved: [0; 3],
        });
    }
    let mut bytes = to_bytes(&madt);
    set_revision(&mut bytes, MADT_REVISION);
    bytes
}

/// acpi_tables writes MADT revision 1, but Linux honours the Online Capable
/// flag only from revision 5 (ACPI 6.3) on; before that it treats every
/// disabled entry as hot-pluggable.
fn set_revision(table: &mut [u8], revision: u8) {
    if table.len() < 36 {
        return;
    }
    table[8] = revision;
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (type, body) of every structure after the 44-byte header.
    fn structures(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < b.len() {
            let len = b[off + 1] as usize;
            out.push((b[off], b[off..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, b.len());
        out
    }

    #[test]
    fn one_lapic_per_possible_cpu_with_enabled_and_online_capable_flags() {
        let b = build(&AcpiConfig::new(2, 4, 0));
        assert_eq!(&b[0..4], b"APIC");
        assert_eq!(b[8], MADT_REVISION);
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        assert_eq!(
            u32::from_le_bytes(b[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        assert_eq!(
            u32::from_le_bytes(b[40..44].try_into().unwrap()),
            0,
            "no PCAT_COMPAT"
        );
        let s = structures(&b);
        let lapics: Vec<_> = s.iter().filter(|(t, _)| *t == 0).collect();
        assert_eq!(lapics.len(), 4);
        for (i, (_, body)) in lapics.iter().enumerate() {
            assert_eq!(body[2] as usize, i, "uid");
            assert_eq!(body[3] as usize, i, "apic id");
            let flags = u32::from_le_bytes(body[4..8].try_into().unwrap());
            assert_eq!(flags, if i < 2 { 1 } else { 2 });
        }
        let ioapics: Vec<_> = s.iter().filter(|(t, _)| *t == 1).collect();
        assert_eq!(ioapics.len(), 1);
        let io = &ioapics[0].1;
        assert_eq!(io[2], 4, "IOAPIC id = max_cpus");
        assert_eq!(
            u32::from_le_bytes(io[4..8].try_into().unwrap()),
            0xfec0_0000
        );
        assert_eq!(u32::from_le_bytes(io[8..12].try_into().unwrap()), 0);
        let nmis: Vec<_> = s.iter().filter(|(t, _)| *t == 4).collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!(nmis[0].1, vec![4, 6, 0xff, 5, 0, 1]);
        assert_eq!(s.len(), 6);
    }

    #[test]
    fn x2apic_entries_above_apic_id_254() {
        let b = build(&AcpiConfig::new(1, 300, 0));
        let s = structures(&b);
        assert_eq!(s.iter().filter(|(t, _)| *t == 0).count(), 255);
        let x2: Vec<_> = s.iter().filter(|(t, _)| *t == 9).collect();
        assert_eq!(x2.len(), 45);
        let first = &x2[0].1;
        assert_eq!(u32::from_le_bytes(first[4..8].try_into().unwrap()), 255);
        assert_eq!(u32::from_le_bytes(first[8..12].try_into().unwrap()), 2);
        assert_eq!(s.iter().filter(|(t, _)| *t == 0xa).count(), 1);
        let io = &s.iter().find(|(t, _)| *t == 1).unwrap().1;
        assert_eq!(io[2], 0xfe);
    }
}
