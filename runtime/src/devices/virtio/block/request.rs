//! Parsing and executing one virtio-blk request (virtio 1.2, 5.2.6).
//!
//! A request is a descriptor chain whose device-readable bytes are a 16-byte
//! header (`type: u32, reserved: u32, sector: u64`) followed, for OUT, by the
//! data, and whose device-writable bytes are, for IN and GET_ID, the data
//! followed by a 1-byte status (the very last byte of the chain). Framing is
//! free, as VIRTIO_F_VERSION_1 demands ("the device MUST NOT make assumptions
//! about the particular arrangement of descriptors"): the header may share a
//! descriptor with OUT data or be split, the status may share a descriptor
//! with IN data. Linux uses header / data... / status descriptors.
//!
//! Every part is checked: readable descriptors must precede writable ones,
//! every descriptor must lie in guest memory, the data range is checked
//! against the capacity with overflow checks, and an IN carries no extra
//! readable data, an OUT no writable data besides the status. A chain whose
//! last byte is writable gets OK / IOERR / UNSUPP there; one without gets no
//! status; either way it goes back to the used ring.

use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::FileExt;

use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress};

use super::{ID_BYTES, SECTOR_SIZE};
use crate::GuestMemory;
pub use crate::devices::virtio::chain::MAX_DESCRIPTORS;
pub(crate) use crate::devices::virtio::chain::{Seg, descriptors};
use crate::devices::virtio::chain::{in_memory, split, total};

/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

/// Status values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Length of the request header.
pub const HEADER_LEN: u64 = 16;

/// Bytes copied between the file and guest memory per step.
const CHUNK: usize = 64 * 1024;

/// What a request needs from the device.
pub struct Disk<'a> {
    pub file: &'a File,
    pub capacity_bytes: u64,
    pub read_only: bool,
    pub id: &'a [u8; ID_BYTES],
}

/// Why a request failed; becomes its status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    IoErr,
    Unsupported,
}

impl Failure {
    fn status(self) -> u8 {
        match self {
            Failure::IoErr => S_IOERR,
            Failure::Unsupported => S_UNSUPP,
        }
    }
}

/// Handle one chain; returns the number of bytes written into its
/// device-writable buffers (data + status), for the used ring.
pub fn handle<M>(disk: &Disk<'_>, mem: &GuestMemory, chain: DescriptorChain<M>) -> u32
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let Some(descs) = descriptors(chain) else {
        tracing::warn!("virtio-blk: descriptor chain too long, dropped");
        return 0;
    };
    // The status is the last byte of the last descriptor, which must be
    // device-writable and in guest memory.
    let Some(last) = descs.iter().rev().find(|d| d.len() > 0) else {
        return 0;
    };
    let status_addr = last.addr().checked_add(u64::from(last.len()) - 1);
    let Some(status_addr) = status_addr.filter(|_| last.is_write_only() && in_memory(mem, last))
    else {
        tracing::warn!("virtio-blk: request without a writable status byte");
        return 0;
    };
    let (status, written) = match parse(mem, &descs).and_then(|(r, w)| execute(disk, mem, &r, &w)) {
        Ok(n) => (S_OK, n),
        Err(f) => (f.status(), 0),
    };
    if mem.write_obj(status, status_addr).is_err() {
        return 0;
    }
    written.saturating_add(1)
}

/// The readable bytes and the writable bytes minus the trailing status byte.
pub(crate) fn parse(
    mem: &GuestMemory,
    descs: &[Descriptor],
) -> Result<(Vec<Seg>, Vec<Seg>), Failure> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for d in descs.iter().filter(|d| d.len() > 0) {
        if !in_memory(mem, d) {
            return Err(Failure::IoErr);
        }
        let seg = Seg {
            addr: d.addr(),
            len: u64::from(d.len()),
        };
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            // Readable after writable: the spec forbids it.
            return Err(Failure::IoErr);
        }
    }
    let data_len = total(&writable).saturating_sub(1);
    let (data, _status) = split(&writable, data_len);
    Ok((readable, data))
}

struct Header {
    kind: u32,
    sector: u64,
}

fn read_header(mem: &GuestMemory, segs: &[Seg]) -> Result<Header, Failure> {
    let mut h = [0u8; HEADER_LEN as usize];
    let mut at = 0usize;
    for s in segs {
        let n = s.len as usize; // <= HEADER_LEN: segs is the header split
        let dst = h.get_mut(at..at + n).ok_or(Failure::IoErr)?;
        mem.read_slice(dst, s.addr).map_err(|_| Failure::IoErr)?;
        at += n;
    }
    if at != h.len() {
        return Err(Failure::IoErr);
    }
    let mut kind = [0u8; 4];
    kind.copy_from_slice(&h[0..4]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&h[8..16]);
    Ok(Header {
        kind: u32::from_le_bytes(kind),
        sector: u64::from_le_bytes(sector),
    })
}

/// Checks `[sector * 512, + total(data))` against the capacity; returns the
/// byte offset and a copy buffer big enough for one step.
fn data_range(disk: &Disk<'_>, sector: u64, data: &[Seg]) -> Result<(u64, Vec<u8>), Failure> {
    let len = total(data);
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Failure::IoErr);
    }
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Failure::IoErr)?;
    let end = offset.checked_add(len).ok_or(Failure::IoErr)?;
    if end > disk.capacity_bytes {
        return Err(Failure::IoErr);
    }
    let buf_len = usize::try_from(len).map_or(CHUNK, |t| t.min(CHUNK));
    Ok((offset, vec![0u8; buf_len]))
}

fn execute(
    disk: &Disk<'_>,
    mem: &GuestMemory,
    readable: &[Seg],
    writable: &[Seg],
) -> Result<u32, Failure> {
    if total(readable) < HEADER_LEN {
        return Err(Failure::IoErr);
    }
    let (header, out_data) = split(readable, HEADER_LEN);
    let header = read_header(mem, &header)?;
    match header.kind {
        T_IN => {
            if !out_data.is_empty() {
                return Err(Failure::IoErr);
            }
            let (mut offset, mut buf) = data_range(disk, header.sector, writable)?;
            for s in writable {
                copy_file_to_guest(disk.file, offset, mem, *s, &mut buf)?;
                offset += s.len;
            }
            u32::try_from(total(writable)).map_err(|_| Failure::IoErr)
        }
        T_OUT => {
            if disk.read_only || !writable.is_empty() {
                return Err(Failure::IoErr);
            }
            let (mut offset, mut buf) = data_range(disk, header.sector, &out_data)?;
            for s in &out_data {
                copy_guest_to_file(mem, *s, disk.file, offset, &mut buf)?;
                offset += s.len;
            }
            Ok(0)
        }
        T_FLUSH => {
            if !disk.read_only {
                disk.file.sync_data().map_err(|e| {
                    tracing::warn!(error = %e, "virtio-blk: flush failed");
                    Failure::IoErr
                })?;
            }
            Ok(0)
        }
        T_GET_ID => {
            if writable.is_empty() {
                return Err(Failure::IoErr);
            }
            let (id_segs, _) = split(writable, ID_BYTES as u64);
            let mut at = 0usize;
            for s in &id_segs {
                let n = s.len as usize; // <= ID_BYTES
                let src = disk.id.get(at..at + n).ok_or(Failure::IoErr)?;
                mem.write_slice(src, s.addr).map_err(|_| Failure::IoErr)?;
                at += n;
            }
            Ok(at as u32)
        }
        other => {
            tracing::debug!(kind = other, "virtio-blk: unsupported request");
            Err(Failure::Unsupported)
        }
    }
}

/// Walk `seg` in chunks of at most `buf.len()` bytes, calling `step` with
/// each chunk's buffer, guest address and file offset. Every address and
/// offset step is overflow-checked (the segment comes from the guest).
fn for_each_chunk(
    seg: Seg,
    mut offset: u64,
    buf: &mut [u8],
    mut step: impl FnMut(&mut [u8], GuestAddress, u64) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut left = seg.len;
    let mut addr = seg.addr;
    while left > 0 {
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        if n == 0 {
            return Err(Failure::IoErr);
        }
        step(&mut buf[..n], addr, offset)?;
        left -= n as u64;
        offset = offset.checked_add(n as u64).ok_or(Failure::IoErr)?;
        addr = addr.checked_add(n as u64).ok_or(Failure::IoErr)?;
    }
    Ok(())
}

fn copy_file_to_guest(
    file: &File,
    offset: u64,
    mem: &GuestMemory,
    seg: Seg,
    buf: &mut [u8],
) -> Result<(), Failure> {
    for_each_chunk(seg, offset, buf, |chunk, addr, offset| {
        read_at_zero_fill(file, chunk, offset)?;
        mem.write_slice(chunk, addr).map_err(|_| Failure::IoErr)
    })
}

/// Read `buf.len()` bytes at `offset`; bytes past the end of the file (a
/// capacity set before the file grew) read as zeros.
fn read_at_zero_fill(file: &File, buf: &mut [u8], offset: u64) -> Result<(), Failure> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, offset, "virtio-blk: read failed");
                return Err(Failure::IoErr);
            }
        }
    }
    Ok(())
}

fn copy_guest_to_file(
    mem: &GuestMemory,
    seg: Seg,
    file: &File,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Failure> {
    for_each_chunk(seg, offset, buf, |chunk, addr, offset| {
        mem.read_slice(chunk, addr).map_err(|_| Failure::IoErr)?;
        file.write_all_at(chunk, offset).map_err(|e| {
            tracing::warn!(error = %e, offset, "virtio-blk: write failed");
            Failure::IoErr
        })
    })
}
