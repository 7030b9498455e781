//! One boot of a VM: the KVM VM with its memory, devices, I/O thread and
//! vCPU threads. A guest reset tears a `Machine` down and builds a new one in
//! the same VMM process; what must survive a reboot (the guest report,
//! console clients, GED events) lives in [`Persistent`].
//!
//! Hot-add changes a running machine: [`Machine::add_vcpu`] creates and
//! starts a vCPU, [`Machine::add_memory`] maps and registers RAM in the
//! reserved hotplug region and hands every device the new memory view; the
//! hotplug controllers (devices::legacy) tell the guest.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::IoEventAddress;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use super::boot::{self, BootError, BootImage};
use super::config::MachineConfig;
use super::irq;
use crate::arch::x86_64::layout;
use crate::devices::agent::AgentLink;
use crate::devices::legacy::cpu_hotplug::{CpuHotplug, CpuHotplugError};
use crate::devices::legacy::memory_hotplug::{MemoryHotplug, MemoryHotplugError};
use crate::devices::legacy::serial_batch::{self, SerialBatch, Target as BatchTarget};
use crate::devices::legacy::{GedDevice, I8042Device, PowerDevice, ged::GedEvents, i8042, power};
use crate::devices::serial::{
    AgentChannel, ConsoleOutput, GuestReport, RotatingLog, SerialDevice, SerialIrq,
};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::io_thread::{
    IoThread, IoThreadError, Notifier, QueueHandler, Readable,
};
use crate::devices::virtio::mmio::{MmioTransport, reg};
use crate::devices::virtio::net::{self, Mac, Net, NetCounters, tap};
use crate::devices::{Bus, BusError, Interrupt};
use crate::vstate::vcpu::{self, EventSink, ExitContext, Vcpu, VcpuControl, VcpuError};
use crate::vstate::vm::{Vm, VmError};

pub type BlockDevice = Arc<Mutex<MmioTransport<Block>>>;
pub type NetDevice = Arc<Mutex<MmioTransport<Net>>>;

/// One NIC's host side, kept for the VMM's life: the TAP descriptor
/// attached once at set-up (a reboot builds its device on a dup; the VMM
/// is confined by then and never attaches again) and its counters, which
/// `status` reports across reboots.
pub struct NicHost {
    pub tap_name: String,
    pub tap: std::fs::File,
    pub counters: Arc<NetCounters>,
}

/// State that outlives one boot.
#[derive(Clone, Default)]
pub struct Persistent {
    pub report: GuestReport,
    /// The agent command waiting for the guest's reply (a reset fails it).
    pub agent: AgentLink,
    pub console_clients: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
    pub console_log: Option<Arc<Mutex<RotatingLog>>>,
    pub ged: GedEvents,
    /// Every disk file, opened and locked once by the first build and kept
    /// for the VMM's life: a reboot builds its devices on dups of these
    /// (same open file description, same lock), so the lock is never
    /// dropped while the VMM runs and the rebuilt machine does not conflict
    /// with the old one, which still holds its files while it is built.
    pub disk_files: Arc<Mutex<Vec<(PathBuf, std::fs::File)>>>,
    /// Every NIC's TAP and counters, in `MachineConfig::nics` order.
    pub nics: Arc<Mutex<Vec<NicHost>>>,
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
    #[error("NIC {name:?}: {source}")]
    Nic {
        name: String,
        #[source]
        source: tap::TapError,
    },
    #[error("NIC {name:?}: MAC {mac:?} is not a unicast address of the form 52:54:00:12:34:56")]
    NicMac { name: String, mac: String },
    #[error("{0} virtio devices (disks and NICs); at most {max} are supported", max = layout::VIRTIO_MMIO_MAX_DEVICES)]
    TooManyDisks(usize),
    #[error(transparent)]
    IoThread(#[from] IoThreadError),
    #[error(transparent)]
    CpuHotplug(#[from] CpuHotplugError),
    #[error(transparent)]
    MemoryHotplug(#[from] MemoryHotplugError),
    #[error("memory hot-add: {0}")]
    NoRoom(String),
}

pub type Com1 = Arc<Mutex<SerialDevice<ConsoleOutput>>>;
pub type Com2 = Arc<Mutex<SerialDevice<AgentChannel>>>;

pub struct Machine {
    pub vm: Vm,
    pub control: Arc<VcpuControl>,
    pub com1: Com1,
    /// The agent channel: commands go into its receive FIFO.
    pub com2: Com2,
    pub ged_irq: Option<Arc<dyn Interrupt>>,
    /// The virtio-blk devices, for live changes (resize, new memory view).
    pub disks: Vec<BlockDevice>,
    /// The virtio-net devices (new memory view after hot-add).
    pub nics: Vec<NetDevice>,
    pub cpu_hotplug: CpuHotplug,
    pub memory_hotplug: MemoryHotplug,
    /// `(start, len)` of the RAM hot-add may fill; None without headroom.
    hotplug_region: Option<(u64, u64)>,
    /// Created but not yet started vCPUs (boot), by index.
    vcpus: Vec<Vcpu>,
    /// vCPU threads by index (boot and hot-added).
    threads: Vec<(u32, JoinHandle<()>)>,
    ctx: ExitContext,
    max_cpus: u32,
    /// Dropped (stopped and joined) with the machine.
    _io: Option<IoThread>,
}

impl Machine {
    /// Create the VM, load the guest and the devices, configure the vCPUs.
    /// Nothing runs until [`Machine::start`].
    pub fn build(
        cfg: &MachineConfig,
        image: &BootImage,
        keep: &Persistent,
        events: EventSink,
    ) -> Result<Self, MachineError> {
        let ram_bytes = cfg.memory_mib << 20;
        let max_ram_bytes = cfg.max_memory_mib.max(cfg.memory_mib) << 20;
        let devices = cfg.disks.len() + cfg.nics.len();
        if devices as u64 > layout::VIRTIO_MMIO_MAX_DEVICES {
            return Err(MachineError::TooManyDisks(devices));
        }
        let vm = Vm::new(ram_bytes)?;
        let max_cpus = cfg.max_cpus.max(cfg.cpus);

        // Disks, then NICs: one virtio-mmio device list for the DSDT.
        let acpi_cfg = crate::acpi::AcpiConfig::new(cfg.cpus, max_cpus, devices as u32)
            .with_memory_hotplug(ram_bytes, max_ram_bytes);
        let hotplug_region = acpi_cfg.memory_hotplug.as_ref().map(|m| (m.base, m.size));
        let rsdp = crate::acpi::write_tables(&vm.memory, &acpi_cfg)
            .map_err(|e| BootError::Acpi(e.to_string()))?;
        let entry = boot::load(&vm.memory, image, ram_bytes, Some(rsdp.0))?;

        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        // Created first: in polled mode every device line wakes its vCPU 0.
        let control = Arc::new(VcpuControl::default());
        // Every device's interrupt line (or, polled, its wake of vCPU 0).
        let line = |gsi: u32| irq::line(&vm.fd, cfg.irq_mode, gsi, &control);
        let com1_irq = SerialIrq(line(layout::COM1_IRQ)?);
        let com2_irq = SerialIrq(line(layout::COM2_IRQ)?);
        let serial_wake: Option<Arc<dyn Interrupt>> = (cfg.irq_mode == irq::IrqMode::Polled)
            .then(|| Arc::new(irq::GuestWake(control.clone())) as Arc<dyn Interrupt>);
        let console = ConsoleOutput {
            log: keep.console_log.clone(),
            clients: keep.console_clients.clone(),
        };
        let com1: Com1 = Arc::new(Mutex::new(
            SerialDevice::new(com1_irq, console).with_wake(serial_wake.clone()),
        ));
        let com2: Com2 = Arc::new(Mutex::new(
            SerialDevice::new(
                com2_irq,
                AgentChannel::new(keep.report.clone(), keep.agent.clone()),
            )
            .with_wake(serial_wake),
        ));
        pio.insert(com1.clone(), u64::from(layout::COM1_PORT), 8)?;
        pio.insert(com2.clone(), u64::from(layout::COM2_PORT), 8)?;
        pio.insert(
            Arc::new(Mutex::new(SerialBatch::new(
                vm.memory.clone(),
                vec![
                    BatchTarget {
                        port: layout::COM1_PORT,
                        device: com1.clone(),
                    },
                    BatchTarget {
                        port: layout::COM2_PORT,
                        device: com2.clone(),
                    },
                ],
            ))),
            u64::from(serial_batch::BATCH_PORT),
            4,
        )?;
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
        let ged_irq = line(crate::acpi::GED_GSI)?;
        mmio.insert(
            Arc::new(Mutex::new(GedDevice::new(
                keep.ged.clone(),
                ged_irq.clone(),
            ))),
            layout::GED_BASE,
            crate::acpi::GED_REGISTER_SIZE,
        )?;
        // Both controllers are always there: the DSDT's processor devices
        // read the CPU controller whenever max > boot, and a guest that
        // polls (diag) finds them at fixed addresses.
        let cpu_hotplug = CpuHotplug::new(cfg.cpus, max_cpus)?;
        mmio.insert(
            Arc::new(Mutex::new(cpu_hotplug.device())),
            layout::CPU_HOTPLUG_BASE,
            layout::CPU_HOTPLUG_SIZE,
        )?;
        let memory_hotplug = MemoryHotplug::new();
        mmio.insert(
            Arc::new(Mutex::new(memory_hotplug.device())),
            layout::MEMORY_HOTPLUG_BASE,
            layout::MEMORY_HOTPLUG_SIZE,
        )?;

        let mut disks = Vec::new();
        let mut notifiers = Vec::new();
        for (i, disk) in cfg.disks.iter().enumerate() {
            let block =
                open_disk(keep, &disk.path, &disk.name).map_err(|source| MachineError::Disk {
                    name: disk.name.clone(),
                    source,
                })?;
            let irq = line(layout::VIRTIO_GSI_BASE + i as u32)?;
            let dev: BlockDevice = Arc::new(Mutex::new(MmioTransport::new(
                block,
                vm.memory.clone(),
                irq,
            )));
            let base = layout::VIRTIO_MMIO_BASE + i as u64 * layout::VIRTIO_MMIO_SIZE;
            mmio.insert(dev.clone(), base, layout::VIRTIO_MMIO_SIZE)?;
            if let Some(n) = queue_notifier(&vm, base, 0, dev.clone()) {
                notifiers.push(n);
            }
            disks.push(dev);
        }
        let mut nics = Vec::new();
        let mut readables = Vec::new();
        for (j, nic) in cfg.nics.iter().enumerate() {
            let i = cfg.disks.len() + j;
            let (tap_file, watch, counters) =
                open_nic(keep, j, &nic.tap).map_err(|source| MachineError::Nic {
                    name: nic.name.clone(),
                    source,
                })?;
            let mac = Mac::parse(&nic.mac)
                .filter(Mac::is_unicast)
                .ok_or_else(|| MachineError::NicMac {
                    name: nic.name.clone(),
                    mac: nic.mac.clone(),
                })?;
            let irq = line(layout::VIRTIO_GSI_BASE + i as u32)?;
            let device = Net::new(mac, Box::new(tap_file), counters);
            let dev: NetDevice = Arc::new(Mutex::new(MmioTransport::new(
                device,
                vm.memory.clone(),
                irq,
            )));
            let base = layout::VIRTIO_MMIO_BASE + i as u64 * layout::VIRTIO_MMIO_SIZE;
            mmio.insert(dev.clone(), base, layout::VIRTIO_MMIO_SIZE)?;
            for q in [net::RX_QUEUE, net::TX_QUEUE] {
                if let Some(n) = queue_notifier(&vm, base, q as u32, dev.clone()) {
                    notifiers.push(n);
                }
            }
            // Frames arriving on the TAP are RX work whether or not the
            // guest notifies (diag polls).
            readables.push(Readable {
                fd: watch,
                queue: net::RX_QUEUE as u32,
                handler: dev.clone(),
            });
            tracing::info!(nic = %nic.name, mac = %mac, tap = %nic.tap, device = i, "virtio-net attached");
            nics.push(dev);
        }
        let io = if notifiers.is_empty() && readables.is_empty() {
            None
        } else {
            Some(IoThread::spawn_with(notifiers, readables)?)
        };

        let mut vcpus = Vec::new();
        for index in 0..cfg.cpus {
            let entry = (index == 0).then_some(entry);
            vcpus.push(Vcpu::new(&vm.kvm, &vm.fd, index, max_cpus, entry)?);
        }
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
            com2,
            ged_irq,
            disks,
            nics,
            cpu_hotplug,
            memory_hotplug,
            hotplug_region,
            vcpus,
            threads: Vec::new(),
            ctx,
            max_cpus,
            _io: io,
        })
    }

    /// Start one thread per boot vCPU.
    pub fn start(&mut self) -> Result<(), MachineError> {
        for vcpu in std::mem::take(&mut self.vcpus) {
            self.spawn_vcpu(vcpu)?;
        }
        Ok(())
    }

    fn spawn_vcpu(&mut self, vcpu: Vcpu) -> Result<(), MachineError> {
        let ctx = self.ctx.clone();
        let index = vcpu.index;
        let handle = crate::confine::spawn(
            format!("vcpu{index}"),
            crate::confine::ThreadKind::Vcpu,
            move || vcpu.run(ctx),
        )?;
        self.threads.push((index, handle));
        Ok(())
    }

    /// vCPUs with a thread (present or parked after an eject).
    pub fn vcpu_threads(&self) -> usize {
        self.threads.len()
    }

    /// Make vCPU `index` runnable while the VM runs: create its fd and thread
    /// the first time (same CPUID, MSRs, FPU and LAPIC setup as a boot AP; no
    /// registers: KVM holds it in wait-for-SIPI), or release the parked
    /// thread of a vCPU the guest ejected earlier. The caller then tells the
    /// guest (CPU controller + GED).
    pub fn add_vcpu(&mut self, index: u32) -> Result<(), MachineError> {
        if index >= self.max_cpus {
            return Err(CpuHotplugError::OutOfRange {
                index,
                max: self.max_cpus,
            }
            .into());
        }
        if self.threads.iter().any(|(i, _)| *i == index) {
            self.control.set_ejected(index, false);
            return Ok(());
        }
        let vcpu = Vcpu::new(&self.vm.kvm, &self.vm.fd, index, self.max_cpus, None)?;
        self.spawn_vcpu(vcpu)
    }

    /// Park vCPU `index`'s thread after the guest ejected it.
    pub fn park_vcpu(&self, index: u32) {
        self.control.set_ejected(index, true);
        if let Some((_, t)) = self.threads.iter().find(|(i, _)| *i == index) {
            let _ = t.kill(vcpu::kick_signal());
        }
    }

    /// Map `bytes` more RAM at the end of what was hot-added so far, register
    /// it with KVM, hand every device the new memory view and fill the next
    /// slot of the memory controller. Returns `(slot, base)`. The caller then
    /// raises the GED.
    pub fn add_memory(&mut self, bytes: u64) -> Result<(usize, u64), MachineError> {
        let Some((start, len)) = self.hotplug_region else {
            return Err(MachineError::NoRoom(
                "this VM was booted without hot-add headroom (max memory = memory)".into(),
            ));
        };
        let used = self.memory_hotplug.populated_bytes();
        let base = start + used;
        if bytes == 0 || !bytes.is_multiple_of(layout::MEMORY_HOTPLUG_ALIGN) {
            return Err(MachineError::NoRoom(format!(
                "{} MiB is not a whole number of {} MiB blocks",
                bytes >> 20,
                layout::MEMORY_HOTPLUG_ALIGN >> 20
            )));
        }
        if used.saturating_add(bytes) > len {
            return Err(MachineError::NoRoom(format!(
                "{} MiB more does not fit: {} of {} MiB of headroom used",
                bytes >> 20,
                used >> 20,
                len >> 20
            )));
        }
        if self.memory_hotplug.populated().len() >= layout::MEMORY_HOTPLUG_SLOTS {
            return Err(MachineError::NoRoom(format!(
                "all {} memory slots are used; restart the VM to fold them into boot RAM",
                layout::MEMORY_HOTPLUG_SLOTS
            )));
        }
        let mem = self.vm.add_ram(base, bytes)?;
        for d in &self.disks {
            if let Ok(mut t) = d.lock() {
                t.set_memory(mem.clone());
            }
        }
        for d in &self.nics {
            if let Ok(mut t) = d.lock() {
                t.set_memory(mem.clone());
            }
        }
        let slot = self.memory_hotplug.insert(base, bytes)?;
        Ok((slot, base))
    }

    /// RAM the guest has now: boot plus hot-added.
    pub fn memory_bytes(&self) -> u64 {
        self.vm.memory.iter().map(|r| r.len()).sum()
    }

    fn kick_all(&self) {
        for (_, t) in &self.threads {
            let _ = t.kill(vcpu::kick_signal());
        }
    }

    /// Park every vCPU; false if some did not park in time.
    pub fn pause(&self) -> bool {
        if let Ok(mut s) = self.control.state.lock() {
            s.paused = true;
        }
        // A vCPU asleep in the guest's idle port wakes now, not at the end
        // of its sleep (the kick's signal is not guaranteed to end a
        // condvar wait): a quiesce for a copy pauses the guest no longer
        // than it must.
        self.control.cv.notify_all();
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
        while self.threads.iter().any(|(_, t)| !t.is_finished()) {
            self.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        for (_, t) in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The device for one disk: over a dup of the file this VMM already
/// locked, or (first build) opened and locked now and remembered in `keep`.
fn open_disk(keep: &Persistent, path: &Path, name: &str) -> Result<Block, BlockError> {
    let open_err = |source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut files = keep
        .disk_files
        .lock()
        .map_err(|_| open_err(std::io::Error::other("the disk file list is poisoned")))?;
    if let Some((_, f)) = files.iter().find(|(p, _)| p == path) {
        return Block::with_file(f.try_clone().map_err(open_err)?, path, false, name);
    }
    let block = Block::new(path, false, name)?;
    files.push((
        path.to_path_buf(),
        block.try_clone_file().map_err(open_err)?,
    ));
    Ok(block)
}

/// NIC `index`'s TAP (a dup of the one attached at set-up, or attached
/// now and remembered in `keep`), a second dup for the I/O thread to watch,
/// and its counters.
fn open_nic(
    keep: &Persistent,
    index: usize,
    tap_name: &str,
) -> Result<(std::fs::File, std::os::fd::OwnedFd, Arc<NetCounters>), tap::TapError> {
    let dup_err = |source| tap::TapError::Configure {
        name: tap_name.into(),
        what: "dup",
        source,
    };
    let mut nics = keep
        .nics
        .lock()
        .map_err(|_| dup_err(std::io::Error::other("the NIC list is poisoned")))?;
    if nics.len() == index {
        let tap = tap::open(tap_name)?;
        nics.push(NicHost {
            tap_name: tap_name.into(),
            tap,
            counters: Arc::new(NetCounters::default()),
        });
    }
    let Some(host) = nics.get(index).filter(|h| h.tap_name == tap_name) else {
        return Err(dup_err(std::io::Error::other(
            "the NIC list does not match the machine config",
        )));
    };
    let file = host.tap.try_clone().map_err(dup_err)?;
    let watch = host.tap.try_clone().map_err(dup_err)?.into();
    Ok((file, watch, host.counters.clone()))
}

/// Back queue `queue`'s `QueueNotify` of the device at `base` (the write of
/// value `queue`) with an ioeventfd served by the I/O thread. None (the
/// vCPU then handles the write itself) when KVM refuses it.
fn queue_notifier(
    vm: &Vm,
    base: u64,
    queue: u32,
    handler: Arc<dyn QueueHandler>,
) -> Option<Notifier> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).ok()?;
    let addr = IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY);
    match vm.fd.register_ioevent(&fd, &addr, queue) {
        Ok(()) => Some(Notifier { fd, queue, handler }),
        Err(e) => {
            tracing::warn!(base, error = %e, "no ioeventfd: virtio requests run on the vCPU");
            None
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}
