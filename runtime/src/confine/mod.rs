//! A confined VMM (issue 15): the VMM runs guest-controlled device code, so
//! a bug there must not become arbitrary host access. Firecracker's jailer
//! and seccomp filters are the model; here, inside `run_vmm`:
//!
//! - [`limits`]: `PR_SET_NO_NEW_PRIVS`, inherited descriptors closed,
//!   `RLIMIT_NOFILE` sized to the machine, `RLIMIT_CORE` 0, a fixed number of
//!   malloc arenas;
//! - [`filters`]: a seccomp-BPF allow-list per [`ThreadKind`], installed by
//!   each thread before it does its work ([`spawn`]) and by the main thread
//!   after set-up, before the vCPUs run ([`install_main`]);
//! - [`sigsys`]: a denied system call traps; a `SIGSYS` handler hands the
//!   call number to a reporter thread, which writes `vmm.exit` (reason
//!   `seccomp`), removes the pid file and sockets and ends the process.
//!
//! `VMCTL_SECCOMP=off` in the VMM's environment skips the filters (for
//! debugging; logged loudly). `VMCTL_SECCOMP_TEST_DENY=<kind>` is test-only:
//! the thread of that kind makes one system call no filter allows (see
//! [`TEST_DENIED_SYSCALL`]), to prove that a denial kills the VMM and is
//! reported. It changes no filter.

pub mod filters;
pub mod limits;
pub mod sigsys;

use std::cell::Cell;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use seccompiler::BpfProgram;

use crate::state::VmDir;

/// The environment variable that turns the seccomp filters off.
pub const SECCOMP_ENV: &str = "VMCTL_SECCOMP";
/// Test-only: the thread kind that makes a denied system call.
pub const TEST_DENY_ENV: &str = "VMCTL_SECCOMP_TEST_DENY";
/// What the test-only trip calls: harmless, and on no allow-list.
pub const TEST_DENIED_SYSCALL: i64 = libc::SYS_getppid;

/// The kinds of thread a VMM has; each has its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Set-up, the event loop, control requests, reboot, hot-add, exit.
    Main,
    /// One per vCPU: `KVM_RUN` and the exits it handles (PIO/MMIO devices).
    Vcpu,
    /// `virtio-io`: virtio-blk queues behind ioeventfds.
    VirtioIo,
    /// `api` (accepts) and `api-conn` (one per connection).
    Api,
    /// `console` (accepts) and `console-in` (one per client).
    Console,
    /// `signals`: sigwait for SIGTERM/SIGINT/SIGHUP.
    Signals,
    /// `seccomp-report`: writes the report of a denied call.
    Reporter,
}

impl ThreadKind {
    pub const ALL: &'static [ThreadKind] = &[
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::VirtioIo,
        ThreadKind::Api,
        ThreadKind::Console,
        ThreadKind::Signals,
        ThreadKind::Reporter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::VirtioIo => "virtio-io",
            ThreadKind::Api => "api",
            ThreadKind::Console => "console",
            ThreadKind::Signals => "signals",
            ThreadKind::Reporter => "seccomp-report",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    fn from_index(i: u32) -> Option<Self> {
        Self::ALL.get(i as usize).copied()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("cannot build the seccomp filter: {0}")]
    Compile(String),
    #[error("cannot install the {kind} thread's seccomp filter: {source}")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot {what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The compiled filters of this process, once confinement is on.
struct Confinement {
    programs: Vec<BpfProgram>,
    /// Stacked on the filter of threads that create threads.
    no_clone3: BpfProgram,
    trip: Option<ThreadKind>,
}

static ACTIVE: OnceLock<Confinement> = OnceLock::new();

thread_local! {
    /// This thread's kind, for the SIGSYS report (`u32::MAX`: unknown).
    static KIND: Cell<u32> = const { Cell::new(u32::MAX) };
}

/// Whether `VMCTL_SECCOMP` asks for no filters.
pub fn seccomp_disabled(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == "off" || v == "0")
}

/// Turn confinement on for this VMM process: compile every filter, install
/// the SIGSYS handler and start the reporter thread (itself confined).
/// Threads started through [`spawn`] from now on confine themselves. Does
/// nothing but log loudly when `VMCTL_SECCOMP=off`.
pub fn enable(dir: &VmDir) -> Result<(), ConfineError> {
    if seccomp_disabled(std::env::var_os(SECCOMP_ENV).as_deref()) {
        let msg = "VMCTL_SECCOMP=off: this VMM runs WITHOUT seccomp filters (debugging only)";
        tracing::warn!("{msg}");
        eprintln!("vmctl __vmm: WARNING: {msg}");
        return Ok(());
    }
    let ctx = filters::Context {
        pid: std::process::id() as i32,
        kick_signal: crate::vstate::vcpu::kick_signal(),
    };
    let programs = ThreadKind::ALL
        .iter()
        .map(|k| filters::compile(*k, &ctx))
        .collect::<Result<Vec<_>, _>>()?;
    let no_clone3 = filters::compile_no_clone3()?;
    let trip = std::env::var(TEST_DENY_ENV)
        .ok()
        .and_then(|v| ThreadKind::from_name(&v));
    if let Some(kind) = trip {
        tracing::warn!(
            kind = kind.name(),
            "test only: a {} thread will make a denied system call",
            kind.name()
        );
    }
    if ACTIVE
        .set(Confinement {
            programs,
            no_clone3,
            trip,
        })
        .is_err()
    {
        return Ok(());
    }
    sigsys::start(dir)
}

/// Install `kind`'s filter in the calling thread (no-op when confinement is
/// off).
pub fn install(kind: ThreadKind) -> Result<(), ConfineError> {
    let Some(c) = ACTIVE.get() else {
        return Ok(());
    };
    let prog = c
        .programs
        .get(kind.index())
        .ok_or_else(|| ConfineError::Compile(format!("no filter for {}", kind.name())))?;
    let fail = |source| ConfineError::Install {
        kind: kind.name(),
        source,
    };
    seccompiler::apply_filter(prog).map_err(fail)?;
    if filters::creates_threads(kind) {
        seccompiler::apply_filter(&c.no_clone3).map_err(fail)?;
    }
    mark(kind);
    Ok(())
}

/// Confine the main thread: after set-up, before the vCPUs run.
pub fn install_main() -> Result<(), ConfineError> {
    install(ThreadKind::Main)?;
    tracing::info!(
        enabled = ACTIVE.get().is_some(),
        "seccomp: main thread confined"
    );
    Ok(())
}

/// Record the calling thread's kind for the SIGSYS report (threads that
/// inherit their creator's filter instead of installing one).
pub fn mark(kind: ThreadKind) {
    let _ = KIND.try_with(|k| k.set(kind.index() as u32));
}

/// Test only: make the denied system call if this thread kind was asked to.
pub fn trip_point(kind: ThreadKind) {
    if ACTIVE.get().and_then(|c| c.trip) == Some(kind) {
        tracing::warn!(
            kind = kind.name(),
            "test only: making a system call no filter allows"
        );
        // SAFETY: getppid takes no arguments and has no side effects.
        unsafe { libc::syscall(TEST_DENIED_SYSCALL) };
    }
}

/// Spawn a thread that installs `kind`'s filter before it runs `f`. Returns
/// once the filter is in place (or the error, and no thread runs `f`).
pub fn spawn<F>(name: String, kind: ThreadKind, f: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let builder = std::thread::Builder::new().name(name);
    if ACTIVE.get().is_none() {
        return builder.spawn(f);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = builder.spawn(move || match install(kind) {
        Ok(()) => {
            let _ = tx.send(Ok(()));
            drop(tx);
            trip_point(kind);
            f();
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(std::io::Error::other(e))
        }
        Err(_) => {
            let _ = handle.join();
            Err(std::io::Error::other(format!(
                "the {} thread ended before confining itself",
                kind.name()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn kinds_round_trip_by_name_and_index() {
        for k in ThreadKind::ALL {
            assert_eq!(ThreadKind::from_name(k.name()), Some(*k));
            assert_eq!(ThreadKind::from_index(k.index() as u32), Some(*k));
        }
        assert_eq!(ThreadKind::from_name("nope"), None);
    }

    #[test]
    fn only_off_or_zero_disables_seccomp() {
        assert!(seccomp_disabled(Some(OsStr::new("off"))));
        assert!(seccomp_disabled(Some(OsStr::new("0"))));
        assert!(!seccomp_disabled(None));
        assert!(!seccomp_disabled(Some(OsStr::new("on"))));
        assert!(!seccomp_disabled(Some(OsStr::new(""))));
    }

    /// Without `enable` (a library user, the unit tests), spawning confines
    /// nothing.
    #[test]
    fn spawn_without_confinement_is_a_plain_thread() {
        let h = spawn("t".into(), ThreadKind::Api, || {}).unwrap();
        h.join().unwrap();
    }
}
