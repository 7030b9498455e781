//! The memory hotplug controller at `layout::MEMORY_HOTPLUG_BASE`
//! (cloud-hypervisor's register layout, selection widened to 32 bits): one
//! slot per hot-added RAM range, `layout::MEMORY_HOTPLUG_SLOTS` slots. The
//! DSDT's `\_SB_.MHPC` fields and the diag guest use the same registers; the
//! contract is in docs/acpi.md.
//!
//! | offset | width | read | write |
//! |---|---|---|---|
//! | 0x00 | u32 | MHBL: base of the selected slot, low 32 bits | MSEL: select a slot |
//! | 0x04 | u32 | MHBH: base, high 32 bits | ignored |
//! | 0x08 | u32 | MHLL: length, low 32 bits | ignored |
//! | 0x0c | u32 | MHLH: length, high 32 bits | ignored |
//! | 0x10 | u32 | MHPX: proximity domain (0) | ignored |
//! | 0x14 | u8  | status: bit0 MEN_, bit1 MINS, bit2 MRMV | bit1 ack insertion, bit2 ack removal, bit3 MEJ0 ignored |
//!
//! Reads of any width at any offset return the bytes of that register image
//! (zeros outside it; an empty or out-of-range slot reads all zeros); a write
//! is decoded by its starting offset (0: the first up-to-4 bytes,
//! zero-extended, select the slot; 0x14: the first byte is a status command)
//! and ignored anywhere else. Memory is never removed (no eject).
//!
//! The VMM keeps a [`MemoryHotplug`] handle while the MMIO bus owns the
//! [`MemoryHotplugDevice`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::arch::x86_64::layout::{
    MEMORY_HOTPLUG_ALIGN, MEMORY_HOTPLUG_SIZE, MEMORY_HOTPLUG_SLOTS,
};
use crate::devices::BusDevice;

use super::{le_u32, read_image};

/// Register offsets.
pub const MEM_SELECT: u64 = 0x0;
pub const MEM_BASE_LOW: u64 = 0x0;
pub const MEM_BASE_HIGH: u64 = 0x4;
pub const MEM_LEN_LOW: u64 = 0x8;
pub const MEM_LEN_HIGH: u64 = 0xc;
pub const MEM_PROXIMITY: u64 = 0x10;
pub const MEM_STATUS: u64 = 0x14;

/// Status bits (read).
pub const MEM_ENABLED: u8 = 1 << 0;
pub const MEM_INSERTING: u8 = 1 << 1;
pub const MEM_REMOVING: u8 = 1 << 2;
/// Status bits (write).
pub const MEM_ACK_INSERT: u8 = 1 << 1;
pub const MEM_ACK_REMOVE: u8 = 1 << 2;
/// Memory eject: accepted and ignored (hot-remove is not supported).
pub const MEM_EJECT: u8 = 1 << 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryHotplugError {
    #[error("hot-added memory needs a non-zero length")]
    ZeroLength,
    #[error(
        "hot-added memory {base:#x}+{len:#x} is not a multiple of {MEMORY_HOTPLUG_ALIGN:#x} bytes (start and length)"
    )]
    Unaligned { base: u64, len: u64 },
    #[error("hot-added memory {base:#x}+{len:#x} runs past the end of the address space")]
    Overflow { base: u64, len: u64 },
    #[error("hot-added memory {base:#x}+{len:#x} overlaps slot {slot}")]
    Overlap { base: u64, len: u64, slot: usize },
    #[error("all {MEMORY_HOTPLUG_SLOTS} memory hotplug slots are in use")]
    NoFreeSlot,
}

/// One populated slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySlot {
    pub slot: usize,
    pub base: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SlotState {
    /// `len > 0` means populated (MEN_).
    base: u64,
    len: u64,
    inserting: bool,
    removing: bool,
}

impl SlotState {
    fn populated(&self) -> bool {
        self.len > 0
    }

    fn status(&self) -> u8 {
        let mut s = 0;
        if self.populated() {
            s |= MEM_ENABLED;
        }
        if self.inserting {
            s |= MEM_INSERTING;
        }
        if self.removing {
            s |= MEM_REMOVING;
        }
        s
    }
}

/// The VMM's handle on the slots (the bus owns the device).
#[derive(Debug, Clone, Default)]
pub struct MemoryHotplug(Arc<Mutex<[SlotState; MEMORY_HOTPLUG_SLOTS]>>);

impl MemoryHotplug {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bus device sharing this state (selection starts at slot 0).
    pub fn device(&self) -> MemoryHotplugDevice {
        MemoryHotplugDevice {
            shared: self.clone(),
            selected: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, [SlotState; MEMORY_HOTPLUG_SLOTS]> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put `[base, base + len)` into the next free slot, populated and
    /// inserting (MEN_ + MINS), and return the slot. Call it after the range
    /// is mapped into the guest (KVM memory slot), then raise GED bit 1.
    ///
    /// Checks kept simple: `len > 0`, `base` and `len` multiples of
    /// [`MEMORY_HOTPLUG_ALIGN`] (128 MiB, Linux's memory block size), no
    /// overflow, no overlap with a populated slot. That the range lies inside
    /// the region reserved at boot (`arch::x86_64::memory::hotplug_region`)
    /// is the caller's business.
    pub fn insert(&self, base: u64, len: u64) -> Result<usize, MemoryHotplugError> {
        if len == 0 {
            return Err(MemoryHotplugError::ZeroLength);
        }
        if !base.is_multiple_of(MEMORY_HOTPLUG_ALIGN) || !len.is_multiple_of(MEMORY_HOTPLUG_ALIGN) {
            return Err(MemoryHotplugError::Unaligned { base, len });
        }
        let end = base
            .checked_add(len)
            .ok_or(MemoryHotplugError::Overflow { base, len })?;
        let mut slots = self.lock();
        if let Some(slot) = slots
            .iter()
            .position(|s| s.populated() && base < s.base + s.len && s.base < end)
        {
            return Err(MemoryHotplugError::Overlap { base, len, slot });
        }
        let slot = slots
            .iter()
            .position(|s| !s.populated())
            .ok_or(MemoryHotplugError::NoFreeSlot)?;
        slots[slot] = SlotState {
            base,
            len,
            inserting: true,
            removing: false,
        };
        Ok(slot)
    }

    /// Every populated slot, in slot order.
    pub fn populated(&self) -> Vec<MemorySlot> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.populated())
            .map(|(slot, s)| MemorySlot {
                slot,
                base: s.base,
                len: s.len,
            })
            .collect()
    }

    /// Bytes of hot-added memory (all populated slots).
    pub fn populated_bytes(&self) -> u64 {
        self.lock().iter().map(|s| s.len).sum()
    }

    /// MINS: populated and not yet acknowledged by the guest.
    pub fn inserting(&self, slot: usize) -> bool {
        self.lock().get(slot).is_some_and(|s| s.inserting)
    }

    fn guest_command(&self, slot: u32, cmd: u8) {
        let mut slots = self.lock();
        let Some(s) = slots.get_mut(slot as usize) else {
            return;
        };
        if cmd & MEM_ACK_INSERT != 0 {
            s.inserting = false;
        }
        if cmd & MEM_ACK_REMOVE != 0 {
            s.removing = false;
        }
        // MEM_EJECT: memory hot-remove is not supported; ignored.
    }

    fn slot(&self, slot: u32) -> SlotState {
        self.lock().get(slot as usize).copied().unwrap_or_default()
    }
}

/// The guest-facing register block; register it on the MMIO bus at
/// `layout::MEMORY_HOTPLUG_BASE` with length `layout::MEMORY_HOTPLUG_SIZE`.
pub struct MemoryHotplugDevice {
    shared: MemoryHotplug,
    selected: u32,
}

impl MemoryHotplugDevice {
    fn image(&self) -> [u8; MEMORY_HOTPLUG_SIZE as usize] {
        let s = self.shared.slot(self.selected);
        let mut r = [0u8; MEMORY_HOTPLUG_SIZE as usize];
        if s.populated() {
            r[0..8].copy_from_slice(&s.base.to_le_bytes());
            r[8..16].copy_from_slice(&s.len.to_le_bytes());
        }
        // MHPX (0x10) = proximity domain 0.
        r[MEM_STATUS as usize] = s.status();
        r
    }
}

impl BusDevice for MemoryHotplugDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_image(&self.image(), offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            MEM_SELECT => self.selected = le_u32(data),
            MEM_STATUS => {
                if let Some(&cmd) = data.first() {
                    self.shared.guest_command(self.selected, cmd);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn read_u32(d: &mut MemoryHotplugDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn status(d: &mut MemoryHotplugDevice) -> u8 {
        let mut b = [0u8; 1];
        d.read(MEM_STATUS, &mut b);
        b[0]
    }

    fn select(d: &mut MemoryHotplugDevice, slot: u32) {
        d.write(MEM_SELECT, &slot.to_le_bytes());
    }

    #[test]
    fn insert_checks_length_alignment_overlap_and_slots() {
        let h = MemoryHotplug::new();
        assert_eq!(h.insert(GIB, 0), Err(MemoryHotplugError::ZeroLength));
        assert_eq!(
            h.insert(GIB + MIB, 128 * MIB),
            Err(MemoryHotplugError::Unaligned {
                base: GIB + MIB,
                len: 128 * MIB
            })
        );
        assert_eq!(
            h.insert(GIB, 100 * MIB),
            Err(MemoryHotplugError::Unaligned {
                base: GIB,
                len: 100 * MIB
            })
        );
        let top = u64::MAX - (MEMORY_HOTPLUG_ALIGN - 1);
        assert_eq!(
            h.insert(top, 256 * MIB),
            Err(MemoryHotplugError::Overflow {
                base: top,
                len: 256 * MIB
            })
        );
        assert_eq!(h.insert(GIB, 256 * MIB), Ok(0));
        assert_eq!(
            h.insert(GIB + 128 * MIB, 128 * MIB),
            Err(MemoryHotplugError::Overlap {
                base: GIB + 128 * MIB,
                len: 128 * MIB,
                slot: 0
            })
        );
        assert_eq!(
            h.insert(GIB - 128 * MIB, 256 * MIB),
            Err(MemoryHotplugError::Overlap {
                base: GIB - 128 * MIB,
                len: 256 * MIB,
                slot: 0
            })
        );
        // Adjacent ranges are fine.
        assert_eq!(h.insert(GIB + 256 * MIB, 128 * MIB), Ok(1));
        assert_eq!(h.insert(GIB - 128 * MIB, 128 * MIB), Ok(2));
        for i in 3..MEMORY_HOTPLUG_SLOTS as u64 {
            assert_eq!(h.insert(i * 4 * GIB, 128 * MIB), Ok(i as usize));
        }
        assert_eq!(
            h.insert(64 * GIB, 128 * MIB),
            Err(MemoryHotplugError::NoFreeSlot)
        );
        assert_eq!(h.populated().len(), MEMORY_HOTPLUG_SLOTS);
        assert_eq!(
            h.populated()[..2],
            [
                MemorySlot {
                    slot: 0,
                    base: GIB,
                    len: 256 * MIB
                },
                MemorySlot {
                    slot: 1,
                    base: GIB + 256 * MIB,
                    len: 128 * MIB
                }
            ]
        );
        assert_eq!(h.populated_bytes(), 8 * 128 * MIB + 128 * MIB);
    }

    #[test]
    fn registers_of_a_populated_slot() {
        let h = MemoryHotplug::new();
        let mut d = h.device();
        // Empty slot 0 reads zeros.
        for off in [0, 4, 8, 0xc, 0x10, 0x14] {
            assert_eq!(read_u32(&mut d, off), 0, "offset {off:#x}");
        }
        let base = 0x1_2800_0000u64;
        let len = 0x2_0800_0000u64;
        assert_eq!(h.insert(0x1000_0000, 128 * MIB), Ok(0));
        assert_eq!(h.insert(base, len), Ok(1));
        select(&mut d, 1);
        assert_eq!(read_u32(&mut d, MEM_BASE_LOW), 0x2800_0000);
        assert_eq!(read_u32(&mut d, MEM_BASE_HIGH), 1);
        assert_eq!(read_u32(&mut d, MEM_LEN_LOW), 0x0800_0000);
        assert_eq!(read_u32(&mut d, MEM_LEN_HIGH), 2);
        assert_eq!(read_u32(&mut d, MEM_PROXIMITY), 0);
        assert_eq!(status(&mut d), MEM_ENABLED | MEM_INSERTING);
        // An 8-byte read of the base.
        let mut b = [0u8; 8];
        d.read(MEM_BASE_LOW, &mut b);
        assert_eq!(u64::from_le_bytes(b), base);
        // Writes to the read-only registers change nothing.
        for off in [
            MEM_BASE_HIGH,
            MEM_LEN_LOW,
            MEM_LEN_HIGH,
            MEM_PROXIMITY,
            0x15,
        ] {
            d.write(off, &[0xff; 4]);
        }
        assert_eq!(read_u32(&mut d, MEM_LEN_HIGH), 2);
        // Slot 0 is untouched by the selection of slot 1.
        select(&mut d, 0);
        assert_eq!(read_u32(&mut d, MEM_BASE_LOW), 0x1000_0000);
        assert_eq!(status(&mut d), MEM_ENABLED | MEM_INSERTING);
    }

    #[test]
    fn ack_clears_mins_and_eject_is_ignored() {
        let h = MemoryHotplug::new();
        let mut d = h.device();
        let slot = h.insert(4 * GIB, GIB).unwrap();
        assert!(h.inserting(slot));
        select(&mut d, 1);
        d.write(MEM_STATUS, &[MEM_ACK_INSERT]);
        assert!(h.inserting(slot), "ack of another slot");
        select(&mut d, slot as u32);
        d.write(MEM_STATUS, &[MEM_ACK_INSERT | MEM_ACK_REMOVE]);
        assert!(!h.inserting(slot));
        assert_eq!(status(&mut d), MEM_ENABLED);
        d.write(MEM_STATUS, &[MEM_EJECT]);
        assert_eq!(status(&mut d), MEM_ENABLED);
        assert_eq!(h.populated().len(), 1);
        assert!(!h.inserting(MEMORY_HOTPLUG_SLOTS));
    }

    #[test]
    fn out_of_range_selection_reads_zero() {
        let h = MemoryHotplug::new();
        let mut d = h.device();
        h.insert(GIB, GIB).unwrap();
        d.write(MEM_SELECT, &[MEMORY_HOTPLUG_SLOTS as u8]);
        for off in [0, 4, 8, 0xc, 0x10, 0x14, 0x18, u64::MAX] {
            assert_eq!(read_u32(&mut d, off), 0);
        }
        d.write(MEM_SELECT, &u32::MAX.to_le_bytes());
        d.write(MEM_STATUS, &[0xff]);
        assert!(h.inserting(0));
        // A byte write selects too.
        d.write(MEM_SELECT, &[0]);
        assert_eq!(status(&mut d), MEM_ENABLED | MEM_INSERTING);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_guest_accesses_never_panic(
            ops in proptest::collection::vec(
                (prop_oneof![0u64..0x20, Just(u64::MAX), any::<u64>()],
                 0usize..=9, any::<u64>(), any::<bool>(), any::<(u64, u64)>()),
                0..300)
        ) {
            let h = MemoryHotplug::new();
            let mut d = h.device();
            for (off, len, val, write, (base, size)) in ops {
                let mut b = val.to_le_bytes().to_vec();
                b.resize(len, 0x5a);
                if write {
                    d.write(off, &b);
                } else {
                    d.read(off, &mut b);
                }
                let _ = h.insert((base % 64) * GIB, (size % 9) * MEMORY_HOTPLUG_ALIGN);
            }
            let slots = h.populated();
            prop_assert!(slots.len() <= MEMORY_HOTPLUG_SLOTS);
            for a in &slots {
                prop_assert!(a.len > 0 && a.len % MEMORY_HOTPLUG_ALIGN == 0);
                for b in &slots {
                    prop_assert!(a.slot == b.slot || a.base + a.len <= b.base || b.base + b.len <= a.base);
                }
            }
        }
    }
}
