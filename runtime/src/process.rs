//! Spawning, finding and signalling VMM processes.
//!
//! A VMM is `vmctl __vmm --vm-dir DIR`, started detached (its own session,
//! stdin from /dev/null, stdout/stderr appended to `vmm.log`) so it outlives
//! the vmctl that started it. It is ready when `vmm.pid` exists and its
//! control socket answers; if it exits first, the last lines of `vmm.log` say
//! why. The spawner re-checks every millisecond and is woken at once by the
//! child's exit (`spawn_wake`).
//!
//! One VM, one VMM: the spawner takes an exclusive flock on `DIR/vmm.lock`
//! and hands that descriptor to the VMM, which holds it for as long as it
//! lives (the kernel drops it when the process dies, however it dies). A
//! spawner that finds the lock held waits for that VMM instead of starting a
//! second one — even when the vmctl that started it was killed before the
//! VMM wrote its pid file.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::ApiClient;
use crate::spawn_wake::{self, SpawnWake};
use crate::state::VmDir;

/// How long a VMM may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start the VMM ({exe}): {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM exited ({status}) before the VM was ready:\n{log}")]
    Exited { status: String, log: String },
    #[error("the VMM did not become ready within {0:?}")]
    Timeout(Duration),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to start a VMM: the program and the arguments before `DIR`.
#[derive(Debug, Clone)]
pub struct VmmCommand {
    pub exe: PathBuf,
    /// Arguments placed before the VM directory (default `__vmm --vm-dir`).
    pub args: Vec<OsString>,
    /// Extra environment for the VMM only (tests: `VMCTL_SECCOMP_TEST_DENY`).
    pub env: Vec<(OsString, OsString)>,
}

impl VmmCommand {
    /// This executable, re-executed as `__vmm`.
    pub fn current() -> Result<Self, ProcessError> {
        let exe = std::env::current_exe().map_err(|source| ProcessError::Spawn {
            exe: PathBuf::from("<current exe>"),
            source,
        })?;
        Ok(VmmCommand {
            exe,
            args: vec!["__vmm".into(), "--vm-dir".into()],
            env: Vec::new(),
        })
    }
}

/// The last `n` lines of `path`.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The name of the per-VM lock file held by the VM's VMM.
pub const VMM_LOCK: &str = "vmm.lock";

/// Try to take `DIR/vmm.lock` exclusively; `Ok(None)` when a VMM holds it.
fn try_vmm_lock(vm_dir: &Path) -> Result<Option<std::fs::File>, ProcessError> {
    let path = vm_dir.join(VMM_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ProcessError::Io {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(ProcessError::Io { path, source: err })
    }
}

/// Whether a VMM (running, or still starting) holds the VM's lock.
///
/// Only looks: never creates the lock file (a VM being destroyed
/// concurrently must not get a file put back into the directory that is
/// being removed).
pub fn vmm_lock_held(vm_dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(vm_dir.join(VMM_LOCK)) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    // Taken: nobody held it; it is released when `file` is dropped.
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// Wait (bounded) for the VMM that holds the lock to be ready; its pid, or
/// `None` when the lock was released meanwhile (the VMM exited).
pub fn wait_for_holder(vm_dir: &Path, timeout: Duration) -> Option<i32> {
    let dir = VmDir::new(vm_dir);
    let client = ApiClient::new(dir.api_sock()).with_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pid) = dir.read_pid().filter(|&p| is_vmm_of(p, vm_dir))
            && client.status().is_ok()
        {
            return Some(pid);
        }
        if !vmm_lock_held(vm_dir) || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Remove the files a dead VMM may have left behind (pid file, sockets).
/// Only for a VM whose VMM is known to be gone.
pub(crate) fn remove_stale_files(dir: &VmDir) {
    for p in [dir.pid_file(), dir.api_sock(), dir.console_sock()] {
        let _ = std::fs::remove_file(p);
    }
}

/// Start the VMM for `vm_dir` and wait until it is ready. Returns its pid.
/// When a VMM already holds the VM's lock, waits for it and returns its pid
/// instead of starting another.
pub fn spawn(cmd: &VmmCommand, vm_dir: &Path) -> Result<u32, ProcessError> {
    spawn_then(cmd, vm_dir, |_| {})
}

/// [`spawn`], calling `started(pid)` as soon as a new VMM process exists,
/// before waiting for it to be ready, so the caller's own work on it (the
/// cpu-weight cgroup: a `cgroup.procs` write took ~10 ms here) overlaps the
/// VMM's set-up instead of following it. Not called when an already
/// running VMM was found instead.
pub fn spawn_then(
    cmd: &VmmCommand,
    vm_dir: &Path,
    started: impl FnOnce(u32),
) -> Result<u32, ProcessError> {
    let dir = VmDir::new(vm_dir);
    let lock = loop {
        if let Some(lock) = try_vmm_lock(vm_dir)? {
            break lock;
        }
        if let Some(pid) = wait_for_holder(vm_dir, READY_TIMEOUT) {
            return Ok(pid as u32);
        }
        if vmm_lock_held(vm_dir) {
            return Err(ProcessError::Timeout(READY_TIMEOUT));
        }
    };
    // We hold the lock, so no VMM runs this VM: whatever it left is stale.
    remove_stale_files(&dir);
    let lock_fd = lock.as_raw_fd();
    let log_path = dir.vmm_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| ProcessError::Io {
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| ProcessError::Io {
        path: log_path.clone(),
        source,
    })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(dir.exit_note());
    let mut command = Command::new(&cmd.exe);
    command
        .args(&cmd.args)
        .arg(vm_dir)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    if std::env::var_os("VMCTL_LOG").is_none() {
        command.env("VMCTL_LOG", "info");
    }
    // SAFETY: setsid is async-signal-safe; it detaches the child from our
    // session and terminal so the VM outlives this process.
    // The lock descriptor is made inheritable in the child only, so the VMM
    // holds the VM's lock from before it runs until it dies.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(lock_fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
        exe: cmd.exe.clone(),
        source,
    })?;
    let pid = child.id();
    let wake = SpawnWake::child(pid);
    // The child has its own descriptor for the lock now.
    drop(lock);
    started(pid);

    let deadline = Instant::now() + READY_TIMEOUT;
    let client = ApiClient::new(dir.api_sock()).with_timeout(Duration::from_secs(2));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // A guest that booted and powered off already was ready.
            if status.success() && dir.read_exit_note().is_some_and(|n| n.is_clean()) {
                return Ok(pid);
            }
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let new = text.get(log_start as usize..).unwrap_or(&text);
            let lines: Vec<&str> = new.lines().collect();
            let log = lines[lines.len().saturating_sub(10)..].join("\n");
            return Err(ProcessError::Exited {
                status: status.to_string(),
                log,
            });
        }
        if dir.read_pid() == Some(pid as i32) && client.status().is_ok() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProcessError::Timeout(READY_TIMEOUT));
        }
        // Re-check soon; woken at once if the child exits.
        wake.wait((deadline - now).min(spawn_wake::RECHECK));
    }
    // Reap the VMM whenever it exits, so a long-lived vmctl (watch) leaves no
    // zombies; the VMM itself keeps running when this process exits.
    let _ = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        });
    Ok(pid)
}

/// Is `pid` the live VMM of the VM in `vm_dir`?
///
/// A pid alone proves nothing (pids are reused, and every VMM's command
/// line says `__vmm`), so all of these must hold:
/// - the process is alive (not a zombie);
/// - its command line is `... __vmm --vm-dir DIR` with DIR, resolved
///   against the process's own working directory and canonicalized, the
///   same directory as `vm_dir`;
/// - `vm_dir/vmm.lock` is locked, and this process has that very file
///   (same device and inode) open: the lock a VMM holds for as long as it
///   lives, which a stranger with a reused pid does not have.
pub fn is_vmm_of(pid: i32, vm_dir: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X")) {
        return false;
    }
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    if !args.contains(&b"__vmm".as_slice()) {
        return false;
    }
    let Some(dir_arg) = args
        .windows(2)
        .find(|w| w[0] == b"--vm-dir")
        .map(|w| PathBuf::from(std::ffi::OsStr::from_bytes(w[1])))
    else {
        return false;
    };
    let dir_arg = if dir_arg.is_absolute() {
        dir_arg
    } else {
        match std::fs::read_link(proc.join("cwd")) {
            Ok(cwd) => cwd.join(dir_arg),
            Err(_) => return false,
        }
    };
    match (dir_arg.canonicalize(), vm_dir.canonicalize()) {
        (Ok(a), Ok(b)) if a == b => {}
        _ => return false,
    }
    holds_vmm_lock(pid, vm_dir)
}

/// Whether `vm_dir/vmm.lock` is locked and process `pid` has it open.
fn holds_vmm_lock(pid: i32, vm_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(lock) = std::fs::metadata(vm_dir.join(VMM_LOCK)) else {
        return false;
    };
    if !vmm_lock_held(vm_dir) {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == lock.dev() && m.ino() == lock.ino())
    })
}

/// Send `signal` to the VMM of `vm_dir` if `pid` is it (see [`is_vmm_of`]);
/// false when it is not (or is gone). The process is pinned with a pidfd
/// before it is checked, so the signal cannot reach a process that took
/// over the pid after the check.
pub fn signal_vmm(pid: i32, vm_dir: &Path, signal: libc::c_int) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: pidfd_open(2) takes a pid and flags, returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned to us and is owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    if !is_vmm_of(pid, vm_dir) {
        return false;
    }
    // SAFETY: pidfd_send_signal(2) on our pidfd with no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// Wait until the VMM of `vm_dir` (`pid`) is gone (or `timeout` passes);
/// true if gone.
pub fn wait_gone(pid: i32, vm_dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_vmm_of(pid, vm_dir) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}
