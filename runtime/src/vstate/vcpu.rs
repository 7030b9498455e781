//! One vCPU: its per-CPU setup (CPUID, MSRs, FPU, LAPIC, and for the boot CPU
//! the 64-bit entry registers) and the thread that runs it, dispatching port
//! and MMIO exits to the buses and reporting power events to the VMM.
//!
//! Pausing: the VMM sets [`VcpuControl`]'s `paused` flag and kicks each thread
//! with [`KICK_SIGNAL`], which interrupts `KVM_RUN` with `EINTR`; the thread
//! then parks on the condition variable until resumed or stopped. A kick that
//! lands outside `KVM_RUN` is lost, so the VMM repeats it until every thread
//! has reported itself parked.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, interrupts, layout, msr, pvh, regs};
use crate::devices::Bus;
use crate::vmm::boot::BootEntry;

/// The real-time signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the (empty) kick handler once per process; without it the signal
/// would kill the process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler).map_err(|e| {
        VcpuError::Setup {
            what: "kick signal handler",
            source: kvm_ioctls::Error::new(e.errno()),
        }
    })
}

/// Where vCPUs and devices report [`VmEvent`]s. The VMM makes one per
/// machine (one boot) that tags each event with that machine's generation on
/// its way into the VMM's single event loop, so a late event from a machine
/// already torn down (a reboot's old vCPUs) cannot act on its successor.
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(VmEvent) + Send + Sync>);

impl EventSink {
    pub fn new(f: impl Fn(VmEvent) + Send + Sync + 'static) -> Self {
        EventSink(Arc::new(f))
    }

    pub fn send(&self, event: VmEvent) {
        (self.0)(event)
    }
}

impl From<Sender<VmEvent>> for EventSink {
    fn from(tx: Sender<VmEvent>) -> Self {
        EventSink::new(move |ev| {
            let _ = tx.send(ev);
        })
    }
}

/// Why the VM must stop running, as reported by a vCPU or a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest powered off (ACPI S5 on the power device, or KVM's
    /// system event).
    PowerOff,
    /// The guest asked for a reset (power device, i8042, KVM system event).
    Reset,
    /// The vCPU cannot go on (triple fault, internal error, failed entry).
    Crash(String),
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {index}: {source}")]
    Create {
        index: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(
        "KVM accepted only {written} of {total} boot MSRs; the first refused is {first_refused:#x}"
    )]
    PartialMsrs {
        written: usize,
        total: usize,
        first_refused: u32,
    },
    #[error("vCPU setup failed ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// `KVM_SET_MSRS` stops at the first MSR it refuses and returns how many it
/// set. A vCPU missing some of its boot MSRs is not the machine we promised
/// (Firecracker fails the boot too), so a partial write is an error naming
/// the MSR.
fn check_msrs_written(msrs: &kvm_bindings::Msrs, written: usize) -> Result<(), VcpuError> {
    let entries = msrs.as_slice();
    if written == entries.len() {
        return Ok(());
    }
    Err(VcpuError::PartialMsrs {
        written,
        total: entries.len(),
        first_refused: entries.get(written).map(|e| e.index).unwrap_or(0),
    })
}

fn setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Setup { what, source }
}

/// Pause / stop flags shared between the VMM and its vCPU threads (not a VM
/// run state: that is `vmctl_spec::state::RunState`).
#[derive(Default)]
pub struct VcpuFlags {
    pub paused: bool,
    pub stop: bool,
    /// vCPUs the guest ejected (CPU hot-remove): their threads stay parked
    /// until the vCPU is hot-added again (a vCPU fd cannot be destroyed, so
    /// it is reused).
    pub ejected: std::collections::BTreeSet<u32>,
    /// How many threads are parked (paused or ejected, and waiting).
    pub parked: usize,
    /// A device has something for a polling guest (serial input, a GED
    /// event, a used virtio buffer) since vCPU 0 last entered the idle
    /// port: its next idle returns at once (see [`VcpuControl::wake_guest`]).
    pub wake: bool,
}

impl VcpuFlags {
    fn must_park(&self, index: u32) -> bool {
        (self.paused || self.ejected.contains(&index)) && !self.stop
    }
}

/// Pause / resume / stop for all vCPU threads of one VM.
#[derive(Default)]
pub struct VcpuControl {
    pub state: Mutex<VcpuFlags>,
    pub cv: Condvar,
}

impl VcpuControl {
    /// Block while paused or ejected. Returns false when the thread must stop.
    fn wait_runnable(&self, index: u32) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if s.must_park(index) {
            s.parked += 1;
            self.cv.notify_all();
            while s.must_park(index) {
                s = match self.cv.wait(s) {
                    Ok(s) => s,
                    Err(_) => return false,
                };
            }
            s.parked -= 1;
        }
        !s.stop
    }

    /// Park this vCPU thread for up to `d` (the guest's idle port), waking
    /// early when a pause, an eject or a stop is requested, and — vCPU 0
    /// only, the one a polling guest services its devices on — when a device
    /// woke the guest since vCPU 0 last idled. Consuming the wake at the
    /// start as well as the end means an event that arrives while the guest
    /// is between its device checks and the idle port costs one extra poll,
    /// never a full idle interval.
    fn idle(&self, index: u32, d: Duration) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let wakes = index == 0;
        if wakes && s.wake {
            s.wake = false;
            return;
        }
        let woken = |s: &mut VcpuFlags| s.must_park(index) || s.stop || (wakes && s.wake);
        if let Ok((mut s, _)) = self.cv.wait_timeout_while(s, d, |s| !woken(s))
            && wakes
        {
            s.wake = false;
        }
    }

    /// A device has work for the guest: end vCPU 0's idle-port wait (or the
    /// next one). This is how a polling guest that idles for long intervals
    /// still answers a console byte, an agent request, a hot-add or a
    /// frame at once.
    pub fn wake_guest(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.wake = true;
        }
        self.cv.notify_all();
    }

    /// Park (`true`) or release (`false`) vCPU `index`'s thread.
    pub fn set_ejected(&self, index: u32, ejected: bool) {
        if let Ok(mut s) = self.state.lock() {
            if ejected {
                s.ejected.insert(index);
            } else {
                s.ejected.remove(&index);
            }
        }
        self.cv.notify_all();
    }

    /// Wait until `count` threads are parked, kicking `kick` meanwhile.
    pub fn wait_parked(&self, count: usize, timeout: Duration, kick: &dyn Fn()) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            kick();
            let Ok(s) = self.state.lock() else {
                return false;
            };
            if s.parked >= count {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(5));
            if self.cv.wait_timeout(s, wait).is_err() {
                return false;
            }
        }
    }
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    pub index: u32,
    pub fd: VcpuFd,
}

/// Everything a vCPU thread needs to handle exits.
#[derive(Clone)]
pub struct ExitContext {
    pub pio: Bus,
    pub mmio: Bus,
    pub control: Arc<VcpuControl>,
    pub events: EventSink,
}

impl Vcpu {
    /// Create vCPU `index` of `count` and give it CPUID, MSRs, FPU and LAPIC
    /// LINT setup. Only the boot vCPU (index 0) gets registers (`entry`); the
    /// others stay in KVM's wait-for-SIPI state.
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        index: u32,
        count: u32,
        entry: Option<BootEntry>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        let supported: CpuId = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(setup("supported CPUID"))?;
        let mut entries = supported.as_slice().to_vec();
        cpuid::normalize(&mut entries, index, count, cpuid::host_caps(kvm));
        let cpuid = CpuId::from_entries(&entries).map_err(|_| VcpuError::Setup {
            what: "CPUID table (too many entries)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(setup("CPUID"))?;
        let msrs = msr::boot_msr_entries().map_err(|_| VcpuError::Setup {
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let written = fd.set_msrs(&msrs).map_err(setup("MSRs"))?;
        check_msrs_written(&msrs, written)?;
        fd.set_fpu(&regs::boot_fpu()).map_err(setup("FPU"))?;
        let mut lapic = fd.get_lapic().map_err(setup("read LAPIC"))?;
        interrupts::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(setup("LAPIC"))?;
        if let Some(entry) = entry {
            let sregs = fd.get_sregs().map_err(setup("read sregs"))?;
            let (sregs, r) = match entry {
                BootEntry::Linux64(rip) => (regs::long_mode_sregs(sregs), regs::entry_regs(rip)),
                BootEntry::Pvh(eip) => (pvh::protected_mode_sregs(sregs), pvh::entry_regs(eip)),
            };
            fd.set_sregs(&sregs).map_err(setup("sregs"))?;
            fd.set_regs(&r).map_err(setup("regs"))?;
        }
        Ok(Vcpu { index, fd })
    }

    /// The vCPU thread body: run until stopped or until the VM must stop.
    pub fn run(mut self, ctx: ExitContext) {
        let index = self.index;
        while ctx.control.wait_runnable(index) {
            match self.fd.run() {
                Ok(exit) => {
                    if let Some(event) = handle_exit(index, exit, &ctx) {
                        let event = match event {
                            // Where the guest was helps whoever debugs it.
                            VmEvent::Crash(what) => match self.fd.get_regs() {
                                Ok(r) => VmEvent::Crash(format!(
                                    "{what} at rip {:#x} rsp {:#x}",
                                    r.rip, r.rsp
                                )),
                                Err(_) => VmEvent::Crash(what),
                            },
                            other => other,
                        };
                        ctx.events.send(event);
                        // The VMM decides what happens next; this vCPU
                        // waits until it is stopped.
                        park_until_stopped(&ctx.control);
                        break;
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    ctx.events
                        .send(VmEvent::Crash(format!("vCPU {index}: KVM_RUN failed: {e}")));
                    park_until_stopped(&ctx.control);
                    break;
                }
            }
        }
        tracing::debug!(index, "vCPU thread exits");
    }
}

fn park_until_stopped(control: &VcpuControl) {
    let Ok(mut s) = control.state.lock() else {
        return;
    };
    s.parked += 1;
    control.cv.notify_all();
    while !s.stop {
        s = match control.cv.wait(s) {
            Ok(s) => s,
            Err(_) => return,
        };
    }
    s.parked -= 1;
}

/// Handle one exit; `Some(event)` when the VM must stop running.
fn handle_exit(index: u32, exit: VcpuExit<'_>, ctx: &ExitContext) -> Option<VmEvent> {
    match exit {
        VcpuExit::IoIn(port, data) if port == layout::IDLE_PORT => {
            let magic = layout::IDLE_MAGIC.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = magic.get(i).copied().unwrap_or(0);
            }
            None
        }
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::IoOut(port, data) if port == layout::IDLE_PORT => {
            // Guest-controlled: any width, any value; capped.
            let mut ms = [0u8; 4];
            let n = data.len().min(4);
            ms[..n].copy_from_slice(&data[..n]);
            let ms = u64::from(u32::from_le_bytes(ms)).min(layout::IDLE_MAX_MS);
            ctx.control.idle(index, Duration::from_millis(ms));
            None
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(addr, data);
            None
        }
        VcpuExit::Hlt => {
            // With the in-kernel irqchip KVM handles HLT itself; should one
            // reach us anyway, idle briefly instead of spinning.
            std::thread::sleep(Duration::from_millis(1));
            None
        }
        VcpuExit::Intr => None,
        VcpuExit::Shutdown => Some(VmEvent::Crash(format!(
            "vCPU {index}: triple fault (KVM_EXIT_SHUTDOWN)"
        ))),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmEvent::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Some(VmEvent::Reset),
            other => Some(VmEvent::Crash(format!(
                "vCPU {index}: system event {other}"
            ))),
        },
        VcpuExit::FailEntry(reason, cpu) => Some(VmEvent::Crash(format!(
            "vCPU {index}: VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
        ))),
        VcpuExit::InternalError => Some(VmEvent::Crash(format!(
            "vCPU {index}: KVM internal error (emulation failed)"
        ))),
        other => Some(VmEvent::Crash(format!(
            "vCPU {index}: unexpected exit {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An hour: if a wake were not honoured, the test would hang, not pass.
    const FOREVER: Duration = Duration::from_secs(3600);

    #[test]
    fn a_device_wake_ends_vcpu0s_idle_and_is_consumed() {
        let c = Arc::new(VcpuControl::default());
        // A wake before the idle: the idle returns at once, the wake is used.
        c.wake_guest();
        c.idle(0, FOREVER);
        assert!(!c.state.lock().unwrap().wake);
        // An AP never takes vCPU 0's wake.
        c.wake_guest();
        c.idle(1, Duration::from_millis(1));
        assert!(
            c.state.lock().unwrap().wake,
            "an AP consumed the BSP's wake"
        );
        c.idle(0, FOREVER);
        // A wake while vCPU 0 waits ends the wait.
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.idle(0, FOREVER))
        };
        while !waiter.is_finished() {
            c.wake_guest();
            std::thread::sleep(Duration::from_millis(5));
        }
        waiter.join().unwrap();
    }

    #[test]
    fn a_partial_msr_write_fails_the_vcpu_and_names_the_refused_msr() {
        let msrs = msr::boot_msr_entries().unwrap();
        let n = msrs.as_slice().len();
        assert!(check_msrs_written(&msrs, n).is_ok());
        let second = msrs.as_slice()[1].index;
        let err = check_msrs_written(&msrs, 1).unwrap_err();
        assert!(
            matches!(err, VcpuError::PartialMsrs { written: 1, total, first_refused }
                if total == n && first_refused == second),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{second:#x}")));
    }
}
