//! diag's main program on the bootstrap processor: look at the machine
//! (e820, MADT, virtio-blk disks), report, try the APs, then poll forever —
//! for the power button, for report requests on COM2, and for changes
//! (disk resize, disks appearing, CPU/memory hot-add) that warrant a new
//! report. Interrupts stay off throughout; every wait is bounded.

use crate::acpi::{self, Cpus};
use crate::bootparams::{self, Options};
use crate::clock::{self, Deadline, idle_ms};
use crate::cpu::{self, mmio_read32};
use crate::fnv::fnv1a64;
use crate::hotplug;
use crate::layout::{
    COM1_PORT, COM2_PORT, GED_BASE, GED_EVENT_POWER_BUTTON, VIRTIO_MMIO_MAX_DEVICES,
    ZERO_PAGE_START,
};
use crate::phys::IdentityMap;
use crate::report::{Disk, JSON_CAPACITY, Report};
use crate::serial::Serial;
use crate::smp::{self, ApStart};
use crate::text::Text;
use crate::virtio_blk::{self, Blk, SECTOR_SIZE, Slot};

/// Time between two looks at the GED and the serial inputs. Each look costs
/// a few VM exits; 20 ms keeps an idle diag VM near 0 % of a host core while
/// a power-button press or a COM2 request is still answered within 20 ms.
const POLL_MS: u64 = 20;
/// Time between two rescans of disks and tables.
const RESCAN_MS: u64 = 250;

const COM1: Serial = Serial::new(COM1_PORT);
const COM2: Serial = Serial::new(COM2_PORT);

/// A console line.
fn log(parts: &[&str]) {
    for p in parts {
        COM1.write(p.as_bytes());
    }
    COM1.write(b"\n");
}

fn log_text<const N: usize>(t: &Text<N>) {
    COM1.write(t.as_bytes());
    COM1.write(b"\n");
}

struct Diag {
    zero_page: u64,
    options: Options,
    report: Report,
    /// The last report sent on COM2 and its sequence number.
    sent: Option<Report>,
    seq: u64,
    drivers: [Option<Blk>; VIRTIO_MMIO_MAX_DEVICES],
    /// Last non-block device seen per slot, so it is logged once.
    others: [u32; VIRTIO_MMIO_MAX_DEVICES],
    /// Slots whose driver set-up failed: not retried until the slot empties.
    init_failed: [bool; VIRTIO_MMIO_MAX_DEVICES],
    madt_error: Option<acpi::AcpiError>,
    cpus: Cpus,
}

/// Entry from `_start` on the BSP, with the boot params address from RSI.
pub fn run(zero_page: u64) -> ! {
    cpu::mask_pics();
    COM1.init();
    COM2.init();
    let zero_page = if zero_page == 0 || zero_page >= 0x10_0000 {
        ZERO_PAGE_START
    } else {
        zero_page
    };
    let mut t = Text::<128>::new();
    t.str("diag: vmctl diag guest, boot params at ")
        .hex0x(zero_page);
    log_text(&t);

    let mut cmdline = [0u8; 512];
    let options = bootparams::parse_options(bootparams::read_cmdline(
        &IdentityMap,
        zero_page,
        &mut cmdline,
    ));

    let mut diag = Diag {
        zero_page,
        options,
        report: Report::default(),
        sent: None,
        seq: 0,
        drivers: [None; VIRTIO_MMIO_MAX_DEVICES],
        others: [0; VIRTIO_MMIO_MAX_DEVICES],
        init_failed: [false; VIRTIO_MMIO_MAX_DEVICES],
        madt_error: None,
        cpus: Cpus::default(),
    };
    diag.scan_memory();
    diag.scan_cpus();
    diag.scan_disks();
    if diag.report.cpus <= 1 {
        // Nothing to start: the first report is already complete.
        diag.report.cpus_started = Some(1);
    }
    diag.send_if_changed();

    diag.start_aps();
    diag.send_if_changed();

    diag.poll_forever()
}

impl Diag {
    fn scan_memory(&mut self) {
        let mem = bootparams::read_e820(&IdentityMap, self.zero_page);
        if mem.ram_entries == 0 {
            log(&["diag: no RAM in the e820 map of the boot params"]);
        }
        let extra = hotplug::poll();
        self.report.memory_bytes = mem.ram_bytes.saturating_add(extra.added_memory_bytes);
        self.report.memory_mib = bootparams::Memory {
            ram_bytes: self.report.memory_bytes,
            ..mem
        }
        .mib();
    }

    fn scan_cpus(&mut self) {
        match acpi::read_madt(&IdentityMap) {
            Ok(madt) => {
                if let Some(w) = madt.warning
                    && self.madt_error != Some(w)
                {
                    log(&["diag: ACPI warning: ", w.describe()]);
                }
                self.madt_error = madt.warning;
                self.cpus = madt.cpus;
                self.report.cpus = madt.cpus.enabled;
                self.report.max_cpus = madt.cpus.possible;
            }
            Err(e) => {
                if self.madt_error != Some(e) {
                    log(&["diag: ACPI: ", e.describe(), "; assuming 1 CPU"]);
                }
                self.madt_error = Some(e);
                self.report.cpus = 1;
                self.report.max_cpus = 1;
            }
        }
        self.report.cpus = self.report.cpus.saturating_add(hotplug::poll().added_cpus);
    }

    /// Probes every virtio-mmio slot: sets up new block devices, forgets
    /// vanished ones, and refreshes capacities.
    fn scan_disks(&mut self) {
        for slot in 0..VIRTIO_MMIO_MAX_DEVICES {
            match virtio_blk::probe(slot) {
                Slot::Block => self.refresh_disk(slot),
                other => {
                    if let Some(d) = self.drivers.get_mut(slot) {
                        *d = None;
                    }
                    if let Some(r) = self.report.disks.get_mut(slot) {
                        *r = None;
                    }
                    if let Some(f) = self.init_failed.get_mut(slot) {
                        *f = false;
                    }
                    if let (Slot::Other(id), Some(seen)) = (other, self.others.get_mut(slot))
                        && *seen != id
                    {
                        *seen = id;
                        let mut t = Text::<96>::new();
                        t.str("diag: virtio-mmio slot ").dec(slot as u64);
                        t.str(" holds device type ")
                            .dec(u64::from(id))
                            .str(", not a disk");
                        log_text(&t);
                    }
                }
            }
        }
    }

    fn refresh_disk(&mut self, slot: usize) {
        let (Some(driver), Some(entry), Some(failed)) = (
            self.drivers.get_mut(slot),
            self.report.disks.get_mut(slot),
            self.init_failed.get_mut(slot),
        ) else {
            return;
        };
        if driver.is_none() && !*failed {
            match Blk::init(slot) {
                Ok(blk) => *driver = Some(blk),
                Err(e) => {
                    disk_log(slot, "driver set-up: ", e);
                    *failed = true;
                }
            }
        }
        if *failed {
            // Report what can be read without a queue.
            let disk = Disk {
                index: slot as u32,
                size_bytes: virtio_blk::capacity_sectors(slot).saturating_mul(SECTOR_SIZE as u64),
                ..entry.unwrap_or_default()
            };
            *entry = Some(disk);
            return;
        }
        let Some(blk) = driver.as_mut() else { return };
        let size_bytes = blk.capacity_sectors().saturating_mul(SECTOR_SIZE as u64);
        let known = entry.as_ref().map(|d| d.size_bytes);
        if known == Some(size_bytes) {
            return;
        }
        let mut disk = entry.unwrap_or(Disk {
            index: slot as u32,
            ..Disk::default()
        });
        disk.size_bytes = size_bytes;
        if known.is_none() {
            match blk.get_id() {
                Ok(id) => disk.set_id(&id),
                Err(e) => disk_log(slot, "GET_ID: ", e),
            }
        }
        // Sector 0 again on every capacity change: cheap, and a resize
        // must not have changed it.
        disk.sector0_fnv1a = match blk.read_sector0() {
            Ok(sector) => Some(fnv1a64(&sector)),
            Err(e) => {
                disk_log(slot, "read of sector 0: ", e);
                None
            }
        };
        *entry = Some(disk);
    }

    fn start_aps(&mut self) {
        if self.report.cpus <= 1 {
            return;
        }
        if !self.options.start_aps {
            log(&["diag: APs not started: diag.nosmp on the command line"]);
            return;
        }
        log(&["diag: starting APs (INIT/SIPI)"]);
        match smp::start_aps(self.cpus.enabled_ids()) {
            ApStart::Started(n) => {
                self.report.cpus_started = Some(n.saturating_add(1));
                let mut t = Text::<96>::new();
                t.str("diag: ").dec(u64::from(n)).str(" AP(s) checked in");
                if n.saturating_add(1) < self.report.cpus {
                    t.str(", fewer than the MADT's ")
                        .dec(u64::from(self.report.cpus - 1));
                }
                log_text(&t);
            }
            ApStart::Failed(why) => {
                log(&["diag: APs not started: ", why, "; reporting the MADT count"]);
            }
        }
    }

    /// Sends the report (next seq) if it differs from the last one sent.
    fn send_if_changed(&mut self) {
        if self.sent == Some(self.report) {
            return;
        }
        self.seq += 1;
        self.sent = Some(self.report);
        self.print_summary();
        self.send_json();
    }

    /// The console lines for the last report sent.
    fn print_summary(&self) {
        let Some(report) = self.sent.as_ref() else {
            return;
        };
        let mut t = Text::<160>::new();
        report.write_summary(&mut t);
        log_text(&t);
        for disk in report.disks.iter().flatten() {
            t.clear();
            Report::write_disk_line(disk, &mut t);
            log_text(&t);
        }
    }

    /// The last report again, on request (same seq).
    fn send_json(&self) {
        let Some(report) = self.sent.as_ref() else {
            return;
        };
        let mut json = Text::<JSON_CAPACITY>::new();
        report.write_json(self.seq, &mut json);
        if json.overflowed() {
            log(&["diag: report does not fit its buffer; not sent"]);
            return;
        }
        COM2.write_raw(json.as_bytes());
        COM2.write_raw(b"\n");
    }

    fn poll_forever(&mut self) -> ! {
        log(&["diag: polling (power button, COM2 requests, resources)"]);
        let idles = clock::vmm_idles();
        let mut rescan = Deadline::after_ms(RESCAN_MS);
        loop {
            idle_ms(POLL_MS, idles);
            let ged = mmio_read32(GED_BASE);
            // All-ones is what a missing device may read as: not a press.
            if ged != u32::MAX && ged & GED_EVENT_POWER_BUTTON != 0 {
                log(&["diag: power button, powering off"]);
                cpu::power_off();
            }
            if COM2.try_read().is_some() {
                // Drain (bounded), then answer once.
                for _ in 0..64 {
                    if COM2.try_read().is_none() {
                        break;
                    }
                }
                self.send_json();
            }
            if COM1.try_read().is_some() {
                // Someone at the console: show the summary again.
                for _ in 0..64 {
                    if COM1.try_read().is_none() {
                        break;
                    }
                }
                self.print_summary();
            }
            if rescan.expired() {
                rescan = Deadline::after_ms(RESCAN_MS);
                self.scan_memory();
                self.scan_cpus();
                self.scan_disks();
                self.send_if_changed();
            }
        }
    }
}

fn disk_log(slot: usize, what: &str, e: &str) {
    let mut t = Text::<128>::new();
    t.str("diag: disk ")
        .dec(slot as u64)
        .str(": ")
        .str(what)
        .str(e);
    log_text(&t);
}
