//! CPU and memory hot-add (and CPU hot-remove) through the VMM's hotplug
//! controllers, as in the issue-11 contract (/work/notes/hotplug-contract.md,
//! register numbers in `layout.rs`): cloud-hypervisor's CPU controller at
//! `CPU_HOTPLUG_BASE` and memory controller at `MEMORY_HOTPLUG_BASE`.
//!
//! The logic is written against [`Machine`] (registers, AP start/stop,
//! memory checks, console) so a fake controller drives it in host tests;
//! `kernel.rs` supplies the real machine.
//!
//! CPU scan, for every possible CPU index `i` (MADT processor UID = APIC ID):
//! select `i`, read CSEL back (a controller that did not take the selection
//! is skipped for that index), read the status.
//! - CINS: INIT/SIPI the AP (`smp::start_ap`), wait (bounded) for it to
//!   check in, then ack (write CINS). The ack is written even when the AP
//!   did not check in (logged), so the VMM is never left waiting.
//! - CRMV: make the AP stop running diag code (`smp::stop_ap`: it parks
//!   itself, or INIT stops it), ack (write CRMV), then write CEJ0. The BSP
//!   is never removed: its CRMV is acked, no CEJ0.
//!
//! Memory scan, for slots 0..8: select, read the status; for a populated
//! slot read base and length. A slot with MINS, or populated but not yet
//! known to diag (e.g. after a reset), is validated
//! (`memtest::validate_hotplug_range`), mapped, checked on every 2 MiB,
//! then MINS is acked; only a range that passed counts. A slot is checked
//! once per (base, length); a repeated MINS is only acked. MRMV is acked
//! and logged; the memory stays counted (memory eject is unsupported).
//!
//! A missing controller reads 0 (this VMM's unmapped MMIO) or all-ones: a
//! status with bits above bit 2 ends that controller's scan, zero means
//! "nothing there"; nothing loops or waits on a register.

use crate::acpi::Cpus;
use crate::layout::{
    CPU_HOTPLUG_BASE, CPU_HP_CEJ0, CPU_HP_CINS, CPU_HP_CPEN, CPU_HP_CRMV, CPU_HP_CSEL,
    CPU_HP_STATUS, MEM_HP_BASE_HI, MEM_HP_LEN_HI, MEM_HP_LEN_LO, MEM_HP_MEN, MEM_HP_MINS,
    MEM_HP_MRMV, MEM_HP_SEL_BASE_LO, MEM_HP_STATUS, MEMORY_HOTPLUG_BASE, MEMORY_HOTPLUG_SLOTS,
};
use crate::memtest::{self, Mismatch, RangeError};
use crate::text::Text;

/// Decoded CPU status byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStatus {
    pub present: bool,
    pub inserting: bool,
    pub removing: bool,
}

/// `None` for a value no controller sends (bits 3..7 set: all-ones of a
/// missing device).
pub fn decode_cpu_status(raw: u8) -> Option<CpuStatus> {
    if raw & !(CPU_HP_CPEN | CPU_HP_CINS | CPU_HP_CRMV) != 0 {
        return None;
    }
    Some(CpuStatus {
        present: raw & CPU_HP_CPEN != 0,
        inserting: raw & CPU_HP_CINS != 0,
        removing: raw & CPU_HP_CRMV != 0,
    })
}

/// Decoded memory slot status byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStatus {
    pub populated: bool,
    pub inserting: bool,
    pub removing: bool,
}

pub fn decode_mem_status(raw: u8) -> Option<MemStatus> {
    if raw & !(MEM_HP_MEN | MEM_HP_MINS | MEM_HP_MRMV) != 0 {
        return None;
    }
    Some(MemStatus {
        populated: raw & MEM_HP_MEN != 0,
        inserting: raw & MEM_HP_MINS != 0,
        removing: raw & MEM_HP_MRMV != 0,
    })
}

/// A 64-bit register from its two 32-bit halves.
pub fn join(lo: u32, hi: u32) -> u64 {
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Why hot-added memory did not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    Range(RangeError),
    Unmappable,
    Mismatch(Mismatch),
}

/// What the hotplug logic needs from the machine.
pub trait Machine {
    fn read8(&mut self, addr: u64) -> u8;
    fn read32(&mut self, addr: u64) -> u32;
    fn write8(&mut self, addr: u64, value: u8);
    fn write32(&mut self, addr: u64, value: u32);
    fn bsp_apic_id(&mut self) -> u32;
    /// INIT/SIPI one AP and wait (bounded) for it to check in.
    fn start_ap(&mut self, apic_id: u32) -> Result<(), &'static str>;
    /// Make one AP stop running diag code; says how it went.
    fn stop_ap(&mut self, apic_id: u32) -> &'static str;
    /// Map `[base, base + len)` and check every 2 MiB of it.
    fn map_and_check(&mut self, base: u64, len: u64) -> Result<(), MemError>;
    fn log(&mut self, line: &[u8]);
}

/// A hot-added memory range diag has looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSlot {
    pub base: u64,
    pub len: u64,
    pub verified: bool,
}

const SLOTS: usize = MEMORY_HOTPLUG_SLOTS as usize;
const MAX_INDEX: usize = crate::acpi::MAX_CPUS;

/// What diag knows about the hotplug controllers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hotplug {
    pub slots: [Option<MemSlot>; SLOTS],
    /// CPEN per CPU index, as last read.
    pub cpu_present: [bool; MAX_INDEX],
    /// Whether the CPU controller ever answered with a CPEN bit.
    pub cpu_controller_seen: bool,
    /// Whether diag may start APs (`diag.nosmp` says no).
    pub start_aps: bool,
    /// Logged once: the controller did not take a CPU selection.
    pub selection_warned: bool,
}

impl Default for Hotplug {
    fn default() -> Self {
        Self {
            slots: [None; SLOTS],
            cpu_present: [false; MAX_INDEX],
            cpu_controller_seen: false,
            start_aps: true,
            selection_warned: false,
        }
    }
}

fn cpu_line(m: &mut impl Machine, index: u32, what: &str, detail: &str) {
    let mut t = Text::<160>::new();
    t.str("diag: CPU ")
        .dec(u64::from(index))
        .str(": ")
        .str(what)
        .str(detail);
    m.log(t.as_bytes());
}

fn mem_line(m: &mut impl Machine, slot: u32, base: u64, len: u64, what: &str, detail: &str) {
    let mut t = Text::<192>::new();
    t.str("diag: memory slot ")
        .dec(u64::from(slot))
        .str(" (")
        .hex0x(base)
        .str(" +")
        .dec(len >> 20)
        .str(" MiB): ")
        .str(what)
        .str(detail);
    m.log(t.as_bytes());
}

impl Hotplug {
    /// Verified hot-added bytes.
    pub fn verified_bytes(&self) -> u64 {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.verified)
            .fold(0u64, |a, s| a.saturating_add(s.len))
    }

    /// CPUs the controller says are present, if it answered at all.
    pub fn present_cpus(&self) -> Option<u32> {
        self.cpu_controller_seen
            .then(|| self.cpu_present.iter().filter(|&&p| p).count() as u32)
    }

    /// One walk of the CPU controller over the possible CPUs of `cpus`.
    /// Returns true if anything diag reports may have changed.
    pub fn scan_cpus(&mut self, m: &mut impl Machine, cpus: &Cpus) -> bool {
        let mut changed = false;
        let bsp = m.bsp_apic_id();
        let count = (cpus.possible as usize).min(MAX_INDEX);
        for index in 0..count as u32 {
            let csel = CPU_HOTPLUG_BASE + CPU_HP_CSEL;
            m.write32(csel, index);
            if m.read32(csel) != index {
                if !self.selection_warned {
                    self.selection_warned = true;
                    cpu_line(m, index, "the CPU hotplug controller ignores selection", "");
                }
                continue;
            }
            let Some(status) = decode_cpu_status(m.read8(CPU_HOTPLUG_BASE + CPU_HP_STATUS)) else {
                // Not a controller.
                return changed;
            };
            if status.present {
                self.cpu_controller_seen = true;
            }
            if let Some(p) = self.cpu_present.get_mut(index as usize)
                && *p != status.present
            {
                *p = status.present;
                changed = true;
            }
            let apic_id = cpus.apic_id_for_index(index);
            if status.inserting {
                if apic_id == bsp {
                    cpu_line(m, index, "insertion of the boot CPU acked", "");
                } else if !self.start_aps {
                    cpu_line(m, index, "inserted; not started (diag.nosmp)", "");
                } else {
                    match m.start_ap(apic_id) {
                        Ok(()) => cpu_line(m, index, "inserted, online", ""),
                        Err(e) => cpu_line(m, index, "inserted, not started: ", e),
                    }
                }
                m.write8(CPU_HOTPLUG_BASE + CPU_HP_STATUS, CPU_HP_CINS);
                changed = true;
            }
            if status.removing {
                if apic_id == bsp {
                    cpu_line(
                        m,
                        index,
                        "removal of the boot CPU refused (acked, not ejected)",
                        "",
                    );
                    m.write8(CPU_HOTPLUG_BASE + CPU_HP_STATUS, CPU_HP_CRMV);
                } else {
                    let how = m.stop_ap(apic_id);
                    cpu_line(m, index, "removed: ", how);
                    m.write8(CPU_HOTPLUG_BASE + CPU_HP_STATUS, CPU_HP_CRMV);
                    m.write8(CPU_HOTPLUG_BASE + CPU_HP_STATUS, CPU_HP_CEJ0);
                }
                changed = true;
            }
        }
        changed
    }

    /// One walk of the memory controller's slots. `ram_end` is the end of
    /// the highest e820 RAM entry, `map_limit` what diag can map.
    pub fn scan_memory(&mut self, m: &mut impl Machine, ram_end: u64, map_limit: u64) -> bool {
        let mut changed = false;
        for slot in 0..MEMORY_HOTPLUG_SLOTS {
            m.write32(MEMORY_HOTPLUG_BASE + MEM_HP_SEL_BASE_LO, slot);
            let Some(status) = decode_mem_status(m.read8(MEMORY_HOTPLUG_BASE + MEM_HP_STATUS))
            else {
                return changed;
            };
            let Some(known) = self.slots.get(slot as usize).copied() else {
                break;
            };
            if !status.populated && !status.inserting {
                if let Some(k) = known {
                    mem_line(m, slot, k.base, k.len, "no longer populated", "");
                    self.slots[slot as usize] = None;
                    changed = true;
                }
                if status.removing {
                    m.write8(MEMORY_HOTPLUG_BASE + MEM_HP_STATUS, MEM_HP_MRMV);
                }
                continue;
            }
            let base = join(
                m.read32(MEMORY_HOTPLUG_BASE + MEM_HP_SEL_BASE_LO),
                m.read32(MEMORY_HOTPLUG_BASE + MEM_HP_BASE_HI),
            );
            let len = join(
                m.read32(MEMORY_HOTPLUG_BASE + MEM_HP_LEN_LO),
                m.read32(MEMORY_HOTPLUG_BASE + MEM_HP_LEN_HI),
            );
            let same = known.is_some_and(|k| k.base == base && k.len == len);
            if !same {
                let result = memtest::validate_hotplug_range(
                    slot,
                    base,
                    len,
                    ram_end,
                    map_limit,
                    &self.ranges(),
                )
                .map_err(MemError::Range)
                .and_then(|()| m.map_and_check(base, len));
                match result {
                    Ok(()) => mem_line(m, slot, base, len, "added, verified", ""),
                    Err(MemError::Range(e)) => {
                        mem_line(m, slot, base, len, "not used: ", e.describe())
                    }
                    Err(MemError::Unmappable) => {
                        mem_line(m, slot, base, len, "not used: ", "cannot be mapped")
                    }
                    Err(MemError::Mismatch(x)) => {
                        let mut t = Text::<96>::new();
                        t.str("read-back mismatch at ").hex0x(x.addr);
                        let detail = core::str::from_utf8(t.as_bytes()).unwrap_or("mismatch");
                        mem_line(m, slot, base, len, "FAILED: ", detail);
                    }
                }
                self.slots[slot as usize] = Some(MemSlot {
                    base,
                    len,
                    verified: result.is_ok(),
                });
                changed = true;
            }
            if status.inserting {
                // Re-select: map_and_check touched no register, but be
                // explicit about which slot the ack is for.
                m.write32(MEMORY_HOTPLUG_BASE + MEM_HP_SEL_BASE_LO, slot);
                m.write8(MEMORY_HOTPLUG_BASE + MEM_HP_STATUS, MEM_HP_MINS);
            }
            if status.removing {
                mem_line(
                    m,
                    slot,
                    base,
                    len,
                    "removal requested; ",
                    "unsupported, kept",
                );
                m.write32(MEMORY_HOTPLUG_BASE + MEM_HP_SEL_BASE_LO, slot);
                m.write8(MEMORY_HOTPLUG_BASE + MEM_HP_STATUS, MEM_HP_MRMV);
            }
        }
        changed
    }

    fn ranges(&self) -> [Option<(u64, u64)>; SLOTS] {
        let mut out = [None; SLOTS];
        for (o, s) in out.iter_mut().zip(self.slots.iter()) {
            *o = s.map(|s| (s.base, s.len));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::tests::{acpi_memory, lapic};
    use crate::layout::{CPU_HP_CCMD, CPU_HP_CDAT, MEM_HP_MEJ0, MEM_HP_PROXIMITY};
    use std::collections::HashMap;

    #[test]
    fn status_decoding() {
        assert_eq!(decode_cpu_status(0), Some(CpuStatus::default()));
        assert_eq!(
            decode_cpu_status(0b011),
            Some(CpuStatus {
                present: true,
                inserting: true,
                removing: false
            })
        );
        assert_eq!(decode_cpu_status(0b101).map(|s| s.removing), Some(true));
        assert_eq!(decode_cpu_status(0xff), None);
        assert_eq!(decode_cpu_status(CPU_HP_CEJ0), None);
        assert_eq!(
            decode_mem_status(0b011),
            Some(MemStatus {
                populated: true,
                inserting: true,
                removing: false
            })
        );
        assert_eq!(decode_mem_status(0xff), None);
        assert_eq!(join(0x4000_0000, 1), 0x1_4000_0000);
        assert_eq!(join(u32::MAX, u32::MAX), u64::MAX);
    }

    #[test]
    fn register_layout_matches_the_contract() {
        assert_eq!(
            (CPU_HP_CSEL, CPU_HP_STATUS, CPU_HP_CCMD, CPU_HP_CDAT),
            (0, 4, 5, 8)
        );
        assert_eq!(
            (CPU_HP_CPEN, CPU_HP_CINS, CPU_HP_CRMV, CPU_HP_CEJ0),
            (1, 2, 4, 8)
        );
        assert_eq!(
            (
                MEM_HP_SEL_BASE_LO,
                MEM_HP_BASE_HI,
                MEM_HP_LEN_LO,
                MEM_HP_LEN_HI,
                MEM_HP_PROXIMITY,
                MEM_HP_STATUS
            ),
            (0, 4, 8, 0xc, 0x10, 0x14)
        );
        assert_eq!(
            (MEM_HP_MEN, MEM_HP_MINS, MEM_HP_MRMV, MEM_HP_MEJ0),
            (1, 2, 4, 8)
        );
        assert_eq!(CPU_HOTPLUG_BASE, 0xd010_1000);
        assert_eq!(MEMORY_HOTPLUG_BASE, 0xd010_2000);
    }

    /// A fake VMM: both controllers as in the contract, APs that start and
    /// park, memory that verifies unless told otherwise.
    #[derive(Default)]
    struct Fake {
        missing: Option<u32>,
        csel: u32,
        cpu_status: HashMap<u32, u8>,
        msel: u32,
        slots: HashMap<u32, (u64, u64, u8)>,
        online: HashMap<u32, bool>,
        ejected: Vec<u32>,
        started: Vec<u32>,
        ap_fails: bool,
        bad_memory: bool,
        checked: Vec<(u64, u64)>,
        log: Vec<String>,
    }

    impl Machine for Fake {
        fn read8(&mut self, addr: u64) -> u8 {
            if let Some(v) = self.missing {
                return v as u8;
            }
            match addr {
                a if a == CPU_HOTPLUG_BASE + CPU_HP_STATUS => {
                    *self.cpu_status.get(&self.csel).unwrap_or(&0)
                }
                a if a == MEMORY_HOTPLUG_BASE + MEM_HP_STATUS => {
                    self.slots.get(&self.msel).map_or(0, |s| s.2)
                }
                _ => 0,
            }
        }
        fn read32(&mut self, addr: u64) -> u32 {
            if let Some(v) = self.missing {
                return v;
            }
            let (base, len, _) = self.slots.get(&self.msel).copied().unwrap_or_default();
            match addr - MEMORY_HOTPLUG_BASE.min(addr) {
                _ if addr == CPU_HOTPLUG_BASE + CPU_HP_CSEL => self.csel,
                0 => base as u32,
                4 => (base >> 32) as u32,
                8 => len as u32,
                0xc => (len >> 32) as u32,
                _ => 0,
            }
        }
        fn write8(&mut self, addr: u64, v: u8) {
            if self.missing.is_some() {
                return;
            }
            if addr == CPU_HOTPLUG_BASE + CPU_HP_STATUS {
                let s = self.cpu_status.entry(self.csel).or_default();
                if v & CPU_HP_CINS != 0 {
                    *s &= !CPU_HP_CINS;
                }
                if v & CPU_HP_CRMV != 0 {
                    *s &= !CPU_HP_CRMV;
                }
                if v & CPU_HP_CEJ0 != 0 {
                    *s &= !CPU_HP_CPEN;
                    self.ejected.push(self.csel);
                }
            }
            if addr == MEMORY_HOTPLUG_BASE + MEM_HP_STATUS
                && let Some(s) = self.slots.get_mut(&self.msel)
            {
                if v & MEM_HP_MINS != 0 {
                    s.2 &= !MEM_HP_MINS;
                }
                if v & MEM_HP_MRMV != 0 {
                    s.2 &= !MEM_HP_MRMV;
                }
            }
        }
        fn write32(&mut self, addr: u64, v: u32) {
            if self.missing.is_some() {
                return;
            }
            if addr == CPU_HOTPLUG_BASE + CPU_HP_CSEL {
                self.csel = v;
            }
            if addr == MEMORY_HOTPLUG_BASE + MEM_HP_SEL_BASE_LO {
                self.msel = v;
            }
        }
        fn bsp_apic_id(&mut self) -> u32 {
            0
        }
        fn start_ap(&mut self, id: u32) -> Result<(), &'static str> {
            self.started.push(id);
            if self.ap_fails {
                return Err("no check-in");
            }
            self.online.insert(id, true);
            Ok(())
        }
        fn stop_ap(&mut self, id: u32) -> &'static str {
            self.online.insert(id, false);
            "parked"
        }
        fn map_and_check(&mut self, base: u64, len: u64) -> Result<(), MemError> {
            self.checked.push((base, len));
            if self.bad_memory {
                return Err(MemError::Mismatch(Mismatch {
                    addr: base + 0x20_0000,
                    expected: 1,
                    found: 2,
                }));
            }
            Ok(())
        }
        fn log(&mut self, line: &[u8]) {
            self.log.push(String::from_utf8(line.to_vec()).unwrap());
        }
    }

    fn four_cpus_two_enabled() -> Cpus {
        let mut e = lapic(0, 1);
        e.extend(lapic(1, 1));
        e.extend(lapic(2, 2));
        e.extend(lapic(3, 2));
        crate::acpi::read_madt(&acpi_memory(0xe0000, &e))
            .unwrap()
            .cpus
    }

    #[test]
    fn cpu_add_remove_readd() {
        let cpus = four_cpus_two_enabled();
        let mut f = Fake::default();
        f.cpu_status.insert(0, CPU_HP_CPEN);
        f.cpu_status.insert(1, CPU_HP_CPEN);
        let mut h = Hotplug::default();
        assert!(h.scan_cpus(&mut f, &cpus)); // first look: CPEN learnt
        assert_eq!(h.present_cpus(), Some(2));
        assert!(!h.scan_cpus(&mut f, &cpus)); // nothing new
        assert!(f.started.is_empty());

        // Hot-add CPU 2.
        f.cpu_status.insert(2, CPU_HP_CPEN | CPU_HP_CINS);
        assert!(h.scan_cpus(&mut f, &cpus));
        assert_eq!(f.started, [2]);
        assert_eq!(f.cpu_status[&2], CPU_HP_CPEN, "CINS acked");
        assert_eq!(h.present_cpus(), Some(3));
        assert!(!h.scan_cpus(&mut f, &cpus));
        assert_eq!(f.started, [2], "started once");

        // Hot-remove CPU 2: stop, ack CRMV, CEJ0.
        f.cpu_status.insert(2, CPU_HP_CPEN | CPU_HP_CRMV);
        assert!(h.scan_cpus(&mut f, &cpus));
        assert!(!f.online[&2]);
        assert_eq!(f.ejected, [2]);
        assert_eq!(f.cpu_status[&2], 0);
        assert!(h.scan_cpus(&mut f, &cpus)); // CPEN gone
        assert_eq!(h.present_cpus(), Some(2));

        // Re-add: INIT/SIPI again.
        f.cpu_status.insert(2, CPU_HP_CPEN | CPU_HP_CINS);
        assert!(h.scan_cpus(&mut f, &cpus));
        assert_eq!(f.started, [2, 2]);
        assert!(f.online[&2]);
        assert!(f.log.iter().any(|l| l == "diag: CPU 2: inserted, online"));
    }

    #[test]
    fn cpu_insert_is_acked_even_if_the_ap_fails_and_bsp_is_never_ejected() {
        let cpus = four_cpus_two_enabled();
        let mut f = Fake {
            ap_fails: true,
            ..Fake::default()
        };
        f.cpu_status.insert(0, CPU_HP_CPEN | CPU_HP_CRMV);
        f.cpu_status.insert(3, CPU_HP_CPEN | CPU_HP_CINS);
        let mut h = Hotplug::default();
        h.scan_cpus(&mut f, &cpus);
        assert_eq!(f.cpu_status[&3], CPU_HP_CPEN);
        assert_eq!(f.cpu_status[&0], CPU_HP_CPEN, "CRMV acked, still present");
        assert!(f.ejected.is_empty());
        assert!(
            f.log
                .iter()
                .any(|l| l == "diag: CPU 3: inserted, not started: no check-in")
        );

        // diag.nosmp: acked, never started.
        let mut f = Fake::default();
        f.cpu_status.insert(2, CPU_HP_CPEN | CPU_HP_CINS);
        let mut h = Hotplug {
            start_aps: false,
            ..Hotplug::default()
        };
        h.scan_cpus(&mut f, &cpus);
        assert!(f.started.is_empty());
        assert_eq!(f.cpu_status[&2], CPU_HP_CPEN);
    }

    #[test]
    fn missing_controllers_are_no_hotplug() {
        let cpus = four_cpus_two_enabled();
        for missing in [0u32, u32::MAX] {
            let mut f = Fake {
                missing: Some(missing),
                ..Fake::default()
            };
            let mut h = Hotplug::default();
            for _ in 0..3 {
                assert!(!h.scan_cpus(&mut f, &cpus));
                assert!(!h.scan_memory(&mut f, 0x800_0000, 64 << 30));
            }
            assert_eq!(h.present_cpus(), None);
            assert_eq!(h.verified_bytes(), 0);
            assert!(f.started.is_empty() && f.checked.is_empty());
        }
    }

    #[test]
    fn memory_add_is_verified_acked_and_counted_once() {
        let mut f = Fake::default();
        let mut h = Hotplug::default();
        let ram_end = 0x800_0000;
        f.slots
            .insert(0, (0x800_0000, 128 << 20, MEM_HP_MEN | MEM_HP_MINS));
        assert!(h.scan_memory(&mut f, ram_end, 64 << 30));
        assert_eq!(f.checked, [(0x800_0000, 128 << 20)]);
        assert_eq!(f.slots[&0].2, MEM_HP_MEN, "MINS acked");
        assert_eq!(h.verified_bytes(), 128 << 20);
        assert!(!h.scan_memory(&mut f, ram_end, 64 << 30));
        assert_eq!(f.checked.len(), 1, "checked once");

        // A second slot whose memory fails: acked, not counted.
        f.bad_memory = true;
        f.slots
            .insert(1, (0x1000_0000, 128 << 20, MEM_HP_MEN | MEM_HP_MINS));
        assert!(h.scan_memory(&mut f, ram_end, 64 << 30));
        assert_eq!(f.slots[&1].2, MEM_HP_MEN);
        assert_eq!(h.verified_bytes(), 128 << 20);
        assert!(
            f.log
                .iter()
                .any(|l| l.contains("FAILED: read-back mismatch at 0x10200000"))
        );

        // A hostile range: never touched, acked.
        f.slots
            .insert(2, (0x400_0000, 128 << 20, MEM_HP_MEN | MEM_HP_MINS));
        f.slots
            .insert(3, (0x800_0000, 128 << 20, MEM_HP_MEN | MEM_HP_MINS));
        h.scan_memory(&mut f, ram_end, 64 << 30);
        assert_eq!(f.checked.len(), 2);
        assert_eq!(f.slots[&2].2 & MEM_HP_MINS, 0);
        assert_eq!(f.slots[&3].2 & MEM_HP_MINS, 0);
        assert!(
            f.log
                .iter()
                .any(|l| l.ends_with("starts below the end of boot RAM"))
        );
        assert!(
            f.log
                .iter()
                .any(|l| l.ends_with("overlaps another slot's memory"))
        );

        // Populated at boot without MINS (after a reset): verified too.
        let mut f = Fake::default();
        let mut h = Hotplug::default();
        f.slots.insert(5, (0x1_0000_0000, 256 << 20, MEM_HP_MEN));
        h.scan_memory(&mut f, ram_end, 64 << 30);
        assert_eq!(h.verified_bytes(), 256 << 20);

        // Removal: acked, memory stays counted.
        f.slots
            .insert(5, (0x1_0000_0000, 256 << 20, MEM_HP_MEN | MEM_HP_MRMV));
        h.scan_memory(&mut f, ram_end, 64 << 30);
        assert_eq!(f.slots[&5].2, MEM_HP_MEN);
        assert_eq!(h.verified_bytes(), 256 << 20);
    }
}
