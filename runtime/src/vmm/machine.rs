//! One boot of a VM: the KVM VM with its memory, devices and vCPU threads.
//! A guest reset tears a `Machine` down and builds a new one in the same VMM
//! process; what must survive a reboot (the guest report, console clients,
//! GED events) lives in [`Persistent`].

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::signal::Killable;

use super::boot::{self, BootError, BootImage};
use super::irq::{self, IrqMode};
use crate::arch::x86_64::layout;
use crate::devices::legacy::{GedDevice, I8042Device, PowerDevice, ged::GedEvents, i8042, power};
use crate::devices::serial::{AgentChannel, ConsoleOutput, GuestReport, SerialDevice, SerialIrq};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::{Bus, BusError, Interrupt};
use crate::vstate::vcpu::{self, ExitContext, Vcpu, VcpuControl, VcpuError, VmEvent};
use crate::vstate::vm::{Vm, VmError};

/// What to build.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub cpus: u32,
    pub max_cpus: u32,
    pub memory_mib: u64,
    pub irq_mode: IrqMode,
    pub image: BootImage,
    /// Whether to write ACPI tables (the diag guest and Linux read them).
    pub acpi: bool,
    /// virtio-blk disks, in declaration order (device `i` at
    /// `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`, GSI `VIRTIO_GSI_BASE + i`).
    pub disks: Vec<DiskConfig>,
}

/// One disk file behind a virtio-blk device.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The disk's name; also its virtio-blk serial (what the guest reports as `id`).
    pub name: String,
    pub path: std::path::PathBuf,
}

pub type BlockDevice = Arc<Mutex<MmioTransport<Block>>>;

/// State that outlives one boot.
#[derive(Clone, Default)]
pub struct Persistent {
    pub report: GuestReport,
    pub console_clients: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
    pub console_log: Option<Arc<std::fs::File>>,
    pub ged: GedEvents,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("device setup: {0}")]
    Bus(#[from] BusError),
    #[error("interrupt setup: {0}")]
    Irq(#[from] std::io::Error),
    #[error("disk {name:?}: {source}")]
    Disk {
        name: String,
        #[source]
        source: BlockError,
    },
    #[error("{0} disks; at most {max} are supported", max = layout::VIRTIO_MMIO_MAX_DEVICES)]
    TooManyDisks(usize),
}

pub type Com1 = Arc<Mutex<SerialDevice<ConsoleOutput>>>;

pub struct Machine {
    pub vm: Vm,
    pub control: Arc<VcpuControl>,
    pub com1: Com1,
    pub ged_irq: Option<Arc<dyn Interrupt>>,
    /// The virtio-blk devices, for live changes (resize).
    pub disks: Vec<BlockDevice>,
    vcpus: Vec<Vcpu>,
    threads: Vec<JoinHandle<()>>,
    ctx: ExitContext,
    pub cpus: u32,
}

impl Machine {
    /// Create the VM, load the guest and the devices, configure the vCPUs.
    /// Nothing runs until [`Machine::start`].
    pub fn build(
        cfg: &MachineConfig,
        keep: &Persistent,
        events: Sender<VmEvent>,
    ) -> Result<Self, MachineError> {
        let ram_bytes = cfg.memory_mib << 20;
        if cfg.disks.len() as u64 > layout::VIRTIO_MMIO_MAX_DEVICES {
            return Err(MachineError::TooManyDisks(cfg.disks.len()));
        }
        let vm = Vm::new(ram_bytes)?;

        let rsdp = if cfg.acpi {
            let acpi_cfg = crate::acpi::AcpiConfig::new(
                cfg.cpus,
                cfg.max_cpus.max(cfg.cpus),
                cfg.disks.len() as u32,
            );
            let addr = crate::acpi::write_tables(&vm.memory, &acpi_cfg)
                .map_err(|e| BootError::Acpi(e.to_string()))?;
            Some(addr.0)
        } else {
            None
        };
        let entry = boot::load(&vm.memory, &cfg.image, ram_bytes, rsdp)?;

        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let com1_irq = SerialIrq(irq::line(&vm.fd, cfg.irq_mode, layout::COM1_IRQ)?);
        let com2_irq = SerialIrq(irq::line(&vm.fd, cfg.irq_mode, layout::COM2_IRQ)?);
        let log = keep.console_log.as_ref().and_then(|f| f.try_clone().ok());
        let console = ConsoleOutput {
            log,
            clients: keep.console_clients.clone(),
        };
        let com1: Com1 = Arc::new(Mutex::new(SerialDevice::new(com1_irq, console)));
        let com2 = Arc::new(Mutex::new(SerialDevice::new(
            com2_irq,
            AgentChannel::new(keep.report.clone()),
        )));
        pio.insert(com1.clone(), u64::from(layout::COM1_PORT), 8)?;
        pio.insert(com2, u64::from(layout::COM2_PORT), 8)?;
        pio.insert(
            Arc::new(Mutex::new(I8042Device::new(events.clone()))),
            u64::from(i8042::I8042_BASE),
            i8042::I8042_LEN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(PowerDevice::new(events.clone()))),
            u64::from(power::POWER_PORT),
            power::POWER_PORT_LEN,
        )?;
        let ged_irq = irq::line(&vm.fd, cfg.irq_mode, crate::acpi::GED_GSI)?;
        mmio.insert(
            Arc::new(Mutex::new(GedDevice::new(
                keep.ged.clone(),
                ged_irq.clone(),
            ))),
            layout::GED_BASE,
            crate::acpi::GED_REGISTER_SIZE,
        )?;

        let mut disks = Vec::new();
        for (i, disk) in cfg.disks.iter().enumerate() {
            let block =
                Block::new(&disk.path, false, &disk.name).map_err(|source| MachineError::Disk {
                    name: disk.name.clone(),
                    source,
                })?;
            let irq = irq::line(&vm.fd, cfg.irq_mode, layout::VIRTIO_GSI_BASE + i as u32)?;
            let dev: BlockDevice = Arc::new(Mutex::new(MmioTransport::new(
                block,
                vm.memory.clone(),
                irq,
            )));
            mmio.insert(
                dev.clone(),
                layout::VIRTIO_MMIO_BASE + i as u64 * layout::VIRTIO_MMIO_SIZE,
                layout::VIRTIO_MMIO_SIZE,
            )?;
            disks.push(dev);
        }

        let mut vcpus = Vec::new();
        for index in 0..cfg.cpus {
            let entry = (index == 0).then_some(entry);
            vcpus.push(Vcpu::new(&vm.kvm, &vm.fd, index, cfg.max_cpus, entry)?);
        }
        let control = Arc::new(VcpuControl::default());
        let ctx = ExitContext {
            pio,
            mmio,
            control: control.clone(),
            events,
        };
        Ok(Machine {
            vm,
            control,
            com1,
            ged_irq,
            disks,
            vcpus,
            threads: Vec::new(),
            ctx,
            cpus: cfg.cpus,
        })
    }

    /// Start one thread per vCPU.
    pub fn start(&mut self) -> Result<(), MachineError> {
        for vcpu in self.vcpus.drain(..) {
            let ctx = self.ctx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index))
                .spawn(move || vcpu.run(ctx))?;
            self.threads.push(handle);
        }
        Ok(())
    }

    fn kick_all(&self) {
        for t in &self.threads {
            let _ = t.kill(vcpu::kick_signal());
        }
    }

    /// Park every vCPU; false if some did not park in time.
    pub fn pause(&self) -> bool {
        if let Ok(mut s) = self.control.state.lock() {
            s.paused = true;
        }
        self.control
            .wait_parked(self.threads.len(), Duration::from_secs(2), &|| {
                self.kick_all()
            })
    }

    pub fn resume(&self) {
        if let Ok(mut s) = self.control.state.lock() {
            s.paused = false;
        }
        self.control.cv.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.control.state.lock().map(|s| s.paused).unwrap_or(false)
    }

    /// Give the guest's RAM back to the host (after [`Machine::stop`]), so a
    /// reboot does not hold two copies while the next machine is built.
    pub fn release_memory(&self) {
        if !self.threads.is_empty() {
            return;
        }
        for region in self.vm.memory.iter() {
            // SAFETY: the range is exactly one live mapping owned by this
            // machine, and no vCPU runs (threads are joined), so nothing
            // uses its contents any more; MADV_DONTNEED only drops pages.
            unsafe {
                libc::madvise(
                    region.as_ptr().cast(),
                    region.len() as usize,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }

    /// Stop and join every vCPU thread.
    pub fn stop(&mut self) {
        if let Ok(mut s) = self.control.state.lock() {
            s.stop = true;
        }
        self.control.cv.notify_all();
        while self.threads.iter().any(|t| !t.is_finished()) {
            self.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}
