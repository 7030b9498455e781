//! What the fuzz targets share (docs/fuzzing.md): a byte reader for their
//! input formats, the guest memory they run against (two regions with a hole
//! between them, so "inside guest memory" is not one range check), a disk
//! whose file is longer than the capacity the guest is given (bytes past
//! the capacity are a marker that must never move), and the encoders that
//! build the seed corpora from real requests (`examples/make_seeds.rs`).
//!
//! Every target's input is an explicit little-endian layout, not
//! `arbitrary`'s, so seeds can be written by hand from real requests.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmctl_runtime::GuestMemory;
use vmctl_runtime::devices::virtio::block::Block;

/// Little-endian reader over a fuzz input; past the end everything reads 0.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.data.len());
        b[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        b
    }

    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Guest memory: `[0, LOW_SIZE)` and `[HIGH_BASE, HIGH_BASE + HIGH_SIZE)`.
pub const LOW_SIZE: usize = 0xc000;
pub const HIGH_BASE: u64 = 0x10000;
pub const HIGH_SIZE: usize = 0x4000;

/// Guest memory with `image` at address 0 (cut to the low region).
pub fn guest_memory(image: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[
        (GuestAddress(0), LOW_SIZE),
        (GuestAddress(HIGH_BASE), HIGH_SIZE),
    ])
    .expect("fixed, valid ranges");
    let n = image.len().min(LOW_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("the image fits the low region");
    mem
}

/// Whether `[addr, addr + len)` lies in guest memory.
pub fn in_memory(mem: &GuestMemory, addr: u64, len: u64) -> bool {
    usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len))
}

/// All of guest memory, regions concatenated.
pub fn dump(mem: &GuestMemory) -> Vec<u8> {
    let mut low = vec![0u8; LOW_SIZE];
    let mut high = vec![0u8; HIGH_SIZE];
    mem.read_slice(&mut low, GuestAddress(0))
        .expect("low region");
    mem.read_slice(&mut high, GuestAddress(HIGH_BASE))
        .expect("high region");
    low.extend_from_slice(&high);
    low
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A queue of `size` with its rings at the given addresses, made ready the
/// way the transport does (None where the transport would refuse it).
pub fn ready_queue(size: u16, desc: u64, avail: u64, used: u64, event_idx: bool) -> Option<Queue> {
    let mut q = Queue::new(32768).ok()?;
    q.try_set_size(size).ok()?;
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    Some(q)
}

/// Where the virtio-net target puts its TX queue's rings: `ring_layout`
/// shifted by this (the RX queue's are at 0; a 256-entry layout ends below
/// 0x2000).
pub const TX_RINGS: u64 = 0x6000;

/// Where the rings of a queue of `size` live in the virtio-blk and MMIO
/// targets: descriptor table at 0, then the available and the used ring.
pub fn ring_layout(size: u16) -> (u64, u64, u64) {
    let size = u64::from(size);
    let desc = 0;
    let avail = 16 * size;
    let used = (avail + 6 + 2 * size + 3) & !3;
    (desc, avail, used)
}

/// First address after the rings of a queue of `size` (64-byte aligned).
pub fn after_rings(size: u16) -> u64 {
    let (_, _, used) = ring_layout(size);
    (used + 6 + 8 * u64::from(size) + 63) & !63
}

/// The capacity the guest sees, and the disk file's real length: the bytes
/// in between are [`MARKER`]s.
pub const DISK_CAPACITY: u64 = 16 * 512;
pub const DISK_FILE_LEN: u64 = DISK_CAPACITY + 4096;
/// What the disk file holds past the capacity, 32 bytes repeated.
pub const MARKER: &[u8; 32] = b"#vmctl-fuzz beyond capacity 1A#\n";

/// The disk file's expected content before a run: a counting pattern
/// inside the capacity, markers past it.
pub fn disk_content() -> Vec<u8> {
    let mut v: Vec<u8> = (0..DISK_CAPACITY).map(|i| (i % 251) as u8).collect();
    while (v.len() as u64) < DISK_FILE_LEN {
        v.extend_from_slice(MARKER);
    }
    v
}

/// The disk behind the virtio-blk targets: one unlinked temporary file per
/// process, opened by `Block` through /proc/self/fd, rewritten before each run.
pub struct DiskFixture {
    file: File,
    path: PathBuf,
}

impl DiskFixture {
    pub fn get() -> &'static DiskFixture {
        static FIXTURE: OnceLock<DiskFixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let dir = ["/dev/shm"]
                .iter()
                .map(PathBuf::from)
                .find(|d| d.is_dir())
                .unwrap_or_else(std::env::temp_dir);
            let name = dir.join(format!("vmctl-fuzz-disk-{}", std::process::id()));
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&name)
                .expect("create the fuzz disk");
            std::fs::remove_file(&name).expect("unlink the fuzz disk");
            let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            DiskFixture { file, path }
        })
    }

    /// A fresh `Block` over the rewritten file, capacity [`DISK_CAPACITY`].
    pub fn block(&self, read_only: bool) -> Block {
        self.file
            .set_len(DISK_FILE_LEN)
            .expect("size the fuzz disk");
        self.file
            .write_all_at(&disk_content(), 0)
            .expect("fill the fuzz disk");
        let mut b = Block::new(&self.path, read_only, "fuzz-disk").expect("open the fuzz disk");
        b.set_capacity(DISK_CAPACITY);
        b
    }

    /// The properties of every virtio-blk run: the file kept its length,
    /// nothing past the capacity was written, a read-only disk was not
    /// written at all, and no byte past the capacity reached guest memory
    /// (`image` is the memory before the run).
    pub fn check(&self, read_only: bool, image: &[u8], mem: &GuestMemory) {
        let len = self.file.metadata().expect("fuzz disk metadata").len();
        assert_eq!(len, DISK_FILE_LEN, "the disk file changed length");
        let mut now = vec![0u8; DISK_FILE_LEN as usize];
        self.file.read_exact_at(&mut now, 0).expect("read the disk");
        let expected = disk_content();
        let cap = DISK_CAPACITY as usize;
        assert!(
            now[cap..] == expected[cap..],
            "a write went past the disk's capacity"
        );
        if read_only {
            assert!(now == expected, "a read-only disk was written");
        }
        if !contains(image, MARKER) {
            assert!(
                !contains(&dump(mem), MARKER),
                "a read went past the disk's capacity into guest memory"
            );
        }
    }
}

/// Seed encoders: real requests in each target's input layout.
pub mod seeds {
    use super::*;

    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;
    pub const F_INDIRECT: u16 = 4;

    /// A guest memory image being laid out for a seed.
    pub struct Image(pub Vec<u8>);

    impl Image {
        pub fn new() -> Self {
            Image(Vec::new())
        }
        pub fn put(&mut self, addr: u64, bytes: &[u8]) {
            let a = addr as usize;
            if self.0.len() < a + bytes.len() {
                self.0.resize(a + bytes.len(), 0);
            }
            self.0[a..a + bytes.len()].copy_from_slice(bytes);
        }
        pub fn desc(&mut self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&next.to_le_bytes());
            self.put(table + 16 * u64::from(i), &d);
        }
        /// Available ring of `heads`, idx = heads.len().
        pub fn avail(&mut self, avail: u64, heads: &[u16]) {
            self.put(avail, &0u16.to_le_bytes());
            self.put(avail + 2, &(heads.len() as u16).to_le_bytes());
            for (i, h) in heads.iter().enumerate() {
                self.put(avail + 4 + 2 * i as u64, &h.to_le_bytes());
            }
        }
    }

    impl Default for Image {
        fn default() -> Self {
            Self::new()
        }
    }

    /// A chain `(addr, len, write)` as Linux lays it out: linked in order.
    pub fn chain(img: &mut Image, table: u64, first: u16, bufs: &[(u64, u32, bool)]) {
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = first + i as u16;
            let last = i + 1 == bufs.len();
            let mut flags = if write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            img.desc(table, idx, addr, len, flags, idx + 1);
        }
    }

    pub fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        h
    }

    pub fn write_all(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(bytes)
    }
}
