//! Process-wide limits of a VMM, set before it builds anything:
//!
//! - `PR_SET_NO_NEW_PRIVS`: nothing this process executes can gain
//!   privileges (and seccomp filters may be installed without
//!   `CAP_SYS_ADMIN`).
//! - Every inherited descriptor beyond stdin/stdout/stderr is closed, except
//!   `vmm.lock` (the spawner hands it over on purpose: holding it is how
//!   vmctl knows this VMM lives, see `process`).
//! - `RLIMIT_NOFILE` sized to what this machine can use ([`nofile_limit`]),
//!   `RLIMIT_CORE` 0 (a core dump of a VMM holds guest memory).
//! - glibc's malloc gets a fixed number of arenas: otherwise the first
//!   allocation of some later thread reads `/sys/devices/system/cpu/online`
//!   to size the arena table, an `open` no thread's filter should need.
//!
//! No `RLIMIT_AS`: the VMM's address space is dominated by reservations,
//! not use — guest RAM up to its hot-add max (lazily backed), twice during a
//! reboot (the old machine's RAM is unmapped only after the new one is
//! built), 64 MiB reserved per malloc arena and 2 MiB per thread stack — so
//! a bound tight enough to matter fails a reboot or a hot-add with an
//! allocation failure, which aborts the process with no report; measured
//! figures are in docs/runtime.md ("Confinement"). `RLIMIT_NPROC` counts
//! every process of the *user* (and does not apply to root), so it cannot
//! bound one VMM's threads either.

use std::os::fd::RawFd;
use std::path::Path;

use super::ConfineError;

/// malloc arenas per VMM (glibc's default would be 8 per core).
pub const MALLOC_ARENAS: i32 = 4;

/// Descriptors one VMM may have open for a machine of `max_cpus` vCPUs and
/// `disks` virtio devices (disks and NICs). Per boot: `/dev/kvm`, the VM,
/// one per vCPU, and per disk its file, ioeventfd and irqfd (per NIC its
/// TAP, the I/O thread's watch on it, two ioeventfds and an irqfd: the
/// budget below counts 3 + 1 per device, enough for both), plus the fixed interrupt lines, the I/O
/// thread's epoll and stop events; a reboot holds two machines for a
/// moment. Beyond that: each disk's locked file (each NIC's TAP), kept for the VMM's life
/// (crate::disk_file; a machine's disk files are dups of it), stdio,
/// `vmm.lock`, `console.log`, both listening
/// sockets, the seccomp report pipe, and two descriptors per control or
/// console connection (generous: 128 connections), and files written
/// atomically (two at a time).
pub fn nofile_limit(max_cpus: u32, disks: usize) -> u64 {
    let per_boot = 2 + u64::from(max_cpus) + 4 * disks as u64 + 8;
    let fixed = 3 + 1 + 1 + 2 + 2 + 2;
    let connections = 2 * 128;
    2 * per_boot + disks as u64 + fixed + connections
}

/// Everything in this module, in order; `vm_dir` holds the `vmm.lock` to
/// keep.
pub fn apply(vm_dir: &Path) -> Result<(), ConfineError> {
    close_inherited(vm_dir);
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::Os {
            what: "set PR_SET_NO_NEW_PRIVS",
            source: std::io::Error::last_os_error(),
        });
    }
    set_rlimit(libc::RLIMIT_CORE, 0, "set RLIMIT_CORE")?;
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
    Ok(())
}

/// Lower `RLIMIT_NOFILE` to [`nofile_limit`] (never raise it).
pub fn limit_files(max_cpus: u32, disks: usize) -> Result<u64, ConfineError> {
    let want = nofile_limit(max_cpus, disks);
    set_rlimit(libc::RLIMIT_NOFILE, want, "set RLIMIT_NOFILE")
}

/// Set both limits of `resource` to `min(value, current hard limit)`;
/// returns the value set.
fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    what: &'static str,
) -> Result<u64, ConfineError> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
        return Err(ConfineError::Os {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    let v = value.min(cur.rlim_max);
    let new = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(ConfineError::Os {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(v)
}

/// Close every descriptor above stderr except the one open on
/// `vm_dir/vmm.lock`. Without `/proc/self/fd` nothing is closed (logged).
fn close_inherited(vm_dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let lock = std::fs::metadata(vm_dir.join(crate::process::VMM_LOCK))
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list /proc/self/fd: inherited descriptors stay open");
            return;
        }
    };
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        let keep = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .ok()
            .is_some_and(|m| Some((m.dev(), m.ino())) == lock);
        if !keep {
            // SAFETY: closes a descriptor this process inherited and does
            // not use (the directory listing's own descriptor is already
            // closed, so at worst this is EBADF).
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_grows_with_the_machine_and_leaves_room() {
        let small = nofile_limit(1, 0);
        let big = nofile_limit(64, 8);
        assert!(small >= 256, "{small}");
        assert!(big > small);
        // A full machine's descriptors, twice (reboot), fit with the
        // connection allowance to spare.
        assert!(big >= 2 * (64 + 3 * 8) + 8 + 256, "{big}");
        assert!(
            big < 1024,
            "{big}: still below the usual default soft limit"
        );
    }
}
