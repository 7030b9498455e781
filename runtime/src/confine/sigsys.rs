//! What happens on a denied system call: the filters trap (`SIGSYS`) rather
//! than kill, so the VM's `vmm.exit` can say why the VMM died — a VMM killed
//! outright by the kernel leaves only "crashed" behind, and the vmctl that
//! started it has usually exited long before.
//!
//! The handler runs in the offending thread, under that thread's filter, so
//! it does almost nothing: it writes the call number, the thread id and
//! kind to a pipe (`write` is on every list) and waits. The `seccomp-report`
//! thread, blocked on the pipe's other end since start-up, writes
//! `vmm.exit` (`reason: "seccomp"`), removes the pid file and the sockets
//! as a normal exit does, logs to `vmm.log` and ends the process with
//! [`DENIED_EXIT_CODE`]. If the report cannot be made (the reporter itself
//! was denied, the pipe is gone, or nothing ended the process within about
//! 5 s — e.g. the offending thread held a lock the reporter needed), the
//! handler ends the process itself with the same code. A denied call inside
//! the handler makes the kernel kill the process with SIGSYS.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use super::{ConfineError, ThreadKind};
use crate::state::{ExitNote, VmDir};

/// The VMM's exit status (and `vmm.exit` code) after a denied call: what a
/// shell reports for a process killed by SIGSYS.
pub const DENIED_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// `vmm.exit`'s reason for a denied call.
pub const REASON: &str = "seccomp";

/// The pipe's write end, for the handler (-1: no reporter).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
/// Futex word the handler sleeps on while the reporter works.
static PARKED: AtomicU32 = AtomicU32::new(0);

const MSG_LEN: usize = 24;

/// One denied call, as the handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub nr: i32,
    pub tid: i32,
    pub kind: Option<ThreadKind>,
    pub call_addr: u64,
}

impl Denial {
    fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        b[0..4].copy_from_slice(&self.nr.to_le_bytes());
        b[4..8].copy_from_slice(&self.tid.to_le_bytes());
        let kind = self.kind.map_or(u32::MAX, |k| k.index() as u32);
        b[8..12].copy_from_slice(&kind.to_le_bytes());
        b[16..24].copy_from_slice(&self.call_addr.to_le_bytes());
        b
    }

    fn decode(b: &[u8; MSG_LEN]) -> Self {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[16..24]);
        Denial {
            nr: i32::from_le_bytes(word(0)),
            tid: i32::from_le_bytes(word(4)),
            kind: ThreadKind::from_index(u32::from_le_bytes(word(8))),
            call_addr: u64::from_le_bytes(addr),
        }
    }

    /// The `vmm.exit` detail.
    pub fn describe(&self, thread_name: Option<&str>) -> String {
        let call = match super::filters::syscall_name(i64::from(self.nr)) {
            Some(name) => format!("{} ({name})", self.nr),
            None => self.nr.to_string(),
        };
        let kind = self.kind.map_or("unknown", |k| k.name());
        let thread = thread_name.unwrap_or("?");
        format!(
            "killed by seccomp: thread {thread:?} (kind {kind}, tid {}) made system call {call}, \
             which its allow-list denies (at {:#x}); the VMM was stopped",
            self.tid, self.call_addr
        )
    }
}

/// The SIGSYS handler. Async-signal-safe: atomics, a thread-local read, and
/// raw system calls every filter allows (gettid, write, futex, exit_group).
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo's SIGSYS fields on x86_64: call_addr at 16, syscall at 24.
    let (nr, call_addr) = if info.is_null() {
        (-1, 0)
    } else {
        let p = info.cast::<u8>();
        // SAFETY: the kernel passes a full siginfo_t (128 bytes); both reads
        // are in bounds and unaligned-safe.
        unsafe {
            (
                std::ptr::read_unaligned(p.add(24).cast::<i32>()),
                std::ptr::read_unaligned(p.add(16).cast::<u64>()),
            )
        }
    };
    let kind = super::KIND
        .try_with(|k| k.get())
        .ok()
        .and_then(ThreadKind::from_index);
    // SAFETY: gettid has no arguments.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let msg = Denial {
        nr,
        tid,
        kind,
        call_addr,
    }
    .encode();
    let fd = REPORT_FD.load(Ordering::SeqCst);
    if kind != Some(ThreadKind::Reporter) && fd >= 0 {
        // SAFETY: writes MSG_LEN bytes from a live local buffer.
        let n = unsafe { libc::write(fd, msg.as_ptr().cast(), MSG_LEN) };
        if n == MSG_LEN as isize {
            // The reporter ends the process; wait for it, bounded.
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            for _ in 0..50 {
                // SAFETY: FUTEX_WAIT on a static word with a valid timeout.
                unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        PARKED.as_ptr(),
                        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        0u32,
                        &ts as *const libc::timespec,
                    )
                };
            }
        }
    }
    // SAFETY: ends the process; nothing after it runs.
    unsafe { libc::syscall(libc::SYS_exit_group, DENIED_EXIT_CODE) };
}

/// Install the SIGSYS handler and start the reporter for `dir`.
pub(super) fn start(dir: &VmDir) -> Result<(), ConfineError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(ConfineError::Os {
            what: "create the seccomp report pipe",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let dir = dir.clone();
    super::spawn("seccomp-report".into(), ThreadKind::Reporter, move || {
        report(rd, &dir)
    })
    .map_err(|source| ConfineError::Os {
        what: "start the seccomp reporter thread",
        source,
    })?;
    // The write end lives as long as the process.
    REPORT_FD.store(wr.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(wr);
    // SAFETY: a zeroed sigaction with our handler, SA_SIGINFO, empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(ConfineError::Os {
                what: "install the SIGSYS handler",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// The reporter thread: wait for a denial, report it, end the process.
fn report(rd: OwnedFd, dir: &VmDir) {
    let mut buf = [0u8; MSG_LEN];
    loop {
        // SAFETY: reads at most MSG_LEN bytes into a live buffer.
        let n = unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), MSG_LEN) };
        if n == MSG_LEN as isize {
            break;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return;
    }
    let denial = Denial::decode(&buf);
    let name = std::fs::read_to_string(format!("/proc/self/task/{}/comm", denial.tid))
        .ok()
        .map(|s| s.trim().to_string());
    let detail = denial.describe(name.as_deref());
    // Straight to stderr (vmm.log): the tracing writer's lock may be held
    // by the thread that was stopped.
    let line = format!("vmctl __vmm: {detail}\n");
    // SAFETY: writes a live buffer to stderr.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    let _ = dir.write_exit_note(&ExitNote {
        reason: REASON.into(),
        detail,
        code: DENIED_EXIT_CODE,
    });
    crate::vmm::cleanup(dir);
    // SAFETY: ends the process at once (no destructors: other threads are
    // mid-flight).
    unsafe { libc::_exit(DENIED_EXIT_CODE) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_round_trips_through_the_pipe_message() {
        let d = Denial {
            nr: libc::SYS_getppid as i32,
            tid: 1234,
            kind: Some(ThreadKind::Vcpu),
            call_addr: 0x7f00_dead_beef,
        };
        assert_eq!(Denial::decode(&d.encode()), d);
        let unknown = Denial { kind: None, ..d };
        assert_eq!(Denial::decode(&unknown.encode()), unknown);
    }

    #[test]
    fn the_report_names_the_thread_and_the_call() {
        let d = Denial {
            nr: libc::SYS_getppid as i32,
            tid: 77,
            kind: Some(ThreadKind::Vcpu),
            call_addr: 0x10,
        };
        let text = d.describe(Some("vcpu0"));
        assert!(text.starts_with("killed by seccomp"), "{text}");
        assert!(text.contains("\"vcpu0\" (kind vcpu, tid 77)"), "{text}");
        assert!(text.contains("system call 110 (getppid)"), "{text}");
        assert_eq!(DENIED_EXIT_CODE, 159);
    }
}
