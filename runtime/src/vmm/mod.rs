//! Assembling and running one VM inside the `__vmm` process.
//!
//! [`run_vmm`] is the whole life of a VMM process: read the machine config
//! the control plane resolved (`machine.json`, [`config`]; the VMM knows no
//! KDL, OS names or image cache), check the host can give the memory, build
//! the [`machine::Machine`], listen on `api.sock` and `console.sock`, write
//! `vmm.pid` (the readiness signal), start the vCPUs, then serve control
//! requests and guest events in one loop until the VM powers off, is shut
//! down, or crashes. A guest reset rebuilds the machine in the same process.
//!
//! | file | what |
//! |---|---|
//! | [`config`] | `machine.json`, the VMM's only input |
//! | `setup` | the first build, sockets, readiness |
//! | `events` | the one event channel, events tagged with the boot generation |
//! | `serve` | the event loop, reboot, graceful shutdown |
//! | `control` | control-socket requests |
//! | `hotplug` | live vCPU add/remove and memory add |
//! | `disk` | live disk grow |
//! | `console` | `console.sock` |
//! | [`machine`] | one boot: KVM VM, devices, I/O thread, vCPU threads |
//! | [`boot`], [`host`], [`irq`], [`signals`] | kernel loading, host checks, interrupt lines, signals |
//! | `trim` | gives the start-up code's pages back once the vCPUs run |

pub mod boot;
pub mod config;
mod console;
mod control;
mod disk;
mod events;
pub mod host;
pub mod hotplug;
pub mod irq;
pub mod machine;
mod quiesce;
mod serve;
mod setup;
pub mod signals;
mod trim;

use std::path::Path;
use std::time::Duration;

use crate::api::protocol::Capabilities;
use crate::state::{ExitNote, VmDir};

pub use setup::load_image;

/// Capabilities of this VMM build.
pub const CAPABILITIES: Capabilities = Capabilities {
    hot_add_cpu: true,
    hot_remove_cpu: true,
    hot_add_memory: true,
    live_disk_resize: true,
    // A cgroup write, done by the control plane (facade), not the VMM.
    live_cpu_weight: false,
    // Done by the control plane.
    copy: false,
    // The `quiesce` / `thaw` requests a live copy needs.
    live_copy: true,
};

/// Errors that end a VMM before its guest runs.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot read the kernel {path}: {source}")]
    Kernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the initrd {path}: {source}")]
    Initrd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Machine(#[from] machine::MachineError),
    #[error(transparent)]
    Confine(#[from] crate::confine::ConfineError),
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::vstate::vcpu::VcpuError> for VmmError {
    fn from(e: crate::vstate::vcpu::VcpuError) -> Self {
        VmmError::Machine(e.into())
    }
}

/// Grace period of a shutdown asked for by a signal.
pub const SIGNAL_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How the VMM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reason: &'static str,
    pub detail: String,
    pub code: i32,
}

/// The whole life of a VMM process for the VM in `vm_dir`. Returns the
/// process exit code; on errors before boot, cleans up and returns the error.
pub fn run_vmm(vm_dir: &Path) -> Result<i32, VmmError> {
    // Everything this process creates (sockets, console.log) is private to
    // the user, with no window where a socket has the default mode.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let dir = VmDir::new(vm_dir);
    let setup = crate::confine::limits::apply(vm_dir)
        .map_err(VmmError::from)
        .and_then(|()| setup::setup(&dir));
    match setup {
        Err(e) => {
            cleanup(&dir);
            let _ = dir.write_exit_note(&ExitNote {
                reason: "error".into(),
                detail: e.to_string(),
                code: 1,
            });
            Err(e)
        }
        Ok(mut vmm) => {
            let outcome = vmm.serve();
            tracing::info!(reason = outcome.reason, detail = %outcome.detail, "VMM exits");
            let _ = dir.write_exit_note(&ExitNote {
                reason: outcome.reason.into(),
                detail: outcome.detail.clone(),
                code: outcome.code,
            });
            cleanup(&dir);
            Ok(outcome.code)
        }
    }
}

/// Remove the VMM's runtime files; the pid file last, because "no pid file"
/// is what observers take as "this VMM is gone".
pub(crate) fn cleanup(dir: &VmDir) {
    let _ = std::fs::remove_file(dir.api_sock());
    let _ = std::fs::remove_file(dir.console_sock());
    let _ = std::fs::remove_file(dir.pid_file());
}
