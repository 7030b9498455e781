//! Parsing and executing one virtio-blk request (virtio 1.2, 5.2.6).
//!
//! A request is a descriptor chain: a 16-byte device-readable header
//! (`type: u32, reserved: u32, sector: u64`), data descriptors (device-writable
//! for IN and GET_ID, device-readable for OUT), and a 1-byte device-writable
//! status as the last descriptor. Every part is checked: descriptor
//! direction, header length, the data range against the capacity (with
//! overflow checks) and every guest address against guest memory. A chain
//! with a usable status descriptor gets OK / IOERR / UNSUPP; one without
//! gets no status, and either way it goes back to the used ring.

use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::FileExt;

use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress};

use super::{ID_BYTES, SECTOR_SIZE};
use crate::GuestMemory;

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
pub const HEADER_LEN: u32 = 16;

/// Longest chain we look at (an indirect table may list 65535 descriptors).
const MAX_DESCRIPTORS: usize = 1024;
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
enum Failure {
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
/// device-writable descriptors (data + status), for the used ring.
pub fn handle<M>(disk: &Disk<'_>, mem: &GuestMemory, chain: DescriptorChain<M>) -> u32
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let descs: Vec<Descriptor> = chain.take(MAX_DESCRIPTORS + 1).collect();
    if descs.len() > MAX_DESCRIPTORS {
        tracing::warn!("virtio-blk: descriptor chain too long, dropped");
        return 0;
    }
    let Some((status_desc, rest)) = descs.split_last() else {
        return 0;
    };
    if !status_desc.is_write_only() || status_desc.len() < 1 {
        tracing::warn!("virtio-blk: request without a writable status byte");
        return 0;
    }
    let (status, written) = match execute(disk, mem, rest) {
        Ok(n) => (S_OK, n),
        Err(f) => (f.status(), 0),
    };
    if mem.write_obj(status, status_desc.addr()).is_err() {
        tracing::warn!("virtio-blk: status byte outside guest memory");
        return 0;
    }
    written.saturating_add(1)
}

struct Header {
    kind: u32,
    sector: u64,
}

fn read_header(mem: &GuestMemory, descs: &[Descriptor]) -> Result<Header, Failure> {
    let d = descs.first().ok_or(Failure::IoErr)?;
    if d.is_write_only() || d.len() < HEADER_LEN {
        return Err(Failure::IoErr);
    }
    let mut h = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut h, d.addr())
        .map_err(|_| Failure::IoErr)?;
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&h[8..16]);
    Ok(Header {
        kind,
        sector: u64::from_le_bytes(sector),
    })
}

fn in_memory(mem: &GuestMemory, d: &Descriptor) -> bool {
    usize::try_from(d.len())
        .is_ok_and(|len| vm_memory::GuestMemoryBackend::check_range(mem, d.addr(), len))
}

/// Checks the data descriptors' direction and memory, and the byte range
/// `[sector * 512, + total)` against the capacity; returns the byte offset
/// and a copy buffer big enough for one step.
fn data_range(
    disk: &Disk<'_>,
    mem: &GuestMemory,
    sector: u64,
    data: &[Descriptor],
    device_writes: bool,
) -> Result<(u64, Vec<u8>), Failure> {
    let mut total: u64 = 0;
    for d in data {
        if d.is_write_only() != device_writes || !in_memory(mem, d) {
            return Err(Failure::IoErr);
        }
        total += u64::from(d.len());
    }
    if !total.is_multiple_of(SECTOR_SIZE) {
        return Err(Failure::IoErr);
    }
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Failure::IoErr)?;
    let end = offset.checked_add(total).ok_or(Failure::IoErr)?;
    if end > disk.capacity_bytes {
        return Err(Failure::IoErr);
    }
    let buf_len = usize::try_from(total).map_or(CHUNK, |t| t.min(CHUNK));
    Ok((offset, vec![0u8; buf_len]))
}

fn execute(disk: &Disk<'_>, mem: &GuestMemory, descs: &[Descriptor]) -> Result<u32, Failure> {
    let header = read_header(mem, descs)?;
    let data = descs.get(1..).unwrap_or(&[]);
    match header.kind {
        T_IN => {
            let (mut offset, mut buf) = data_range(disk, mem, header.sector, data, true)?;
            let mut written: u32 = 0;
            for d in data {
                copy_file_to_guest(disk.file, offset, mem, d.addr(), d.len(), &mut buf)?;
                offset += u64::from(d.len());
                written = written.saturating_add(d.len());
            }
            Ok(written)
        }
        T_OUT => {
            if disk.read_only {
                return Err(Failure::IoErr);
            }
            let (mut offset, mut buf) = data_range(disk, mem, header.sector, data, false)?;
            for d in data {
                copy_guest_to_file(mem, d.addr(), d.len(), disk.file, offset, &mut buf)?;
                offset += u64::from(d.len());
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
            let d = data.first().ok_or(Failure::IoErr)?;
            if !d.is_write_only() {
                return Err(Failure::IoErr);
            }
            let n = (d.len() as usize).min(ID_BYTES);
            mem.write_slice(&disk.id[..n], d.addr())
                .map_err(|_| Failure::IoErr)?;
            Ok(n as u32)
        }
        other => {
            tracing::debug!(kind = other, "virtio-blk: unsupported request");
            Err(Failure::Unsupported)
        }
    }
}

fn copy_file_to_guest(
    file: &File,
    mut offset: u64,
    mem: &GuestMemory,
    mut addr: GuestAddress,
    len: u32,
    buf: &mut [u8],
) -> Result<(), Failure> {
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(buf.len());
        if n == 0 {
            return Err(Failure::IoErr);
        }
        let chunk = &mut buf[..n];
        read_at_zero_fill(file, chunk, offset)?;
        mem.write_slice(chunk, addr).map_err(|_| Failure::IoErr)?;
        left -= n;
        offset += n as u64;
        addr = addr.checked_add(n as u64).ok_or(Failure::IoErr)?;
    }
    Ok(())
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
    mut addr: GuestAddress,
    len: u32,
    file: &File,
    mut offset: u64,
    buf: &mut [u8],
) -> Result<(), Failure> {
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(buf.len());
        if n == 0 {
            return Err(Failure::IoErr);
        }
        let chunk = &mut buf[..n];
        mem.read_slice(chunk, addr).map_err(|_| Failure::IoErr)?;
        file.write_all_at(chunk, offset).map_err(|e| {
            tracing::warn!(error = %e, offset, "virtio-blk: write failed");
            Failure::IoErr
        })?;
        left -= n;
        offset += n as u64;
        addr = addr.checked_add(n as u64).ok_or(Failure::IoErr)?;
    }
    Ok(())
}
