//! How devices interrupt the guest. `Irqchip` mode backs each line with an
//! eventfd registered as a KVM irqfd on the in-kernel IOAPIC/PIC; `Polled`
//! mode injects nothing, for guests that poll their devices (the diag guest:
//! this host's /dev/kvm kills a guest it delivers an external interrupt to,
//! see docs/runtime.md); there a line wakes the guest's vCPU 0 from the idle
//! port instead, so the guest can idle for long and still answer at once.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::Interrupt;
use crate::vstate::vcpu::VcpuControl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqMode {
    /// No interrupt injection at all.
    Polled,
    /// irqfds on the in-kernel irqchip.
    Irqchip,
}

impl IrqMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IrqMode::Polled => "polled",
            IrqMode::Irqchip => "irqchip",
        }
    }
}

/// An edge on a GSI through an irqfd.
pub struct IrqFd {
    fd: EventFd,
    gsi: u32,
}

impl Interrupt for IrqFd {
    fn trigger(&self) {
        if let Err(e) = self.fd.write(1) {
            tracing::warn!(gsi = self.gsi, error = %e, "cannot signal irqfd");
        }
    }
}

/// A polled guest's "interrupt": no injection, only the end of vCPU 0's
/// idle-port wait ([`VcpuControl::wake_guest`]).
pub struct GuestWake(pub Arc<VcpuControl>);

impl Interrupt for GuestWake {
    fn trigger(&self) {
        self.0.wake_guest();
    }
}

/// The interrupt for `gsi` in `mode`: when polled, a [`GuestWake`] of
/// `control`'s vCPUs.
pub fn line(
    vm: &VmFd,
    mode: IrqMode,
    gsi: u32,
    control: &Arc<VcpuControl>,
) -> Result<Option<Arc<dyn Interrupt>>, std::io::Error> {
    match mode {
        IrqMode::Polled => Ok(Some(Arc::new(GuestWake(control.clone())))),
        IrqMode::Irqchip => {
            let fd = EventFd::new(libc::EFD_NONBLOCK)?;
            vm.register_irqfd(&fd, gsi)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
            Ok(Some(Arc::new(IrqFd { fd, gsi })))
        }
    }
}
