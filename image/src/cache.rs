//! The image cache: `<state-dir>/images/<id>/{vmlinuz,initrd.img,rootfs.ext4,manifest.json}`,
//! content-addressed. `<id>` is the sha256 of the kernel and initrd digests
//! (and, for an image with a root filesystem, of its exact package set), so
//! two labs that pin the same image share one directory and a changed byte
//! can never hide under an old name. Entries appear atomically (built in a
//! temporary directory, then renamed); readers verify the kernel and initrd
//! digests, and the root filesystem's length (its full digest is checked
//! when it is stored: hashing hundreds of MiB on every apply would cost
//! seconds).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lock::LockedPackage;
use super::{ImageError, digest};

pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const ROOTFS_FILE: &str = "rootfs.ext4";

/// What `manifest.json` records about a cached image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: String,
    /// The OS name it implements (`debian-12`).
    pub name: String,
    pub id: String,
    pub recipe: u32,
    /// `uname -r` of its kernel.
    pub kernel_version: String,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    /// The kernel command line the image is meant to boot with.
    pub cmdline: String,
    pub packages: Vec<LockedPackage>,
    /// Kernel modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// The variant's lock key (`debian-12+nginx`); empty in manifests of
    /// older vmctl, meaning `name`.
    #[serde(default)]
    pub variant: String,
    /// The root filesystem's digest and length, for images that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_bytes: Option<u64>,
}

impl Manifest {
    pub fn variant_key(&self) -> String {
        if self.variant.is_empty() {
            self.name.clone()
        } else {
            self.variant.clone()
        }
    }
}

/// A cached image as `vmctl image list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedImage {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// Bytes used by its files.
    pub size_bytes: u64,
}

/// The cache key of a kernel + initrd pair.
pub fn image_id(kernel_sha256: &str, initrd_sha256: &str) -> String {
    digest::sha256_hex(format!("{kernel_sha256}\n{initrd_sha256}\n").as_bytes())
}

/// The cache key of an image with a root filesystem: its kernel, initrd,
/// exact package set (name, version, `.deb` digest of each) and `vmctl_files`,
/// the digest of what vmctl itself puts into the root filesystem (the
/// agent, the configuration service, the recipe's version). Without the
/// last, an image built by a vmctl with another agent had the same id and
/// the cache kept serving the old root filesystem.
pub fn image_id_with_packages(
    kernel_sha256: &str,
    initrd_sha256: &str,
    packages: &[LockedPackage],
    vmctl_files: &str,
) -> String {
    let mut text = format!("{kernel_sha256}\n{initrd_sha256}\n{vmctl_files}\n");
    for p in packages {
        text.push_str(&format!("{} {} {}\n", p.name, p.version, p.sha256));
    }
    digest::sha256_hex(text.as_bytes())
}

/// Bytes a file really occupies (sparse files count their data only).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

pub fn images_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn read_manifest(dir: &Path) -> Result<Manifest, ImageError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ImageError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ImageError::BadCache {
        path,
        detail: e.to_string(),
    })
}

/// Every complete image in the cache (half-written or foreign entries are skipped).
pub fn list(state_dir: &Path) -> Result<Vec<CachedImage>, ImageError> {
    let dir = images_dir(state_dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io(&dir, e)),
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if !valid_id(&name) {
            continue;
        }
        let path = ent.path();
        match read_manifest(&path) {
            Ok(manifest) if manifest.id == name => {
                let size_bytes = [KERNEL_FILE, INITRD_FILE, MANIFEST_FILE, ROOTFS_FILE]
                    .iter()
                    .map(|f| allocated(&path.join(f)))
                    .sum();
                out.push(CachedImage {
                    manifest,
                    dir: path,
                    size_bytes,
                });
            }
            Ok(_) => {
                tracing::warn!(dir = %path.display(), "image manifest id does not match its directory; skipped")
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "unreadable image; skipped")
            }
        }
    }
    out.sort_by(|a, b| {
        a.manifest
            .name
            .cmp(&b.manifest.name)
            .then(a.manifest.id.cmp(&b.manifest.id))
    });
    Ok(out)
}

/// The cached image `id`, if present and its files still have the digests
/// its manifest records.
pub fn lookup(state_dir: &Path, id: &str) -> Result<Option<CachedImage>, ImageError> {
    if !valid_id(id) {
        return Ok(None);
    }
    let dir = images_dir(state_dir).join(id);
    if !dir.join(MANIFEST_FILE).is_file() {
        return Ok(None);
    }
    let manifest = read_manifest(&dir)?;
    let kernel = digest::sha256_file(&dir.join(KERNEL_FILE))?;
    let initrd = digest::sha256_file(&dir.join(INITRD_FILE))?;
    let rootfs_ok = match manifest.rootfs_bytes {
        Some(len) => std::fs::metadata(dir.join(ROOTFS_FILE)).is_ok_and(|m| m.len() == len),
        None => true,
    };
    if manifest.id != id
        || kernel != manifest.kernel_sha256
        || initrd != manifest.initrd_sha256
        || !rootfs_ok
    {
        return Err(ImageError::BadCache {
            path: dir,
            detail: "its files do not match the digests in manifest.json; remove it with `vmctl image rm` and rebuild".into(),
        });
    }
    let size_bytes = [KERNEL_FILE, INITRD_FILE, MANIFEST_FILE, ROOTFS_FILE]
        .iter()
        .map(|f| allocated(&dir.join(f)))
        .sum();
    Ok(Some(CachedImage {
        manifest,
        dir,
        size_bytes,
    }))
}

/// Move a freshly built image (a directory holding the kernel and initrd)
/// into the cache under its id, writing its manifest. Already cached: keeps
/// the existing copy.
pub fn store(
    state_dir: &Path,
    built_dir: &Path,
    manifest: &Manifest,
) -> Result<PathBuf, ImageError> {
    let dest = images_dir(state_dir).join(&manifest.id);
    let text = serde_json::to_string_pretty(manifest).map_err(|e| ImageError::BadCache {
        path: dest.clone(),
        detail: e.to_string(),
    })?;
    super::write_atomic(
        &built_dir.join(MANIFEST_FILE),
        format!("{text}\n").as_bytes(),
    )?;
    if dest.join(MANIFEST_FILE).is_file() {
        return Ok(dest);
    }
    if dest.exists() {
        // A leftover without a manifest: never complete, replace it.
        std::fs::remove_dir_all(&dest).map_err(|e| ImageError::io(&dest, e))?;
    }
    std::fs::rename(built_dir, &dest).map_err(|e| ImageError::io(&dest, e))?;
    Ok(dest)
}

/// Remove the image whose id is or starts with `id_prefix` (unique prefix).
pub fn remove(state_dir: &Path, id_prefix: &str) -> Result<CachedImage, ImageError> {
    let matches: Vec<CachedImage> = list(state_dir)?
        .into_iter()
        .filter(|i| !id_prefix.is_empty() && i.manifest.id.starts_with(id_prefix))
        .collect();
    match matches.len() {
        0 => Err(ImageError::NotCached(id_prefix.to_string())),
        1 => {
            let img = matches
                .into_iter()
                .next()
                .ok_or_else(|| ImageError::NotCached(id_prefix.to_string()))?;
            std::fs::remove_dir_all(&img.dir).map_err(|e| ImageError::io(&img.dir, e))?;
            Ok(img)
        }
        n => Err(ImageError::Ambiguous {
            prefix: id_prefix.to_string(),
            count: n,
        }),
    }
}

#[cfg(test)]
mod tests {

    /// Two builds with the same kernel, initrd and packages but different
    /// vmctl files (another agent) are different images.
    #[test]
    fn the_id_covers_vmctl_s_own_files() {
        let a = image_id_with_packages("k", "i", &[], "agent-1");
        assert_ne!(a, image_id_with_packages("k", "i", &[], "agent-2"));
        assert_eq!(a, image_id_with_packages("k", "i", &[], "agent-1"));
    }

    use super::*;

    fn fake(state: &Path, kernel: &[u8], initrd: &[u8]) -> Manifest {
        let build = images_dir(state).join(".build-test");
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(build.join(KERNEL_FILE), kernel).unwrap();
        std::fs::write(build.join(INITRD_FILE), initrd).unwrap();
        let k = digest::sha256_hex(kernel);
        let i = digest::sha256_hex(initrd);
        let m = Manifest {
            format_version: "1".into(),
            name: "debian-12".into(),
            id: image_id(&k, &i),
            recipe: 1,
            kernel_version: "6.1.0-test".into(),
            kernel_sha256: k,
            initrd_sha256: i,
            cmdline: "console=ttyS0".into(),
            packages: vec![],
            modules: vec!["virtio.ko".into()],
            variant: String::new(),
            rootfs_sha256: None,
            rootfs_bytes: None,
        };
        store(state, &build, &m).unwrap();
        m
    }

    #[test]
    fn store_list_lookup_remove() {
        let dir = tempfile::tempdir().unwrap();
        let m = fake(dir.path(), b"kernel", b"initrd");
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].manifest, m);
        assert!(lookup(dir.path(), &m.id).unwrap().is_some());
        assert!(lookup(dir.path(), "nope").unwrap().is_none());
        let removed = remove(dir.path(), &m.id[..8]).unwrap();
        assert_eq!(removed.manifest.id, m.id);
        assert!(list(dir.path()).unwrap().is_empty());
        assert!(matches!(
            remove(dir.path(), "ab"),
            Err(ImageError::NotCached(_))
        ));
    }

    #[test]
    fn tampered_files_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let m = fake(dir.path(), b"kernel", b"initrd");
        std::fs::write(
            images_dir(dir.path()).join(&m.id).join(INITRD_FILE),
            b"evil",
        )
        .unwrap();
        assert!(matches!(
            lookup(dir.path(), &m.id),
            Err(ImageError::BadCache { .. })
        ));
    }
}
