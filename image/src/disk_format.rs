//! Disk images a `disk source=` imports, in formats other than raw (qcow2,
//! vdi, vmdk, vhd, vhdx, parallels): which format a file is, how big a disk
//! it holds, and its conversion to the raw file the VMM serves.
//!
//! It exists because the VMM only serves raw files and must not link or run
//! image tools: the control plane (this crate, plugged into the runtime by
//! the CLI's `OsProvider`) detects and converts; the runtime only places the
//! result atomically (docs/disks.md).
//!
//! The format is the declared `source-format`, or else detected here, by our
//! own header checks ([`sniff_bytes`]: one function per format), never by
//! qemu-img's probing: every qemu-img call gets `-f FORMAT`. A file no check
//! recognises is raw. Images are hostile input: every header field read is
//! bounds-checked, and an image that would make qemu-img read another host
//! file (a backing file, a vmdk extent outside the image's folder) is
//! refused.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use vmctl_spec::model::SourceFormat;

/// What an image to import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    pub format: SourceFormat,
    /// The size of the disk it holds (bytes), which becomes the raw file's.
    pub virtual_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: is a directory, not a disk image")]
    Directory { path: PathBuf },
    #[error("{path}: not a regular file (a disk image to import must be one)")]
    NotAFile { path: PathBuf },
    #[error(
        "{path}: importing a {format} image needs qemu-img, which was not found \
         (Debian: apt-get install qemu-utils)"
    )]
    NoQemuImg { path: PathBuf, format: SourceFormat },
    #[error("{path}: not a valid {format} image: {detail}")]
    Corrupt {
        path: PathBuf,
        format: SourceFormat,
        detail: String,
    },
    #[error("{path}: {format} image refused: {why}")]
    Refused {
        path: PathBuf,
        format: SourceFormat,
        why: String,
    },
    #[error("{path}: writing it as a {format} image failed: {detail}")]
    Export {
        path: PathBuf,
        format: SourceFormat,
        detail: String,
    },
    #[error("{path}: converting the {format} image to raw failed: {detail}")]
    Convert {
        path: PathBuf,
        format: SourceFormat,
        detail: String,
    },
}

/// How many bytes of the start and the end of a file the checks look at.
pub const SNIFF_LEN: usize = 512;

/// qcow2: `QFI\xfb`, then a big-endian version 2 or 3.
pub fn is_qcow2(head: &[u8]) -> bool {
    head.get(0..4) == Some(b"QFI\xfb")
        && head
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .is_some_and(|v| v == 2 || v == 3)
}

/// VirtualBox VDI: a text line starting `<<< ` in the first 0x40 bytes and
/// the signature 0xbeda107f (little-endian) at 0x40.
pub fn is_vdi(head: &[u8]) -> bool {
    head.get(0..4) == Some(b"<<< ")
        && head
            .get(0x40..0x44)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            == Some(0xbeda_107f)
}

/// VMware VMDK: a sparse extent (`KDMV`, little-endian version 1 to 3) or a
/// text descriptor.
pub fn is_vmdk(head: &[u8]) -> bool {
    let sparse = head.get(0..4) == Some(b"KDMV")
        && head
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .is_some_and(|v| (1..=3).contains(&v));
    sparse || head.starts_with(b"# Disk DescriptorFile")
}

/// Microsoft VHDX: `vhdxfile` at 0.
pub fn is_vhdx(head: &[u8]) -> bool {
    head.starts_with(b"vhdxfile")
}

/// Microsoft VHD (qemu's `vpc`): the `conectix` footer in the last 512 (or,
/// in old images, 511) bytes; dynamic and differencing images also have a
/// copy at 0. `tail` is the file's last bytes (up to [`SNIFF_LEN`]).
pub fn is_vhd(head: &[u8], tail: &[u8]) -> bool {
    let at_end = |n: usize| {
        tail.len()
            .checked_sub(n)
            .and_then(|start| tail.get(start..start + 8))
            == Some(b"conectix")
    };
    head.starts_with(b"conectix") || at_end(512) || at_end(511)
}

/// Parallels: `WithoutFreeSpace` or `WithouFreSpacExt` at 0.
pub fn is_parallels(head: &[u8]) -> bool {
    head.starts_with(b"WithoutFreeSpace") || head.starts_with(b"WithouFreSpacExt")
}

/// The format of a file whose first bytes are `head` and last bytes `tail`
/// (each up to [`SNIFF_LEN`]); raw when no check matches.
pub fn sniff_bytes(head: &[u8], tail: &[u8]) -> SourceFormat {
    if is_qcow2(head) {
        SourceFormat::Qcow2
    } else if is_vdi(head) {
        SourceFormat::Vdi
    } else if is_vmdk(head) {
        SourceFormat::Vmdk
    } else if is_vhdx(head) {
        SourceFormat::Vhdx
    } else if is_parallels(head) {
        SourceFormat::Parallels
    } else if is_vhd(head, tail) {
        SourceFormat::Vhd
    } else {
        SourceFormat::Raw
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskImageError + '_ {
    move |source| DiskImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The format of the file at `path`, by [`sniff_bytes`].
pub fn sniff(path: &Path) -> Result<SourceFormat, DiskImageError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut f)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io(path))?;
    let tail_len = len.min(SNIFF_LEN as u64);
    f.seek(SeekFrom::Start(len - tail_len)).map_err(io(path))?;
    let mut tail = Vec::with_capacity(SNIFF_LEN);
    f.take(tail_len).read_to_end(&mut tail).map_err(io(path))?;
    Ok(sniff_bytes(&head, &tail))
}

/// A regular file (symlinks followed; a loop is an error naming it).
fn regular_file(path: &Path) -> Result<u64, DiskImageError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_dir() {
        return Err(DiskImageError::Directory {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_file() {
        return Err(DiskImageError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(meta.len())
}

/// What `path` is: its format (`declared`, or sniffed) and the size of the
/// disk it holds. A non-raw image is also checked (`qemu-img check`) so a
/// corrupt or truncated one is refused before anything is created.
pub fn inspect(path: &Path, declared: Option<SourceFormat>) -> Result<Inspected, DiskImageError> {
    let len = regular_file(path)?;
    // Absolute, so qemu-img never takes it for a `json:` or protocol name.
    let path = &std::path::absolute(path).map_err(io(path))?;
    let format = match declared {
        Some(f) => f,
        None => sniff(path)?,
    };
    if format == SourceFormat::Raw {
        return Ok(Inspected {
            format,
            virtual_size: len,
        });
    }
    let out = qemu_img(path, format, &["info", "--output=json"])?;
    if !out.status.success() {
        return Err(DiskImageError::Corrupt {
            path: path.clone(),
            format,
            detail: stderr_line(&out.stderr),
        });
    }
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| DiskImageError::Corrupt {
            path: path.clone(),
            format,
            detail: format!("qemu-img info gave no JSON: {e}"),
        })?;
    let virtual_size = info_virtual_size(&info).ok_or_else(|| DiskImageError::Corrupt {
        path: path.clone(),
        format,
        detail: "qemu-img info gave no virtual size".into(),
    })?;
    if let Some(why) = reads_other_files(&info, path) {
        return Err(DiskImageError::Refused {
            path: path.clone(),
            format,
            why,
        });
    }
    let out = qemu_img(path, format, &["check"])?;
    // 0: clean; 3: leaked clusters (data intact); 63: the format has no check.
    if !matches!(out.status.code(), Some(0 | 3 | 63)) {
        let detail = match stderr_line(&out.stderr) {
            s if s.is_empty() => stderr_line(&out.stdout),
            s => s,
        };
        return Err(DiskImageError::Corrupt {
            path: path.clone(),
            format,
            detail: format!("qemu-img check: {detail}"),
        });
    }
    Ok(Inspected {
        format,
        virtual_size,
    })
}

fn info_virtual_size(info: &serde_json::Value) -> Option<u64> {
    info.get("virtual-size")?.as_u64()
}

/// Why qemu-img would read a file other than `path` for this image: a
/// backing file, or (vmdk) an extent outside `path`'s folder. Such an image
/// could copy any host file into the guest's disk.
fn reads_other_files(info: &serde_json::Value, path: &Path) -> Option<String> {
    for key in ["backing-filename", "full-backing-filename"] {
        if let Some(b) = info.get(key).and_then(|v| v.as_str()) {
            return Some(format!(
                "it has a backing file ({b}); import a standalone image \
                 (qemu-img convert merges the chain)"
            ));
        }
    }
    let dir = path.parent()?;
    let extents = info
        .get("format-specific")
        .and_then(|f| f.get("data"))
        .and_then(|d| d.get("extents"))
        .and_then(|e| e.as_array());
    for e in extents.into_iter().flatten() {
        let Some(name) = e.get("filename").and_then(|v| v.as_str()) else {
            continue;
        };
        let p = Path::new(name);
        let inside = p.is_absolute()
            && p.parent() == Some(dir)
            && !p.components().any(|c| c == std::path::Component::ParentDir);
        if !inside {
            return Some(format!(
                "its extent {name} is not a file beside it in {}",
                dir.display()
            ));
        }
    }
    None
}

/// Create (or truncate) `abs` empty with mode 0600 — before qemu-img writes
/// any guest data into it. A file left by an earlier attempt keeps its
/// mode, so it is set as well. `shown` names it in errors.
fn private_empty(abs: &Path, shown: &Path) -> Result<(), DiskImageError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(abs)
        .map_err(io(shown))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(shown))
}

/// Convert `path` (a non-raw image, as [`inspect`]ed) to a sparse raw file
/// at `to`, created (or truncated) with mode 0600 before any guest data is
/// written. The caller fsyncs and renames it into place.
pub fn convert_to_raw(path: &Path, image: &Inspected, to: &Path) -> Result<(), DiskImageError> {
    let path = &std::path::absolute(path).map_err(io(path))?;
    let to_abs = std::path::absolute(to).map_err(io(to))?;
    private_empty(&to_abs, to)?;
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", image.format.qemu_name(), "-O", "raw"])
        .args(["-S", "4k"])
        .arg(path)
        .arg(&to_abs)
        .output()
        .map_err(|e| qemu_missing(e, path, image.format))?;
    if !out.status.success() {
        return Err(DiskImageError::Convert {
            path: path.clone(),
            format: image.format,
            detail: stderr_line(&out.stderr),
        });
    }
    let len = std::fs::metadata(&to_abs).map_err(io(to))?.len();
    if len != image.virtual_size {
        return Err(DiskImageError::Convert {
            path: path.clone(),
            format: image.format,
            detail: format!(
                "the raw result is {len} bytes, not the {} qemu-img info reported",
                image.virtual_size
            ),
        });
    }
    Ok(())
}

/// The `qemu-img convert -O` options an export in `format` uses: VHD
/// needs `force_size=on` or qemu rounds the size to a CHS geometry (the
/// disk would not be the size it was); the other formats use qemu's
/// default subformat (vmdk monolithicSparse, vdi/vhdx dynamic, qcow2 v3),
/// all growable, so a sparse disk stays small.
pub fn export_options(format: SourceFormat) -> &'static [&'static str] {
    match format {
        SourceFormat::Vhd => &["-o", "subformat=dynamic,force_size=on"],
        _ => &[],
    }
}

/// Write the raw disk file `raw` as an image in `format` at `to` (created
/// 0600 first; the caller syncs it). Raw is copied sparsely.
pub fn convert_from_raw(raw: &Path, format: SourceFormat, to: &Path) -> Result<(), DiskImageError> {
    regular_file(raw)?;
    let raw = &std::path::absolute(raw).map_err(io(raw))?;
    let to_abs = std::path::absolute(to).map_err(io(to))?;
    private_empty(&to_abs, to)?;
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", format.qemu_name()])
        .args(export_options(format))
        .args(["-S", "4k"])
        .arg(raw)
        .arg(&to_abs)
        .output()
        .map_err(|e| qemu_missing(e, raw, format))?;
    if !out.status.success() {
        return Err(DiskImageError::Export {
            path: raw.clone(),
            format,
            detail: stderr_line(&out.stderr),
        });
    }
    Ok(())
}

fn qemu_img(
    path: &Path,
    format: SourceFormat,
    args: &[&str],
) -> Result<std::process::Output, DiskImageError> {
    Command::new("qemu-img")
        .args(args)
        .args(["-f", format.qemu_name()])
        .arg(path)
        .output()
        .map_err(|e| qemu_missing(e, path, format))
}

fn qemu_missing(e: std::io::Error, path: &Path, format: SourceFormat) -> DiskImageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DiskImageError::NoQemuImg {
            path: path.to_path_buf(),
            format,
        }
    } else {
        DiskImageError::Io {
            path: PathBuf::from("qemu-img"),
            source: e,
        }
    }
}

/// qemu-img's message, on one line (its last non-empty ones joined).
fn stderr_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(prefix: &[u8], len: usize) -> Vec<u8> {
        let mut v = prefix.to_vec();
        v.resize(len.max(prefix.len()), 0);
        v
    }

    #[test]
    fn qcow2_needs_magic_and_a_known_version() {
        let mut h = with(b"QFI\xfb\0\0\0\x03", 512);
        assert!(is_qcow2(&h));
        h[7] = 2;
        assert!(is_qcow2(&h));
        h[7] = 9;
        assert!(!is_qcow2(&h), "unknown version");
        assert!(!is_qcow2(b"QFI\xfb"), "truncated before the version");
        assert!(!is_qcow2(b"QF"));
        assert!(!is_qcow2(b""));
        // A huge size field (offset 24) changes nothing here: the size comes
        // from qemu-img and is checked against the declared one.
        let mut huge = with(b"QFI\xfb\0\0\0\x03", 512);
        huge[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(sniff_bytes(&huge, &[]), SourceFormat::Qcow2);
    }

    #[test]
    fn vdi_needs_text_and_signature() {
        let mut h = with(b"<<< Oracle VM VirtualBox Disk Image >>>\n", 512);
        h[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert!(is_vdi(&h));
        assert!(!is_vdi(&h[..0x43]), "truncated inside the signature");
        let mut bad = h.clone();
        bad[0x40] ^= 1;
        assert!(!is_vdi(&bad));
        let mut no_text = h.clone();
        no_text[0] = b'x';
        assert!(!is_vdi(&no_text));
    }

    #[test]
    fn vmdk_sparse_or_descriptor() {
        let mut h = with(b"KDMV\x01\0\0\0", 512);
        assert!(is_vmdk(&h));
        h[4] = 0;
        assert!(!is_vmdk(&h), "version 0");
        h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!is_vmdk(&h), "huge version");
        assert!(!is_vmdk(b"KDMV"), "truncated");
        assert!(is_vmdk(b"# Disk DescriptorFile\nversion=1\n"));
        assert!(!is_vmdk(b"# Disk Descriptor"));
    }

    #[test]
    fn vhdx_and_parallels_magics() {
        assert!(is_vhdx(&with(b"vhdxfile", 512)));
        assert!(!is_vhdx(b"vhdxfil"));
        assert!(is_parallels(&with(b"WithoutFreeSpace", 64)));
        assert!(is_parallels(&with(b"WithouFreSpacExt", 64)));
        assert!(!is_parallels(b"WithoutFree"));
        assert_eq!(
            sniff_bytes(&with(b"vhdxfile", 512), &[]),
            SourceFormat::Vhdx
        );
        assert_eq!(
            sniff_bytes(&with(b"WithouFreSpacExt", 512), &[]),
            SourceFormat::Parallels
        );
    }

    #[test]
    fn vhd_footer_at_the_end_or_a_copy_at_the_start() {
        let mut tail = vec![0u8; 512];
        tail[..8].copy_from_slice(b"conectix");
        assert!(is_vhd(&[0; 512], &tail), "fixed: footer only");
        let mut old = vec![0u8; 512];
        old[1..9].copy_from_slice(b"conectix");
        assert!(is_vhd(&[0; 512], &old), "511-byte footer");
        assert!(is_vhd(&with(b"conectix", 512), &[]), "dynamic: copy at 0");
        assert!(!is_vhd(&[0; 512], &[0; 512]));
        assert!(!is_vhd(&[], b"conecti"), "a tail shorter than a footer");
        assert!(!is_vhd(&[], &[]));
        assert_eq!(sniff_bytes(&[0; 512], &tail), SourceFormat::Vhd);
    }

    #[test]
    fn anything_else_is_raw() {
        assert_eq!(sniff_bytes(&[], &[]), SourceFormat::Raw);
        assert_eq!(sniff_bytes(&[0; 512], &[0; 512]), SourceFormat::Raw);
        let mbr = with(&[0xeb, 0x63, 0x90], 512);
        assert_eq!(sniff_bytes(&mbr, &mbr), SourceFormat::Raw);
    }

    #[test]
    fn sniff_reads_short_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(sniff(&empty).unwrap(), SourceFormat::Raw);
        let short = dir.path().join("short");
        std::fs::write(&short, b"QFI").unwrap();
        assert_eq!(sniff(&short).unwrap(), SourceFormat::Raw, "truncated magic");
        let vhd = dir.path().join("fixed.vhd");
        let mut bytes = vec![7u8; 4096];
        bytes[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        std::fs::write(&vhd, &bytes).unwrap();
        assert_eq!(sniff(&vhd).unwrap(), SourceFormat::Vhd);
    }

    #[test]
    fn directories_and_symlink_loops_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = inspect(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let err = inspect(&a, None).unwrap_err().to_string();
        assert!(err.contains(&a.display().to_string()), "{err}");
    }

    #[test]
    fn raw_needs_no_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, vec![1u8; 3000]).unwrap();
        let got = inspect(&raw, None).unwrap();
        assert_eq!(got.format, SourceFormat::Raw);
        assert_eq!(got.virtual_size, 3000);
    }

    #[test]
    fn backing_files_and_outside_extents_are_refused() {
        let p = Path::new("/imgs/a.vmdk");
        let info = serde_json::json!({"virtual-size": 1, "backing-filename": "/etc/shadow"});
        assert!(reads_other_files(&info, p).is_some());
        let inside = serde_json::json!({"format-specific": {"data": {"extents": [
            {"filename": "/imgs/a-flat.vmdk"}]}}});
        assert_eq!(reads_other_files(&inside, p), None);
        for name in ["/dev/sda", "/imgs/../etc/x", "a-flat.vmdk"] {
            let outside = serde_json::json!({"format-specific": {"data": {"extents": [
                {"filename": name}]}}});
            assert!(reads_other_files(&outside, p).is_some(), "{name}");
        }
        assert_eq!(
            info_virtual_size(&serde_json::json!({"virtual-size": -1})),
            None
        );
    }
}
