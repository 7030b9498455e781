//! KVM tests: real VMM processes (this test binary re-executed as `__vmm`)
//! booting real guests. Needs /dev/kvm; prints "skipped" without it (a
//! failure instead with VMCTL_REQUIRE_KVM=1).
//!
//! Until the diag guest is embedded, a hand-assembled 64-bit test program
//! proves the boot path (ELF load, long mode, page tables), both serial ports,
//! the GED register and the power device.
//!
//! Run one test: `cargo test -p vmctl-runtime --test kvm -- NAME`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmctl_runtime::Runtime;
use vmctl_runtime::api::{ApiClient, RunState};
use vmctl_runtime::process::VmmCommand;
use vmctl_spec::model::{ImageSpec, VmSpec};

mod common;
use common::{TESTPROG_RESET, elf};

/// `testprog-wait`: writes "hello from testprog\n" to COM1 and a JSON line to
/// COM2, polls the GED register at 0xd010_0000 until the power-button bit (3)
/// is set, then writes 0x34 (S5 | SLP_EN) to port 0x600. Assembled from:
///
/// ```text
///     mov dx, 0x3f8 ; lea rsi, [rip+msg1] ; mov ecx, 20
/// 1:  lodsb ; out dx, al ; dec ecx ; jnz 1b
///     mov dx, 0x2f8 ; lea rsi, [rip+msg2] ; mov ecx, 38
/// 2:  lodsb ; out dx, al ; dec ecx ; jnz 2b
///     mov ebx, 0xd0100000
/// 3:  mov eax, [rbx] ; test al, 8 ; jz 3b
///     mov dx, 0x600 ; mov al, 0x34 ; out dx, al
/// 4:  hlt ; jmp 4b
/// msg1: "hello from testprog\n"
/// msg2: "{\"agent\":\"testprog\",\"cpus\":1,\"seq\":1}\n"
/// ```
const TESTPROG_WAIT: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x35, 0x36, 0x00, 0x00, 0x00, 0xb9, 0x14, 0x00, 0x00, 0x00,
    0xac, 0xee, 0xff, 0xc9, 0x75, 0xfa, 0x66, 0xba, 0xf8, 0x02, 0x48, 0x8d, 0x35, 0x34, 0x00, 0x00,
    0x00, 0xb9, 0x26, 0x00, 0x00, 0x00, 0xac, 0xee, 0xff, 0xc9, 0x75, 0xfa, 0xbb, 0x00, 0x00, 0x10,
    0xd0, 0x8b, 0x03, 0xa8, 0x08, 0x74, 0xfa, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb,
    0xfd, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x20, 0x66, 0x72, 0x6f, 0x6d, 0x20, 0x74, 0x65, 0x73, 0x74,
    0x70, 0x72, 0x6f, 0x67, 0x0a, 0x7b, 0x22, 0x61, 0x67, 0x65, 0x6e, 0x74, 0x22, 0x3a, 0x22, 0x74,
    0x65, 0x73, 0x74, 0x70, 0x72, 0x6f, 0x67, 0x22, 0x2c, 0x22, 0x63, 0x70, 0x75, 0x73, 0x22, 0x3a,
    0x31, 0x2c, 0x22, 0x73, 0x65, 0x71, 0x22, 0x3a, 0x31, 0x7d, 0x0a,
];

/// `testprog-off`: the same greeting (COM2 line padded with two extra
/// newlines), then powers off at once.
const TESTPROG_OFF: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x35, 0x2b, 0x00, 0x00, 0x00, 0xb9, 0x14, 0x00, 0x00, 0x00,
    0xac, 0xee, 0xff, 0xc9, 0x75, 0xfa, 0x66, 0xba, 0xf8, 0x02, 0x48, 0x8d, 0x35, 0x29, 0x00, 0x00,
    0x00, 0xb9, 0x28, 0x00, 0x00, 0x00, 0xac, 0xee, 0xff, 0xc9, 0x75, 0xfa, 0x66, 0xba, 0x00, 0x06,
    0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x20, 0x66, 0x72, 0x6f, 0x6d,
    0x20, 0x74, 0x65, 0x73, 0x74, 0x70, 0x72, 0x6f, 0x67, 0x0a, 0x7b, 0x22, 0x61, 0x67, 0x65, 0x6e,
    0x74, 0x22, 0x3a, 0x22, 0x74, 0x65, 0x73, 0x74, 0x70, 0x72, 0x6f, 0x67, 0x22, 0x2c, 0x22, 0x63,
    0x70, 0x75, 0x73, 0x22, 0x3a, 0x31, 0x2c, 0x22, 0x73, 0x65, 0x71, 0x22, 0x3a, 0x31, 0x7d, 0x0a,
    0x0a, 0x0a,
];

/// `testprog-ier`: testprog-wait preceded by enabling every UART interrupt
/// (IER = 0x0f on COM1 and COM2), so each transmitted byte raises IRQ 4/3 —
/// with the guest's interrupts disabled (RFLAGS.IF = 0).
const TESTPROG_IER: &[u8] = &[
    0x66, 0xba, 0xf9, 0x03, 0xb0, 0x0f, 0xee, 0x66, 0xba, 0xf9, 0x02, 0xee, 0x66, 0xba, 0xf8, 0x03,
    0x48, 0x8d, 0x35, 0x36, 0x00, 0x00, 0x00, 0xb9, 0x14, 0x00, 0x00, 0x00, 0xac, 0xee, 0xff, 0xc9,
    0x75, 0xfa, 0x66, 0xba, 0xf8, 0x02, 0x48, 0x8d, 0x35, 0x34, 0x00, 0x00, 0x00, 0xb9, 0x26, 0x00,
    0x00, 0x00, 0xac, 0xee, 0xff, 0xc9, 0x75, 0xfa, 0xbb, 0x00, 0x00, 0x10, 0xd0, 0x8b, 0x03, 0xa8,
    0x08, 0x74, 0xfa, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd, 0x68, 0x65, 0x6c,
    0x6c, 0x6f, 0x20, 0x66, 0x72, 0x6f, 0x6d, 0x20, 0x74, 0x65, 0x73, 0x74, 0x70, 0x72, 0x6f, 0x67,
    0x0a, 0x7b, 0x22, 0x61, 0x67, 0x65, 0x6e, 0x74, 0x22, 0x3a, 0x22, 0x74, 0x65, 0x73, 0x74, 0x70,
    0x72, 0x6f, 0x67, 0x22, 0x2c, 0x22, 0x63, 0x70, 0x75, 0x73, 0x22, 0x3a, 0x31, 0x2c, 0x22, 0x73,
    0x65, 0x71, 0x22, 0x3a, 0x31, 0x7d, 0x0a,
];

/// `testprog-sti`: enables every UART interrupt (IER = 0x0f on COM1 and
/// COM2) and then interrupts (`sti`) before touching any APIC, with an empty
/// IDT — as a guest that never programs the legacy PIC does. Then it greets,
/// spins a while, writes its COM2 line and waits for the power button like
/// testprog-wait. Any interrupt delivered to it is a triple fault. Source:
///
/// ```text
///     mov dx, 0x3f9 ; mov al, 0x0f ; out dx, al ; mov dx, 0x2f9 ; out dx, al
///     sti
///     (greeting on COM1; each byte raises IRQ 4)
///     mov ecx, 0x200000 ; 2: pause ; dec ecx ; jnz 2b
///     (COM2 line, GED poll, power off: as testprog-wait)
/// ```
const TESTPROG_STI: &[u8] = &[
    0x66, 0xba, 0xf9, 0x03, 0xb0, 0x0f, 0xee, 0x66, 0xba, 0xf9, 0x02, 0xee, 0xfb, 0x66, 0xba, 0xf8,
    0x03, 0x48, 0x8d, 0x35, 0x41, 0x00, 0x00, 0x00, 0xb9, 0x14, 0x00, 0x00, 0x00, 0xac, 0xee, 0xff,
    0xc9, 0x75, 0xfa, 0xb9, 0x00, 0x00, 0x20, 0x00, 0xf3, 0x90, 0xff, 0xc9, 0x75, 0xfa, 0x66, 0xba,
    0xf8, 0x02, 0x48, 0x8d, 0x35, 0x34, 0x00, 0x00, 0x00, 0xb9, 0x26, 0x00, 0x00, 0x00, 0xac, 0xee,
    0xff, 0xc9, 0x75, 0xfa, 0xbb, 0x00, 0x00, 0x10, 0xd0, 0x8b, 0x03, 0xa8, 0x08, 0x74, 0xfa, 0x66,
    0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x20, 0x66,
    0x72, 0x6f, 0x6d, 0x20, 0x74, 0x65, 0x73, 0x74, 0x70, 0x72, 0x6f, 0x67, 0x0a, 0x7b, 0x22, 0x61,
    0x67, 0x65, 0x6e, 0x74, 0x22, 0x3a, 0x22, 0x74, 0x65, 0x73, 0x74, 0x70, 0x72, 0x6f, 0x67, 0x22,
    0x2c, 0x22, 0x63, 0x70, 0x75, 0x73, 0x22, 0x3a, 0x31, 0x2c, 0x22, 0x73, 0x65, 0x71, 0x22, 0x3a,
    0x31, 0x7d, 0x0a,
];

/// `testprog-flood`: a guest that floods COM1 — 200,000 `x`, then `END\n`,
/// then powers off:
/// ```text
///     mov dx, 0x3f8 ; mov ecx, 200000 ; mov al, 'x'
///  1: out dx, al ; dec ecx ; jnz 1b
///     lea rsi, [rip+msg] ; mov ecx, 4
///  2: lodsb ; out dx, al ; dec ecx ; jnz 2b
///     mov dx, 0x600 ; mov al, 0x34 ; out dx, al ; 3: hlt ; jmp 3b
/// msg: "END\n"
/// ```
const TESTPROG_FLOOD: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb9, 0x40, 0x0d, 0x03, 0x00, 0xb0, 0x78, 0xee, 0xff, 0xc9, 0x75, 0xfb,
    0x48, 0x8d, 0x35, 0x15, 0x00, 0x00, 0x00, 0xb9, 0x04, 0x00, 0x00, 0x00, 0xac, 0xee, 0xff, 0xc9,
    0x75, 0xfa, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd, b'E', b'N', b'D',
    b'\n',
];

struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    rt: Runtime,
}

impl Lab {
    fn new() -> Lab {
        Lab::with_vmm_env(&[])
    }

    /// A lab whose VMMs get `env` on top of this process's environment.
    fn with_vmm_env(env: &[(&str, &str)]) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let exe = std::env::current_exe().unwrap();
        let rt = Runtime::open(root.join("state"))
            .unwrap()
            .with_vmm_command(VmmCommand {
                exe,
                args: vec!["__vmm".into(), "--vm-dir".into()],
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            });
        Lab {
            _tmp: tmp,
            root,
            rt,
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.root.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn spec(&self, name: &str, kernel: &Path) -> VmSpec {
        VmSpec {
            os: "testprog".into(),
            image: Some(ImageSpec {
                name: "testprog".into(),
                kernel: kernel.to_path_buf(),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            }),
            ..VmSpec::diag(name)
        }
    }

    fn diag(&self, name: &str, cpus: u32, memory_mib: u64) -> VmSpec {
        VmSpec {
            cpus,
            max_cpus: cpus,
            memory_mib,
            max_memory_mib: memory_mib,
            ..VmSpec::diag(name)
        }
    }

    fn client(&self, name: &str) -> ApiClient {
        ApiClient::new(self.rt.vm_dir(name).api_sock())
    }

    fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.rt.vm_dir(name).console_log()).unwrap_or_default()
    }
}

/// A failed test must not leave VMM processes behind.
impl Drop for Lab {
    fn drop(&mut self) {
        common::kill_vmms(&self.rt);
    }
}

/// Poll `f` until it returns Some (no timing assertion: a generous bound only
/// turns a hang into a failure).
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_no_vmm_files(lab: &Lab, name: &str) {
    let dir = lab.rt.vm_dir(name);
    assert!(!dir.pid_file().exists(), "stale vmm.pid");
    assert!(!dir.api_sock().exists(), "stale api.sock");
}

fn testprog_boots_writes_both_ports_and_powers_off() {
    let lab = Lab::new();
    let k = lab.write("off.elf", &elf(TESTPROG_OFF));
    lab.rt.create(&lab.spec("off", &k)).unwrap();
    wait_for("the VMM to exit", || {
        let o = lab.rt.observe("off").unwrap().unwrap();
        (o.live != RunState::Running).then_some(())
    });
    let o = lab.rt.observe("off").unwrap().unwrap();
    assert_eq!(
        o.live,
        RunState::Stopped,
        "a guest power-off is a clean stop"
    );
    assert!(
        lab.console("off").contains("hello from testprog\n"),
        "console: {:?}",
        lab.console("off")
    );
    let note = lab.rt.vm_dir("off").read_exit_note().unwrap();
    assert_eq!(note.reason, "poweroff");
    assert_no_vmm_files(&lab, "off");
}

/// Issue 15: a guest printing in a loop must not fill the host disk.
/// COM1 floods 200,000 bytes against a 16 KiB cap: `console.log` and
/// `console.log.1` each stay under the cap, and together they end with the
/// guest's newest bytes (`...xxxEND\n`).
fn console_log_is_capped_and_rotated_under_a_flooding_guest() {
    const CAP: u64 = 16 << 10;
    let lab = Lab::new();
    let rt = lab.rt.clone().with_console_log_max(CAP);
    let k = lab.write("flood.elf", &elf(TESTPROG_FLOOD));
    rt.create(&lab.spec("flood", &k)).unwrap();
    wait_for("the flooding guest to power off", || {
        let o = rt.observe("flood").unwrap().unwrap();
        (o.live != RunState::Running).then_some(())
    });
    let log = rt.vm_dir("flood").console_log();
    let cur = std::fs::read(&log).unwrap();
    let old = std::fs::read(log.with_extension("log.1")).unwrap();
    assert!(
        cur.len() as u64 <= CAP && old.len() as u64 <= CAP,
        "console.log {} bytes, console.log.1 {} bytes, cap {CAP}",
        cur.len(),
        old.len()
    );
    let both = [old, cur].concat();
    assert!(both.ends_with(b"xxxxEND\n"), "the newest bytes are kept");
    assert!(both.len() as u64 > CAP, "one rotated file is kept");
    assert!(both.iter().rev().skip(4).all(|&b| b == b'x'));
    assert_eq!(
        rt.vm_dir("flood").read_exit_note().unwrap().reason,
        "poweroff"
    );
}

fn testprog_status_pause_resume_and_graceful_shutdown() {
    let lab = Lab::new();
    let k = lab.write("wait.elf", &elf(TESTPROG_WAIT));
    let mut spec = lab.spec("w", &k);
    spec.disks.push(vmctl_spec::model::DiskSpec {
        name: "data".into(),
        size_bytes: 3 << 20,
        format: vmctl_spec::model::DiskFormat::Raw,
        path: None,
        source: None,
        source_format: None,
    });
    lab.rt.create(&spec).unwrap();
    let c = lab.client("w");
    let st = wait_for("the guest report", || {
        c.status().ok().filter(|s| s.guest.is_some())
    });
    assert_eq!(st.guest.unwrap()["agent"], "testprog");
    assert_eq!(
        (st.vcpus, st.memory_mib, st.state),
        (1, 128, RunState::Running)
    );
    assert_eq!(
        st.pid as i32,
        lab.rt.observe("w").unwrap().unwrap().pid.unwrap()
    );
    let caps = c.capabilities().unwrap();
    assert!(caps.hot_add_cpu && caps.hot_remove_cpu && caps.hot_add_memory && !caps.copy);
    c.pause().unwrap();
    assert_eq!(c.status().unwrap().state, RunState::Paused);
    c.resume().unwrap();
    assert_eq!(c.status().unwrap().state, RunState::Running);
    assert!(
        c.shutdown(Duration::from_secs(30)).unwrap(),
        "the guest polls GED and powers off"
    );
    let o = lab.rt.observe("w").unwrap().unwrap();
    wait_for("the VMM to exit", || {
        (lab.rt.observe("w").unwrap().unwrap().live != RunState::Running).then_some(())
    });
    assert_eq!(
        lab.rt.vm_dir("w").read_exit_note().unwrap().reason,
        "shutdown"
    );
    drop(o);
    // stop through the facade is then a no-op that records desired=stopped.
    lab.rt.stop("w", Duration::from_secs(1)).unwrap();
    assert_eq!(
        lab.rt.observe("w").unwrap().unwrap().live,
        RunState::Stopped
    );
    assert_no_vmm_files(&lab, "w");
}

/// `testprog-deaf`: testprog-wait with its power-off write replaced by a
/// NOP — it sees the power button and halts forever, so only the VMM's
/// forced stop ends a shutdown.
fn testprog_deaf() -> Vec<u8> {
    let mut code = TESTPROG_WAIT.to_vec();
    // mov al, 0x34 ; out dx, al  →  mov al, 0x34 ; nop
    let at = code
        .windows(3)
        .position(|w| w == [0xb0, 0x34, 0xee])
        .expect("testprog-wait has its power-off write");
    code[at + 2] = 0x90;
    code
}

/// A stop whose vmctl died after asking for the shutdown (an apply killed
/// inside a restart) leaves a VMM that is about to exit. Observing it must
/// wait for that exit and show the VM stopped — not running, which would
/// plan live changes for a VM that is gone by the time they run (seen: a
/// hot-remove-cpu failing with `VM "alpha" is stopped`).
fn a_vmm_shutting_down_is_observed_after_it_exits() {
    let lab = Lab::new();
    let k = lab.write("deaf.elf", &elf(&testprog_deaf()));
    lab.rt.create(&lab.spec("d", &k)).unwrap();
    let c = lab.client("d");
    wait_for("the guest report", || {
        c.status().ok().filter(|s| s.guest.is_some())
    });
    assert_eq!(c.status().unwrap().stopping_in_ms, None);
    // What stop() does before it asks the VMM: the intent, on disk.
    let dir = lab.rt.vm_dir("d");
    let mut rec = dir.read_record().unwrap();
    rec.desired = vmctl_runtime::state::Desired::Stopped;
    dir.write_record(&rec).unwrap();
    // The dead vmctl's shutdown request, with a 3 s grace.
    let asker = {
        let c = lab.client("d");
        std::thread::spawn(move || c.shutdown(Duration::from_secs(3)))
    };
    let st = wait_for("the VMM to say it is stopping", || {
        c.status().ok().filter(|s| s.stopping_in_ms.is_some())
    });
    assert!(st.stopping_in_ms.is_some_and(|ms| ms <= 3000), "{st:?}");
    let t0 = Instant::now();
    let o = lab.rt.observe("d").unwrap().unwrap();
    assert_eq!(
        o.live,
        RunState::Stopped,
        "observed while the VMM was stopping"
    );
    assert_eq!(o.pid, None);
    assert!(t0.elapsed() < Duration::from_secs(60));
    // The deaf guest never powered off: the VMM stopped it by force.
    assert_eq!(asker.join().unwrap().ok(), Some(false));
    assert_no_vmm_files(&lab, "d");
}

/// The other half of that window: the guest is off and the VMM is tearing
/// down — its control loop no longer answers, its pid file is still there.
/// With a stop recorded, a VMM that does not answer is waited for (up to 5
/// s) instead of being reported running. Simulated with SIGSTOP (no
/// answers) and a SIGKILL a second later (the exit).
fn a_silent_vmm_with_a_stop_recorded_is_waited_for() {
    let lab = Lab::new();
    lab.rt.create(&lab.diag("s", 1, 128)).unwrap();
    let c = lab.client("s");
    wait_for("the guest report", || {
        c.status().ok().filter(|s| s.guest.is_some())
    });
    let pid = lab.rt.observe("s").unwrap().unwrap().pid.unwrap();
    let dir = lab.rt.vm_dir("s");
    let mut rec = dir.read_record().unwrap();
    rec.desired = vmctl_runtime::state::Desired::Stopped;
    dir.write_record(&rec).unwrap();
    // SAFETY: plain kill(2) of the VMM this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let o = lab.rt.observe("s").unwrap().unwrap();
    killer.join().unwrap();
    assert_ne!(
        o.live,
        RunState::Running,
        "a VMM on its way out was reported running"
    );
    assert_eq!(o.pid, None);
}

/// Image VMs run in irqchip mode: serial and GED interrupts go through KVM's
/// in-kernel PIC/IOAPIC. A guest that keeps interrupts disabled must survive
/// them (on this host's /dev/kvm an interrupt actually *delivered* kills the
/// guest; see docs/runtime.md).
fn irqchip_mode_lines_raised_while_the_guest_has_if_clear_are_harmless() {
    let lab = Lab::new();
    let k = lab.write("ier.elf", &elf(TESTPROG_IER));
    lab.rt.create(&lab.spec("ier", &k)).unwrap();
    let c = lab.client("ier");
    let st = wait_for("the guest report", || {
        c.status().ok().filter(|s| s.guest.is_some())
    });
    assert_eq!(st.irq_mode, "irqchip");
    assert!(c.shutdown(Duration::from_secs(30)).unwrap());
    assert!(lab.console("ier").contains("hello from testprog\n"));
}

/// Defect (issue 10): KVM's in-kernel 8259 starts unmasked with vector base
/// 0 and, with KVM's default routing, GSI 0-15 reach it as well as the
/// IOAPIC, while the boot vCPU's LVT0 is ExtINT. A guest that enables
/// interrupts before programming anything (Linux with a hardware-reduced
/// FADT never programs the PIC) then gets COM1's IRQ 4 as vector 4 (#OF).
/// With GSIs routed to the IOAPIC only (its pins start masked) nothing is
/// delivered until the guest unmasks a pin.
fn irqchip_mode_legacy_pic_delivers_nothing_to_a_guest_with_if_set() {
    let lab = Lab::new();
    let k = lab.write("sti.elf", &elf(TESTPROG_STI));
    let _ = lab.rt.create(&lab.spec("sti", &k));
    let c = lab.client("sti");
    let st = wait_for("the guest report (or its crash)", || {
        if lab.rt.observe("sti").unwrap().unwrap().live != RunState::Running {
            let note = lab.rt.vm_dir("sti").read_exit_note();
            panic!("the guest died: an interrupt reached it: {note:?}");
        }
        c.status().ok().filter(|s| s.guest.is_some())
    });
    assert_eq!(st.irq_mode, "irqchip");
    assert!(c.shutdown(Duration::from_secs(30)).unwrap());
    assert!(lab.console("sti").contains("hello from testprog\n"));
}

/// Issue 11: live vCPU and memory hot-add and vCPU hot-remove on a running
/// diag VM, in the same VMM process, proven by what the guest reports: CPUs
/// it started and runs code on, memory it wrote and read back.
fn diag_hot_add_cpus_and_memory_then_hot_remove_a_cpu() {
    let lab = Lab::new();
    let mut spec = lab.diag("hp", 1, 256);
    spec.max_cpus = 4;
    spec.max_memory_mib = 1024;
    lab.rt.create(&spec).unwrap();
    let pid = lab.rt.observe("hp").unwrap().unwrap().pid.unwrap();
    let c = lab.client("hp");
    let guest = |want: &dyn Fn(&serde_json::Value) -> bool| {
        wait_for("the guest report", || {
            c.status().ok()?.guest.filter(|g| want(g))
        })
    };
    let g = guest(&|g| g["memory_verified_mib"] == 256);
    assert_eq!(
        (g["cpus"].as_u64(), g["max_cpus"].as_u64()),
        (Some(1), Some(4)),
        "{g}"
    );

    // Bad input changes nothing.
    assert!(lab.rt.hot_add_cpu("hp", 5).is_err(), "beyond max");
    assert!(lab.rt.hot_add_cpu("hp", 0).is_err(), "no vCPU at all");
    assert!(lab.rt.hot_add_memory("hp", 2048).is_err(), "beyond max");
    assert!(lab.rt.hot_add_memory("hp", 128).is_err(), "shrink");
    assert!(
        lab.rt.hot_add_memory("hp", 300).is_err(),
        "not 128 MiB steps"
    );
    assert_eq!(c.status().unwrap().vcpus, 1);
    assert_eq!(c.status().unwrap().memory_mib, 256);

    lab.rt.hot_add_cpu("hp", 3).unwrap();
    let g = guest(&|g| g["cpus"] == 3);
    assert_eq!(g["cpus_online"], 3, "the new APs run diag code: {g}");
    lab.rt.hot_add_memory("hp", 768).unwrap();
    let g = guest(&|g| g["memory_mib"] == 768);
    assert_eq!(
        g["memory_verified_mib"], 768,
        "every 2 MiB written and read back: {g}"
    );
    let st = c.status().unwrap();
    assert_eq!((st.pid as i32, st.vcpus, st.memory_mib), (pid, 3, 768));
    let rec = lab.rt.vm_dir("hp").read_record().unwrap();
    assert_eq!(
        (rec.spec.cpus, rec.spec.memory_mib),
        (3, 768),
        "recorded after the guest saw it"
    );
    // Asking for what is there is success.
    lab.rt.hot_add_cpu("hp", 3).unwrap();
    lab.rt.hot_add_memory("hp", 768).unwrap();

    // Hot-remove: the guest parks the AP and ejects it.
    lab.rt.hot_add_cpu("hp", 2).unwrap();
    let g = guest(&|g| g["cpus"] == 2);
    assert_eq!(g["cpus_online"], 2, "{g}");
    assert_eq!(c.status().unwrap().pid as i32, pid, "same VMM process");
    // ... and the ejected vCPU comes back on a later add.
    lab.rt.hot_add_cpu("hp", 3).unwrap();
    guest(&|g| g["cpus"] == 3 && g["cpus_online"] == 3);
    lab.rt.hot_add_cpu("hp", 2).unwrap();
    guest(&|g| g["cpus"] == 2);

    // One change at a time: with the guest paused, the first cannot be
    // acknowledged, so a second is refused while it is in flight.
    c.pause().unwrap();
    let api = lab.rt.vm_dir("hp").api_sock();
    let first = std::thread::spawn(move || {
        vmctl_runtime::api::ApiClient::new(api).hot_add_cpu(4, Duration::from_secs(60))
    });
    wait_for("the first hot-add to be in flight", || {
        c.status()
            .ok()?
            .hotplug_in_flight
            .filter(|w| w == "hot-add to 4 vCPUs")
    });
    let second = c.hot_add_memory(1024, Duration::from_secs(5)).unwrap_err();
    assert!(
        second
            .to_string()
            .contains("in flight (hot-add to 4 vCPUs)"),
        "{second}"
    );
    assert_eq!(c.status().unwrap().memory_mib, 768, "nothing changed");
    // The same change asked again (an apply killed while its change waited
    // for the guest, then run again) joins the one in flight: it waits for
    // the guest's answer instead of being refused.
    let again = c.hot_add_cpu(4, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(again, vmctl_runtime::api::ClientError::Io(_)),
        "it waited for the guest, it was not refused: {again}"
    );
    std::thread::scope(|s| {
        // The control plane waits for a change in flight to settle before
        // it asks for its own.
        let later = s.spawn(|| lab.rt.hot_add_memory("hp", 1024));
        std::thread::sleep(Duration::from_millis(300));
        c.resume().unwrap();
        assert_eq!(first.join().unwrap().unwrap().cpus, 4);
        later.join().unwrap().unwrap();
    });
    guest(&|g| g["memory_verified_mib"] == 1024 && g["cpus"] == 4);
    lab.rt.hot_add_cpu("hp", 2).unwrap();

    // A stopped VM cannot be hot-added; a restart boots what was recorded.
    lab.rt.stop("hp", Duration::from_secs(30)).unwrap();
    assert!(lab.rt.hot_add_cpu("hp", 3).is_err());
    lab.rt.start("hp").unwrap();
    let g = guest(&|g| g["memory_verified_mib"] == 1024 && !g["cpus_started"].is_null());
    assert_eq!(
        (g["cpus"].as_u64(), g["memory_mib"].as_u64()),
        (Some(2), Some(1024)),
        "{g}"
    );
    lab.rt.stop("hp", Duration::from_secs(30)).unwrap();
}

/// A guest reset rebuilds the VM inside the same VMM process.
fn reset_reboots_in_the_same_process() {
    let lab = Lab::new();
    let k = lab.write("reset.elf", &elf(TESTPROG_RESET));
    lab.rt.create(&lab.spec("r", &k)).unwrap();
    let pid = lab.rt.observe("r").unwrap().unwrap().pid.unwrap();
    let c = lab.client("r");
    wait_for("three greetings", || {
        (lab.console("r").matches("hello from testprog").count() >= 3).then_some(())
    });
    let st = c.status().unwrap();
    assert!(st.boots >= 3, "{st:?}");
    assert_eq!(st.pid as i32, pid, "same VMM process");
    // The guest never powers off by itself: the stop is forced.
    lab.rt.stop("r", Duration::from_millis(100)).unwrap();
    assert_eq!(
        lab.rt.observe("r").unwrap().unwrap().live,
        RunState::Stopped
    );
    assert_no_vmm_files(&lab, "r");
}

/// A guest that dies (here `ud2` with an empty IDT: a triple fault) ends its
/// VMM with a crash note saying where, and observe says crashed.
fn guest_triple_fault_is_a_crash() {
    let lab = Lab::new();
    let k = lab.write("ud2.elf", &elf(&[0x0f, 0x0b]));
    // It may die before or after the spawner sees it ready.
    let _ = lab.rt.create(&lab.spec("tf", &k));
    wait_for("the VMM to exit", || {
        (lab.rt.observe("tf").unwrap().unwrap().live != RunState::Running).then_some(())
    });
    assert_eq!(
        lab.rt.observe("tf").unwrap().unwrap().live,
        RunState::Crashed
    );
    let note = lab.rt.vm_dir("tf").read_exit_note().unwrap();
    assert_eq!((note.reason.as_str(), note.code), ("crash", 2), "{note:?}");
    assert!(note.detail.contains("rip 0x20000"), "{note:?}");
    assert_no_vmm_files(&lab, "tf");
}

/// SIGTERM to a VMM is a graceful shutdown, not a crash.
fn sigterm_shuts_down_gracefully() {
    let lab = Lab::new();
    lab.rt.create(&lab.diag("t", 1, 128)).unwrap();
    let c = lab.client("t");
    wait_for("the guest report", || c.status().ok()?.guest);
    let pid = lab.rt.observe("t").unwrap().unwrap().pid.unwrap();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let dir = lab.rt.vm_dir("t").path;
    wait_for("the VMM to exit", || {
        (!vmctl_runtime::process::is_vmm_of(pid, &dir)).then_some(())
    });
    assert_eq!(
        lab.rt.observe("t").unwrap().unwrap().live,
        RunState::Stopped
    );
    let note = lab.rt.vm_dir("t").read_exit_note().unwrap();
    assert_eq!(
        (note.reason.as_str(), note.code),
        ("shutdown", 0),
        "{note:?}"
    );
    assert!(
        note.detail.contains("on request"),
        "diag powered off by itself: {note:?}"
    );
    assert_no_vmm_files(&lab, "t");
}

fn killed_vmm_is_crashed_and_can_start_again() {
    let lab = Lab::new();
    let k = lab.write("wait.elf", &elf(TESTPROG_WAIT));
    let external = lab.root.join("external.raw");
    let mut spec = lab.spec("k", &k);
    spec.disks.push(vmctl_spec::model::DiskSpec {
        name: "ext".into(),
        size_bytes: 1 << 20,
        format: vmctl_spec::model::DiskFormat::Raw,
        path: Some(external.clone()),
        source: None,
        source_format: None,
    });
    lab.rt.create(&spec).unwrap();
    assert_eq!(std::fs::metadata(&external).unwrap().len(), 1 << 20);
    let pid = lab.rt.observe("k").unwrap().unwrap().pid.unwrap();
    // start on a running VM is a no-op.
    assert_eq!(lab.rt.start("k").unwrap(), pid);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the kill", || {
        (lab.rt.observe("k").unwrap().unwrap().live == RunState::Crashed).then_some(())
    });
    let pid2 = lab.rt.start("k").unwrap();
    assert_ne!(pid, pid2);
    let o = lab.rt.observe("k").unwrap().unwrap();
    assert_eq!(o.live, RunState::Running);
    lab.rt.destroy("k", false).unwrap();
    assert!(!lab.rt.vm_dir("k").path.exists());
    assert!(
        external.exists(),
        "a disk with a user path survives destroy"
    );
    lab.rt.destroy("k", false).unwrap();
    assert!(process_gone(pid2), "destroy left the VMM {pid2}");
}

/// No such process, or only a zombie waiting for its reaper.
fn process_gone(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    matches!(
        stat.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next()),
        None | Some("Z") | Some("X")
    )
}

fn errors_before_boot_are_clear_and_leave_no_process() {
    let lab = Lab::new();
    let k = lab.write("wait.elf", &elf(TESTPROG_WAIT));

    let missing = lab.spec("nokernel", &lab.root.join("does-not-exist"));
    let e = lab.rt.create(&missing).unwrap_err().to_string();
    assert!(e.contains("cannot read the kernel"), "{e}");
    assert_no_vmm_files(&lab, "nokernel");
    assert_eq!(
        lab.rt.observe("nokernel").unwrap().unwrap().live,
        RunState::Crashed
    );

    let mut bad_initrd = lab.spec("noinitrd", &k);
    bad_initrd.image.as_mut().unwrap().initrd = Some(lab.root.clone()); // a directory
    let e = lab.rt.create(&bad_initrd).unwrap_err().to_string();
    assert!(e.contains("cannot read the initrd"), "{e}");
    assert_no_vmm_files(&lab, "noinitrd");

    let mut huge = lab.spec("huge", &k);
    huge.memory_mib = 64 << 20; // 64 TiB
    huge.max_memory_mib = huge.memory_mib;
    let e = lab.rt.create(&huge).unwrap_err().to_string();
    assert!(e.contains("host can give only"), "{e}");
    assert_no_vmm_files(&lab, "huge");
}

/// Boot diag with `cpus` and `memory_mib`; the guest's own report must say
/// the same, then a graceful shutdown must work.
fn diag_reports_what_was_declared(cpus: u32, memory_mib: u64) {
    let lab = Lab::new();
    let name = format!("diag-{cpus}-{memory_mib}");
    let mut spec = lab.diag(&name, cpus, memory_mib);
    spec.disks.push(vmctl_spec::model::DiskSpec {
        name: "root".into(),
        size_bytes: 10 << 20,
        format: vmctl_spec::model::DiskFormat::Raw,
        path: None,
        source: None,
        source_format: None,
    });
    lab.rt.create(&spec).unwrap();
    let c = lab.client(&name);
    let report = wait_for("a full diag report", || {
        let g = c.status().ok()?.guest?;
        (!g["cpus_started"].is_null() || cpus == 1).then_some(g)
    });
    assert_eq!(report["agent"], "diag");
    assert_eq!(report["cpus"], cpus, "{report}");
    assert_eq!(report["max_cpus"], cpus, "{report}");
    if cpus > 1 {
        assert_eq!(report["cpus_started"], cpus, "every AP started: {report}");
    }
    assert_eq!(report["memory_mib"], memory_mib, "{report}");
    // diag wrote and read back samples across every e820 RAM range.
    assert_eq!(report["memory_verified_mib"], memory_mib, "{report}");
    assert_eq!(report["disks"][0]["id"], "root", "{report}");
    assert_eq!(report["disks"][0]["size_bytes"], 10u64 << 20, "{report}");
    let console = lab.console(&name);
    assert!(
        console.contains("diag: vmctl diag guest, PVH start info at 0x6000"),
        "diag has a PVH note, so the VMM boots it through PVH: {console}"
    );
    let st = c.status().unwrap();
    assert_eq!(
        (st.vcpus, st.memory_mib, st.irq_mode.as_str()),
        (cpus, memory_mib, "polled")
    );
    assert!(
        c.shutdown(Duration::from_secs(30)).unwrap(),
        "diag powers off on the power button"
    );
    wait_for("the VMM to exit", || {
        (lab.rt.observe(&name).unwrap().unwrap().live != RunState::Running).then_some(())
    });
    assert_no_vmm_files(&lab, &name);
}

/// Issue 16: the same diag with its PVH note hidden boots through the Linux
/// 64-bit entry (boot params in RSI) and reports what was declared, so both
/// entries stay first-class; the PVH one is covered by
/// `diag_reports_what_was_declared`.
fn diag_without_pvh_note_boots_through_the_64bit_entry() {
    let lab = Lab::new();
    let plain = vmctl_runtime::diag::without_pvh_note(vmctl_runtime::diag::KERNEL).unwrap();
    let k = lab.write("diag-linux64.elf", &plain);
    let spec = VmSpec {
        memory_mib: 256,
        max_memory_mib: 256,
        cpus: 2,
        max_cpus: 2,
        ..lab.spec("l64", &k)
    };
    lab.rt.create(&spec).unwrap();
    let c = lab.client("l64");
    let report = wait_for("a full diag report", || {
        let g = c.status().ok()?.guest?;
        (!g["cpus_started"].is_null()).then_some(g)
    });
    assert_eq!(report["cpus"], 2, "{report}");
    assert_eq!(report["cpus_started"], 2, "{report}");
    assert_eq!(report["memory_mib"], 256, "{report}");
    assert_eq!(report["memory_verified_mib"], 256, "{report}");
    let console = lab.console("l64");
    assert!(
        console.contains("diag: vmctl diag guest, boot params at 0x7000"),
        "{console}"
    );
    assert!(
        c.shutdown(Duration::from_secs(30)).unwrap(),
        "diag powers off on the power button"
    );
}

/// Issue 15: a system call outside a thread's seccomp allow-list kills the
/// VMM, and `vmm.exit` says so — reason `seccomp`, exit code 159, the
/// thread and the call number — with no pid file or socket left behind, so
/// the VM reads as crashed. Tried in a vCPU thread, the control-socket
/// thread and the main thread (once the VM is up and serving). The trip is
/// test-only (`VMCTL_SECCOMP_TEST_DENY=<kind>`): that thread calls getppid,
/// which no filter allows; no filter changes. With `VMCTL_SECCOMP=off` the
/// same trip is harmless, so it is the filter that kills.
fn a_denied_syscall_kills_the_vmm_and_is_reported_in_vmm_exit() {
    use vmctl_runtime::confine::{SECCOMP_ENV, TEST_DENY_ENV, sigsys};
    for kind in ["vcpu", "api", "main"] {
        let lab = Lab::with_vmm_env(&[(TEST_DENY_ENV, kind)]);
        let name = format!("deny-{kind}");
        // The VMM may die before or after it counts as started.
        let _ = lab.rt.create(&lab.diag(&name, 1, 128));
        wait_for("the VMM to die", || {
            let o = lab.rt.observe(&name).unwrap().unwrap();
            (o.live != RunState::Running).then_some(())
        });
        let o = lab.rt.observe(&name).unwrap().unwrap();
        assert_eq!(o.live, RunState::Crashed, "{kind}");
        let note = lab.rt.vm_dir(&name).read_exit_note().expect("vmm.exit");
        assert_eq!(note.reason, sigsys::REASON, "{kind}: {note:?}");
        assert_eq!(note.code, 159, "{kind}: {note:?}");
        assert!(
            note.detail.contains(&format!("(kind {kind}, tid"))
                && note
                    .detail
                    .contains(&format!("made system call {} (getppid)", libc::SYS_getppid)),
            "{kind}: {}",
            note.detail
        );
        assert_no_vmm_files(&lab, &name);
        assert!(!lab.rt.vm_dir(&name).console_sock().exists());
    }
    let lab = Lab::with_vmm_env(&[(TEST_DENY_ENV, "vcpu"), (SECCOMP_ENV, "off")]);
    lab.rt.create(&lab.diag("off", 1, 128)).unwrap();
    let c = lab.client("off");
    wait_for("the guest report", || c.status().ok()?.guest);
    assert!(c.shutdown(Duration::from_secs(30)).unwrap());
}

fn diag_1_cpu_128_mib() {
    diag_reports_what_was_declared(1, 128);
}
fn diag_2_cpus_1_gib() {
    diag_reports_what_was_declared(2, 1024);
}
fn diag_4_cpus_3584_mib() {
    diag_reports_what_was_declared(4, 3584);
}

/// pause / resume through the socket while diag runs; console.sock carries
/// keystrokes in and COM1 output out.
fn diag_pause_resume_and_console() {
    use std::io::{Read, Write};
    let lab = Lab::new();
    lab.rt.create(&lab.diag("pr", 2, 128)).unwrap();
    let c = lab.client("pr");
    wait_for("the guest report", || c.status().ok()?.guest);

    let mut con =
        std::os::unix::net::UnixStream::connect(lab.rt.vm_dir("pr").console_sock()).unwrap();
    con.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    con.write_all(b"\r").unwrap();
    let mut seen = Vec::new();
    wait_for("diag to reprint its summary on the console socket", || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = con.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen)
            .contains("cpus=2")
            .then_some(())
    });

    c.pause().unwrap();
    assert_eq!(c.status().unwrap().state, RunState::Paused);
    c.resume().unwrap();
    assert_eq!(c.status().unwrap().state, RunState::Running);
    lab.rt.stop("pr", Duration::from_secs(30)).unwrap();
    assert_eq!(
        lab.rt.observe("pr").unwrap().unwrap().live,
        RunState::Stopped
    );
    assert_no_vmm_files(&lab, "pr");
}

use common::Test;

const TESTS: &[Test] = &[
    (
        "a_silent_vmm_with_a_stop_recorded_is_waited_for",
        a_silent_vmm_with_a_stop_recorded_is_waited_for,
    ),
    (
        "a_vmm_shutting_down_is_observed_after_it_exits",
        a_vmm_shutting_down_is_observed_after_it_exits,
    ),
    (
        "console_log_is_capped_and_rotated_under_a_flooding_guest",
        console_log_is_capped_and_rotated_under_a_flooding_guest,
    ),
    (
        "diag_hot_add_cpus_and_memory_then_hot_remove_a_cpu",
        diag_hot_add_cpus_and_memory_then_hot_remove_a_cpu,
    ),
    (
        "irqchip_mode_legacy_pic_delivers_nothing_to_a_guest_with_if_set",
        irqchip_mode_legacy_pic_delivers_nothing_to_a_guest_with_if_set,
    ),
    (
        "a_denied_syscall_kills_the_vmm_and_is_reported_in_vmm_exit",
        a_denied_syscall_kills_the_vmm_and_is_reported_in_vmm_exit,
    ),
    ("diag_1_cpu_128_mib", diag_1_cpu_128_mib),
    (
        "diag_without_pvh_note_boots_through_the_64bit_entry",
        diag_without_pvh_note_boots_through_the_64bit_entry,
    ),
    ("diag_2_cpus_1_gib", diag_2_cpus_1_gib),
    ("diag_4_cpus_3584_mib", diag_4_cpus_3584_mib),
    (
        "guest_triple_fault_is_a_crash",
        guest_triple_fault_is_a_crash,
    ),
    (
        "sigterm_shuts_down_gracefully",
        sigterm_shuts_down_gracefully,
    ),
    (
        "diag_pause_resume_and_console",
        diag_pause_resume_and_console,
    ),
    (
        "reset_reboots_in_the_same_process",
        reset_reboots_in_the_same_process,
    ),
    (
        "testprog_boots_writes_both_ports_and_powers_off",
        testprog_boots_writes_both_ports_and_powers_off,
    ),
    (
        "testprog_status_pause_resume_and_graceful_shutdown",
        testprog_status_pause_resume_and_graceful_shutdown,
    ),
    (
        "irqchip_mode_lines_raised_while_the_guest_has_if_clear_are_harmless",
        irqchip_mode_lines_raised_while_the_guest_has_if_clear_are_harmless,
    ),
    (
        "killed_vmm_is_crashed_and_can_start_again",
        killed_vmm_is_crashed_and_can_start_again,
    ),
    (
        "errors_before_boot_are_clear_and_leave_no_process",
        errors_before_boot_are_clear_and_leave_no_process,
    ),
];

fn main() {
    vmctl_runtime::testing::run_as_vmm_if_asked();
    let args: Vec<String> = std::env::args().collect();
    // Skips without /dev/kvm; fails instead with VMCTL_REQUIRE_KVM=1.
    if !vmctl_runtime::testing::kvm_or_skip() {
        return;
    }
    if args.iter().any(|a| a == "--measure") {
        measure();
        return;
    }
    common::run_tests(TESTS);
}

/// `--measure`: time from `Runtime::start` of a diag VM (spawning its VMM) to
/// the first complete line on COM1, 20 runs, and the VMM's RSS for a 128 MiB
/// diag VM once the guest has reported. Prints figures; asserts nothing.
fn measure() {
    let lab = Lab::new();
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for i in 0..20 {
        let name = format!("m{i}");
        let log = lab.rt.vm_dir(&name).console_log();
        let mut spec = lab.diag(&name, 1, 128);
        spec.autostart = false;
        lab.rt.create(&spec).unwrap();
        let t0 = Instant::now();
        lab.rt.start(&name).unwrap();
        loop {
            if std::fs::read_to_string(&log).is_ok_and(|t| t.contains('\n')) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no console line");
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(t0.elapsed());
        let c = lab.client(&name);
        wait_for("the guest report", || c.status().ok()?.guest);
        let pid = lab.rt.observe(&name).unwrap().unwrap().pid.unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        rss.push(kib);
        lab.rt.destroy(&name, false).unwrap();
    }
    times.sort();
    rss.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "start -> first COM1 line: median {:.1} ms (min {:.1}, max {:.1}, n={})",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
        times.len()
    );
    println!(
        "VMM RSS, 128 MiB diag VM after its report: median {} KiB (min {}, max {})",
        rss[rss.len() / 2],
        rss[0],
        rss[rss.len() - 1]
    );
}
