//! Assembling and running one VM inside the `__vmm` process.
//!
//! [`run_vmm`] is the whole life of a VMM process: read `vm.json`, resolve
//! what to boot, check the host can give the memory, build the [`Machine`],
//! listen on `api.sock` and `console.sock`, write `vmm.pid` (the readiness
//! signal), start the vCPUs, then serve control requests and guest power
//! events until the VM powers off, is shut down, or crashes. A guest reset
//! rebuilds the machine in the same process.

pub mod boot;
pub mod host;
pub mod irq;
pub mod machine;
pub mod signals;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmctl_spec::model::VmSpec;

use crate::api::protocol::{
    Capabilities, DiskStatus, Request, Response, RunState, ShutdownResult, Status,
};
use crate::api::server::{self, Pending};
use crate::devices::legacy::GED_POWER_BUTTON;
use crate::state::{ExitNote, VmDir};
use crate::vstate::vcpu::{self, VmEvent};
use boot::BootImage;
use irq::IrqMode;
use machine::{Com1, DiskConfig, Machine, MachineConfig, Persistent};

/// Command line of the built-in diag guest.
pub const DIAG_CMDLINE: &str = "console=ttyS0";
/// Environment variable that overrides the interrupt mode (`polled`/`irqchip`).
pub const IRQ_MODE_ENV: &str = "VMCTL_IRQ_MODE";

/// Capabilities of this VMM build.
pub const CAPABILITIES: Capabilities = Capabilities {
    hot_add_cpu: false,
    hot_remove_cpu: false,
    hot_add_memory: false,
    live_disk_resize: true,
    // A cgroup write, done by the control plane (facade), not the VMM.
    live_cpu_weight: false,
    // Done by the control plane.
    copy: false,
};

/// Errors that end a VMM before its guest runs.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
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
    #[error("{0}")]
    NoImage(String),
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Machine(#[from] machine::MachineError),
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// What to boot for `spec`, and in which interrupt mode.
pub fn resolve_boot(spec: &VmSpec) -> Result<(BootImage, IrqMode), VmmError> {
    let (image, mode) = if let Some(img) = &spec.image {
        let kernel = std::fs::read(&img.kernel).map_err(|source| VmmError::Kernel {
            path: img.kernel.display().to_string(),
            source,
        })?;
        let initrd = match &img.initrd {
            Some(p) => Some(std::fs::read(p).map_err(|source| VmmError::Initrd {
                path: p.display().to_string(),
                source,
            })?),
            None => None,
        };
        let image = BootImage {
            kernel: kernel.into(),
            initrd: initrd.map(Into::into),
            cmdline: img.cmdline.clone(),
        };
        (image, IrqMode::Irqchip)
    } else if spec.os == "diag" {
        let kernel = diag_kernel().ok_or_else(|| {
            VmmError::NoImage("the diag guest is not built into this vmctl".into())
        })?;
        (
            BootImage {
                kernel: kernel.into(),
                initrd: None,
                cmdline: DIAG_CMDLINE.into(),
            },
            IrqMode::Polled,
        )
    } else if spec.os == "debian-12" {
        return Err(VmmError::NoImage(
            "the debian-12 image is not resolved (see crate::image)".into(),
        ));
    } else {
        return Err(VmmError::NoImage(format!(
            "VM {:?}: os {:?} has no boot image",
            spec.name, spec.os
        )));
    };
    let mode = match std::env::var(IRQ_MODE_ENV).as_deref() {
        Ok("polled") => IrqMode::Polled,
        Ok("irqchip") => IrqMode::Irqchip,
        _ => mode,
    };
    Ok((image, mode))
}

/// The embedded diag guest (guest/, built by runtime/build.rs).
fn diag_kernel() -> Option<&'static [u8]> {
    Some(crate::diag::KERNEL).filter(|k| !k.is_empty())
}

enum MainEvent {
    Vm(VmEvent),
    Api(Pending),
    /// SIGTERM/SIGINT/SIGHUP: shut down gracefully.
    Signal(i32),
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

struct Vmm {
    dir: VmDir,
    spec: VmSpec,
    cfg: MachineConfig,
    keep: Persistent,
    machine: Machine,
    com1: Arc<Mutex<Option<Com1>>>,
    tx: Sender<MainEvent>,
    rx: Receiver<MainEvent>,
    booted: Instant,
    boots: u64,
}

/// The whole life of a VMM process for the VM in `vm_dir`. Returns the
/// process exit code; on errors before boot, cleans up and returns the error.
pub fn run_vmm(vm_dir: &Path) -> Result<i32, VmmError> {
    // Everything this process creates (sockets, console.log) is private to
    // the user, with no window where a socket has the default mode.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let dir = VmDir::new(vm_dir);
    let result = setup(&dir);
    match result {
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
fn cleanup(dir: &VmDir) {
    let _ = std::fs::remove_file(dir.api_sock());
    let _ = std::fs::remove_file(dir.console_sock());
    let _ = std::fs::remove_file(dir.pid_file());
}

fn setup(dir: &VmDir) -> Result<Vmm, VmmError> {
    let record = dir.read_record()?;
    let mut spec = record.spec;
    if spec.os == "debian-12" && spec.image.is_none() {
        // The built-in Linux OS: the image cache of this VM's state
        // directory (<state>/vms/<name>) knows which image to boot.
        let state_dir =
            dir.path.parent().and_then(Path::parent).ok_or_else(|| {
                VmmError::NoImage("the VM directory has no state directory".into())
            })?;
        let img = crate::image::debian12_for_vm(state_dir)
            .map_err(|e| VmmError::NoImage(format!("VM {:?}: debian-12 image: {e}", spec.name)))?;
        tracing::info!(id = %img.id, kernel = %img.kernel_version, "booting the debian-12 image");
        spec.image = Some(img.to_image_spec());
    }
    let (image, irq_mode) = resolve_boot(&spec)?;
    host::check_memory(spec.memory_mib)?;
    let cfg = MachineConfig {
        cpus: spec.cpus.max(1),
        max_cpus: spec.max_cpus.max(spec.cpus).max(1),
        memory_mib: spec.memory_mib,
        irq_mode,
        image,
        acpi: true,
        disks: spec
            .disks
            .iter()
            .map(|d| DiskConfig {
                name: d.name.clone(),
                path: dir.disk_path(d),
            })
            .collect(),
    };
    vcpu::install_kick_handler()?;
    signals::block();
    let console_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.console_log())
        .map_err(io("console.log"))?;
    let keep = Persistent {
        console_log: Some(Arc::new(console_log)),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    signals::forward(tx.clone(), MainEvent::Signal).map_err(io("the signal thread"))?;
    let machine = Machine::build(&cfg, &keep, forward_vm_events(&tx))?;
    tracing::info!(vm = %spec.name, cpus = cfg.cpus, memory_mib = cfg.memory_mib, irq_mode = irq_mode.as_str(), "VM built");

    let api = server::bind(&dir.api_sock()).map_err(io("api.sock"))?;
    server::spawn(api, tx.clone(), MainEvent::Api).map_err(io("the API thread"))?;
    let com1 = Arc::new(Mutex::new(Some(machine.com1.clone())));
    let console = server::bind(&dir.console_sock()).map_err(io("console.sock"))?;
    spawn_console(console, keep.console_clients.clone(), com1.clone())
        .map_err(io("the console thread"))?;
    crate::state::write_atomic(
        &dir.pid_file(),
        format!("{}\n", std::process::id()).as_bytes(),
    )?;

    let mut vmm = Vmm {
        dir: dir.clone(),
        spec,
        cfg,
        keep,
        machine,
        com1,
        tx,
        rx,
        booted: Instant::now(),
        boots: 1,
    };
    vmm.machine.start()?;
    vmm.booted = Instant::now();
    Ok(vmm)
}

impl From<crate::vstate::vcpu::VcpuError> for VmmError {
    fn from(e: crate::vstate::vcpu::VcpuError) -> Self {
        VmmError::Machine(e.into())
    }
}

/// vCPUs and devices report on their own channel; forward to the main loop.
fn forward_vm_events(main: &Sender<MainEvent>) -> Sender<VmEvent> {
    let (tx, rx) = mpsc::channel::<VmEvent>();
    let main = main.clone();
    let _ = std::thread::Builder::new()
        .name("vm-events".into())
        .spawn(move || {
            for ev in rx {
                if main.send(MainEvent::Vm(ev)).is_err() {
                    return;
                }
            }
        });
    tx
}

/// `console.sock`: every client gets COM1's output from now on; what it
/// writes is typed into COM1.
fn spawn_console(
    listener: UnixListener,
    clients: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
    com1: Arc<Mutex<Option<Com1>>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_write_timeout(Some(Duration::from_millis(50)));
                if let (Ok(out), Ok(mut list)) = (conn.try_clone(), clients.lock()) {
                    list.push(out);
                }
                let com1 = com1.clone();
                let _ = std::thread::Builder::new()
                    .name("console-in".into())
                    .spawn(move || {
                        let mut conn = conn;
                        let mut buf = [0u8; 256];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 {
                                return;
                            }
                            let mut rest = &buf[..n];
                            while !rest.is_empty() {
                                let taken = com1
                                    .lock()
                                    .ok()
                                    .and_then(|c| {
                                        c.as_ref().and_then(|s| {
                                            s.lock().ok().map(|mut s| s.enqueue_input(rest))
                                        })
                                    })
                                    .unwrap_or(rest.len());
                                rest = &rest[taken..];
                                if !rest.is_empty() {
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                            }
                        }
                    });
            }
        })?;
    Ok(())
}

impl Vmm {
    fn serve(&mut self) -> Outcome {
        loop {
            let Ok(ev) = self.rx.recv() else {
                return Outcome {
                    reason: "crash",
                    detail: "event channel closed".into(),
                    code: 2,
                };
            };
            match ev {
                MainEvent::Vm(ev) => {
                    if let Some(out) = self.on_vm_event(ev) {
                        return out;
                    }
                }
                MainEvent::Api(p) => {
                    if let Some(out) = self.on_request(p) {
                        return out;
                    }
                }
                MainEvent::Signal(sig) => {
                    tracing::info!(signal = sig, "stop signal: shutting the guest down");
                    let out = self.shutdown(SIGNAL_SHUTDOWN_GRACE);
                    let graceful = out.reason == "poweroff";
                    return Outcome {
                        reason: if graceful { "shutdown" } else { out.reason },
                        ..out
                    };
                }
            }
        }
    }

    fn on_vm_event(&mut self, ev: VmEvent) -> Option<Outcome> {
        match ev {
            VmEvent::PowerOff => Some(Outcome {
                reason: "poweroff",
                detail: "the guest powered off".into(),
                code: 0,
            }),
            VmEvent::Crash(detail) => {
                tracing::error!(%detail, "guest crashed");
                Some(Outcome {
                    reason: "crash",
                    detail,
                    code: 2,
                })
            }
            VmEvent::Reset => match self.reboot() {
                Ok(()) => None,
                Err(e) => Some(Outcome {
                    reason: "crash",
                    detail: format!("reboot failed: {e}"),
                    code: 2,
                }),
            },
        }
    }

    fn reboot(&mut self) -> Result<(), VmmError> {
        tracing::info!("guest reset: rebuilding the VM");
        self.machine.stop();
        self.machine.release_memory();
        // What the guest reported describes the boot that just ended.
        if let Ok(mut r) = self.keep.report.lock() {
            *r = None;
        }
        let machine = Machine::build(&self.cfg, &self.keep, forward_vm_events(&self.tx))?;
        // The old machine (and its memory) goes away before the new one runs.
        self.machine = machine;
        if let Ok(mut c) = self.com1.lock() {
            *c = Some(self.machine.com1.clone());
        }
        self.machine.start()?;
        self.booted = Instant::now();
        self.boots += 1;
        Ok(())
    }

    /// Grow a disk live: extend its file, set the capacity the guest sees
    /// and notify the driver (config change). Requests come from the
    /// control socket: checked, never trusted.
    fn resize_disk(&mut self, disk: &str, size_bytes: u64) -> Result<u64, String> {
        let Some(index) = self.spec.disks.iter().position(|d| d.name == disk) else {
            return Err(format!("no disk named {disk:?}"));
        };
        if size_bytes == 0 || !size_bytes.is_multiple_of(512) {
            return Err(format!(
                "{size_bytes} bytes is not a whole number of 512-byte sectors"
            ));
        }
        let dev = self
            .machine
            .disks
            .get(index)
            .ok_or_else(|| format!("disk {disk:?} has no device"))?;
        let mut dev = dev
            .lock()
            .map_err(|_| "the disk device is poisoned".to_string())?;
        let current = dev.device_mut().capacity_bytes();
        if size_bytes < current {
            return Err(format!(
                "disk {disk:?} is {current} bytes; shrinking to {size_bytes} would lose data"
            ));
        }
        if size_bytes > current {
            dev.device_mut()
                .resize(size_bytes)
                .map_err(|e| e.to_string())?;
            dev.notify_config_change();
            tracing::info!(disk, size_bytes, "disk grown live");
        }
        if let Some(d) = self.spec.disks.get_mut(index) {
            d.size_bytes = size_bytes;
        }
        Ok(size_bytes)
    }

    fn status(&self) -> Status {
        let disks = self
            .spec
            .disks
            .iter()
            .map(|d| {
                let path = self.dir.disk_path(d);
                let size_bytes = std::fs::metadata(&path)
                    .map(|m| m.len())
                    .unwrap_or(d.size_bytes);
                DiskStatus {
                    name: d.name.clone(),
                    size_bytes,
                    path: path.display().to_string(),
                }
            })
            .collect();
        Status {
            state: if self.machine.is_paused() {
                RunState::Paused
            } else {
                RunState::Running
            },
            pid: std::process::id(),
            vcpus: self.cfg.cpus,
            memory_mib: self.cfg.memory_mib,
            disks,
            guest: self.keep.report.lock().ok().and_then(|r| r.clone()),
            uptime_ms: self.booted.elapsed().as_millis() as u64,
            boots: self.boots,
            irq_mode: self.cfg.irq_mode.as_str().into(),
        }
    }

    fn on_request(&mut self, p: Pending) -> Option<Outcome> {
        let response = match p.request {
            Request::Status => Response::ok(self.status()),
            Request::Capabilities => Response::ok(CAPABILITIES),
            Request::Pause => {
                if self.machine.pause() {
                    Response::ok(RunState::Paused)
                } else {
                    Response::err("some vCPUs did not pause in time")
                }
            }
            Request::Resume => {
                self.machine.resume();
                Response::ok(RunState::Running)
            }
            Request::ResizeDisk { disk, size_bytes } => match self.resize_disk(&disk, size_bytes) {
                Ok(bytes) => Response::ok(bytes),
                Err(e) => Response::err(e),
            },
            Request::Shutdown { timeout_ms } => {
                let grace = Duration::from_millis(
                    timeout_ms.unwrap_or(crate::api::protocol::DEFAULT_SHUTDOWN_TIMEOUT_MS),
                );
                let outcome = self.shutdown(grace);
                let graceful = outcome.reason == "poweroff";
                let _ = p.reply.send(Response::ok(ShutdownResult { graceful }));
                let _ = p.written.recv_timeout(Duration::from_secs(1));
                return Some(Outcome {
                    reason: if graceful { "shutdown" } else { outcome.reason },
                    ..outcome
                });
            }
        };
        let _ = p.reply.send(response);
        None
    }

    /// Press the power button and wait for the guest to power off; after
    /// `grace`, stop it by force.
    fn shutdown(&mut self, grace: Duration) -> Outcome {
        self.machine.resume();
        self.keep.ged.raise(GED_POWER_BUTTON);
        if let Some(irq) = &self.machine.ged_irq {
            irq.trigger();
        }
        let deadline = Instant::now() + grace;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(MainEvent::Vm(VmEvent::PowerOff)) => {
                    return Outcome {
                        reason: "poweroff",
                        detail: "the guest powered off on request".into(),
                        code: 0,
                    };
                }
                Ok(MainEvent::Vm(VmEvent::Crash(detail))) => {
                    return Outcome {
                        reason: "crash",
                        detail,
                        code: 2,
                    };
                }
                Ok(MainEvent::Vm(VmEvent::Reset)) => {
                    return Outcome {
                        reason: "shutdown",
                        detail: "the guest reset during shutdown; stopped".into(),
                        code: 0,
                    };
                }
                Ok(MainEvent::Signal(_)) => {}
                Ok(MainEvent::Api(p)) => {
                    let r = match p.request {
                        Request::Status => Response::ok(self.status()),
                        _ => Response::err("the VM is shutting down"),
                    };
                    let _ = p.reply.send(r);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Outcome {
                        reason: "shutdown",
                        detail: format!(
                            "the guest did not power off within {} ms; stopped",
                            grace.as_millis()
                        ),
                        code: 0,
                    };
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Outcome {
                        reason: "crash",
                        detail: "event channel closed".into(),
                        code: 2,
                    };
                }
            }
        }
    }
}
