//! Finding the CPUs the way an OS does: the RSDP in the BIOS area, the XSDT
//! (or RSDT) it points at, and the MADT ("APIC") listing one local APIC per
//! possible vCPU — enabled for the boot vCPUs, online-capable for hot-add
//! headroom. All lengths and counts in the tables are bounded before use.

use crate::layout::{RSDP_SCAN_END, RSDP_SCAN_START};
use crate::phys::PhysMem;

/// Largest table diag will walk.
const MAX_TABLE_LEN: u32 = 64 * 1024;
/// Largest number of APIC IDs kept for starting APs.
pub const MAX_CPUS: usize = 256;

/// MADT flags bit 0: enabled; bit 1: online capable.
const LAPIC_ENABLED: u32 = 1 << 0;
const LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;

/// What the MADT says about CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus {
    /// Enabled local APICs (the boot vCPUs).
    pub enabled: u32,
    /// Enabled or online-capable local APICs (boot + hot-add headroom).
    pub possible: u32,
    /// APIC IDs of the enabled CPUs, first `enabled.min(MAX_CPUS)` valid.
    pub apic_ids: [u32; MAX_CPUS],
    /// Every possible CPU in MADT order, first `possible.min(MAX_CPUS)`
    /// valid: its processor UID (the hotplug controllers' CPU index), APIC
    /// ID and whether it was enabled at boot.
    pub possible_cpus: [PossibleCpu; MAX_CPUS],
}

/// One enabled or online-capable MADT entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PossibleCpu {
    pub uid: u32,
    pub apic_id: u32,
    pub enabled: bool,
}

impl Default for Cpus {
    fn default() -> Self {
        Self {
            enabled: 0,
            possible: 0,
            apic_ids: [0; MAX_CPUS],
            possible_cpus: [PossibleCpu::default(); MAX_CPUS],
        }
    }
}

impl Cpus {
    pub fn enabled_ids(&self) -> &[u32] {
        let n = (self.enabled as usize).min(MAX_CPUS);
        self.apic_ids.get(..n).unwrap_or(&[])
    }

    pub fn possible_cpus(&self) -> &[PossibleCpu] {
        let n = (self.possible as usize).min(MAX_CPUS);
        self.possible_cpus.get(..n).unwrap_or(&[])
    }

    /// The MADT entry of hotplug CPU index `index` (= processor UID in the
    /// contract), if the MADT lists it.
    pub fn by_index(&self, index: u32) -> Option<PossibleCpu> {
        self.possible_cpus()
            .iter()
            .find(|c| c.uid == index)
            .copied()
    }

    /// The APIC ID to send INIT/SIPI to for hotplug CPU index `index`: the
    /// MADT's answer, else the contract's "index = APIC ID".
    pub fn apic_id_for_index(&self, index: u32) -> u32 {
        self.by_index(index).map_or(index, |c| c.apic_id)
    }
}

/// Problems worth a line on the console; parsing goes on where it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    NoRsdp,
    NoRootTable,
    NoMadt,
    BadChecksum(&'static str),
}

impl AcpiError {
    pub fn describe(&self) -> &'static str {
        match self {
            AcpiError::NoRsdp => "no RSDP in 0xe0000..0x100000",
            AcpiError::NoRootTable => "RSDP points at no readable XSDT/RSDT",
            AcpiError::NoMadt => "no MADT (APIC) table",
            AcpiError::BadChecksum(what) => what,
        }
    }
}

/// The result of reading the tables: what was found, plus the first
/// checksum problem seen (tables with a bad checksum are still used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Madt {
    pub cpus: Cpus,
    pub warning: Option<AcpiError>,
}

fn checksum_ok(mem: &impl PhysMem, addr: u64, len: u32) -> bool {
    let mut sum = 0u8;
    let mut chunk = [0u8; 64];
    let mut off = 0u32;
    while off < len {
        let n = (len - off).min(64) as usize;
        let Some(dst) = chunk.get_mut(..n) else {
            return false;
        };
        if !mem.read(addr + u64::from(off), dst) {
            return false;
        }
        for &b in dst.iter() {
            sum = sum.wrapping_add(b);
        }
        off += n as u32;
    }
    sum == 0
}

/// Scans the BIOS area on 16-byte boundaries for "RSD PTR ".
pub fn find_rsdp(mem: &impl PhysMem) -> Option<u64> {
    let mut addr = RSDP_SCAN_START;
    while addr < RSDP_SCAN_END {
        let mut sig = [0u8; 8];
        if mem.read(addr, &mut sig) && &sig == b"RSD PTR " && checksum_ok(mem, addr, 20) {
            return Some(addr);
        }
        addr += 16;
    }
    None
}

/// A table header's signature and length (length bounded).
fn table_header(mem: &impl PhysMem, addr: u64) -> Option<([u8; 4], u32)> {
    let mut sig = [0u8; 4];
    if !mem.read(addr, &mut sig) {
        return None;
    }
    let len = mem.read_u32(addr + 4)?;
    if !(36..=MAX_TABLE_LEN).contains(&len) {
        return None;
    }
    Some((sig, len))
}

/// Reads the MADT reached from the RSDP and counts its CPUs.
pub fn read_madt(mem: &impl PhysMem) -> Result<Madt, AcpiError> {
    let rsdp = find_rsdp(mem).ok_or(AcpiError::NoRsdp)?;
    let mut warning = None;
    let revision = mem.read_u8(rsdp + 15).unwrap_or(0);
    let xsdt = if revision >= 2 {
        mem.read_u64(rsdp + 24).unwrap_or(0)
    } else {
        0
    };
    if revision >= 2 && !checksum_ok(mem, rsdp, 36) {
        warning = Some(AcpiError::BadChecksum("RSDP extended checksum is wrong"));
    }
    // Root table: XSDT (8-byte entries) if there is one, else RSDT (4-byte).
    let (root, entry_size, want_sig) = if xsdt != 0 {
        (xsdt, 8u64, b"XSDT")
    } else {
        (
            u64::from(mem.read_u32(rsdp + 16).unwrap_or(0)),
            4u64,
            b"RSDT",
        )
    };
    let (sig, len) = table_header(mem, root).ok_or(AcpiError::NoRootTable)?;
    if &sig != want_sig {
        return Err(AcpiError::NoRootTable);
    }
    if !checksum_ok(mem, root, len) {
        warning = warning.or(Some(AcpiError::BadChecksum("XSDT/RSDT checksum is wrong")));
    }
    let entries = (u64::from(len) - 36) / entry_size;
    for i in 0..entries {
        let at = root + 36 + i * entry_size;
        let table = if entry_size == 8 {
            mem.read_u64(at)
        } else {
            mem.read_u32(at).map(u64::from)
        };
        let Some(table) = table else { continue };
        let Some((sig, len)) = table_header(mem, table) else {
            continue;
        };
        if &sig == b"APIC" {
            if !checksum_ok(mem, table, len) {
                warning = warning.or(Some(AcpiError::BadChecksum("MADT checksum is wrong")));
            }
            let cpus = parse_madt(mem, table, len);
            return Ok(Madt { cpus, warning });
        }
    }
    Err(AcpiError::NoMadt)
}

/// Walks the MADT's interrupt controller structures after its 44-byte
/// header: type 0 (local APIC) and type 9 (local x2APIC).
fn parse_madt(mem: &impl PhysMem, table: u64, len: u32) -> Cpus {
    let mut cpus = Cpus::default();
    let end = table + u64::from(len);
    let mut at = table + 44;
    // Every structure is at least 2 bytes long, so this bounds the loop.
    while at + 2 <= end {
        let (Some(kind), Some(slen)) = (mem.read_u8(at), mem.read_u8(at + 1)) else {
            break;
        };
        let slen = u64::from(slen);
        if slen < 2 || at + slen > end {
            break;
        }
        // (UID, APIC ID, flags)
        let entry = match (kind, slen) {
            (0, 8..) => match (
                mem.read_u8(at + 2),
                mem.read_u8(at + 3),
                mem.read_u32(at + 4),
            ) {
                (Some(uid), Some(id), Some(flags)) => Some((u32::from(uid), u32::from(id), flags)),
                _ => None,
            },
            (9, 16..) => match (
                mem.read_u32(at + 4),
                mem.read_u32(at + 8),
                mem.read_u32(at + 12),
            ) {
                (Some(id), Some(flags), Some(uid)) => Some((uid, id, flags)),
                _ => None,
            },
            _ => None,
        };
        if let Some((uid, apic_id, flags)) = entry {
            let enabled = flags & LAPIC_ENABLED != 0;
            if enabled {
                if let Some(slot) = cpus.apic_ids.get_mut(cpus.enabled as usize) {
                    *slot = apic_id;
                }
                cpus.enabled += 1;
            }
            if flags & (LAPIC_ENABLED | LAPIC_ONLINE_CAPABLE) != 0 {
                if let Some(slot) = cpus.possible_cpus.get_mut(cpus.possible as usize) {
                    *slot = PossibleCpu {
                        uid,
                        apic_id,
                        enabled,
                    };
                }
                cpus.possible += 1;
            }
        }
        at += slen;
    }
    cpus
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::phys::Fake;

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    fn header(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t[4..8].copy_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t[8] = 1;
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    /// Memory with an RSDP at `rsdp_at`, an XSDT at 0xe1000 and a MADT at
    /// 0xe2000 holding `entries` (raw interrupt controller structures).
    pub fn acpi_memory(rsdp_at: u64, entries: &[u8]) -> Fake {
        let mut m = Fake::new(0xe0000, 0x20000);
        let mut madt_body = vec![0u8; 8];
        madt_body[..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        madt_body.extend_from_slice(entries);
        let madt = header(b"APIC", &madt_body);
        m.write(0xe2000, &madt);
        let facp = header(b"FACP", &[0u8; 240]);
        m.write(0xe3000, &facp);
        let mut xsdt_body = Vec::new();
        xsdt_body.extend_from_slice(&0xe3000u64.to_le_bytes());
        xsdt_body.extend_from_slice(&0xe2000u64.to_le_bytes());
        let xsdt = header(b"XSDT", &xsdt_body);
        m.write(0xe1000, &xsdt);
        let mut rsdp = vec![0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[15] = 2;
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&0xe1000u64.to_le_bytes());
        fix_checksum(&mut rsdp[..20], 8);
        fix_checksum(&mut rsdp, 32);
        m.write(rsdp_at, &rsdp);
        m
    }

    pub fn lapic(id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0u8, 8, id, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn x2apic(id: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![9u8, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&id.to_le_bytes());
        e
    }

    #[test]
    fn counts_enabled_and_online_capable() {
        let mut entries = Vec::new();
        entries.extend(lapic(0, 1));
        entries.extend(lapic(1, 1));
        entries.extend(lapic(2, 2));
        entries.extend(lapic(3, 2));
        entries.extend(lapic(4, 0)); // neither: not a possible CPU
        entries.extend([1u8, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]); // IOAPIC
        let m = acpi_memory(0xe0000, &entries);
        let madt = read_madt(&m).unwrap();
        assert_eq!(madt.warning, None);
        assert_eq!(madt.cpus.enabled, 2);
        assert_eq!(madt.cpus.possible, 4);
        assert_eq!(madt.cpus.enabled_ids(), &[0, 1]);
        let possible: Vec<_> = madt
            .cpus
            .possible_cpus()
            .iter()
            .map(|c| (c.uid, c.apic_id, c.enabled))
            .collect();
        assert_eq!(
            possible,
            [(0, 0, true), (1, 1, true), (2, 2, false), (3, 3, false)]
        );
        assert_eq!(madt.cpus.apic_id_for_index(3), 3);
        assert_eq!(madt.cpus.by_index(4), None);
        // Not in the MADT: the contract's index = APIC ID.
        assert_eq!(madt.cpus.apic_id_for_index(9), 9);
    }

    #[test]
    fn index_maps_through_the_uid() {
        // UID 1 has APIC ID 6: the hotplug index is the UID.
        let mut entries = lapic(0, 1);
        entries.extend([0u8, 8, 1, 6, 2, 0, 0, 0]);
        let m = acpi_memory(0xe0000, &entries);
        let cpus = read_madt(&m).unwrap().cpus;
        assert_eq!(cpus.apic_id_for_index(1), 6);
        assert!(!cpus.by_index(1).unwrap().enabled);
    }

    #[test]
    fn x2apic_entries_count() {
        let mut entries = lapic(0, 1);
        entries.extend(x2apic(300, 1));
        entries.extend(x2apic(301, 2));
        let m = acpi_memory(0xe0040, &entries);
        let madt = read_madt(&m).unwrap();
        assert_eq!((madt.cpus.enabled, madt.cpus.possible), (2, 3));
        assert_eq!(madt.cpus.enabled_ids(), &[0, 300]);
        assert_eq!(madt.cpus.apic_id_for_index(301), 301);
        assert_eq!(madt.cpus.by_index(300).map(|c| c.enabled), Some(true));
    }

    #[test]
    fn no_rsdp() {
        let m = Fake::new(0xe0000, 0x20000);
        assert_eq!(read_madt(&m), Err(AcpiError::NoRsdp));
    }

    #[test]
    fn bad_madt_checksum_is_a_warning() {
        let mut m = acpi_memory(0xe0000, &lapic(0, 1));
        let off = (0xe2000 + 9 - 0xe0000) as usize;
        m.bytes[off] = m.bytes[off].wrapping_add(1);
        let madt = read_madt(&m).unwrap();
        assert_eq!(madt.cpus.enabled, 1);
        assert!(matches!(madt.warning, Some(AcpiError::BadChecksum(_))));
    }

    #[test]
    fn hostile_lengths_do_not_escape() {
        // A zero-length structure stops the walk; a huge one is ignored.
        let mut entries = lapic(0, 1);
        entries.extend([0u8, 0, 0, 0]);
        entries.extend(lapic(1, 1));
        let m = acpi_memory(0xe0000, &entries);
        assert_eq!(read_madt(&m).unwrap().cpus.enabled, 1);

        let mut entries = lapic(0, 1);
        entries.extend([0u8, 255]);
        let m = acpi_memory(0xe0000, &entries);
        assert_eq!(read_madt(&m).unwrap().cpus.enabled, 1);
    }

    #[test]
    fn table_length_is_bounded() {
        let mut m = acpi_memory(0xe0000, &lapic(0, 1));
        // XSDT claims 4 GiB: rejected instead of walked.
        let off = (0xe1000 + 4 - 0xe0000) as usize;
        m.bytes[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_madt(&m), Err(AcpiError::NoRootTable));
    }
}
