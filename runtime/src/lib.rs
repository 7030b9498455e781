//! `vmctl-runtime`: vmctl's own KVM virtual machine monitor.
//!
//! Layout follows Firecracker's: `arch` (x86-64 memory map, registers, CPUID,
//! boot params), `vstate` (the KVM VM and its vCPUs), `devices` (the MMIO/PIO
//! bus, serial ports, virtio), `acpi` (tables the guest discovers hardware
//! through), `vmm` (assembling and running one VM in the `__vmm` process),
//! `api` (the control socket protocol, server and client), `state` (the state
//! directory), `process` (spawning and finding VMM processes), `diag` (the
//! embedded diagnostic guest).

pub mod acpi;
pub mod api;
pub mod arch;
pub mod devices;
pub mod diag;
pub mod image;
pub mod process;
pub mod state;
pub mod vmm;
pub mod vstate;

/// Guest memory as every device sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
