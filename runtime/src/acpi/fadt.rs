//! The FADT (signature `FACP`): a hardware-reduced ACPI 6.5 platform whose only
//! fixed hardware is the sleep/reset register at I/O port `0x600`
//! (cloud-hypervisor's layout, docs/design.md "Power").
//!
//! Linux uses the sleep control register to power off (it writes
//! `SLP_TYP << 2 | SLP_EN` with `SLP_TYP` from the DSDT's `_S5_`) and the reset
//! register to reboot (`reboot=acpi`, its default on x86). Hardware-reduced
//! mode also makes Linux skip the legacy PIC, the PIT as clock source and
//! the PM timer, none of which the VMM promises.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use super::{OEM_ID, OEM_REVISION, to_bytes};

/// The I/O port of the sleep control/status and reset register.
pub const POWER_PORT: u16 = 0x600;
/// Value the guest writes to `POWER_PORT` to reset.
pub const RESET_VALUE: u8 = 1;
/// "KVMKVMKVM" would be the CPUID vendor; the FADT field is 8 bytes.
pub const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"VMCTLVMM";

/// IA-PC boot architecture flags (FADT `IAPC_BOOT_ARCH`).
pub mod iapc_boot_arch {
    /// No legacy ISA devices beyond what the DSDT lists (bit 0 *not* set).
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// An i8042 keyboard controller exists (not set: the VMM only decodes
    /// port 0x64's reset command, Linux must not probe a keyboard).
    pub const I8042: u16 = 1 << 1;
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    pub const MSI_NOT_SUPPORTED: u16 = 1 << 3;
    pub const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
    /// No CMOS RTC at ports 0x70/0x71: the guest takes wall time from
    /// kvm-clock instead.
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

/// The 8-bit I/O register at [`POWER_PORT`] as a Generic Address Structure.
fn power_register() -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(POWER_PORT),
    )
}

/// The FADT bytes, pointing at the DSDT through `X_DSDT`.
pub fn build(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, *b"VMCTLFAC", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .preferred_pm_profile(PmProfile::EnterpriseServer)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons are control-method devices (PNP0C0C in the
        // DSDT, notified by the GED), not fixed-feature buttons.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = (iapc_boot_arch::VGA_NOT_PRESENT
        | iapc_boot_arch::MSI_NOT_SUPPORTED
        | iapc_boot_arch::CMOS_RTC_NOT_PRESENT)
        .into();
    b.reset_reg = power_register();
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = power_register();
    b.sleep_status_reg = power_register();
    b.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    to_bytes(&b.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_reduced_with_power_registers() {
        let f = build(0xe1000);
        assert_eq!(f.len(), 276);
        assert_eq!(&f[0..4], b"FACP");
        assert_eq!(f[8], 6, "major revision");
        assert_eq!(f[131], 5, "minor revision");
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // RESET_REG: SystemIO, 8 bits, byte access, port 0x600; value 1.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64::from_le_bytes(f[120..128].try_into().unwrap()), 0x600);
        assert_eq!(f[128], 1);
        // SLEEP_CONTROL_REG (244) and SLEEP_STATUS_REG (256).
        for off in [244, 256] {
            assert_eq!(&f[off..off + 4], &[1, 8, 0, 1]);
            assert_eq!(
                u64::from_le_bytes(f[off + 4..off + 12].try_into().unwrap()),
                0x600
            );
        }
        assert_eq!(&f[268..276], b"VMCTLVMM");
        assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), 0xe1000);
    }
}
