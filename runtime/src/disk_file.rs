//! The rules every disk file obeys (issue 14, "Disk safety"), shared by the
//! control plane (create, start) and the VMM (opening a disk):
//!
//! * a disk's file is a regular file, or does not exist yet (vmctl creates
//!   it). Directories, block and character devices, FIFOs, sockets and
//!   paths that do not resolve (a symlink loop) are refused with the path in
//!   the message. Block devices are refused outright: vmctl sizes, grows,
//!   moves and deletes disk files, none of which is safe on a device;
//! * the VMM holds an exclusive open-file-description lock
//!   (`fcntl(F_OFD_SETLK)`, a write lock on the whole file, as QEMU takes)
//!   on every disk it opens, for as long as it runs. A second VMM — or QEMU,
//!   which takes the same kind of lock — that opens the same file fails
//!   instead of writing the disk under the first one's feet.
//!
//! OFD locks belong to the open file description, not the process: a
//! `dup` (`File::try_clone`) shares the lock, a second `open` of the same
//! file in the same process conflicts with it. `F_OFD_GETLK` reports
//! `l_pid = -1` for them, so who holds a lock cannot be learnt from the
//! kernel; the control plane names the holder when it is a VM of the same
//! state directory ([`crate::Runtime::start`]), and says "another process"
//! otherwise.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DiskFileError {
    #[error(
        "disk file {path} is {kind}, not a regular file: a disk's path must be a regular file or not exist yet (block devices are not supported)"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("disk file {path}: {source}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "disk file {path} is locked by another process (another VM's VMM, or a program such as QEMU, has it open); two VMs never share a disk"
    )]
    Locked { path: PathBuf },
    #[error("locking disk file {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a non-regular file is, for the message.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// `Ok` when `path` is a regular file (symlinks followed) or does not exist.
pub fn check_path(path: &Path) -> Result<(), DiskFileError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(DiskFileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(m.file_type()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling symlink would be created through; refuse it
            // rather than write somewhere the user did not name.
            match std::fs::symlink_metadata(path) {
                Ok(_) => Err(DiskFileError::Inspect {
                    path: path.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        "a symlink whose target does not exist",
                    ),
                }),
                Err(_) => Ok(()),
            }
        }
        Err(source) => Err(DiskFileError::Inspect {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `Ok` when the opened `file` is a regular file (checked on the descriptor:
/// no race with a rename between [`check_path`] and the open).
pub fn check_open(file: &File, path: &Path) -> Result<(), DiskFileError> {
    let m = file.metadata().map_err(|source| DiskFileError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    if m.is_file() {
        Ok(())
    } else {
        Err(DiskFileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(m.file_type()),
        })
    }
}

fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // to the end, however the file grows
    fl
}

/// Take the disk's lock on `file`: exclusive (a write lock) when `write`,
/// shared otherwise (a read-only disk may be shared by readers, never with
/// a writer). Never waits: a lock held elsewhere is [`DiskFileError::Locked`].
pub fn lock(file: &File, path: &Path, write: bool) -> Result<(), DiskFileError> {
    let fl = whole_file(if write { libc::F_WRLCK } else { libc::F_RDLCK });
    // SAFETY: a valid descriptor and a valid flock for the call's duration.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(DiskFileError::Locked {
            path: path.to_path_buf(),
        }),
        _ => Err(DiskFileError::Lock {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Whether someone (another open file description) holds a lock on `path`
/// that conflicts with a writer. A missing file is not locked.
pub fn is_locked(path: &Path) -> Result<bool, DiskFileError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(DiskFileError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    check_open(&file, path)?;
    let mut fl = whole_file(libc::F_WRLCK);
    // SAFETY: a valid descriptor and a valid, writable flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(DiskFileError::Lock {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    #[test]
    fn only_regular_files_or_nothing_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("d.raw");
        check_path(&file).unwrap();
        std::fs::write(&file, b"").unwrap();
        check_path(&file).unwrap();
        let e = check_path(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("is a directory") && e.contains(&tmp.path().display().to_string()),
            "{e}"
        );
        let e = check_path(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("character device"), "{e}");
        let fifo = tmp.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(check_path(&fifo).unwrap_err().to_string().contains("FIFO"));
        let looped = tmp.path().join("loop");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        assert!(check_path(&looped).is_err(), "a symlink loop");
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        assert!(check_path(&dangling).is_err(), "a dangling symlink");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        check_path(&link).unwrap();
    }

    #[test]
    fn a_second_open_of_a_locked_disk_is_refused_and_a_dup_shares_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d.raw");
        let a = rw(&path);
        assert!(!is_locked(&path).unwrap());
        lock(&a, &path, true).unwrap();
        assert!(is_locked(&path).unwrap());
        // Another open file description, even in this process, conflicts.
        let b = rw(&path);
        let e = lock(&b, &path, true).unwrap_err();
        assert!(matches!(e, DiskFileError::Locked { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()));
        assert!(matches!(
            lock(&b, &path, false),
            Err(DiskFileError::Locked { .. })
        ));
        // A dup is the same description: it holds the lock already.
        let dup = a.try_clone().unwrap();
        lock(&dup, &path, true).unwrap();
        drop(a);
        assert!(is_locked(&path).unwrap(), "the dup keeps it");
        drop(dup);
        assert!(
            !is_locked(&path).unwrap(),
            "released with the last descriptor"
        );
        lock(&b, &path, true).unwrap();
    }
}
