//! A VM as portable files — what `vmctl export` and `vmctl backup` write
//! and `vmctl import` and `vmctl restore` read (docs/disks.md):
//!
//! ```text
//! DIR/                 0700
//!   manifest.json      0600  written last: a bundle without it is incomplete
//!   vm.kdl             0600  the VM's resolved KDL block, no host paths
//!   <disk>.<format>    0600  each disk, raw or converted with qemu-img
//! ```
//!
//! The disks are taken with [`vmctl_runtime::Runtime::snapshot_disks`]: a
//! running VM is paused for the copy, not stopped (crash-consistent, or
//! filesystem-consistent when its guest agent froze its filesystems). A
//! bundle is hostile input when read back: every file name is checked to be
//! a plain name inside the bundle, every hash and size is verified before
//! anything is created.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmctl_runtime::Runtime;
use vmctl_spec::VmSpec;
use vmctl_spec::model::{DesiredState, SourceFormat};

/// `manifest.json`'s `format_version`.
pub const FORMAT_VERSION: &str = "1";
pub const MANIFEST: &str = "manifest.json";
pub const KDL: &str = "vm.kdl";

/// What a bundle holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: String,
    /// `export` or `backup`.
    pub kind: String,
    pub vm: String,
    pub created_unix_ms: u64,
    pub vmctl_version: String,
    /// The VM was running: its disks were copied in one pause.
    pub live: bool,
    /// How long it was paused, in microseconds.
    pub paused_us: Option<u64>,
    /// Of which: parking its vCPUs, draining and flushing its disks.
    #[serde(default)]
    pub quiesce_us: Option<u64>,
    /// `filesystem-consistent`, `crash-consistent` or `offline`
    /// (docs/disks.md, "Consistency levels"); empty in bundles written
    /// before it was recorded.
    #[serde(default)]
    pub consistency: String,
    /// The guest filesystems frozen over the pause.
    #[serde(default)]
    pub frozen: Vec<String>,
    /// Why a live copy is only crash-consistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_note: Option<String>,
    /// The KDL file beside the manifest.
    pub kdl: String,
    pub disks: Vec<BundleDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleDisk {
    pub name: String,
    /// File name inside the bundle.
    pub file: String,
    /// `raw`, `qcow2`, `vdi`, `vmdk`, `vhd`, `vhdx`.
    pub format: String,
    /// The disk's size in bytes (the raw file's length).
    pub virtual_size: u64,
    /// Digest of the raw disk contents (what the guest sees):
    /// `sha256-1mib-blocks:<hex>`, the sha256 of the sha256s of its 1 MiB
    /// blocks (vmctl_runtime::sparse::block_digest: holes cost nothing).
    pub raw_digest: String,
    /// The same digest of the file in the bundle.
    pub file_digest: String,
    /// How the raw copy was made (`reflink`, `sparse`).
    pub copied_by: String,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0}: missing: not a vmctl bundle (or an incomplete one: the manifest is written last)"
    )]
    #[diagnostic(help("a bundle is what `vmctl export` or `vmctl backup` wrote"))]
    NoManifest(PathBuf),
    #[error("{path}: not a valid bundle manifest: {detail}")]
    BadManifest { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    BadDisk { path: PathBuf, detail: String },
    #[error(
        "{path}: its digest is {actual}, the manifest says {expected}: the file is corrupt or was changed"
    )]
    #[diagnostic(help("export the VM again, or copy the bundle again from where it came from"))]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{0}: exists and is not empty; a bundle is written into a new or empty directory")]
    NotEmpty(PathBuf),
    #[error(transparent)]
    Image(#[from] vmctl_image::disk_format::DiskImageError),
    #[error(transparent)]
    Runtime(#[from] vmctl_runtime::RuntimeError),
    #[error("VM {0:?} does not exist in this state directory")]
    #[diagnostic(help("`vmctl status` lists the VMs in this state directory"))]
    NoSuchVm(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The formats a disk can be exported in.
pub const EXPORT_FORMATS: [SourceFormat; 6] = [
    SourceFormat::Raw,
    SourceFormat::Qcow2,
    SourceFormat::Vdi,
    SourceFormat::Vmdk,
    SourceFormat::Vhd,
    SourceFormat::Vhdx,
];

/// The VM's block as it travels: resolved, but nothing of this host — no
/// disk `path` or `source`, no `copy-from`, no `depends-on`, no `nic`
/// (those name files, VMs and networks that need not exist where it is
/// imported; a NIC's MAC and address belong to the lab it was in).
pub fn portable(spec: &VmSpec) -> VmSpec {
    let mut s = spec.clone();
    for d in &mut s.disks {
        d.path = None;
        d.source = None;
        d.source_format = None;
    }
    s.copy_from = None;
    s.depends_on.clear();
    s.nics.clear();
    s
}

/// `spec` (and its custom image, if any) as KDL, by the spec crate's own
/// renderer.
pub fn render(spec: &VmSpec) -> String {
    vmctl_spec::render::to_kdl(&DesiredState {
        format_version: vmctl_spec::model::FORMAT_VERSION.to_string(),
        vms: vec![spec.clone()],
        images: spec.image.iter().cloned().collect(),
        networks: Vec::new(),
        cluster: None,
        hosts: Vec::new(),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write VM `name` of `rt` as a bundle in `dir` (created 0700; must be new
/// or empty), each disk in `format`. On failure nothing of the bundle is
/// left (a directory this call created is removed).
pub fn write(
    rt: &Runtime,
    name: &str,
    dir: &Path,
    format: SourceFormat,
    kind: &str,
) -> Result<Manifest, BundleError> {
    let created = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BundleError::NotEmpty(dir.to_path_buf()));
            }
            // It becomes the bundle: the owner's alone, like a new one.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
            true
        }
        Err(e) => return Err(io(dir)(e)),
    };
    let result = write_into(rt, name, dir, format, kind);
    if result.is_err() {
        if created {
            let _ = std::fs::remove_dir_all(dir);
        } else if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    result
}

fn write_into(
    rt: &Runtime,
    name: &str,
    dir: &Path,
    format: SourceFormat,
    kind: &str,
) -> Result<Manifest, BundleError> {
    let obs = rt
        .observe(name)?
        .ok_or_else(|| BundleError::NoSuchVm(name.to_string()))?;
    let spec = obs.record.spec;
    // The raw copies: the bundle's files for raw, temporaries otherwise.
    let raw_path = |disk: &str| match format {
        SourceFormat::Raw => dir.join(format!("{disk}.raw")),
        _ => dir.join(format!(".{disk}.raw.tmp")),
    };
    let targets: Vec<(String, PathBuf)> = spec
        .disks
        .iter()
        .map(|d| (d.name.clone(), raw_path(&d.name)))
        .collect();
    let snap = rt.snapshot_disks(name, &targets)?;
    let mut disks = Vec::with_capacity(snap.disks.len());
    for copy in &snap.disks {
        let raw = &copy.to;
        let virtual_size = std::fs::metadata(raw).map_err(io(raw))?.len();
        let raw_digest = vmctl_runtime::sparse::block_digest(raw).map_err(io(raw))?;
        let file = format!("{}.{}", copy.disk, format.name());
        let path = dir.join(&file);
        let file_digest = if format == SourceFormat::Raw {
            raw_digest.clone()
        } else {
            vmctl_image::disk_format::convert_from_raw(raw, format, &path)?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(&path))?;
            std::fs::remove_file(raw).map_err(io(raw))?;
            vmctl_runtime::sparse::block_digest(&path).map_err(io(&path))?
        };
        disks.push(BundleDisk {
            name: copy.disk.clone(),
            file,
            format: format.name().to_string(),
            virtual_size,
            raw_digest,
            file_digest,
            copied_by: copy.method.as_str().to_string(),
        });
    }
    write_private(&dir.join(KDL), render(&portable(&spec)).as_bytes())?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION.to_string(),
        kind: kind.to_string(),
        vm: name.to_string(),
        created_unix_ms: now_ms(),
        vmctl_version: env!("CARGO_PKG_VERSION").to_string(),
        live: snap.live,
        paused_us: snap.paused_us,
        quiesce_us: snap.quiesce_us,
        consistency: snap.consistency.as_str().to_string(),
        frozen: snap.frozen.clone(),
        consistency_note: snap.consistency_note.clone(),
        kdl: KDL.to_string(),
        disks,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::BadManifest {
        path: dir.join(MANIFEST),
        detail: e.to_string(),
    })?;
    // Last: its presence means the bundle is complete.
    write_private(&dir.join(MANIFEST), &json)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(manifest)
}

/// A bundle read back and verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The VM as the bundle's KDL declares it.
    pub spec: VmSpec,
    /// Per manifest disk: its file (absolute) and format.
    pub files: Vec<(PathBuf, SourceFormat)>,
}

/// A file name inside the bundle: one plain component.
fn inside(dir: &Path, name: &str, manifest: &Path) -> Result<PathBuf, BundleError> {
    let p = Path::new(name);
    let plain = p.components().count() == 1
        && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
    if !plain {
        return Err(BundleError::BadManifest {
            path: manifest.to_path_buf(),
            detail: format!("file {name:?} is not a plain file name inside the bundle"),
        });
    }
    Ok(dir.join(p))
}

/// Read the bundle in `dir` and check everything before anything is
/// created: the manifest, every disk file (a regular file, its digest, its
/// format known and its image valid with the recorded size), and the KDL.
pub fn verify(dir: &Path) -> Result<Verified, BundleError> {
    let dir = std::path::absolute(dir).map_err(io(dir))?;
    let mpath = dir.join(MANIFEST);
    let bytes = match std::fs::read(&mpath) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::NoManifest(mpath));
        }
        Err(e) => return Err(io(&mpath)(e)),
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| BundleError::BadManifest {
            path: mpath.clone(),
            detail: e.to_string(),
        })?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(BundleError::BadManifest {
            path: mpath,
            detail: format!(
                "format_version {:?}; this vmctl reads {FORMAT_VERSION:?}",
                manifest.format_version
            ),
        });
    }
    let mut files = Vec::with_capacity(manifest.disks.len());
    for d in &manifest.disks {
        let path = inside(&dir, &d.file, &mpath)?;
        let format = SourceFormat::from_name(&d.format)
            .filter(|f| EXPORT_FORMATS.contains(f))
            .ok_or_else(|| BundleError::BadDisk {
                path: path.clone(),
                detail: format!(
                    "unknown disk format {:?} in the manifest (known: raw, qcow2, vdi, vmdk, vhd, vhdx)",
                    d.format
                ),
            })?;
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if !meta.is_file() {
            return Err(BundleError::BadDisk {
                path,
                detail: "not a regular file".into(),
            });
        }
        let actual = vmctl_runtime::sparse::block_digest(&path).map_err(io(&path))?;
        if actual != d.file_digest {
            return Err(BundleError::HashMismatch {
                path,
                expected: d.file_digest.clone(),
                actual,
            });
        }
        let image = vmctl_image::disk_format::inspect(&path, Some(format))?;
        if image.virtual_size != d.virtual_size {
            return Err(BundleError::BadDisk {
                path,
                detail: format!(
                    "holds a {} byte disk, the manifest says {}",
                    image.virtual_size, d.virtual_size
                ),
            });
        }
        files.push((path, format));
    }
    let kpath = inside(&dir, &manifest.kdl, &mpath)?;
    let text = std::fs::read_to_string(&kpath).map_err(io(&kpath))?;
    let loaded = vmctl_spec::parse_str(
        &kpath.display().to_string(),
        &text,
        &dir,
        vmctl_spec::host_cpus(),
    )
    .map_err(|e| BundleError::BadManifest {
        path: kpath.clone(),
        detail: format!("{:?}", miette::Report::new(e)),
    })?;
    let spec = loaded
        .state
        .vms
        .into_iter()
        .find(|v| v.name == manifest.vm)
        .ok_or_else(|| BundleError::BadManifest {
            path: kpath.clone(),
            detail: format!("declares no VM {:?}", manifest.vm),
        })?;
    for d in &manifest.disks {
        if !spec.disks.iter().any(|s| s.name == d.name) {
            return Err(BundleError::BadManifest {
                path: kpath.clone(),
                detail: format!("declares no disk {:?} (the manifest has one)", d.name),
            });
        }
    }
    Ok(Verified {
        dir,
        manifest,
        spec,
        files,
    })
}
