//! L1: the QEMU guest (TCG, emulated AMD-V) that gives vmctl a real KVM.
//! Its initramfs holds busybox, kvm.ko + kvm-amd.ko (+ dependencies) from the
//! same Debian kernel package as the debian-12 image, the vmctl binary with
//! the shared libraries `ldd` names, the lab (KDL, lock, pre-built image
//! cache) and the scenario script `l1-init.sh`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmctl_image::cpio::Archive;
use vmctl_image::{apt, kmod, minimal};

use super::trace;

pub const INIT_SCRIPT: &str = include_str!("l1-init.sh");
/// kvm-amd pulls in kvm and irqbypass; bridge (+ stp, llc) and tun are the
/// lab networks' host side (vmctl-hostnet makes a bridge and TAPs in L1).
pub const MODULES: &[&str] = &["kvm_amd", "bridge", "tun"];
/// Modules for the lab disk (`/lab`, a virtio-pci disk on L1's q35).
pub const DISK_MODULES: &[&str] = &["virtio_pci", "virtio_blk"];

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Unpacked Debian packages for L1.
pub struct L1Packages {
    pub root: PathBuf,
    pub kernel_version: String,
}

/// Download and unpack `packages` (name, version) into `work/l1-root`.
pub fn fetch(work: &Path, packages: &[(String, String)]) -> Result<L1Packages, String> {
    let root = work.join("l1-root");
    for (name, version) in packages {
        let dir = work.join("l1-debs").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let deb = apt::download(name, version, &dir, "the lab's vmctl.lock")
            .map_err(|e| e.to_string())?;
        apt::extract(&deb, &root).map_err(|e| e.to_string())?;
    }
    let kernel_version = minimal::single_kernel_version(&root).map_err(|e| e.to_string())?;
    Ok(L1Packages {
        root,
        kernel_version,
    })
}

/// Shared libraries (and the dynamic loader) `binary` needs, from `ldd`.
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(err("running ldd"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(format!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Everything that goes into L1's initramfs.
pub struct L1Contents<'a> {
    pub packages: &'a L1Packages,
    pub vmctl: &'a Path,
    /// Host directory whose `scenario.env` goes into the initramfs (the rest
    /// of the lab reaches L1 as a disk: [`lab_disk`]).
    pub lab_dir: &'a Path,
    /// Also put the host's QEMU into L1 (`--boot-loop --vmm qemu|both`):
    /// `qemu-system-x86_64`, its shared libraries and the firmware files a
    /// `-M microvm` guest needs, under `/usr/share/qemu`.
    pub with_qemu: bool,
    /// Also put the host's iperf3 into L1 (`--net-bench`).
    pub with_iperf3: bool,
    /// The private key `vmctl ssh` logs in with (the lab's users declare its
    /// public half): L1 gets it as root's `~/.ssh/id_ed25519`, the OpenSSH
    /// client and a passwd entry for root (ssh needs one).
    pub ssh_key: Option<&'a Path>,
}

/// QEMU firmware a `-M microvm -kernel` guest needs (from `/usr/share/qemu`,
/// symlinks followed).
pub const QEMU_FIRMWARE: &[&str] = &[
    "bios-microvm.bin",
    "qboot.rom",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "pvh.bin",
    "multiboot_dma.bin",
    "kvmvapic.bin",
];

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

fn add_binary(a: &mut Archive, binary: &Path, inside: &str) -> Result<(), String> {
    let e = |e: vmctl_image::cpio::CpioError| e.to_string();
    let data = std::fs::read(binary).map_err(err("reading a binary for L1"))?;
    a.file(inside, 0o755, data).map_err(e)?;
    for lib in shared_libs(binary)? {
        let data = std::fs::read(&lib).map_err(err("reading a shared library"))?;
        let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
        if !a.contains(&inside) {
            a.file(&inside, 0o755, data).map_err(e)?;
        }
    }
    Ok(())
}

fn add_qemu(a: &mut Archive) -> Result<(), String> {
    let e = |e: vmctl_image::cpio::CpioError| e.to_string();
    let qemu = which("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 is not on PATH (apt-get install qemu-system-x86)")?;
    add_binary(a, &qemu, "usr/bin/qemu-system-x86_64")?;
    for d in ["usr/share", "usr/share/qemu"] {
        if !a.contains(d) {
            a.dir(d, 0o755).map_err(e)?;
        }
    }
    for f in QEMU_FIRMWARE {
        let host = Path::new("/usr/share/qemu").join(f);
        let data = std::fs::read(&host).map_err(err("reading QEMU firmware"))?;
        a.file(&format!("usr/share/qemu/{f}"), 0o644, data)
            .map_err(e)?;
    }
    Ok(())
}

/// The lab directory (KDL files, lock, the image cache with its root
/// filesystems) as an ext4 filesystem in the sparse file `out`, with room
/// for the VMs' disks: L1 mounts it as `/lab`. A disk, not the initramfs:
/// a debian-12 root filesystem is hundreds of MiB that L1 would otherwise
/// unpack into RAM (and cpio has no holes).
pub fn lab_disk(lab_dir: &Path, out: &Path) -> Result<(), String> {
    let used = vmctl_image::rootfs::apparent_size(lab_dir).map_err(|e| e.to_string())?;
    // The lab's files plus 6 GiB for VM disks (sparse: only what is written
    // takes host space).
    vmctl_image::rootfs::ext4_from_dir(lab_dir, out, "lab", used + (6 << 30))
        .map(|_| ())
        .map_err(|e| format!("the lab disk: {e}"))
}

/// Assemble L1's gzip'd initramfs at `out`.
pub fn initramfs(c: &L1Contents<'_>, out: &Path) -> Result<(), String> {
    let root = &c.packages.root;
    let mut a = Archive::new();
    let e = |e: vmctl_image::cpio::CpioError| e.to_string();
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc/l1",
        "lib/modules",
    ] {
        a.dir(d, 0o755).map_err(e)?;
    }
    a.char_dev("dev/console", 0o600, 5, 1).map_err(e)?;
    a.char_dev("dev/null", 0o666, 1, 3).map_err(e)?;
    let busybox = std::fs::read(root.join("bin/busybox")).map_err(err("reading busybox"))?;
    a.file("bin/busybox", 0o755, busybox).map_err(e)?;
    a.symlink("bin/sh", "busybox").map_err(e)?;
    a.file("init", 0o755, INIT_SCRIPT.as_bytes().to_vec())
        .map_err(e)?;

    let mod_root = root
        .join("lib/modules")
        .join(&c.packages.kernel_version)
        .join("kernel");
    let index = kmod::index(&mod_root).map_err(|e| e.to_string())?;
    let modules = kmod::resolve(&index, MODULES).map_err(|e| e.to_string())?;
    let disk_modules = kmod::resolve(&index, DISK_MODULES).map_err(|e| e.to_string())?;
    for (list, modules) in [
        ("etc/l1/disk-modules", &disk_modules),
        ("etc/l1/modules", &modules),
    ] {
        let mut order = String::new();
        for m in modules {
            let inside = format!("lib/modules/{}", m.file_name);
            if !a.contains(&inside) {
                let data = std::fs::read(&m.path).map_err(err("reading a kernel module"))?;
                a.file(&inside, 0o644, data).map_err(e)?;
            }
            order.push_str(&m.file_name);
            order.push('\n');
        }
        a.file(list, 0o644, order.into_bytes()).map_err(e)?;
    }

    add_binary(&mut a, c.vmctl, "bin/vmctl")?;
    // vmctl writes a debian-12 VM's configuration into its root disk with
    // debugfs (e2fsprogs).
    let debugfs = which("debugfs").ok_or("debugfs is not on PATH (apt-get install e2fsprogs)")?;
    add_binary(&mut a, &debugfs, "usr/sbin/debugfs")?;
    // vmctl-hostnet drives iproute2's `ip` (busybox's lacks bridges and
    // TAPs): it goes first on PATH, before busybox's applet.
    let ip = which("ip").ok_or("ip is not on PATH (apt-get install iproute2)")?;
    add_binary(&mut a, &ip, "sbin/ip")?;
    if let Some(key) = c.ssh_key {
        let ssh = which("ssh").ok_or("ssh is not on PATH (apt-get install openssh-client)")?;
        add_binary(&mut a, &ssh, "usr/bin/ssh")?;
        let private = std::fs::read(key).map_err(err("reading the lab's SSH key"))?;
        for d in ["root", "root/.ssh"] {
            a.dir(d, 0o700).map_err(e)?;
        }
        a.file("root/.ssh/id_ed25519", 0o600, private).map_err(e)?;
        a.file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        )
        .map_err(e)?;
    }
    // The live-backup check (backup_check.rs).
    for (name, inside) in super::backup_check::BINARIES {
        let path = which(name)
            .ok_or_else(|| format!("{name} is not on PATH (apt-get install e2fsprogs)"))?;
        add_binary(&mut a, &path, inside)?;
    }
    a.file(
        super::backup_check::SCRIPT_PATH,
        0o644,
        super::backup_check::SCRIPT.as_bytes().to_vec(),
    )
    .map_err(e)?;
    if c.with_qemu {
        add_qemu(&mut a)?;
    }
    if c.with_iperf3 {
        let iperf3 = which("iperf3").ok_or("iperf3 is not on PATH (apt-get install iperf3)")?;
        add_binary(&mut a, &iperf3, "usr/bin/iperf3")?;
    }
    let env = c.lab_dir.join("scenario.env");
    let data = std::fs::read(&env).map_err(err("reading scenario.env"))?;
    a.file("etc/l1/scenario.env", 0o644, data).map_err(e)?;
    let cpio = a.to_bytes().map_err(e)?;
    // Fast compression: L1's initramfs is rebuilt every run and holds a large
    // vmctl binary; reproducibility matters for the debian-12 image, not here.
    let f = std::fs::File::create(out).map_err(err("writing L1's initramfs"))?;
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::fast());
    gz.write_all(&cpio).map_err(err("writing L1's initramfs"))?;
    gz.finish()
        .and_then(|mut w| w.flush())
        .map_err(err("writing L1's initramfs"))
}

/// How one QEMU run ended.
pub struct RunResult {
    pub serial: String,
    pub timed_out: bool,
    /// L1 printed nothing, not even its 10-second heartbeat, for
    /// [`STALL_SECS`] while QEMU kept running: L1 stalled (see
    /// [`stall_reason`]).
    pub stalled: bool,
    pub elapsed: Duration,
    /// `--qemu-trace`: what the `-d int,cpu_reset` filter saw.
    pub trace: Option<trace::TraceSummary>,
}

/// L1's init prints a heartbeat line every 10 s (`~~HB <uptime>`); this
/// long without it or any other line from L1's user space means L1 no
/// longer runs. Kernel messages do not count: a wedged L1 can go on
/// printing soft-lockup and RCU-stall reports from its other CPU for as
/// long as it is let.
pub const STALL_SECS: u64 = 180;

/// A line from L1's user space (its init's heartbeat or a scenario
/// marker), not from its kernel.
pub fn is_l1_userspace(line: &str) -> bool {
    line.contains("~~HB ") || line.contains("@@")
}

/// Why a stalled L1 is the emulator's failure, not vmctl's: said when the
/// harness gives up on a silent L1 (docs/nested-lab.md, "Known environment
/// failures").
pub fn stall_reason() -> String {
    format!(
        "L1's user space printed nothing, not even its heartbeat, for {STALL_SECS} s while \
         QEMU's vCPU threads kept executing guest code: QEMU TCG's emulated SVM stopped delivering L1's \
         own timer interrupts as VM exits while L1's CPUs ran L2 guests (on real hardware \
         an L1 interrupt always exits L2)"
    )
}

/// One boot of L1.
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The pristine lab disk ([`lab_disk`]); each boot gets a fresh copy.
    pub lab_disk: &'a Path,
    /// L1's serial console is written here.
    pub log_path: &'a Path,
    pub timeout: Duration,
    pub verbose: bool,
    /// `--qemu-trace`: run QEMU with `-d int,cpu_reset` and keep the records
    /// around every triple fault in this file (see [`trace`]).
    pub trace: Option<&'a Path>,
}

/// The `-d int,cpu_reset` log goes through a FIFO into [`trace::filter_stream`].
struct TraceReader {
    fifo: PathBuf,
    thread: std::thread::JoinHandle<Option<trace::TraceSummary>>,
}

impl TraceReader {
    fn start(kept: &Path) -> Result<Self, String> {
        let fifo = kept.with_extension("fifo");
        let _ = std::fs::remove_file(&fifo);
        let st = Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .map_err(err("running mkfifo"))?;
        if !st.success() {
            return Err(format!("mkfifo {} failed", fifo.display()));
        }
        let out = std::fs::File::create(kept).map_err(err("creating the QEMU trace log"))?;
        let path = fifo.clone();
        let thread = std::thread::spawn(move || {
            let input = std::fs::File::open(&path).ok()?;
            Some(trace::filter_stream(input, std::io::BufWriter::new(out)))
        });
        Ok(TraceReader { fifo, thread })
    }

    /// After QEMU exited: the summary (unblocks the reader if QEMU never
    /// opened the FIFO).
    fn finish(self) -> Option<trace::TraceSummary> {
        use std::os::unix::fs::OpenOptionsExt;
        if !self.thread.is_finished() {
            // O_NONBLOCK: fails at once (ENXIO) if nobody reads any more.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(0o4000)
                .open(&self.fifo);
        }
        let summary = self.thread.join().ok().flatten();
        let _ = std::fs::remove_file(&self.fifo);
        summary
    }
}

/// Boot L1 and collect its serial console (also written to `log_path`).
/// Marker lines are echoed as they arrive; everything with `verbose`.
pub fn boot(b: &Boot<'_>) -> Result<RunResult, String> {
    let (kernel, initrd, log_path, timeout, verbose) =
        (b.kernel, b.initrd, b.log_path, b.timeout, b.verbose);
    // Every run starts from the pristine lab (a sparse copy).
    let run_disk = b.lab_disk.with_extension("run.ext4");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(b.lab_disk)
        .arg(&run_disk)
        .status()
        .map_err(err("copying the lab disk"))?;
    if !st.success() {
        return Err(format!("cp {} failed: {st}", b.lab_disk.display()));
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "q35",
        "-accel",
        "tcg",
        "-cpu",
        "EPYC,+svm",
        "-m",
        "4G",
        "-smp",
        "2",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .arg("-drive")
    .arg(format!(
        "file={},if=virtio,format=raw,cache=unsafe",
        run_disk.display()
    ))
    .args([
        "-append",
        "console=ttyS0 panic=-1 loglevel=4",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-nic",
        "none",
        "-no-reboot",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let tracer = match b.trace {
        Some(kept) => {
            let t = TraceReader::start(kept)?;
            cmd.args(["-d", "int,cpu_reset", "-D"]).arg(&t.fifo);
            Some(t)
        }
        None => None,
    };
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(err(
        "starting qemu-system-x86_64 (apt-get install qemu-system-x86)",
    ))?;
    let stdout = child.stdout.take().ok_or("qemu has no stdout")?;
    // QEMU's stderr, minus the expected "TCG doesn't support requested
    // feature" noise of -cpu EPYC.
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !line.contains("TCG doesn't support requested feature") {
                    eprintln!("qemu: {line}");
                }
            }
        });
    }
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut log = std::fs::File::create(log_path).map_err(err("creating the serial log"))?;
    let mut serial = String::new();
    let mut timed_out = false;
    let mut stalled = false;
    let mut last_line = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        if last_line.elapsed() >= Duration::from_secs(STALL_SECS) {
            stalled = true;
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                if is_l1_userspace(&line) {
                    last_line = Instant::now();
                }
                let _ = log.write_all(line.as_bytes());
                if verbose || line.contains("@@") {
                    eprint!("[{:>5.1}s] {line}", start.elapsed().as_secs_f64());
                }
                serial.push_str(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    // drain what is left
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                        let _ = log.write_all(line.as_bytes());
                        serial.push_str(&line);
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out || stalled {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = reader.join();
    let trace = tracer.and_then(TraceReader::finish);
    Ok(RunResult {
        serial,
        timed_out,
        stalled,
        elapsed: start.elapsed(),
        trace,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_l1_user_space_lines_prove_l1_alive() {
        assert!(super::is_l1_userspace("~~HB 255.13\n"));
        assert!(super::is_l1_userspace("[  30.1] cut~~HB 40.00\n"));
        assert!(super::is_l1_userspace("@@NESTED step=apply rc=0 want=0\n"));
        // What a wedged L1 kept printing for 450 s (2026-11-30 boot loop).
        for kernel in [
            "[  748.992761] watchdog: BUG: soft lockup - CPU#0 stuck for 454s! [vmctl:7289]\n",
            "[  724.564755] rcu: INFO: rcu_preempt self-detected stall on CPU\n",
        ] {
            assert!(!super::is_l1_userspace(kernel), "{kernel}");
        }
    }

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let libs = super::parse_ldd(text);
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(std::path::PathBuf::from)
        );
    }
}
