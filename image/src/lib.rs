//! vmctl's built-in Linux OSes, built on this host from Debian's own
//! packages, cached content-addressed in `<state-dir>/images/<id>/`, and
//! pinned by the lab's lock file (`vmctl.lock`, beside the KDL file) so a lab
//! rebuilds from exactly the same packages.
//!
//! Two recipes:
//! - `debian-12` ([`debian12`]): a Debian 12 root filesystem (systemd, udev,
//!   openssh-server, the guest agent, the VM's extra `packages`) made by
//!   `mmdebstrap` and written as an ext4 file with `mke2fs -d`; booted by the
//!   cloud kernel with a small initramfs of ours that mounts it.
//! - `debian-12-minimal` ([`minimal`]): the cloud kernel with a busybox
//!   initramfs that is the whole guest (fast, tiny; no root filesystem).
//!
//! This crate is the control plane's: the runtime (and so the VMM) never
//! links it and knows nothing of apt or dpkg. The CLI asks it for a
//! [`BootImage`] and hands the runtime plain files.
//!
//! ```no_run
//! # fn main() -> Result<(), vmctl_image::ImageError> {
//! use std::path::Path;
//! let v = vmctl_image::Variant::new("debian-12", &[]);
//! let img = vmctl_image::ensure(Path::new(".vmctl"), Path::new("vmctl.lock"), &v)?;
//! // boot img.kernel with img.initrd and img.cmdline; img.rootfs is the root
//! // disk every VM of this variant starts as a copy of.
//! # let _ = img; Ok(()) }
//! ```
//!
//! With a lock entry it returns the pinned image from the cache (verifying
//! its digests), or rebuilds it from exactly the pinned package versions and
//! fails if the result differs. Without one it builds from apt's current
//! packages and writes the lock. Builds need `apt-get`, `dpkg-deb` (and, for
//! `debian-12`, `mmdebstrap` and `mke2fs`); where they are missing the error
//! names the alternative.

pub mod apt;
pub mod cache;
pub mod cpio;
pub mod debian12;
pub mod digest;
pub mod disk_format;
pub mod guest_config;
pub mod kmod;
pub mod lock;
pub mod minimal;
pub mod rootfs;
mod variant;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vmctl_spec::ImageSpec;

pub use cache::{CachedImage, Manifest};
pub use lock::{LockFile, LockedImage, LockedPackage};
pub use variant::{Recipe, Variant};

/// Everything that can go wrong finding or building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Apt(#[from] apt::AptError),
    #[error(transparent)]
    Kmod(#[from] kmod::KmodError),
    #[error("assembling the initramfs: {0}")]
    Cpio(#[from] cpio::CpioError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock file {path} is invalid: {detail}")]
    BadLock { path: PathBuf, detail: String },
    #[error("cached image {path} is invalid: {detail}")]
    BadCache { path: PathBuf, detail: String },
    #[error(
        "rebuilding the image pinned in {lock} did not reproduce it: {what} has sha256 {got}, \
         the lock pins {pinned}. Run `vmctl image build --update` to re-pin (and review the change)"
    )]
    LockMismatch {
        lock: String,
        what: String,
        pinned: String,
        got: String,
    },
    #[error(
        "{lock} pins {variant} recipe {pinned}, but this vmctl builds recipe {current}; \
         run `vmctl image build --update` to re-pin"
    )]
    RecipeChanged {
        lock: String,
        variant: String,
        pinned: u32,
        current: u32,
    },
    #[error("the image recipe failed: {0}")]
    Recipe(String),
    #[error(
        "`{tool}` is not on this host; install the Debian package {package} to build the debian-12 image (or use `os \"debian-12-minimal\"`, which needs only apt)"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed:\n{detail}")]
    Tool { command: String, detail: String },
    #[error(
        "the {variant} image is not built in this state directory; `vmctl apply` builds it \
         (or `vmctl image build`)"
    )]
    NotBuilt { variant: String },
    #[error(
        "apt cannot find the package {package:?}{context}. Check the name (`apt-cache search \
         {package}`) or remove it from `packages`"
    )]
    UnknownPackage { package: String, context: String },
    #[error("no cached image matches {0:?}")]
    NotCached(String),
    #[error("{count} cached images start with {prefix:?}; give more of the id")]
    Ambiguous { prefix: String, count: usize },
}

impl ImageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A bootable image: what a VM of a built-in Linux OS boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    /// The OS name (`debian-12`, `debian-12-minimal`).
    pub name: String,
    /// The variant's lock key (`debian-12`, `debian-12+nginx`).
    pub variant: String,
    /// Cache id.
    pub id: String,
    /// bzImage.
    pub kernel: PathBuf,
    /// gzip'd newc initramfs.
    pub initrd: PathBuf,
    pub cmdline: String,
    /// `uname -r` of the kernel.
    pub kernel_version: String,
    /// The root filesystem (ext4) every VM's root disk starts as a copy of;
    /// `None` for `debian-12-minimal`, whose initramfs is the whole guest.
    pub rootfs: Option<PathBuf>,
}

impl BootImage {
    fn from_cached(img: &CachedImage) -> Self {
        BootImage {
            name: img.manifest.name.clone(),
            variant: img.manifest.variant_key(),
            id: img.manifest.id.clone(),
            kernel: img.dir.join(cache::KERNEL_FILE),
            initrd: img.dir.join(cache::INITRD_FILE),
            cmdline: img.manifest.cmdline.clone(),
            kernel_version: img.manifest.kernel_version.clone(),
            rootfs: img
                .manifest
                .rootfs_sha256
                .as_ref()
                .map(|_| img.dir.join(cache::ROOTFS_FILE)),
        }
    }

    /// As the spec's boot image (what the runtime boots).
    pub fn to_image_spec(&self) -> ImageSpec {
        ImageSpec {
            name: self.name.clone(),
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            cmdline: self.cmdline.clone(),
        }
    }
}

/// How [`build`] treats the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Use the lock's pins when present; pin what was built when not.
    #[default]
    Honour,
    /// Ignore existing pins: build from apt's current packages and re-pin.
    Update,
}

/// The image of `variant` that the last [`ensure`]/[`build`] on this state
/// directory resolved (recorded in `images/<variant pointer>`), without
/// building anything: what a VM being started boots.
pub fn for_vm(state_dir: &Path, variant: &Variant) -> Result<BootImage, ImageError> {
    let pointer = cache::images_dir(state_dir).join(variant.pointer_file());
    let id = std::fs::read_to_string(&pointer).map_err(|_| ImageError::NotBuilt {
        variant: variant.key(),
    })?;
    match cache::lookup(state_dir, id.trim())? {
        Some(img) => Ok(BootImage::from_cached(&img)),
        None => Err(ImageError::NotBuilt {
            variant: variant.key(),
        }),
    }
}

/// The image of `variant`, built if needed. `state_dir` is vmctl's state
/// directory (the cache is `state_dir/images/`); `lock_path` is the lab's
/// `vmctl.lock` (created or updated when nothing is pinned yet). Concurrent
/// callers are serialised by a lock on the cache directory.
pub fn ensure(
    state_dir: &Path,
    lock_path: &Path,
    variant: &Variant,
) -> Result<BootImage, ImageError> {
    build(state_dir, lock_path, variant, LockMode::Honour)
}

/// [`ensure`] with a choice of lock handling (`vmctl image build --update`).
pub fn build(
    state_dir: &Path,
    lock_path: &Path,
    variant: &Variant,
    mode: LockMode,
) -> Result<BootImage, ImageError> {
    // Absolute paths: the VMM and the spec want them, whatever the caller's cwd.
    let state_dir = &std::path::absolute(state_dir).map_err(|e| ImageError::io(state_dir, e))?;
    let img = resolve(state_dir, lock_path, variant, mode)?;
    write_atomic(
        &cache::images_dir(state_dir).join(variant.pointer_file()),
        format!("{}\n", img.id).as_bytes(),
    )?;
    Ok(img)
}

/// What a recipe built, before it is stored.
pub struct Built {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Built {
    pub fn locked(&self) -> LockedImage {
        locked_from_manifest(&self.manifest)
    }
}

fn run_recipe(
    work: &Path,
    variant: &Variant,
    pinned: Option<&LockedImage>,
    lock_name: &str,
) -> Result<Built, ImageError> {
    match variant.recipe() {
        Recipe::Minimal => {
            let packages = match pinned {
                Some(pin) => pin
                    .packages
                    .iter()
                    .map(|p| (p.name.clone(), p.version.clone()))
                    .collect(),
                None => minimal::resolve_packages()?,
            };
            minimal::build(
                work,
                &packages,
                pinned.map(|p| p.packages.as_slice()),
                lock_name,
            )
        }
        Recipe::Full => debian12::build(work, variant, pinned, lock_name),
    }
}

fn resolve(
    state_dir: &Path,
    lock_path: &Path,
    variant: &Variant,
    mode: LockMode,
) -> Result<BootImage, ImageError> {
    let images = cache::images_dir(state_dir);
    std::fs::create_dir_all(&images).map_err(|e| ImageError::io(&images, e))?;
    let _guard = CacheLock::acquire(&images)?;
    let lock_name = lock_path.display().to_string();
    let key = variant.key();
    let recipe_version = variant.recipe().version();
    let mut lock = LockFile::read(lock_path)?;
    let pinned = match mode {
        LockMode::Honour => lock.images.get(&key).cloned(),
        LockMode::Update => None,
    };

    if let Some(pin) = &pinned {
        if pin.recipe != recipe_version {
            return Err(ImageError::RecipeChanged {
                lock: lock_name,
                variant: key,
                pinned: pin.recipe,
                current: recipe_version,
            });
        }
        if let Some(img) = cache::lookup(state_dir, &pin.image_id)? {
            return Ok(BootImage::from_cached(&img));
        }
        tracing::info!(id = %pin.image_id, variant = %key, "pinned image not cached; rebuilding it");
        variant.recipe().require_tools()?;
        let work = ScratchDir::new(&images)?;
        let built = run_recipe(&work.0, variant, Some(pin), &lock_name)?;
        for (what, want, got) in [
            (
                "the kernel",
                &pin.kernel_sha256,
                &built.manifest.kernel_sha256,
            ),
            (
                "the initrd",
                &pin.initrd_sha256,
                &built.manifest.initrd_sha256,
            ),
            ("the image id", &pin.image_id, &built.manifest.id),
        ] {
            if want != got {
                return Err(ImageError::LockMismatch {
                    lock: lock_name,
                    what: what.to_string(),
                    pinned: want.clone(),
                    got: got.clone(),
                });
            }
        }
        let dir = cache::store(state_dir, &built.dir, &built.manifest)?;
        return cached(state_dir, &built.manifest.id, &dir);
    }

    if mode == LockMode::Honour && variant.recipe().require_tools().is_err() {
        // No apt here, nothing pinned: a cached image of this variant (e.g.
        // built elsewhere and copied in) is the best we can do; pin it.
        if let Some(img) = cache::list(state_dir)?
            .into_iter()
            .filter(|i| i.manifest.variant_key() == key && i.manifest.recipe == recipe_version)
            .max_by_key(|i| std::fs::metadata(&i.dir).and_then(|m| m.modified()).ok())
        {
            lock.images.insert(key, locked_from_manifest(&img.manifest));
            lock.write(lock_path)?;
            return Ok(BootImage::from_cached(&img));
        }
    }
    variant.recipe().require_tools()?;
    let work = ScratchDir::new(&images)?;
    let built = run_recipe(&work.0, variant, None, &lock_name)?;
    let dir = cache::store(state_dir, &built.dir, &built.manifest)?;
    lock.images.insert(key, built.locked());
    lock.write(lock_path)?;
    cached(state_dir, &built.manifest.id, &dir)
}

fn locked_from_manifest(m: &Manifest) -> LockedImage {
    LockedImage {
        recipe: m.recipe,
        packages: m.packages.clone(),
        kernel_sha256: m.kernel_sha256.clone(),
        initrd_sha256: m.initrd_sha256.clone(),
        image_id: m.id.clone(),
        rootfs_sha256: m.rootfs_sha256.clone(),
    }
}

fn cached(state_dir: &Path, id: &str, dir: &Path) -> Result<BootImage, ImageError> {
    cache::lookup(state_dir, id)?
        .map(|img| BootImage::from_cached(&img))
        .ok_or_else(|| ImageError::BadCache {
            path: dir.to_path_buf(),
            detail: "vanished right after it was stored".into(),
        })
}

/// Every cached image.
pub fn list(state_dir: &Path) -> Result<Vec<CachedImage>, ImageError> {
    cache::list(state_dir)
}

/// Remove the cached image whose id starts with `id_prefix`.
pub fn remove(state_dir: &Path, id_prefix: &str) -> Result<CachedImage, ImageError> {
    let images = cache::images_dir(state_dir);
    let _guard = CacheLock::acquire(&images)?;
    cache::remove(state_dir, id_prefix)
}

/// Write a file atomically: a temp file beside it, then rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| ImageError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ImageError::io(path, e))
}

/// An exclusive flock on `images/.lock` for the duration of a build.
struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    fn acquire(images: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(images).map_err(|e| ImageError::io(images, e))?;
        let path = images.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io(&path, e))?;
        // SAFETY: flock on an fd we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(ImageError::io(&path, std::io::Error::last_os_error()));
        }
        Ok(CacheLock { _file: f })
    }
}

/// A scratch directory under `images/`, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(images: &Path) -> Result<Self, ImageError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = images.join(format!(".build-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove build directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached image pinned by a lock resolves without apt (as inside the
    /// nested lab's L1), and the VMM-side lookup finds it through the pointer.
    #[test]
    fn pinned_and_cached_needs_no_apt() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".vmctl");
        let build = cache::images_dir(&state).join(".build-test");
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(build.join(cache::KERNEL_FILE), b"k").unwrap();
        std::fs::write(build.join(cache::INITRD_FILE), b"i").unwrap();
        std::fs::write(build.join(cache::ROOTFS_FILE), b"rootfs").unwrap();
        let (k, i) = (digest::sha256_hex(b"k"), digest::sha256_hex(b"i"));
        let variant = Variant::new(debian12::NAME, &["nginx".into()]);
        let manifest = Manifest {
            format_version: "1".into(),
            name: debian12::NAME.into(),
            id: cache::image_id_with_packages(&k, &i, &[], &debian12::vmctl_files_sha256()),
            recipe: debian12::RECIPE,
            kernel_version: "6.1.0-test".into(),
            kernel_sha256: k.clone(),
            initrd_sha256: i.clone(),
            cmdline: debian12::CMDLINE.into(),
            packages: vec![],
            modules: vec![],
            variant: variant.key(),
            rootfs_sha256: Some(digest::sha256_hex(b"rootfs")),
            rootfs_bytes: Some(6),
        };
        cache::store(&state, &build, &manifest).unwrap();
        let lock_path = dir.path().join("vmctl.lock");
        let mut lock = LockFile::default();
        lock.images
            .insert(variant.key(), locked_from_manifest(&manifest));
        lock.write(&lock_path).unwrap();

        assert!(matches!(
            for_vm(&state, &variant),
            Err(ImageError::NotBuilt { .. })
        ));
        let img = ensure(&state, &lock_path, &variant).unwrap();
        assert_eq!(img.id, manifest.id);
        assert!(img.kernel.is_absolute());
        assert_eq!(std::fs::read(&img.initrd).unwrap(), b"i");
        assert_eq!(
            std::fs::read(img.rootfs.as_ref().unwrap()).unwrap(),
            b"rootfs"
        );
        assert_eq!(img.to_image_spec().initrd, Some(img.initrd.clone()));
        assert_eq!(for_vm(&state, &variant).unwrap(), img);
        // Another variant is another image.
        assert!(for_vm(&state, &Variant::new(debian12::NAME, &[])).is_err());
    }

    #[test]
    fn recipe_change_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("vmctl.lock");
        let mut lock = LockFile::default();
        lock.images.insert(
            minimal::NAME.into(),
            LockedImage {
                recipe: minimal::RECIPE + 1,
                packages: vec![],
                kernel_sha256: String::new(),
                initrd_sha256: String::new(),
                image_id: String::new(),
                rootfs_sha256: None,
            },
        );
        lock.write(&lock_path).unwrap();
        let v = Variant::new(minimal::NAME, &[]);
        let err = ensure(&dir.path().join(".vmctl"), &lock_path, &v).unwrap_err();
        assert!(matches!(err, ImageError::RecipeChanged { .. }), "{err}");
        assert!(err.to_string().contains("--update"));
    }
}
