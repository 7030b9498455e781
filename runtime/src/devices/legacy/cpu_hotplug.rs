//! The CPU hotplug controller at `layout::CPU_HOTPLUG_BASE`
//! (cloud-hypervisor's register layout, selection widened to 32 bits). The
//! DSDT's `\_SB_.PRES` fields and the diag guest use the same registers; the
//! contract is in docs/acpi.md.
//!
//! | offset | width | read | write |
//! |---|---|---|---|
//! | 0x0 | u32 | CSEL: selected CPU index | select a CPU index (= APIC id = MADT processor UID) |
//! | 0x4 | u8  | status: bit0 CPEN, bit1 CINS, bit2 CRMV | bit1 ack insertion, bit2 ack removal, bit3 CEJ0 eject |
//! | 0x5 | u8  | CCMD: 0 | ignored |
//! | 0x8 | u32 | CDAT: 0 | ignored |
//!
//! Reads of any width at any offset return the bytes of that register image
//! (zeros outside it); a write is decoded by its starting offset (0: the
//! first up-to-4 bytes, zero-extended, become CSEL; 4: the first byte is a
//! status command) and ignored anywhere else. An out-of-range selection reads
//! status 0 and ignores status writes. CPU 0 is never ejected.
//!
//! The VMM keeps a [`CpuHotplug`] handle (cheap to clone) while the MMIO bus
//! owns the [`CpuHotplugDevice`]: it marks a new vCPU present and inserting
//! ([`CpuHotplug::insert`]), asks for a removal
//! ([`CpuHotplug::request_remove`]), and learns of an eject through
//! [`CpuHotplug::wait_ejected`], [`CpuHotplug::take_ejected`] or a channel
//! ([`CpuHotplug::set_eject_notifier`]).

use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::arch::x86_64::layout::CPU_HOTPLUG_SIZE;
use crate::devices::BusDevice;

use super::{le_u32, read_image};

/// Register offsets.
pub const CPU_SELECT: u64 = 0x0;
pub const CPU_STATUS: u64 = 0x4;
pub const CPU_COMMAND: u64 = 0x5;
pub const CPU_DATA: u64 = 0x8;

/// Status bits (read).
pub const CPU_ENABLED: u8 = 1 << 0;
pub const CPU_INSERTING: u8 = 1 << 1;
pub const CPU_REMOVING: u8 = 1 << 2;
/// Status bits (write): acks clear the matching flag; eject clears CPEN.
pub const CPU_ACK_INSERT: u8 = 1 << 1;
pub const CPU_ACK_REMOVE: u8 = 1 << 2;
pub const CPU_EJECT: u8 = 1 << 3;

/// Most vCPUs the controller tracks (the MADT's limit).
pub const MAX_HOTPLUG_CPUS: u32 = crate::acpi::madt::MAX_CPUS;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuHotplugError {
    #[error(
        "invalid vCPU counts: boot {boot} max {max} (need 1 <= boot <= max <= {MAX_HOTPLUG_CPUS})"
    )]
    Counts { boot: u32, max: u32 },
    #[error("vCPU {index} is not one of the {max} possible vCPUs")]
    OutOfRange { index: u32, max: u32 },
    #[error("vCPU {0} is already present")]
    AlreadyPresent(u32),
    #[error("vCPU {0} is not present")]
    NotPresent(u32),
    #[error("vCPU 0 cannot be removed")]
    BootCpu,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuState {
    present: bool,
    inserting: bool,
    removing: bool,
}

impl CpuState {
    fn status(&self) -> u8 {
        let mut s = 0;
        if self.present {
            s |= CPU_ENABLED;
        }
        if self.inserting {
            s |= CPU_INSERTING;
        }
        if self.removing {
            s |= CPU_REMOVING;
        }
        s
    }
}

struct State {
    cpus: Vec<CpuState>,
    /// CPUs the guest ejected that the VMM has not collected yet.
    ejected: Vec<u32>,
    notifier: Option<Sender<u32>>,
}

impl State {
    /// The flags of vCPU `index`, or why there is none.
    fn cpu_mut(&mut self, index: u32) -> Result<&mut CpuState, CpuHotplugError> {
        let max = self.cpus.len() as u32;
        self.cpus
            .get_mut(index as usize)
            .ok_or(CpuHotplugError::OutOfRange { index, max })
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The VMM's handle on the controller state (the bus owns the device).
#[derive(Clone)]
pub struct CpuHotplug(Arc<Shared>);

impl std::fmt::Debug for CpuHotplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("CpuHotplug")
            .field("cpus", &st.cpus)
            .field("ejected", &st.ejected)
            .finish()
    }
}

impl CpuHotplug {
    /// `max_cpus` possible vCPUs; `0..boot_cpus` start present (not inserting).
    pub fn new(boot_cpus: u32, max_cpus: u32) -> Result<Self, CpuHotplugError> {
        if boot_cpus == 0 || boot_cpus > max_cpus || max_cpus > MAX_HOTPLUG_CPUS {
            return Err(CpuHotplugError::Counts {
                boot: boot_cpus,
                max: max_cpus,
            });
        }
        let cpus = (0..max_cpus)
            .map(|i| CpuState {
                present: i < boot_cpus,
                ..CpuState::default()
            })
            .collect();
        Ok(Self(Arc::new(Shared {
            state: Mutex::new(State {
                cpus,
                ejected: Vec::new(),
                notifier: None,
            }),
            changed: Condvar::new(),
        })))
    }

    /// The bus device sharing this state (selection starts at CPU 0).
    pub fn device(&self) -> CpuHotplugDevice {
        CpuHotplugDevice {
            shared: self.clone(),
            selected: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding
        // it; the flags are still consistent (every update is one store).
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn max_cpus(&self) -> u32 {
        self.lock().cpus.len() as u32
    }

    /// Mark vCPU `index` present and inserting (CPEN + CINS). Call it once the
    /// vCPU exists and waits for INIT/SIPI, then raise GED bit 0.
    pub fn insert(&self, index: u32) -> Result<(), CpuHotplugError> {
        let mut st = self.lock();
        let cpu = st.cpu_mut(index)?;
        if cpu.present {
            return Err(CpuHotplugError::AlreadyPresent(index));
        }
        *cpu = CpuState {
            present: true,
            inserting: true,
            removing: false,
        };
        Ok(())
    }

    /// Ask the guest to give vCPU `index` back (CRMV); then raise GED bit 0.
    /// The guest acks, offlines the CPU and ejects it (CEJ0).
    pub fn request_remove(&self, index: u32) -> Result<(), CpuHotplugError> {
        if index == 0 {
            return Err(CpuHotplugError::BootCpu);
        }
        let mut st = self.lock();
        let cpu = st.cpu_mut(index)?;
        if !cpu.present {
            return Err(CpuHotplugError::NotPresent(index));
        }
        cpu.removing = true;
        Ok(())
    }

    fn get(&self, index: u32) -> CpuState {
        self.lock()
            .cpus
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }

    /// CPEN: the vCPU is present (false out of range).
    pub fn present(&self, index: u32) -> bool {
        self.get(index).present
    }

    /// CINS: inserted and not yet acknowledged by the guest.
    pub fn inserting(&self, index: u32) -> bool {
        self.get(index).inserting
    }

    /// CRMV: removal requested and not yet acknowledged by the guest.
    pub fn removing(&self, index: u32) -> bool {
        self.get(index).removing
    }

    /// Indices of the present vCPUs.
    pub fn present_cpus(&self) -> Vec<u32> {
        let st = self.lock();
        (0..st.cpus.len() as u32)
            .filter(|&i| st.cpus[i as usize].present)
            .collect()
    }

    /// Wait up to `timeout` for vCPU `index` to be not present (ejected by
    /// the guest, or never present). True if it is not present on return.
    pub fn wait_ejected(&self, index: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            let present = st.cpus.get(index as usize).is_some_and(|c| c.present);
            if !present {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self.0.changed.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// The vCPUs the guest ejected since the last call, in eject order (also
    /// the ones it ejected without a removal request).
    pub fn take_ejected(&self) -> Vec<u32> {
        std::mem::take(&mut self.lock().ejected)
    }

    /// Also send every ejected vCPU index to `tx` (for an event loop). A
    /// closed channel is ignored.
    pub fn set_eject_notifier(&self, tx: Sender<u32>) {
        self.lock().notifier = Some(tx);
    }

    /// A status byte written by the guest for CPU `index`.
    fn guest_command(&self, index: u32, cmd: u8) {
        let mut st = self.lock();
        let Some(cpu) = st.cpus.get_mut(index as usize) else {
            return;
        };
        if cmd & CPU_ACK_INSERT != 0 {
            cpu.inserting = false;
        }
        if cmd & CPU_ACK_REMOVE != 0 {
            cpu.removing = false;
        }
        if cmd & CPU_EJECT != 0 && index != 0 && cpu.present {
            *cpu = CpuState::default();
            st.ejected.push(index);
            if let Some(tx) = &st.notifier {
                let _ = tx.send(index);
            }
            drop(st);
            self.0.changed.notify_all();
        }
    }

    fn status(&self, index: u32) -> u8 {
        self.get(index).status()
    }
}

/// The guest-facing register block; register it on the MMIO bus at
/// `layout::CPU_HOTPLUG_BASE` with length `layout::CPU_HOTPLUG_SIZE`.
pub struct CpuHotplugDevice {
    shared: CpuHotplug,
    selected: u32,
}

impl CpuHotplugDevice {
    fn image(&self) -> [u8; CPU_HOTPLUG_SIZE as usize] {
        let mut r = [0u8; CPU_HOTPLUG_SIZE as usize];
        r[0..4].copy_from_slice(&self.selected.to_le_bytes());
        r[CPU_STATUS as usize] = self.shared.status(self.selected);
        // CCMD (0x5) and CDAT (0x8) read 0.
        r
    }
}

impl BusDevice for CpuHotplugDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_image(&self.image(), offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            CPU_SELECT => self.selected = le_u32(data),
            CPU_STATUS => {
                if let Some(&cmd) = data.first() {
                    self.shared.guest_command(self.selected, cmd);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_u32(d: &mut CpuHotplugDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn read_u8(d: &mut CpuHotplugDevice, off: u64) -> u8 {
        let mut b = [0u8; 1];
        d.read(off, &mut b);
        b[0]
    }

    fn select(d: &mut CpuHotplugDevice, i: u32) {
        d.write(CPU_SELECT, &i.to_le_bytes());
    }

    #[test]
    fn rejects_bad_counts() {
        for (boot, max) in [(0, 1), (3, 2), (1, MAX_HOTPLUG_CPUS + 1)] {
            assert_eq!(
                CpuHotplug::new(boot, max).unwrap_err(),
                CpuHotplugError::Counts { boot, max }
            );
        }
        assert_eq!(
            CpuHotplug::new(1, MAX_HOTPLUG_CPUS).unwrap().max_cpus(),
            1024
        );
    }

    #[test]
    fn boot_cpus_are_present_and_not_inserting() {
        let h = CpuHotplug::new(2, 4).unwrap();
        let mut d = h.device();
        assert_eq!(h.present_cpus(), vec![0, 1]);
        for (i, status) in [(0, CPU_ENABLED), (1, CPU_ENABLED), (2, 0), (3, 0), (4, 0)] {
            select(&mut d, i);
            assert_eq!(read_u32(&mut d, CPU_SELECT), i);
            assert_eq!(read_u8(&mut d, CPU_STATUS), status, "cpu {i}");
        }
        assert!(!h.present(4) && !h.inserting(4) && !h.removing(4));
    }

    #[test]
    fn csel_accepts_byte_and_dword_writes() {
        let h = CpuHotplug::new(1, 4).unwrap();
        let mut d = h.device();
        d.write(CPU_SELECT, &[3]);
        assert_eq!(read_u32(&mut d, CPU_SELECT), 3);
        d.write(CPU_SELECT, &0x1_0002u32.to_le_bytes());
        assert_eq!(read_u32(&mut d, CPU_SELECT), 0x1_0002);
        assert_eq!(read_u8(&mut d, CPU_STATUS), 0, "out of range reads 0");
        // Byte reads of the selection register.
        assert_eq!(read_u8(&mut d, 2), 1);
        // Writes that do not start at a register are ignored.
        d.write(1, &[9]);
        assert_eq!(read_u32(&mut d, CPU_SELECT), 0x1_0002);
        // An 8-byte write at 0 takes the low 4 bytes.
        d.write(CPU_SELECT, &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(read_u32(&mut d, CPU_SELECT), 1);
        assert!(!h.inserting(1));
    }

    #[test]
    fn insert_sets_cpen_and_cins_until_acked() {
        let h = CpuHotplug::new(1, 4).unwrap();
        let mut d = h.device();
        h.insert(2).unwrap();
        assert_eq!(h.insert(2), Err(CpuHotplugError::AlreadyPresent(2)));
        assert_eq!(h.insert(0), Err(CpuHotplugError::AlreadyPresent(0)));
        assert_eq!(
            h.insert(4),
            Err(CpuHotplugError::OutOfRange { index: 4, max: 4 })
        );
        assert!(h.present(2) && h.inserting(2));
        select(&mut d, 2);
        assert_eq!(read_u8(&mut d, CPU_STATUS), CPU_ENABLED | CPU_INSERTING);
        // A 4-byte read at 4 sees status, CCMD 0 and padding.
        assert_eq!(read_u32(&mut d, CPU_STATUS), 3);
        // Acking another CPU does nothing to this one.
        select(&mut d, 1);
        d.write(CPU_STATUS, &[CPU_ACK_INSERT]);
        assert!(h.inserting(2));
        select(&mut d, 2);
        d.write(CPU_STATUS, &[CPU_ACK_INSERT]);
        assert!(h.present(2) && !h.inserting(2));
        assert_eq!(read_u8(&mut d, CPU_STATUS), CPU_ENABLED);
        assert_eq!(h.present_cpus(), vec![0, 2]);
    }

    #[test]
    fn remove_request_ack_and_eject() {
        let h = CpuHotplug::new(2, 4).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        h.set_eject_notifier(tx);
        let mut d = h.device();
        assert_eq!(h.request_remove(0), Err(CpuHotplugError::BootCpu));
        assert_eq!(h.request_remove(3), Err(CpuHotplugError::NotPresent(3)));
        assert_eq!(
            h.request_remove(9),
            Err(CpuHotplugError::OutOfRange { index: 9, max: 4 })
        );
        h.request_remove(1).unwrap();
        select(&mut d, 1);
        assert_eq!(read_u8(&mut d, CPU_STATUS), CPU_ENABLED | CPU_REMOVING);
        d.write(CPU_STATUS, &[CPU_ACK_REMOVE]);
        assert!(!h.removing(1) && h.present(1));
        assert!(!h.wait_ejected(1, Duration::from_millis(1)));
        d.write(CPU_STATUS, &[CPU_EJECT]);
        assert!(!h.present(1));
        assert_eq!(read_u8(&mut d, CPU_STATUS), 0);
        assert!(h.wait_ejected(1, Duration::ZERO));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(h.take_ejected(), vec![1]);
        assert_eq!(h.take_ejected(), Vec::<u32>::new());
        // Ejecting an absent CPU, or CPU 0, does nothing.
        d.write(CPU_STATUS, &[CPU_EJECT]);
        select(&mut d, 0);
        d.write(CPU_STATUS, &[CPU_EJECT | CPU_ACK_REMOVE]);
        assert!(h.present(0));
        assert_eq!(h.take_ejected(), Vec::<u32>::new());
        // And the slot can be hot-added again.
        h.insert(1).unwrap();
        assert!(h.present(1) && h.inserting(1));
    }

    #[test]
    fn wait_ejected_wakes_on_eject_from_another_thread() {
        let h = CpuHotplug::new(1, 2).unwrap();
        h.insert(1).unwrap();
        let mut d = h.device();
        let waiter = {
            let h = h.clone();
            std::thread::spawn(move || h.wait_ejected(1, Duration::from_secs(30)))
        };
        select(&mut d, 1);
        d.write(CPU_STATUS, &[CPU_ACK_INSERT | CPU_EJECT]);
        assert!(waiter.join().unwrap());
        assert!(!h.inserting(1));
    }

    #[test]
    fn ccmd_and_cdat_read_zero_and_ignore_writes() {
        let h = CpuHotplug::new(1, 2).unwrap();
        let mut d = h.device();
        d.write(CPU_COMMAND, &[0xff]);
        d.write(CPU_DATA, &[0xff; 4]);
        assert_eq!(read_u8(&mut d, CPU_COMMAND), 0);
        assert_eq!(read_u32(&mut d, CPU_DATA), 0);
        assert_eq!(read_u32(&mut d, 0xc), 0);
        assert_eq!(read_u32(&mut d, u64::MAX), 0);
        assert!(h.present(0) && !h.present(1));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_guest_accesses_never_panic(
            ops in proptest::collection::vec(
                (prop_oneof![0u64..0x20, Just(u64::MAX), any::<u64>()],
                 0usize..=9, any::<u64>(), any::<bool>(), 0u32..8),
                0..300)
        ) {
            let h = CpuHotplug::new(2, 6).unwrap();
            let mut d = h.device();
            for (off, len, val, write, vmm) in ops {
                let mut b = val.to_le_bytes().to_vec();
                b.resize(len, 0xa5);
                if write {
                    d.write(off, &b);
                } else {
                    d.read(off, &mut b);
                }
                // Interleave VMM-side calls; errors are fine, panics are not.
                let _ = h.insert(vmm);
                let _ = h.request_remove(vmm.wrapping_add(1));
                let _ = h.wait_ejected(vmm, Duration::ZERO);
            }
            prop_assert!(h.present(0));
            prop_assert_eq!(h.max_cpus(), 6);
        }
    }
}
