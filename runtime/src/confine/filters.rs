//! The seccomp allow-lists, one per [`ThreadKind`], and their compilation to
//! BPF with `seccompiler`.
//!
//! Each entry names a system call, the arguments it is restricted to (where
//! restricting them is practical: ioctl request numbers, `fcntl` commands,
//! `prctl` options, no `PROT_EXEC` mappings, the kick signal) and *why* the
//! thread needs it — the list is the documentation (docs/runtime.md,
//! "Confinement", summarises it). A call that matches no entry traps
//! (`SIGSYS`, see `confine::sigsys`).
//!
//! Filters stack: a thread created after the main thread installed its
//! filter runs under the main filter *and* its own. vCPU threads (hot-add,
//! reboot) and the virtio I/O thread (reboot) are created by the main thread
//! after it is confined, so the main list is its own entries plus every entry
//! of those kinds ([`allow_list`] merges them); a unit test checks the
//! inclusion.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_cpuid2, kvm_fpu, kvm_ioeventfd, kvm_irq_routing, kvm_irqfd, kvm_lapic_state, kvm_msrs,
    kvm_pit_config, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{ConfineError, ThreadKind};

/// One argument test: `(argument index, operation, value)`, on the
/// argument's low 32 bits.
pub type ArgTest = (u8, SeccompCmpOp, u64);

/// One allowed system call.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: &'static str,
    pub nr: i64,
    /// Alternatives (any may match), each a conjunction of tests; empty:
    /// any arguments.
    pub when: Vec<Vec<ArgTest>>,
    pub why: &'static str,
}

/// What the filters need to know about this process.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// `tgkill` may only target this process.
    pub pid: i32,
    /// The signal that kicks a vCPU out of `KVM_RUN`.
    pub kick_signal: i32,
}

macro_rules! sys {
    ($name:ident) => {
        (stringify!($name), libc::$name)
    };
}

fn any((name, nr): (&'static str, i64), why: &'static str) -> Entry {
    Entry {
        name: name.trim_start_matches("SYS_"),
        nr,
        when: Vec::new(),
        why,
    }
}

fn when((name, nr): (&'static str, i64), when: Vec<Vec<ArgTest>>, why: &'static str) -> Entry {
    Entry {
        name: name.trim_start_matches("SYS_"),
        nr,
        when,
        why,
    }
}

/// Argument `arg` is one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Vec<Vec<ArgTest>> {
    values
        .iter()
        .map(|&v| vec![(arg, SeccompCmpOp::Eq, v)])
        .collect()
}

// ioctl request numbers (linux/ioctl.h): dir << 30 | size << 16 | type << 8 | nr.
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xAE;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(IOC_NONE, nr, 0)
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(IOC_WRITE, nr, size_of::<T>())
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(IOC_READ, nr, size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(IOC_READ | IOC_WRITE, nr, size_of::<T>())
}

pub const KVM_CREATE_VM: u64 = io(0x01);
pub const KVM_CHECK_EXTENSION: u64 = io(0x03);
pub const KVM_GET_VCPU_MMAP_SIZE: u64 = io(0x04);
pub const KVM_GET_SUPPORTED_CPUID: u64 = iowr::<kvm_cpuid2>(0x05);
pub const KVM_CREATE_VCPU: u64 = io(0x41);
pub const KVM_SET_USER_MEMORY_REGION: u64 = iow::<kvm_userspace_memory_region>(0x46);
pub const KVM_SET_TSS_ADDR: u64 = io(0x47);
pub const KVM_SET_IDENTITY_MAP_ADDR: u64 = iow::<u64>(0x48);
pub const KVM_CREATE_IRQCHIP: u64 = io(0x60);
pub const KVM_SET_GSI_ROUTING: u64 = iow::<kvm_irq_routing>(0x6a);
pub const KVM_IRQFD: u64 = iow::<kvm_irqfd>(0x76);
pub const KVM_CREATE_PIT2: u64 = iow::<kvm_pit_config>(0x77);
pub const KVM_IOEVENTFD: u64 = iow::<kvm_ioeventfd>(0x79);
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior::<kvm_regs>(0x81);
pub const KVM_SET_REGS: u64 = iow::<kvm_regs>(0x82);
pub const KVM_GET_SREGS: u64 = ior::<kvm_sregs>(0x83);
pub const KVM_SET_SREGS: u64 = iow::<kvm_sregs>(0x84);
pub const KVM_SET_MSRS: u64 = iow::<kvm_msrs>(0x89);
pub const KVM_SET_FPU: u64 = iow::<kvm_fpu>(0x8d);
pub const KVM_GET_LAPIC: u64 = ior::<kvm_lapic_state>(0x8e);
pub const KVM_SET_LAPIC: u64 = iow::<kvm_lapic_state>(0x8f);
pub const KVM_SET_CPUID2: u64 = iow::<kvm_cpuid2>(0x90);

/// The ioctls that build a VM and its vCPUs: the first boot, a reboot
/// (`Machine::build` again in the same process), vCPU hot-add
/// (`KVM_CREATE_VCPU` + CPUID/MSRs/FPU/LAPIC) and memory hot-add
/// (`KVM_SET_USER_MEMORY_REGION`).
pub const KVM_BUILD_IOCTLS: &[u64] = &[
    KVM_CREATE_VM,
    KVM_CHECK_EXTENSION,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_GET_SUPPORTED_CPUID,
    KVM_CREATE_VCPU,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_TSS_ADDR,
    KVM_SET_IDENTITY_MAP_ADDR,
    KVM_CREATE_IRQCHIP,
    KVM_SET_GSI_ROUTING,
    KVM_IRQFD,
    KVM_CREATE_PIT2,
    KVM_IOEVENTFD,
    KVM_GET_SREGS,
    KVM_SET_SREGS,
    KVM_SET_REGS,
    KVM_SET_MSRS,
    KVM_SET_FPU,
    KVM_GET_LAPIC,
    KVM_SET_LAPIC,
    KVM_SET_CPUID2,
];

/// What a vCPU thread asks of KVM: run, and read the registers for a crash
/// report.
pub const KVM_VCPU_IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_REGS];

/// No executable mappings, from any thread, after start-up.
fn no_exec(prot_arg: u8) -> Vec<Vec<ArgTest>> {
    vec![vec![(
        prot_arg,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )]]
}

/// Every thread: memory, locks, signals, leaving.
fn base(ctx: &Context) -> Vec<Entry> {
    vec![
        any(sys!(SYS_futex), "std's Mutex/Condvar/channels, thread join"),
        when(
            sys!(SYS_mmap),
            no_exec(2),
            "malloc (arenas, large blocks), guest RAM, vCPU run pages; never PROT_EXEC",
        ),
        when(
            sys!(SYS_mprotect),
            no_exec(2),
            "malloc heap growth, thread stack guards; never PROT_EXEC",
        ),
        any(sys!(SYS_munmap), "free, thread stacks, dropped guest RAM"),
        any(
            sys!(SYS_mremap),
            "glibc realloc of a large (mmap'd) block; keeps its protection",
        ),
        any(
            sys!(SYS_sched_yield),
            "std's channels back off with sched_yield before they park (seen: api-conn under load)",
        ),
        any(sys!(SYS_brk), "malloc's main heap"),
        when(
            sys!(SYS_madvise),
            one_of(2, &[libc::MADV_DONTNEED as u64]),
            "glibc returns freed thread stacks and heap; a reboot drops guest RAM",
        ),
        any(
            sys!(SYS_write),
            "tracing to vmm.log (stderr), eventfds, virtio-net TX: one frame to the TAP",
        ),
        any(
            sys!(SYS_close),
            "dropping descriptors (a vCPU fd when its thread ends)",
        ),
        when(
            sys!(SYS_fcntl),
            one_of(1, &[libc::F_GETFD as u64]),
            "std checks descriptors it drops",
        ),
        any(
            sys!(SYS_rt_sigprocmask),
            "glibc blocks signals around thread exit",
        ),
        any(sys!(SYS_rt_sigreturn), "return from the vCPU kick handler"),
        when(
            sys!(SYS_rt_sigaction),
            one_of(0, &[libc::SIGSEGV as u64, libc::SIGBUS as u64]),
            "std's stack-overflow handler restores the default action",
        ),
        any(
            sys!(SYS_sigaltstack),
            "std's per-thread stack-overflow stack",
        ),
        when(
            sys!(SYS_tgkill),
            vec![vec![
                (0, SeccompCmpOp::Eq, ctx.pid as u64),
                (2, SeccompCmpOp::Eq, libc::SIGABRT as u64),
            ]],
            "abort() (a panic while panicking, allocation failure) stays an abort",
        ),
        any(sys!(SYS_gettid), "std thread ids, the SIGSYS report"),
        any(
            sys!(SYS_getpid),
            "std::process::id (status, atomic file names)",
        ),
        any(sys!(SYS_getrandom), "HashMap keys, first use per thread"),
        any(
            sys!(SYS_clock_gettime),
            "Instant/SystemTime when the vDSO falls back",
        ),
        any(
            sys!(SYS_restart_syscall),
            "a sleep interrupted by a signal resumes",
        ),
        any(sys!(SYS_exit), "thread exit"),
        any(sys!(SYS_exit_group), "process exit"),
    ]
}

/// Threads that start threads (main, the socket listeners): what the new
/// thread runs before it confines itself happens under the spawner's
/// filter.
fn spawns_threads() -> Vec<Entry> {
    vec![
        any(
            sys!(SYS_clone3),
            "std::thread::spawn; answered ENOSYS by compile_no_clone3, so glibc uses clone",
        ),
        when(
            sys!(SYS_clone),
            vec![vec![(
                0,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )]],
            "pthread_create's fallback: threads only, never a new process",
        ),
        any(sys!(SYS_set_robust_list), "new thread start (glibc)"),
        any(sys!(SYS_rseq), "new thread start (glibc)"),
        any(
            sys!(SYS_sched_getaffinity),
            "new thread start (pthread_getattr_np)",
        ),
        when(
            sys!(SYS_prctl),
            one_of(
                0,
                &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
            ),
            "new thread names itself; sets NO_NEW_PRIVS before its own filter",
        ),
        when(
            sys!(SYS_seccomp),
            vec![vec![
                (
                    0,
                    SeccompCmpOp::Eq,
                    u64::from(libc::SECCOMP_SET_MODE_FILTER),
                ),
                (1, SeccompCmpOp::Eq, 0),
            ]],
            "new thread installs its own filter (filters only ever narrow)",
        ),
    ]
}

fn own_entries(kind: ThreadKind, ctx: &Context) -> Vec<Entry> {
    match kind {
        ThreadKind::Vcpu => vec![
            when(
                sys!(SYS_ioctl),
                one_of(1, KVM_VCPU_IOCTLS),
                "KVM_RUN; KVM_GET_REGS for a crash report",
            ),
            any(sys!(SYS_sendto), "COM1 output to console.sock clients"),
            when(
                sys!(SYS_openat),
                one_of(
                    2,
                    &[(libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC) as u64],
                ),
                "console.log rotation reopens the log (write-append-create only)",
            ),
            any(
                sys!(SYS_rename),
                "console.log rotation: console.log → console.log.1",
            ),
            any(
                sys!(SYS_statx),
                "console.log rotation: size of the new file",
            ),
            any(
                sys!(SYS_ftruncate),
                "console.log rotation when the rename failed",
            ),
            any(sys!(SYS_clock_nanosleep), "idle on a HLT exit"),
            any(
                sys!(SYS_pread64),
                "virtio-blk on the vCPU where KVM refused the ioeventfd",
            ),
            any(sys!(SYS_pwrite64), "as pread64"),
            any(sys!(SYS_fdatasync), "as pread64 (flush)"),
            any(
                sys!(SYS_read),
                "virtio-net RX from the TAP on the vCPU where KVM refused the ioeventfd (TX uses write, in the base list)",
            ),
        ],
        ThreadKind::VirtioIo => vec![
            any(sys!(SYS_epoll_wait), "wait for queue notifiers and TAPs"),
            any(sys!(SYS_epoll_pwait), "as epoll_wait"),
            any(
                sys!(SYS_read),
                "reset the notifier eventfds; virtio-net RX: one frame from the TAP (TX uses write, in the base list)",
            ),
            any(sys!(SYS_pread64), "virtio-blk reads"),
            any(sys!(SYS_pwrite64), "virtio-blk writes"),
            any(sys!(SYS_fdatasync), "virtio-blk flush"),
        ],
        ThreadKind::Api => vec![
            any(sys!(SYS_accept4), "accept api.sock connections"),
            any(sys!(SYS_recvfrom), "read requests"),
            any(sys!(SYS_sendto), "write responses"),
            when(
                sys!(SYS_getsockopt),
                vec![vec![
                    (1, SeccompCmpOp::Eq, libc::SOL_SOCKET as u64),
                    (2, SeccompCmpOp::Eq, libc::SO_PEERCRED as u64),
                ]],
                "SO_PEERCRED: only the VMM's user and root are served",
            ),
            when(
                sys!(SYS_setsockopt),
                vec![
                    vec![
                        (1, SeccompCmpOp::Eq, libc::SOL_SOCKET as u64),
                        (2, SeccompCmpOp::Eq, libc::SO_RCVTIMEO as u64),
                    ],
                    vec![
                        (1, SeccompCmpOp::Eq, libc::SOL_SOCKET as u64),
                        (2, SeccompCmpOp::Eq, libc::SO_SNDTIMEO as u64),
                    ],
                ],
                "read/write timeouts on a connection",
            ),
            when(
                sys!(SYS_fcntl),
                one_of(1, &[libc::F_DUPFD_CLOEXEC as u64]),
                "UnixStream::try_clone",
            ),
            any(sys!(SYS_geteuid), "the VMM's own user, for SO_PEERCRED"),
        ],
        ThreadKind::Console => vec![
            any(sys!(SYS_accept4), "accept console.sock clients"),
            any(sys!(SYS_recvfrom), "keys typed into COM1"),
            when(
                sys!(SYS_setsockopt),
                vec![vec![
                    (1, SeccompCmpOp::Eq, libc::SOL_SOCKET as u64),
                    (2, SeccompCmpOp::Eq, libc::SO_SNDTIMEO as u64),
                ]],
                "a slow client cannot stall COM1",
            ),
            when(
                sys!(SYS_fcntl),
                one_of(1, &[libc::F_DUPFD_CLOEXEC as u64]),
                "UnixStream::try_clone",
            ),
            any(
                sys!(SYS_clock_nanosleep),
                "wait while COM1's input FIFO is full",
            ),
        ],
        ThreadKind::Signals => vec![any(
            sys!(SYS_rt_sigtimedwait),
            "sigwait for SIGTERM/SIGINT/SIGHUP",
        )],
        ThreadKind::Reporter => vec![
            any(
                sys!(SYS_read),
                "the denial from the SIGSYS handler; the thread's name",
            ),
            any(
                sys!(SYS_openat),
                "write vmm.exit; read /proc/self/task/TID/comm",
            ),
            any(sys!(SYS_fsync), "vmm.exit is written atomically"),
            any(sys!(SYS_rename), "vmm.exit is written atomically"),
            any(sys!(SYS_unlink), "remove vmm.pid and the sockets"),
            any(sys!(SYS_statx), "std::fs metadata"),
        ],
        ThreadKind::Main => vec![
            when(
                sys!(SYS_ioctl),
                one_of(1, KVM_BUILD_IOCTLS),
                "reboot (Machine::build), vCPU and memory hot-add",
            ),
            any(
                sys!(SYS_openat),
                "reboot: /dev/kvm; vmm.exit and vmm.pid (disk files are not reopened: a reboot dups the ones locked at set-up)",
            ),
            any(sys!(SYS_read), "eventfds"),
            any(sys!(SYS_statx), "disk sizes for status; std::fs metadata"),
            any(sys!(SYS_newfstatat), "std::fs metadata fallback"),
            any(sys!(SYS_fstat), "std::fs metadata fallback"),
            any(sys!(SYS_ftruncate), "live disk grow"),
            any(sys!(SYS_fsync), "vmm.exit is written atomically"),
            any(sys!(SYS_rename), "vmm.exit is written atomically"),
            any(sys!(SYS_unlink), "remove vmm.pid and the sockets on exit"),
            any(sys!(SYS_eventfd2), "reboot: interrupt lines, ioeventfds"),
            any(sys!(SYS_epoll_create1), "reboot: the new virtio I/O thread"),
            any(sys!(SYS_epoll_ctl), "reboot: the new virtio I/O thread"),
            when(
                sys!(SYS_fcntl),
                one_of(1, &[libc::F_DUPFD_CLOEXEC as u64]),
                "EventFd::try_clone (the I/O thread's stop event); reboot: File::try_clone of the disk files locked at set-up (a dup shares their OFD lock)",
            ),
            when(
                sys!(SYS_tgkill),
                vec![vec![
                    (0, SeccompCmpOp::Eq, ctx.pid as u64),
                    (2, SeccompCmpOp::Eq, ctx.kick_signal as u64),
                ]],
                "kick vCPU threads out of KVM_RUN (pause, stop, eject)",
            ),
            any(
                sys!(SYS_clock_nanosleep),
                "waiting for vCPU threads to stop",
            ),
        ],
    }
}

/// The kinds whose threads the (already confined) main thread creates.
pub const SPAWNED_BY_CONFINED_MAIN: &[ThreadKind] = &[ThreadKind::Vcpu, ThreadKind::VirtioIo];

/// The complete allow-list of `kind`.
pub fn allow_list(kind: ThreadKind, ctx: &Context) -> Vec<Entry> {
    let mut list = base(ctx);
    if creates_threads(kind) {
        list.extend(spawns_threads());
    }
    list.extend(own_entries(kind, ctx));
    if kind == ThreadKind::Main {
        for k in SPAWNED_BY_CONFINED_MAIN {
            list.extend(own_entries(*k, ctx));
        }
    }
    list
}

/// The allow-list as seccompiler rules: entries of one system call are
/// merged (an unconditional entry wins over restricted ones).
fn rules(list: &[Entry]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, ConfineError> {
    let mut out: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for e in list {
        let slot = out.entry(e.nr).or_insert_with(|| Some(Vec::new()));
        if e.when.is_empty() {
            *slot = None;
            continue;
        }
        let Some(rules) = slot else { continue };
        for alt in &e.when {
            let conds = alt
                .iter()
                .map(|(arg, op, v)| {
                    SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *v)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| ConfineError::Compile(format!("{}: {err}", e.name)))?;
            rules.push(
                SeccompRule::new(conds)
                    .map_err(|err| ConfineError::Compile(format!("{}: {err}", e.name)))?,
            );
        }
    }
    Ok(out
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect())
}

/// Compile `kind`'s filter: allowed calls pass, anything else traps.
pub fn compile(kind: ThreadKind, ctx: &Context) -> Result<BpfProgram, ConfineError> {
    let filter = SeccompFilter::new(
        rules(&allow_list(kind, ctx))?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| ConfineError::Compile(format!("{}: {e}", kind.name())))?;
    BpfProgram::try_from(filter).map_err(|e| ConfineError::Compile(format!("{}: {e}", kind.name())))
}

/// The second filter of threads that create threads: `clone3` fails with
/// `ENOSYS` (everything else passes to the allow-list). `clone3`'s flags are
/// in memory where seccomp cannot look, so allowing it would allow a fork;
/// glibc then falls back to `clone`, whose flags the allow-list checks
/// (`CLONE_THREAD` only). Stacked filters return the most restrictive
/// result, so ERRNO beats the allow-list's ALLOW.
pub fn compile_no_clone3() -> Result<BpfProgram, ConfineError> {
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| ConfineError::Compile(format!("clone3: {e}")))?;
    BpfProgram::try_from(filter).map_err(|e| ConfineError::Compile(format!("clone3: {e}")))
}

/// Whether threads of `kind` create threads.
pub fn creates_threads(kind: ThreadKind) -> bool {
    matches!(
        kind,
        ThreadKind::Main | ThreadKind::Api | ThreadKind::Console
    )
}

/// A name for system call `nr`, where one of the lists knows it.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let ctx = Context {
        pid: 1,
        kick_signal: 34,
    };
    ThreadKind::ALL
        .iter()
        .flat_map(|k| allow_list(*k, &ctx))
        .find(|e| e.nr == nr)
        .map(|e| e.name)
        .or(match nr {
            libc::SYS_getppid => Some("getppid"),
            libc::SYS_execve => Some("execve"),
            libc::SYS_fork => Some("fork"),
            libc::SYS_socket => Some("socket"),
            libc::SYS_connect => Some("connect"),
            libc::SYS_ptrace => Some("ptrace"),
            libc::SYS_open => Some("open"),
            libc::SYS_kill => Some("kill"),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: Context = Context {
        pid: 4242,
        kick_signal: 34,
    };

    fn allowed(kind: ThreadKind, nr: i64) -> bool {
        allow_list(kind, &CTX).iter().any(|e| e.nr == nr)
    }

    #[test]
    fn every_kind_compiles_to_bpf() {
        for kind in ThreadKind::ALL {
            let prog = compile(*kind, &CTX).unwrap();
            assert!(!prog.is_empty(), "{kind:?}");
            // The kernel takes at most 4096 instructions per filter.
            assert!(prog.len() < 4096, "{kind:?}: {} instructions", prog.len());
        }
    }

    /// Known values from linux/kvm.h on x86_64.
    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_CREATE_VM, 0xAE01);
        assert_eq!(KVM_CREATE_VCPU, 0xAE41);
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_AE46);
        assert_eq!(KVM_GET_SUPPORTED_CPUID, 0xC008_AE05);
        assert_eq!(KVM_SET_CPUID2, 0x4008_AE90);
        assert_eq!(KVM_SET_MSRS, 0x4008_AE89);
        assert_eq!(KVM_IRQFD, 0x4020_AE76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_AE79);
        assert_eq!(KVM_GET_LAPIC, 0x8400_AE8E);
        assert_eq!(KVM_SET_IDENTITY_MAP_ADDR, 0x4008_AE48);
        assert_eq!(KVM_CREATE_PIT2, 0x4040_AE77);
    }

    /// Filters stack: what a thread the confined main thread creates needs
    /// must pass the main filter too.
    #[test]
    fn the_main_filter_admits_everything_its_later_threads_need() {
        let main = allow_list(ThreadKind::Main, &CTX);
        for kind in SPAWNED_BY_CONFINED_MAIN {
            for e in allow_list(*kind, &CTX) {
                let unconditional = main.iter().any(|m| m.nr == e.nr && m.when.is_empty());
                let covered = e.when.iter().all(|alt| {
                    main.iter()
                        .any(|m| m.nr == e.nr && m.when.iter().any(|w| w == alt))
                });
                assert!(
                    unconditional || (!e.when.is_empty() && covered),
                    "{kind:?} needs {} which the main filter does not admit",
                    e.name
                );
            }
        }
    }

    #[test]
    fn vcpus_may_run_but_not_build_vms_or_open_for_reading() {
        let vcpu = allow_list(ThreadKind::Vcpu, &CTX);
        let ioctl = vcpu.iter().find(|e| e.nr == libc::SYS_ioctl).unwrap();
        let allowed: Vec<u64> = ioctl.when.iter().map(|alt| alt[0].2).collect();
        assert_eq!(allowed, vec![KVM_RUN, KVM_GET_REGS]);
        let open = vcpu.iter().find(|e| e.nr == libc::SYS_openat).unwrap();
        assert!(
            open.when
                .iter()
                .all(|alt| alt[0].2 & libc::O_ACCMODE as u64 == libc::O_WRONLY as u64)
        );
        for nr in [
            libc::SYS_execve,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_fork,
        ] {
            assert!(!allowed_anywhere(nr), "{nr}");
        }
    }

    fn allowed_anywhere(nr: i64) -> bool {
        ThreadKind::ALL.iter().any(|k| allowed(*k, nr))
    }

    #[test]
    fn what_the_vmm_does_at_runtime_is_on_the_lists() {
        // Reboot and hot-add run on the main thread.
        let main = allow_list(ThreadKind::Main, &CTX);
        let ioctls: Vec<u64> = main
            .iter()
            .filter(|e| e.nr == libc::SYS_ioctl)
            .flat_map(|e| e.when.iter().map(|alt| alt[0].2))
            .collect();
        for req in KVM_BUILD_IOCTLS.iter().chain(KVM_VCPU_IOCTLS) {
            assert!(ioctls.contains(req), "{req:#x}");
        }
        for nr in [
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_eventfd2,
            libc::SYS_clone3,
            libc::SYS_ftruncate,
            libc::SYS_rename,
            libc::SYS_tgkill,
            // quiesce (crate::vmm::quiesce) drains the virtio-blk queues
            // and fdatasyncs the disks on the main thread.
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
        ] {
            assert!(allowed(ThreadKind::Main, nr), "main: {nr}");
        }
        // Console log rotation runs on the vCPU that wrote the byte.
        assert!(allowed(ThreadKind::Vcpu, libc::SYS_rename));
        assert!(allowed(ThreadKind::VirtioIo, libc::SYS_pwrite64));
        assert!(allowed(ThreadKind::Api, libc::SYS_accept4));
        assert!(allowed(ThreadKind::Signals, libc::SYS_rt_sigtimedwait));
        assert!(allowed(ThreadKind::Reporter, libc::SYS_rename));
    }

    /// Disk locks (crate::disk_file) are taken by the first machine build,
    /// before the main thread confines itself, and held until the VMM exits:
    /// no confined thread may take, change or drop a file lock, so a
    /// compromised VMM cannot unlock its disks for a second writer.
    #[test]
    fn no_confined_thread_may_take_or_drop_file_locks() {
        let lock_ops = [
            libc::F_SETLK,
            libc::F_SETLKW,
            libc::F_OFD_SETLK,
            libc::F_OFD_SETLKW,
        ];
        for kind in ThreadKind::ALL {
            for e in allow_list(*kind, &CTX) {
                if e.nr == libc::SYS_flock {
                    panic!("{}: flock is allowed", kind.name());
                }
                if e.nr != libc::SYS_fcntl {
                    continue;
                }
                assert!(
                    !e.when.is_empty(),
                    "{}: fcntl with any command",
                    kind.name()
                );
                for alt in &e.when {
                    for &(arg, _, value) in alt {
                        assert!(
                            arg != 1 || !lock_ops.iter().any(|&op| op as u64 == value),
                            "{}: fcntl command {value} (a lock operation) is allowed",
                            kind.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_test_only_trip_syscall_is_denied_everywhere() {
        assert!(!allowed_anywhere(super::super::TEST_DENIED_SYSCALL));
        assert_eq!(syscall_name(libc::SYS_getppid), Some("getppid"));
        assert_eq!(syscall_name(libc::SYS_ioctl), Some("ioctl"));
    }

    /// The clone3 filter, installed in a scratch thread: clone3 fails with
    /// ENOSYS and threads are still created (glibc falls back to clone).
    #[test]
    fn clone3_is_refused_and_threads_still_start() {
        let prog = compile_no_clone3().unwrap();
        std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            // SAFETY: clone3 with a null argument block; it must not run.
            let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
            assert_eq!(rc, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOSYS)
            );
            std::thread::spawn(|| 7).join().unwrap()
        })
        .join()
        .map(|v| assert_eq!(v, 7))
        .unwrap();
    }

    /// Every kind of thread, under its real filter, may back off and use a
    /// contended std channel: std's channels call `sched_yield` before they
    /// park (a CI run under load once killed an `api-conn` thread on it).
    /// A denied call traps, and with no handler here SIGSYS ends the test
    /// binary, so this fails loudly if a list loses one.
    #[test]
    fn every_kind_may_yield_and_use_a_contended_channel() {
        for kind in ThreadKind::ALL {
            let prog = compile(*kind, &CTX).unwrap();
            let (to_filtered, rx) = std::sync::mpsc::sync_channel::<u32>(0);
            let (tx, from_filtered) = std::sync::mpsc::sync_channel::<u32>(0);
            let filtered = std::thread::spawn(move || {
                seccompiler::apply_filter(&prog).unwrap();
                std::thread::yield_now();
                let mut sum = 0u32;
                while let Ok(v) = rx.recv() {
                    sum = sum.wrapping_add(v);
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                sum
            });
            for i in 0..2000u32 {
                to_filtered.send(i).unwrap();
                assert_eq!(from_filtered.recv().unwrap(), i);
            }
            drop(to_filtered);
            assert_eq!(
                filtered.join().unwrap(),
                (0..2000u32).sum::<u32>(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn no_thread_may_map_executable_memory() {
        for kind in ThreadKind::ALL {
            for e in allow_list(*kind, &CTX) {
                if e.nr == libc::SYS_mmap || e.nr == libc::SYS_mprotect {
                    assert!(!e.when.is_empty(), "{kind:?}: {}", e.name);
                }
            }
        }
    }
}
