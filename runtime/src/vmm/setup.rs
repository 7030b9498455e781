//! Building the VMM process's one VM: read `machine.json`, load the kernel
//! and initrd files, check the host can give the memory, build the first
//! machine, open the sockets and write `vmm.pid` (the readiness signal).

use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use super::boot::BootImage;
use super::config::MachineConfig;
use super::events::{self, MainEvent};
use super::machine::{Machine, Persistent};
use super::serve::Vmm;
use super::{VmmError, console, host, signals};
use crate::api::server;
use crate::state::VmDir;
use crate::vstate::vcpu;

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// Read the kernel and initrd the config names.
pub fn load_image(cfg: &MachineConfig) -> Result<BootImage, VmmError> {
    let kernel = std::fs::read(&cfg.kernel).map_err(|source| VmmError::Kernel {
        path: cfg.kernel.display().to_string(),
        source,
    })?;
    let initrd = match &cfg.initrd {
        Some(p) => Some(std::fs::read(p).map_err(|source| VmmError::Initrd {
            path: p.display().to_string(),
            source,
        })?),
        None => None,
    };
    Ok(BootImage {
        kernel: kernel.into(),
        initrd: initrd.map(Into::into),
        cmdline: cfg.cmdline.clone(),
    })
}

pub(super) fn setup(dir: &VmDir) -> Result<Vmm, VmmError> {
    let cfg = MachineConfig::load(&dir.machine_config())?;
    let image = load_image(&cfg)?;
    host::check_memory(cfg.memory_mib)?;
    vcpu::install_kick_handler()?;
    signals::block();
    // Confinement (crate::confine): from here on every thread installs its
    // seccomp filter before it does its work.
    let nofile = crate::confine::limits::limit_files(
        cfg.max_cpus.max(cfg.cpus),
        cfg.disks.len() + cfg.nics.len(),
    )?;
    tracing::debug!(nofile, "RLIMIT_NOFILE set");
    crate::confine::enable(dir)?;
    let console_log =
        crate::devices::serial::RotatingLog::open(&cfg.console_log, cfg.console_log_max_bytes)
            .map_err(io("console.log"))?;
    let keep = Persistent {
        console_log: Some(Arc::new(Mutex::new(console_log))),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    signals::forward(tx.clone(), MainEvent::Signal).map_err(io("the signal thread"))?;
    let generation = 1;
    let machine = Machine::build(&cfg, &image, &keep, events::sink(&tx, generation))?;
    tracing::info!(vm = %cfg.name, cpus = cfg.cpus, max_cpus = cfg.max_cpus,
        memory_mib = cfg.memory_mib, max_memory_mib = cfg.max_memory_mib,
        irq_mode = cfg.irq_mode.as_str(), "VM built");

    let api = server::bind(&dir.api_sock()).map_err(io("api.sock"))?;
    server::spawn(api, tx.clone(), MainEvent::Api).map_err(io("the API thread"))?;
    let com1 = Arc::new(Mutex::new(Some(machine.com1.clone())));
    let console = server::bind(&dir.console_sock()).map_err(io("console.sock"))?;
    console::spawn(console, keep.console_clients.clone(), com1.clone())
        .map_err(io("the console thread"))?;
    // Read before the filter goes on (it need not allow /proc reads).
    let trim = super::trim::Trim::read();
    // Set-up is done: the main thread's filter goes on before the guest
    // runs. vCPU threads it starts now run under it and their own.
    crate::confine::install_main()?;
    crate::state::write_replace(
        &dir.pid_file(),
        format!("{}\n", std::process::id()).as_bytes(),
    )?;

    let mut vmm = Vmm {
        cfg,
        image,
        keep,
        machine,
        com1,
        tx,
        rx,
        booted: Instant::now(),
        boots: generation,
        in_flight: None,
        stopping_until: None,
        quiesced: None,
        next_quiesce_id: 0,
    };
    vmm.machine.start()?;
    vmm.booted = Instant::now();
    let advised = trim.apply();
    tracing::debug!(kib = advised >> 10, "start-up pages of the binary dropped");
    Ok(vmm)
}
