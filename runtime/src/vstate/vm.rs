//! One KVM VM: guest RAM registered as memory slots, the in-kernel irqchip
//! (PIC + IOAPIC + LAPICs) and PIT, and the TSS / identity-map pages KVM needs
//! on Intel hosts.
//!
//! Interrupt routing: KVM's default table sends GSI 0-15 to the legacy 8259
//! PIC *and* the IOAPIC. The in-kernel PIC starts unmasked with vector base
//! 0, the boot vCPU's LINT0 is ExtINT, and our FADT is hardware-reduced, so
//! Linux never programs (or masks) the PIC: an edge on COM1 would reach CPU 0
//! as vector 4 (#OF) the moment the guest enables interrupts. vmctl's
//! machines have no PIC in their ACPI description, so [`ioapic_only_routing`]
//! replaces the table with GSI n -> IOAPIC pin n for all 24 pins and nothing
//! to the PIC.

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, KVM_PIT_SPEAKER_DUMMY, KvmIrqRouting,
    kvm_irq_routing_entry, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestMemory;
use crate::arch::x86_64::memory::ram_regions;

/// Three pages just below the BIOS area at the top of the 32-bit space, where
/// KVM puts the real-mode TSS (Intel) — never RAM, never a device.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// One page for the EPT identity map, right below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create the KVM VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Memory {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot register guest memory with KVM: {0}")]
    MemorySlot(#[source] kvm_ioctls::Error),
    #[error("cannot add {mib} MiB of RAM at {start:#x}: {reason}")]
    AddRam {
        start: u64,
        mib: u64,
        reason: String,
    },
    #[error("KVM setup failed ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM with its memory.
pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    /// Every RAM region, boot and hot-added. Replaced (not mutated) when RAM
    /// is added: holders of the old view keep a consistent one, and every
    /// device is handed the new one.
    pub memory: GuestMemory,
    /// The next free KVM memory slot (slots are never reused: RAM is only
    /// ever added).
    next_slot: u32,
}

impl Vm {
    /// Create the VM with exactly `ram_bytes` of anonymous, lazily backed RAM.
    pub fn new(ram_bytes: u64) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let ranges: Vec<(GuestAddress, usize)> = ram_regions(ram_bytes)
            .into_iter()
            .map(|(start, size)| (GuestAddress(start), size as usize))
            .collect();
        let memory = GuestMemory::from_ranges(&ranges).map_err(|source| VmError::Memory {
            mib: ram_bytes >> 20,
            source,
        })?;
        let mut next_slot = 0;
        for region in memory.iter() {
            register_slot(&fd, next_slot, region)?;
            next_slot += 1;
        }
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|source| VmError::Setup {
                what: "TSS address",
                source,
            })?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|source| VmError::Setup {
                what: "identity map address",
                source,
            })?;
        fd.create_irq_chip().map_err(|source| VmError::Setup {
            what: "in-kernel irqchip",
            source,
        })?;
        fd.set_gsi_routing(&ioapic_only_routing()?)
            .map_err(|source| VmError::Setup {
                what: "GSI routing",
                source,
            })?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(|source| VmError::Setup {
            what: "PIT",
            source,
        })?;
        Ok(Vm {
            kvm,
            fd,
            memory,
            next_slot,
        })
    }

    /// Map `size` bytes of new anonymous RAM at guest address `start` and
    /// register it with KVM in the next free slot (memory hot-add). Returns
    /// the new memory view, which is also `self.memory` from now on.
    pub fn add_ram(&mut self, start: u64, size: u64) -> Result<GuestMemory, VmError> {
        let fail = |reason: String| VmError::AddRam {
            start,
            mib: size >> 20,
            reason,
        };
        let len = usize::try_from(size).map_err(|e| fail(e.to_string()))?;
        let region = vm_memory::GuestRegionMmap::from_range(GuestAddress(start), len, None)
            .map_err(|e| fail(e.to_string()))?;
        let region = std::sync::Arc::new(region);
        let memory = self
            .memory
            .insert_region(region.clone())
            .map_err(|e| fail(e.to_string()))?;
        register_slot(&self.fd, self.next_slot, &*region)?;
        self.next_slot += 1;
        self.memory = memory.clone();
        Ok(memory)
    }
}

fn register_slot<R: GuestMemoryRegion>(fd: &VmFd, slot: u32, region: &R) -> Result<(), VmError> {
    let r = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::AddRam {
                start: region.start_addr().0,
                mib: region.len() >> 20,
                reason: e.to_string(),
            })? as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping held by `Vm::memory` (a field
    // declared after `fd`, and every memory view the VM hands out keeps its
    // regions alive), so it is unmapped only after the VM fd is closed; vCPU
    // threads are joined before a `Vm` is dropped.
    unsafe { fd.set_user_memory_region(r) }.map_err(VmError::MemorySlot)
}

/// GSI n -> IOAPIC pin n for every pin; no GSI reaches the legacy PIC.
pub fn ioapic_only_routing() -> Result<KvmIrqRouting, VmError> {
    let entries: Vec<kvm_irq_routing_entry> = (0..IOAPIC_PINS)
        .map(|pin| {
            let mut e = kvm_irq_routing_entry {
                gsi: pin,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
            e.u.irqchip.pin = pin;
            e
        })
        .collect();
    KvmIrqRouting::from_entries(&entries).map_err(|_| VmError::Setup {
        what: "GSI routing table",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gsi_goes_to_the_ioapic_pin_of_the_same_number_and_none_to_the_pic() {
        let r = ioapic_only_routing().unwrap();
        let e = r.as_slice();
        assert_eq!(e.len(), IOAPIC_PINS as usize);
        for (i, e) in e.iter().enumerate() {
            assert_eq!(e.gsi, i as u32);
            assert_eq!(e.type_, KVM_IRQ_ROUTING_IRQCHIP);
            // SAFETY: type_ says the union holds an irqchip entry.
            let chip = unsafe { e.u.irqchip };
            assert_eq!((chip.irqchip, chip.pin), (KVM_IRQCHIP_IOAPIC, i as u32));
        }
    }
}
