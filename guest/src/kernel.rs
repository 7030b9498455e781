//! diag's main program on the bootstrap processor: look at the machine
//! (e820, MADT, virtio-blk disks), report, try the APs, then poll forever —
//! for the power button, for report requests on COM2, and for changes
//! (disk resize, disks appearing, CPU/memory hot-add) that warrant a new
//! report. Interrupts stay off throughout; every wait is bounded.

use crate::acpi::{self, Cpus};
use crate::agentcmd::{self, LineBuf};
use crate::bootparams::{self, Options};
use crate::clock::{self, Deadline, idle_ms};
use crate::cpu::{self, mmio_read32};
use crate::fnv::fnv1a64;
use crate::hotplug::{self, Hotplug, MemError};
use crate::layout::{
    COM1_PORT, COM2_PORT, E820_RAM, GED_BASE, GED_EVENT_CPU_HOTPLUG, GED_EVENT_MEMORY_HOTPLUG,
    GED_EVENT_POWER_BUTTON, IDENTITY_MAP_END, VIRTIO_MMIO_MAX_DEVICES, ZERO_PAGE_START,
};
use crate::memtest::{self, Words};
use crate::netdiag::NetDiag;
use crate::netproto::{self, MAX_NICS, NetOptions};
use crate::paging::{self, MAP_LIMIT};
use crate::phys::IdentityMap;
use crate::pvh;
use crate::report::{Disk, JSON_CAPACITY, Report, SeqLog, WHOLE_HASH_MAX};
use crate::seqlog;
use crate::serial::Serial;
use crate::smp::{self, ApStart};
use crate::text::Text;
use crate::virtio_blk::{self, Blk, SECTOR_SIZE, Slot};
use crate::virtio_net::Nic;

/// Time between two looks at the GED and the serial inputs when nothing
/// happens. Each look costs a handful of VM exits (≈1.4 ms of host CPU on
/// this project's nested hosts), so looking 50 times a second made an idle
/// diag VM cost ~7 % of a core. vmctl's VMM ends the idle-port wait as soon
/// as a device has something for the guest (a console or COM2 byte, a GED
/// event, a used virtio buffer), so a power-button press, a hot-add or an
/// agent request is answered at once and the guest can idle a whole second.
const IDLE_POLL_MS: u64 = 1000;
/// The interval of `diag.seqwrite`, whose sequence log is written once per
/// look and must keep a steady write rate (the crash test).
const POLL_MS: u64 = 20;
/// The same with NICs: frames are answered within about this long.
const NET_POLL_MS: u64 = 2;
/// COM2 bytes read per polling pass at most (a command line is ≤ 256).
const COMMAND_BYTES_PER_PASS: usize = 1024;
/// Time between two rescans of disks and tables.
const RESCAN_MS: u64 = 250;
/// The same where the VMM wakes the guest on device events: every change
/// vmctl makes comes with one (a GED bit for hot-add, a configuration-change
/// interrupt status for a resize, checked every pass), so the full walk —
/// dozens of exits over every virtio slot and hotplug slot — is only a
/// safety net.
const RESCAN_IDLE_MS: u64 = 10_000;

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
    /// e820 as last read.
    e820: bootparams::Memory,
    /// Boot RAM that passed its samples (checked once).
    boot_verified: Option<u64>,
    hotplug: Hotplug,
    bsp: u32,
    net_options: NetOptions,
    /// The virtio-net NICs, in the order they were found.
    nets: [Option<NetDiag<Nic>>; MAX_NICS],
    /// Slots holding a NIC diag drives or failed to set up (not retried).
    net_slots: [bool; VIRTIO_MMIO_MAX_DEVICES],
    /// `diag.seqwrite`: the next sequence record to write.
    next_seq: u64,
    /// The command line being received on COM2.
    command: LineBuf,
    /// Commands answered so far.
    handled: u64,
}

/// Low memory diag and the VMM's boot structures use (zero page, page
/// tables, AP trampoline at 0x10000, command line at 0x20000..0x30000) and
/// 1 MiB .. the end of diag's image (its code, data, stack, page-table pool,
/// virtqueues): never written by the boot RAM check.
const LOW_RESERVED_END: u64 = 0x30000;
const HIMEM_START: u64 = 0x10_0000;

unsafe extern "C" {
    /// End of diag's image (.bss included), from the linker.
    static _end: u8;
}

fn image_end() -> u64 {
    let end = &raw const _end as u64;
    end.saturating_add(memtest::PAGE - 1) & !(memtest::PAGE - 1)
}

/// Physical memory as 8-byte words, through the identity map.
struct Ram;

impl Words for Ram {
    fn read(&mut self, addr: u64) -> u64 {
        // SAFETY: callers only pass 8-byte aligned addresses of RAM they
        // validated and mapped (paging::ensure_mapped), outside diag.
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }
    fn write(&mut self, addr: u64, value: u64) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
    }
}

/// The real machine behind the hotplug logic.
struct Guest;

impl hotplug::Machine for Guest {
    fn read8(&mut self, addr: u64) -> u8 {
        cpu::mmio_read8(addr)
    }
    fn read32(&mut self, addr: u64) -> u32 {
        mmio_read32(addr)
    }
    fn write8(&mut self, addr: u64, value: u8) {
        cpu::mmio_write8(addr, value)
    }
    fn write32(&mut self, addr: u64, value: u32) {
        cpu::mmio_write32(addr, value)
    }
    fn bsp_apic_id(&mut self) -> u32 {
        smp::bsp_apic_id()
    }
    fn start_ap(&mut self, apic_id: u32) -> Result<(), &'static str> {
        smp::start_ap(apic_id)
    }
    fn stop_ap(&mut self, apic_id: u32) -> &'static str {
        match smp::stop_ap(apic_id) {
            smp::ApStop::NotRunning => "it was not running diag code",
            smp::ApStop::Parked => "the AP parked itself",
            smp::ApStop::Inited => "the AP did not answer; stopped with INIT",
            smp::ApStop::Lost => "the AP did not answer and INIT failed; forgotten",
        }
    }
    fn map_and_check(&mut self, base: u64, len: u64) -> Result<(), MemError> {
        if !paging::ensure_mapped(base, len) {
            return Err(MemError::Unmappable);
        }
        memtest::check(&mut Ram, memtest::chunk_words(base, len), clock::rdtsc())
            .map_err(MemError::Mismatch)
    }
    fn log(&mut self, line: &[u8]) {
        COM1.write(line);
        COM1.write(b"\n");
    }
}

/// Samples one piece of boot RAM: saves the words, checks, restores.
fn sample_boot_piece(start: u64, end: u64, salt: u64) -> Result<(), memtest::Mismatch> {
    const MAX: usize = (memtest::BOOT_SAMPLE_PAGES as usize) * memtest::PAGE_OFFSETS.len();
    let words = memtest::sample_words(start, end, memtest::BOOT_SAMPLE_PAGES);
    let mut saved = [0u64; MAX];
    for (slot, addr) in saved.iter_mut().zip(words.clone()) {
        *slot = Ram.read(addr);
    }
    let result = memtest::check(&mut Ram, words.clone(), salt);
    for (value, addr) in saved.iter().zip(words) {
        Ram.write(addr, *value);
    }
    result
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
    run_with(zero_page)
}

/// The zero page and command line built from a PVH start info. Only the
/// BSP touches them, once, before anything reads them.
#[repr(C, align(4096))]
struct PvhBoot {
    zero_page: [u8; pvh::ZERO_PAGE_SIZE],
    cmdline: [u8; 2048],
}
static mut PVH_BOOT: PvhBoot = PvhBoot {
    zero_page: [0; pvh::ZERO_PAGE_SIZE],
    cmdline: [0; 2048],
};

/// Entry from the PVH entry point on the BSP, with the `hvm_start_info`
/// address the VMM passed in EBX: converted to a zero page, then the same
/// program as the Linux-protocol entry.
pub fn run_pvh(start_info: u64) -> ! {
    cpu::mask_pics();
    COM1.init();
    COM2.init();
    let mut t = Text::<128>::new();
    t.str("diag: vmctl diag guest, PVH start info at ")
        .hex0x(start_info);
    log_text(&t);
    // SAFETY: only the BSP runs this, once, before any other reference to
    // PVH_BOOT exists; the static lies in diag's identity-mapped image.
    let boot = unsafe { &mut *core::ptr::addr_of_mut!(PVH_BOOT) };
    let cmdline_addr = boot.cmdline.as_ptr() as u64;
    let zero_page = boot.zero_page.as_ptr() as u64;
    match pvh::to_zero_page(
        &IdentityMap,
        start_info,
        &mut boot.zero_page,
        &mut boot.cmdline,
        u32::try_from(cmdline_addr).unwrap_or(0),
    ) {
        Ok(_) => {}
        Err(pvh::PvhError::Unreadable) => log(&["diag: PVH start info unreadable"]),
        Err(pvh::PvhError::BadMagic(_)) => log(&["diag: PVH start info has a bad magic"]),
    }
    run_with(zero_page)
}

fn run_with(zero_page: u64) -> ! {
    let mut cmdline = [0u8; 512];
    let cmdline = bootparams::read_cmdline(&IdentityMap, zero_page, &mut cmdline);
    let options = bootparams::parse_options(cmdline);
    let net_options = netproto::parse_options(cmdline);

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
        e820: bootparams::Memory::default(),
        boot_verified: None,
        hotplug: Hotplug {
            start_aps: options.start_aps,
            ..Hotplug::default()
        },
        bsp: smp::bsp_apic_id(),
        net_options,
        nets: [const { None }; MAX_NICS],
        net_slots: [false; VIRTIO_MMIO_MAX_DEVICES],
        next_seq: 1,
        command: LineBuf::new(),
        handled: 0,
    };
    diag.scan_memory();
    diag.scan_cpus();
    // Check-ins from before a reset that kept memory do not count.
    smp::forget_aps_except(diag.cpus.enabled_ids());
    diag.scan_disks();
    diag.scan_nics();
    if diag.options.seqwrite {
        diag.read_seqlog();
    }
    if diag.cpus.enabled <= 1 {
        // Nothing to start: the first report is already complete.
        diag.report.cpus_started = Some(1);
        diag.update_counts();
    }
    diag.send_if_changed();

    diag.start_aps();
    diag.scan_hotplug();
    diag.send_if_changed();

    diag.poll_forever()
}

impl Diag {
    fn scan_memory(&mut self) {
        let mem = bootparams::read_e820(&IdentityMap, self.zero_page);
        if mem.ram_entries == 0 {
            log(&["diag: no RAM in the e820 map of the boot params"]);
        }
        self.e820 = mem;
        if self.boot_verified.is_none() {
            self.boot_verified = Some(self.verify_boot_ram());
        }
        self.update_counts();
    }

    /// Writes and reads back samples of every e820 RAM range (not what
    /// diag or the boot structures occupy); returns the bytes of the ranges
    /// whose samples all passed.
    fn verify_boot_ram(&mut self) -> u64 {
        let excluded = [(0, LOW_RESERVED_END), (HIMEM_START, image_end())];
        let salt = clock::rdtsc();
        let mut verified = 0u64;
        let mut ranges = [(0u64, 0u64); 32];
        let mut n = 0;
        let mut more = false;
        bootparams::for_each_e820(&IdentityMap, self.zero_page, |addr, size, kind| {
            if kind != E820_RAM {
                return;
            }
            match ranges.get_mut(n) {
                Some(r) => {
                    *r = (addr, size);
                    n += 1;
                }
                None => more = true,
            }
        });
        if more {
            log(&["diag: more than 32 e820 RAM ranges; only the first 32 are verified"]);
        }
        for &(addr, size) in ranges.iter().take(n) {
            let mut t = Text::<128>::new();
            t.str("diag: boot RAM ")
                .hex0x(addr)
                .str(" +")
                .dec(size >> 10)
                .str(" KiB: ");
            if !memtest::boot_range_ok(addr, size, MAP_LIMIT) {
                t.str("not checked (outside what diag can map)");
                log_text(&t);
                continue;
            }
            let end = addr + size;
            if end > IDENTITY_MAP_END && !paging::ensure_mapped(addr, size) {
                t.str("not checked (cannot map it)");
                log_text(&t);
                continue;
            }
            let pieces: [Option<(u64, u64)>; 3] = memtest::testable_pieces(addr, end, &excluded);
            let mut sampled = false;
            let mut result = Ok(());
            for &(a, b) in pieces.iter().flatten() {
                if memtest::sample_words(a, b, 1).next().is_none() {
                    continue;
                }
                sampled = true;
                result = result.and(sample_boot_piece(a, b, salt));
            }
            match (sampled, result) {
                (true, Ok(())) => verified = verified.saturating_add(size),
                (false, _) => {
                    t.str("not checked (no free page to sample)");
                    log_text(&t);
                }
                (true, Err(e)) => {
                    t.str("FAILED: read-back mismatch at ").hex0x(e.addr);
                    log_text(&t);
                }
            }
        }
        verified
    }

    /// The hotplug controllers: one walk of each.
    fn scan_hotplug(&mut self) {
        self.hotplug.scan_cpus(&mut Guest, &self.cpus);
        self.hotplug
            .scan_memory(&mut Guest, self.e820.end, MAP_LIMIT);
        self.update_counts();
    }

    /// Derives the report's CPU and memory numbers from what is known.
    fn update_counts(&mut self) {
        let hot = self.hotplug.verified_bytes();
        self.report.memory_bytes = self.e820.ram_bytes.saturating_add(hot);
        self.report.memory_mib = memtest::mib(self.report.memory_bytes);
        self.report.memory_verified_mib =
            memtest::mib(self.boot_verified.unwrap_or(0).saturating_add(hot));
        self.report.cpus_online = smp::aps_online(self.bsp).saturating_add(1);
        self.report.cpus = match self.report.cpus_started {
            Some(_) => self.report.cpus_online,
            None => match self.hotplug.present_cpus() {
                Some(n) if n > 0 => n,
                _ => self.cpus.enabled.max(1),
            },
        };
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
                self.report.max_cpus = madt.cpus.possible;
            }
            Err(e) => {
                if self.madt_error != Some(e) {
                    log(&["diag: ACPI: ", e.describe(), "; assuming 1 CPU"]);
                }
                self.madt_error = Some(e);
                self.cpus = Cpus {
                    enabled: 1,
                    possible: 1,
                    ..Cpus::default()
                };
                self.report.max_cpus = 1;
            }
        }
        self.update_counts();
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

    /// Sets up every virtio-net device not seen before (NICs are not
    /// hot-plugged: each slot is tried once).
    fn scan_nics(&mut self) {
        for slot in 0..VIRTIO_MMIO_MAX_DEVICES {
            if virtio_blk::probe(slot) != Slot::Net || self.net_slots[slot] {
                continue;
            }
            self.net_slots[slot] = true;
            let Some(nth) = self.nets.iter().position(Option::is_none) else {
                log(&["diag: more virtio-net devices than diag drives; ignored"]);
                continue;
            };
            match Nic::init(slot, nth) {
                Ok(nic) => {
                    let net = NetDiag::new(nic, slot, nth, &self.net_options);
                    self.report.nics[nth] = Some(net.report);
                    self.nets[nth] = Some(net);
                }
                Err(e) => {
                    let mut t = Text::<128>::new();
                    t.str("diag: nic in slot ")
                        .dec(slot as u64)
                        .str(": driver set-up: ")
                        .str(e);
                    log_text(&t);
                }
            }
        }
    }

    /// Answer and ping on every NIC; the report follows.
    fn service_nics(&mut self) {
        for (net, entry) in self.nets.iter_mut().zip(self.report.nics.iter_mut()) {
            if let Some(net) = net {
                net.poll();
                *entry = Some(net.report);
            }
        }
    }

    /// Refresh the disks whose device reported a configuration change (a
    /// live resize), and report.
    fn refresh_changed_disks(&mut self) {
        let mut any = false;
        for slot in 0..self.drivers.len() {
            if let Some(Some(d)) = self.drivers.get_mut(slot)
                && d.config_changed()
            {
                self.refresh_disk(slot);
                any = true;
            }
        }
        if any {
            self.send_if_changed();
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
        // The whole disk, for small ones (a test's move or round trip).
        disk.fnv1a = if size_bytes <= WHOLE_HASH_MAX {
            match blk.hash_whole(size_bytes) {
                Ok(h) => Some(h),
                Err(e) => {
                    disk_log(slot, "whole-disk read: ", e);
                    None
                }
            }
        } else {
            None
        };
        *entry = Some(disk);
    }

    /// `diag.seqwrite`: what the sequence sector of the first disk holds
    /// now (at boot), and where numbering continues.
    fn read_seqlog(&mut self) {
        let Some(blk) = self.drivers.first_mut().and_then(|d| d.as_mut()) else {
            log(&["diag: seqwrite: no disk in slot 0"]);
            return;
        };
        let found = match blk.read_sector(seqlog::SECTOR) {
            Ok(sector) => seqlog::decode(&sector),
            Err(e) => {
                disk_log(0, "seqwrite read: ", e);
                seqlog::Found::Corrupt
            }
        };
        let (found, corrupt) = match found {
            seqlog::Found::Empty => (None, false),
            seqlog::Found::Valid(n) => (Some(n), false),
            seqlog::Found::Corrupt => (None, true),
        };
        self.next_seq = found.map_or(1, |n| n.wrapping_add(1));
        self.report.seqlog = Some(SeqLog { found, corrupt });
        let mut t = Text::<96>::new();
        t.str("diag: seqwrite: found ");
        match found {
            Some(n) => t.dec(n),
            None => t.str(if corrupt {
                "a corrupt record"
            } else {
                "nothing"
            }),
        };
        log_text(&t);
    }

    /// `diag.seqwrite`: the next record, every poll tick.
    fn write_seqlog(&mut self) {
        let Some(blk) = self.drivers.first_mut().and_then(|d| d.as_mut()) else {
            return;
        };
        if blk
            .write_sector(seqlog::SECTOR, &seqlog::encode(self.next_seq))
            .is_ok()
        {
            self.next_seq = self.next_seq.wrapping_add(1);
        }
    }

    fn start_aps(&mut self) {
        if self.cpus.enabled <= 1 {
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
                if n.saturating_add(1) < self.cpus.enabled {
                    t.str(", fewer than the MADT's ")
                        .dec(u64::from(self.cpus.enabled - 1));
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
        for nic in report.nics.iter().flatten() {
            let mut t = Text::<512>::new();
            Report::write_nic_line(nic, &mut t);
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

    /// Reads what the VMM sent on COM2 (bounded per pass) and answers each
    /// command line (agentcmd). A line that is not a command — what a
    /// person or an older host may send — gets the last report again.
    fn service_commands(&mut self) {
        for _ in 0..COMMAND_BYTES_PER_PASS {
            let Some(b) = COM2.try_read() else {
                return;
            };
            if !self.command.push(b) {
                continue;
            }
            let line = self.command.line();
            if let Some(c) = agentcmd::parse(line) {
                self.handled += 1;
                let ctx = agentcmd::Context {
                    seq: self.seq,
                    cpus: self.sent.as_ref().map_or(0, |r| r.cpus),
                    handled: self.handled,
                };
                let mut reply = Text::<512>::new();
                agentcmd::write_reply(&c, &ctx, &mut reply);
                COM2.write_raw(reply.as_bytes());
                COM2.write_raw(b"\n");
            } else if !line.is_empty() {
                self.send_json();
            }
            self.command.clear();
        }
    }

    fn poll_forever(&mut self) -> ! {
        log(&["diag: polling (power button, COM2 requests, resources)"]);
        let idles = clock::vmm_idles();
        if self.options.halt && !idles {
            log(&["diag: halted (diag.halt, the VMM has no idle port)"]);
            crate::cpu::halt_forever();
        }
        let rescan_ms = if idles { RESCAN_IDLE_MS } else { RESCAN_MS };
        let mut rescan = Deadline::after_ms(rescan_ms);
        loop {
            // With NICs, a shorter idle: a frame waits at most this long.
            idle_ms(
                if self.nets.iter().any(Option::is_some) {
                    NET_POLL_MS
                } else if self.options.seqwrite || !idles {
                    // Without the idle port the wait is spun out on the
                    // TSC and nothing ends it early.
                    POLL_MS
                } else {
                    IDLE_POLL_MS
                },
                idles,
            );
            self.service_nics();
            if self.options.seqwrite {
                self.write_seqlog();
            }
            self.send_if_changed();
            // Reading the GED clears it. Bits 0/1 (CPU/memory hotplug) are
            // acted on at once with a walk of both controllers; the walk
            // every RESCAN_MS catches anything else, so no bit is lost.
            let ged = mmio_read32(GED_BASE);
            // All-ones is what a missing device may read as: no event.
            let ged = if ged == u32::MAX { 0 } else { ged };
            if ged & GED_EVENT_POWER_BUTTON != 0 {
                log(&["diag: power button, powering off"]);
                cpu::power_off();
            }
            if ged & (GED_EVENT_CPU_HOTPLUG | GED_EVENT_MEMORY_HOTPLUG) != 0 {
                self.scan_hotplug();
                self.send_if_changed();
            }
            self.service_commands();
            self.refresh_changed_disks();
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
                rescan = Deadline::after_ms(rescan_ms);
                self.scan_memory();
                self.scan_cpus();
                self.scan_hotplug();
                self.scan_disks();
                self.scan_nics();
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
