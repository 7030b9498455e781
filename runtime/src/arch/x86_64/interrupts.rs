//! Local APIC setup: LINT0 is ExtINT but *masked* and LINT1 delivers NMIs.
//!
//! A PC's BIOS leaves LINT0 unmasked (virtual-wire mode) because its 8259
//! is programmed; vmctl's machines route no GSI to the PIC (vstate::vm) and
//! describe none in ACPI, so an unmasked ExtINT LINT0 could only ever deliver
//! a stray PIC vector (base 0: a CPU exception number). Linux keeps LINT0
//! masked on the boot CPU when it finds it masked (`setup_local_APIC`).

use kvm_bindings::kvm_lapic_state;

pub const APIC_LVT0: usize = 0x350;
pub const APIC_LVT1: usize = 0x360;
pub const APIC_MODE_NMI: u32 = 0x4;
pub const APIC_MODE_EXTINT: u32 = 0x7;
pub const APIC_LVT_MASKED: u32 = 1 << 16;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(b)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = b as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT masked, LINT1 = NMI.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(
        lapic,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT) | APIC_LVT_MASKED,
    );
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint0_extint_masked_lint1_nmi() {
        // KVM resets the boot vCPU's LVT0 to unmasked ExtINT (0x700).
        let mut l = kvm_lapic_state::default();
        set_reg(&mut l, APIC_LVT0, 0x0000_0700);
        set_lint(&mut l);
        assert_eq!(get_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&l, APIC_LVT1), 0x400);
    }
}
