//! `vmctl-runtime`: vmctl's own KVM virtual machine monitor.
//!
//! Layout follows Firecracker's: `arch` (x86-64 memory map, registers, CPUID,
//! boot params), `vstate` (the KVM VM and its vCPUs), `devices` (the MMIO/PIO
//! bus, serial ports, virtio), `acpi` (tables the guest discovers hardware
//! through), `vmm` (assembling and running one VM in the `__vmm` process),
//! `api` (the control socket protocol, server and client), `state` (the state
//! directory), `process` (spawning and finding VMM processes), `diag` (the
//! embedded diagnostic guest), `confine` (the VMM's seccomp filters and
//! process limits), and the [`Runtime`] facade the apply engine drives.
//! `host_key` pins the SSH host key a guest reports. `fuzzing` (hidden) is
//! what the fuzz targets in `fuzz/` reach.

pub mod acpi;
pub mod api;
pub mod arch;
pub mod cgroup;
pub mod confine;
pub mod devices;
pub mod diag;
pub mod disk_file;
pub mod facade;
pub mod freeze;
#[doc(hidden)]
pub mod fuzzing;
pub mod host_key;
pub mod hotplug;
pub mod os;
pub mod process;
pub mod resolve;
pub mod snapshot;
pub mod sparse;
pub mod spawn_wake;
pub mod state;
pub mod testing;
pub mod vmm;
pub mod vstate;

pub use facade::{Observed, RunState, Runtime, RuntimeError};
pub use state::{Desired, Record};
pub use vmm::run_vmm;

/// Guest memory as every device sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
