//! A stopped VM's files from one host to another, for `vmctl move`: the
//! coordinator pipes `ssh FROM vmctl __send-vm` into `ssh TO vmctl
//! __receive-vm`. Only the data extents of each disk cross (sparse), and
//! the receiver checks each disk's block digest against the sender's
//! before the VM appears on its host at all.
//!
//! The stream: one JSON header line ([`Header`]), then per disk in header
//! order frames of `u64 LE offset, u64 LE length, bytes`, ended by a frame
//! of length 0. It is input from another machine: every offset and length
//! is checked against the declared disk size, names against path tricks.
//!
//! The receiver writes into `<state>/incoming/<name>` and renames it to
//! `<state>/vms/<name>` only when every disk is complete, verified and
//! synced: a VM dir on the new host is always whole. Its fencing token is
//! checked first, like any host-rpc change.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Files of a VM directory that travel besides its disks.
const RECORD: &str = "vm.json";
const HOST_KEY: &str = "ssh_host_key";
/// The largest frame accepted (the sender uses 1 MiB).
const MAX_FRAME: u64 = 8 << 20;
const CHUNK: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("the stream is malformed: {0}")]
    Stream(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TransferError {
    let what = what.into();
    move |source| TransferError::Io { what, source }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub format_version: String,
    pub name: String,
    /// `vm.json`, as it is.
    pub record: String,
    /// The guest's pinned ssh host key, if any.
    #[serde(default)]
    pub host_key: Option<String>,
    pub disks: Vec<DiskHeader>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DiskHeader {
    /// The file name under `disks/` (`root.raw`).
    pub file: String,
    pub size: u64,
    /// `vmctl_runtime::sparse::block_digest` of the whole file.
    pub digest: String,
}

/// A name that is one plain path component.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255
}

fn vm_dir(state: &Path, name: &str) -> PathBuf {
    state.join("vms").join(name)
}

/// Write VM `name` of `state` (stopped) to `out`.
pub fn send(state: &Path, name: &str, out: &mut impl Write) -> Result<(), TransferError> {
    if !plain(name) {
        return Err(TransferError::Refused(format!("{name:?} is not a VM name")));
    }
    let dir = vm_dir(state, name);
    let record = std::fs::read_to_string(dir.join(RECORD))
        .map_err(io_err(format!("reading {}", dir.join(RECORD).display())))?;
    let spec: serde_json::Value = serde_json::from_str(&record)
        .map_err(|e| TransferError::Refused(format!("{name}'s vm.json: {e}")))?;
    let external = spec["spec"]["disks"]
        .as_array()
        .is_some_and(|d| d.iter().any(|d| !d["path"].is_null()));
    if external {
        return Err(TransferError::Refused(format!(
            "{name} has a disk at a path of its own (`path=`): move copies only disks in the state directory"
        )));
    }
    let host_key = std::fs::read_to_string(dir.join(HOST_KEY)).ok();
    let disk_dir = dir.join("disks");
    let mut files: Vec<String> = match std::fs::read_dir(&disk_dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|f| f.ends_with(".raw"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(format!("listing {}", disk_dir.display()))(e)),
    };
    files.sort();
    let mut disks = Vec::new();
    for f in &files {
        let path = disk_dir.join(f);
        let size = std::fs::metadata(&path)
            .map_err(io_err(format!("{}", path.display())))?
            .len();
        let digest = vmctl_runtime::sparse::block_digest(&path)
            .map_err(io_err(format!("digest of {}", path.display())))?;
        disks.push(DiskHeader {
            file: f.clone(),
            size,
            digest,
        });
    }
    let header = Header {
        format_version: "1".into(),
        name: name.to_string(),
        record,
        host_key,
        disks,
    };
    let line = serde_json::to_string(&header)
        .map_err(|e| TransferError::Stream(format!("header: {e}")))?;
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .map_err(io_err("writing the header"))?;
    let mut buf = vec![0u8; CHUNK as usize];
    for d in &header.disks {
        let path = disk_dir.join(&d.file);
        let f = File::open(&path).map_err(io_err(format!("{}", path.display())))?;
        let mut pos = 0;
        while let Some((start, end)) = vmctl_runtime::sparse::next_extent(&f, pos, d.size)
            .map_err(io_err(format!("extents of {}", path.display())))?
        {
            let mut at = start;
            while at < end {
                let n = (end - at).min(CHUNK);
                let chunk = &mut buf[..n as usize];
                f.read_exact_at(chunk, at)
                    .map_err(io_err(format!("reading {}", path.display())))?;
                out.write_all(&at.to_le_bytes())
                    .and_then(|()| out.write_all(&n.to_le_bytes()))
                    .and_then(|()| out.write_all(chunk))
                    .map_err(io_err("writing the stream"))?;
                at += n;
            }
            pos = end;
            if pos >= d.size {
                break;
            }
        }
        out.write_all(&0u64.to_le_bytes())
            .and_then(|()| out.write_all(&0u64.to_le_bytes()))
            .map_err(io_err("writing the stream"))?;
    }
    out.flush().map_err(io_err("writing the stream"))
}

fn read_u64(input: &mut impl Read) -> Result<u64, TransferError> {
    let mut b = [0u8; 8];
    input
        .read_exact(&mut b)
        .map_err(|e| TransferError::Stream(format!("truncated: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

fn sync_dir(dir: &Path) -> Result<(), TransferError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", dir.display())))
}

/// Read a VM from `input` into `state` as `name`: refused if `name` is
/// already there; the VM appears (renamed into `vms/`) only when whole.
pub fn receive(state: &Path, name: &str, input: impl Read) -> Result<(), TransferError> {
    if !plain(name) {
        return Err(TransferError::Refused(format!("{name:?} is not a VM name")));
    }
    let target = vm_dir(state, name);
    if target.exists() {
        return Err(TransferError::Refused(format!(
            "this host already has a VM {name} ({})",
            target.display()
        )));
    }
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    (&mut input)
        .take(16 << 20)
        .read_until(b'\n', &mut line)
        .map_err(io_err("reading the header"))?;
    let header: Header =
        serde_json::from_slice(&line).map_err(|e| TransferError::Stream(format!("header: {e}")))?;
    if header.format_version != "1" || header.name != name {
        return Err(TransferError::Stream(format!(
            "a stream of {:?} (format {}), not of {name}",
            header.name, header.format_version
        )));
    }
    let incoming = state.join("incoming").join(name);
    // A transfer that died half-way left this; it never became a VM.
    let _ = std::fs::remove_dir_all(&incoming);
    let disks = incoming.join("disks");
    std::fs::create_dir_all(&disks).map_err(io_err(format!("{}", disks.display())))?;
    std::fs::write(incoming.join(RECORD), &header.record).map_err(io_err("writing vm.json"))?;
    if let Some(k) = &header.host_key {
        std::fs::write(incoming.join(HOST_KEY), k).map_err(io_err("writing ssh_host_key"))?;
    }
    let mut buf = Vec::new();
    for d in &header.disks {
        if !plain(&d.file) || !d.file.ends_with(".raw") {
            return Err(TransferError::Stream(format!("disk file {:?}", d.file)));
        }
        let path = disks.join(&d.file);
        let f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("{}", path.display())))?;
        f.set_len(d.size)
            .map_err(io_err(format!("sizing {}", path.display())))?;
        loop {
            let at = read_u64(&mut input)?;
            let n = read_u64(&mut input)?;
            if n == 0 {
                break;
            }
            let end = at
                .checked_add(n)
                .filter(|&e| e <= d.size && n <= MAX_FRAME)
                .ok_or_else(|| {
                    TransferError::Stream(format!(
                        "a frame at {at} of {n} bytes in {}, which has {} bytes",
                        d.file, d.size
                    ))
                })?;
            buf.resize(n as usize, 0);
            input
                .read_exact(&mut buf)
                .map_err(|e| TransferError::Stream(format!("truncated in {}: {e}", d.file)))?;
            f.write_all_at(&buf, at)
                .map_err(io_err(format!("writing {}", path.display())))?;
            debug_assert!(end <= d.size);
        }
        f.sync_all()
            .map_err(io_err(format!("syncing {}", path.display())))?;
        let got = vmctl_runtime::sparse::block_digest(&path)
            .map_err(io_err(format!("digest of {}", path.display())))?;
        if got != d.digest {
            return Err(TransferError::Refused(format!(
                "{} arrived with digest {got}, sent as {}",
                d.file, d.digest
            )));
        }
    }
    sync_dir(&disks)?;
    sync_dir(&incoming)?;
    let vms = state.join("vms");
    std::fs::create_dir_all(&vms).map_err(io_err(format!("{}", vms.display())))?;
    std::fs::rename(&incoming, &target)
        .map_err(io_err(format!("moving {} into place", incoming.display())))?;
    sync_dir(&vms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(state: &Path, name: &str, disk: &[(u64, &[u8])], size: u64) {
        let dir = vm_dir(state, name);
        std::fs::create_dir_all(dir.join("disks")).unwrap();
        std::fs::write(
            dir.join(RECORD),
            format!("{{\"spec\":{{\"name\":\"{name}\",\"disks\":[{{\"name\":\"data\",\"path\":null}}]}}}}"),
        )
        .unwrap();
        std::fs::write(dir.join(HOST_KEY), "ssh-ed25519 AAAA\n").unwrap();
        let f = File::create(dir.join("disks/data.raw")).unwrap();
        f.set_len(size).unwrap();
        for (at, bytes) in disk {
            f.write_all_at(bytes, *at).unwrap();
        }
    }

    #[test]
    fn a_vm_crosses_whole_and_sparse() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let size = 64 << 20;
        vm(
            a.path(),
            "db",
            &[(0, b"boot"), (40 << 20, &[7u8; 5000])],
            size,
        );
        let mut stream = Vec::new();
        send(a.path(), "db", &mut stream).unwrap();
        // Sparse: the stream is the header plus little more than the data.
        assert!(stream.len() < 1 << 20, "{} bytes", stream.len());
        receive(b.path(), "db", &stream[..]).unwrap();
        let (from, to) = (
            a.path().join("vms/db/disks/data.raw"),
            b.path().join("vms/db/disks/data.raw"),
        );
        assert_eq!(std::fs::metadata(&to).unwrap().len(), size);
        assert_eq!(
            vmctl_runtime::sparse::block_digest(&from).unwrap(),
            vmctl_runtime::sparse::block_digest(&to).unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(b.path().join("vms/db/ssh_host_key")).unwrap(),
            "ssh-ed25519 AAAA\n"
        );
        assert!(!b.path().join("incoming/db").exists());
        // Twice: refused, the first copy untouched.
        let e = receive(b.path(), "db", &stream[..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has a VM db"), "{e}");
    }

    #[test]
    fn a_broken_stream_never_becomes_a_vm() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        vm(a.path(), "db", &[(4096, b"data")], 1 << 20);
        let mut stream = Vec::new();
        send(a.path(), "db", &mut stream).unwrap();
        // Truncated.
        let cut = &stream[..stream.len() - 12];
        assert!(receive(b.path(), "db", cut).is_err());
        assert!(!b.path().join("vms/db").exists());
        // A frame past the disk's end.
        let header_end = stream.iter().position(|&c| c == b'\n').unwrap() + 1;
        let mut evil = stream[..header_end].to_vec();
        evil.extend_from_slice(&(1u64 << 20).to_le_bytes());
        evil.extend_from_slice(&4u64.to_le_bytes());
        evil.extend_from_slice(b"evil");
        let e = receive(b.path(), "db", &evil[..]).unwrap_err().to_string();
        assert!(e.contains("which has 1048576 bytes"), "{e}");
        assert!(!b.path().join("vms/db").exists());
        // A flipped data byte fails the digest.
        let mut flipped = stream.clone();
        let i = flipped[header_end..]
            .windows(4)
            .position(|w| w == b"data")
            .unwrap();
        flipped[header_end + i] ^= 1;
        let e = receive(b.path(), "db", &flipped[..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("digest"), "{e}");
        assert!(!b.path().join("vms/db").exists());
        // Names that are paths.
        assert!(receive(b.path(), "../x", &stream[..]).is_err());
        assert!(send(a.path(), "..", &mut Vec::new()).is_err());
    }
}
