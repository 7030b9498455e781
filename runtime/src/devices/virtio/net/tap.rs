//! The host side of a vmctl NIC: a descriptor on an existing, persistent TAP
//! interface (docs/networking.md, "The TAP contract").
//!
//! The control plane creates the TAP (`ip tuntap add dev NAME mode tap user
//! UID`) and enslaves it to its network's bridge; the VMM only attaches to
//! it. Attaching is `open("/dev/net/tun")` plus `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. For an existing TAP the kernel
//! (drivers/net/tun.c, `tun_set_iff`/`tun_not_capable`) allows that without
//! CAP_NET_ADMIN when the caller's effective uid is the TAP's owner (or its
//! egid the TAP's group), and also when the TAP has neither owner nor group —
//! which is why the control plane must always set an owner. The lookup is in
//! the network namespace the VMM opened `/dev/net/tun` in, so the VMM must
//! run in the namespace of its TAP.
//!
//! `TUNSETIFF` on a name that does not exist creates a new, non-persistent
//! TAP when the caller has CAP_NET_ADMIN. The VMM must never do that (a TAP
//! on no bridge, gone when the VMM exits, would hide a wiring bug), so after
//! attaching it asks `TUNGETIFF` and refuses a TAP without `IFF_PERSIST`.
//!
//! `TUNSETVNETHDRSZ` sets the per-frame header to the 12-byte
//! `virtio_net_hdr_v1` the guest uses, so frames move between the TAP and
//! the guest's buffers without re-framing. No `TUNSETOFFLOAD` is ever issued:
//! the kernel then hands us only whole, checksummed frames.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// The clone device every TAP is opened through.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

/// Frame I/O on the host side: the TAP in production, a socketpair in unit
/// tests. Each call moves one whole frame, vnet header first.
pub trait TapIo: Send {
    /// Read one frame into `buf`; `ErrorKind::WouldBlock` when none waits.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Write one frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize>;
}

impl TapIo for File {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.write(frame)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "TAP name {0:?} is not a Linux interface name (1 to {MAX_NAME_LEN} bytes, no '/', ':', whitespace or NUL)"
    )]
    Name(String),
    #[error("opening {TUN_DEVICE}: {0}")]
    OpenTun(#[source] std::io::Error),
    #[error(
        "attaching to TAP {name:?}: {source}{hint}",
        hint = if source.raw_os_error() == Some(libc::EPERM) {
            " (the TAP must exist in this network namespace and be owned by this user: `ip tuntap add dev NAME mode tap user UID`)"
        } else {
            ""
        }
    )]
    Attach {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "TAP {0:?} does not exist in this network namespace; the control plane creates persistent TAPs, the VMM only attaches to them"
    )]
    Missing(String),
    #[error("configuring TAP {name:?} ({what}): {source}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// True for a name Linux accepts for an interface.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// Attach to the existing persistent TAP `name`: a non-blocking, close-on-exec
/// descriptor whose frames carry a 12-byte virtio-net header.
pub fn open(name: &str) -> Result<File, TapError> {
    if !valid_name(name) {
        return Err(TapError::Name(name.into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(TapError::OpenTun)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads (and may write back) one ifreq, which lives
    // for the call; the descriptor is ours.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } != 0 {
        return Err(TapError::Attach {
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: as above; TUNGETIFF fills the ifreq.
    let mut got: libc::ifreq = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut got) } != 0 {
        return Err(configure(name, "TUNGETIFF"));
    }
    // SAFETY: TUNGETIFF wrote the flags member of the union.
    let flags = i32::from(unsafe { got.ifr_ifru.ifru_flags });
    if flags & libc::IFF_PERSIST == 0 {
        // We just created it (the caller has CAP_NET_ADMIN); closing `file`
        // removes it again.
        return Err(TapError::Missing(name.into()));
    }
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int that lives for the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } != 0 {
        return Err(configure(name, "TUNSETVNETHDRSZ"));
    }
    Ok(file)
}

fn configure(name: &str, what: &'static str) -> TapError {
    TapError::Configure {
        name: name.into(),
        what,
        source: std::io::Error::last_os_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_any_system_call() {
        for good in ["tap0", "vt-0123456789ab", "a"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "sixteen-bytes-xx",
            "nul\0",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(matches!(open(bad), Err(TapError::Name(_))));
        }
    }
}
