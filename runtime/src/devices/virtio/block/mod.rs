//! virtio-blk backed by one raw file: the device half of a vmctl disk.
//!
//! One request queue; requests are handled synchronously when the driver
//! notifies it (see the parent module). Supported requests: IN (read), OUT
//! (write), FLUSH (fsync) and GET_ID (the disk's name); everything else is
//! answered UNSUPP. Each chain is parsed by [`request`], which never trusts
//! the guest: bad chains complete with IOERR and are still returned to the
//! used ring.
//!
//! Live resize (a later step): the VMM grows the file or calls
//! [`Block::resize`], then [`super::mmio::MmioTransport::notify_config_change`].

pub mod request;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};

use super::{DEVICE_ID_BLOCK, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::GuestMemory;

/// Bytes per virtio-blk sector (fixed by the spec, whatever blk_size says).
pub const SECTOR_SIZE: u64 = 512;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (the queue minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Feature bits (virtio 1.2, 5.2.3).
pub mod features {
    pub const SEG_MAX: u32 = 2;
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
}

/// Size of the configuration space we expose: `struct virtio_blk_config` up
/// to and including `blk_size` plus the topology block (zeros).
const CONFIG_SIZE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("opening disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the size of disk image {path}: {source}")]
    Metadata {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("resizing disk image {path} to {bytes} bytes: {source}")]
    Resize {
        path: PathBuf,
        bytes: u64,
        source: std::io::Error,
    },
    #[error("disk {path} is read-only and cannot be resized")]
    ReadOnly { path: PathBuf },
    /// Not a regular file, or locked by another process
    /// ([`crate::disk_file`]).
    #[error(transparent)]
    File(#[from] crate::disk_file::DiskFileError),
}

/// A virtio-blk device over one raw image file.
pub struct Block {
    file: File,
    path: PathBuf,
    read_only: bool,
    capacity_bytes: u64,
    id: [u8; ID_BYTES],
    acked_features: u64,
    queue_sizes: [u16; 1],
}

impl Block {
    /// Open `path` (read-write unless `read_only`), check it is a regular
    /// file and take its lock ([`crate::disk_file::lock`]: exclusive for a
    /// writer), so no other VMM can open it while this device lives. `id` is
    /// what GET_ID returns (truncated to 20 bytes, NUL padded) — vmctl passes
    /// the disk's name.
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        crate::disk_file::check_open(&file, path)?;
        crate::disk_file::lock(&file, path, !read_only)?;
        Self::with_file(file, path, read_only, id)
    }

    /// A device over `file`, already opened (and locked) by [`Block::new`]
    /// — the VMM reuses a dup of it after a reboot, which shares the lock.
    pub fn with_file(
        file: File,
        path: &Path,
        read_only: bool,
        id: &str,
    ) -> Result<Self, BlockError> {
        let capacity_bytes = file
            .metadata()
            .map_err(|source| BlockError::Metadata {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let mut idb = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            read_only,
            capacity_bytes: capacity_bytes - capacity_bytes % SECTOR_SIZE,
            id: idb,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
        })
    }

    /// The capacity the guest sees, in bytes (a multiple of 512).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second descriptor for the same open file (and so the same lock).
    pub fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// `fdatasync` the backing file: what the guest wrote is durable.
    pub fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Change the capacity the guest sees (rounded down to whole sectors)
    /// without touching the file — for when the file was already resized.
    /// Follow with `MmioTransport::notify_config_change`.
    pub fn set_capacity(&mut self, bytes: u64) {
        self.capacity_bytes = bytes - bytes % SECTOR_SIZE;
        tracing::info!(path = %self.path.display(), bytes = self.capacity_bytes, "disk capacity changed");
    }

    /// Grow (or shrink) the backing file to `bytes` and update the capacity.
    /// Follow with `MmioTransport::notify_config_change`.
    pub fn resize(&mut self, bytes: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.file
            .set_len(bytes)
            .map_err(|source| BlockError::Resize {
                path: self.path.clone(),
                bytes,
                source,
            })?;
        self.set_capacity(bytes);
        Ok(())
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[0..8].copy_from_slice(&(self.capacity_bytes / SECTOR_SIZE).to_le_bytes());
        // size_max (8..12) unused: no SIZE_MAX feature.
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) unused.
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << features::FLUSH)
            | (1 << features::BLK_SIZE)
            | (1 << features::SEG_MAX);
        if self.read_only {
            f |= 1 << features::RO;
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // No writable fields without CONFIG_WCE.
        tracing::trace!(offset, len = data.len(), "virtio-blk: config write ignored");
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let disk = request::Disk {
            file: &self.file,
            capacity_bytes: self.capacity_bytes,
            read_only: self.read_only,
            id: &self.id,
        };
        let mut used_any = false;
        // Bounded: each pop consumes one available entry, and the avail
        // index only moves when the guest writes it.
        for _ in 0..u32::from(QUEUE_SIZE) * 2 {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = request::handle(&disk, mem, chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!(error = %e, "virtio-blk: cannot add to used ring");
                break;
            }
            used_any = true;
        }
        used_any
    }

    fn reset(&mut self) {
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests;
