//! Boot images for the built-in Linux OS `debian-12`: built on first use from
//! Debian packages, cached content-addressed in `<state-dir>/images/<id>/`,
//! and pinned by a lock file (`vmctl.lock`, beside the KDL file) so a lab
//! rebuilds identically.
//!
//! The one entry point the rest of vmctl needs is [`ensure_debian12`]:
//!
//! ```no_run
//! # fn main() -> Result<(), vmctl_runtime::image::ImageError> {
//! use std::path::Path;
//! let img = vmctl_runtime::image::ensure_debian12(Path::new(".vmctl"), Path::new("vmctl.lock"))?;
//! // boot img.kernel with img.initrd and img.cmdline (or turn it into the
//! // VM's ImageSpec with img.to_image_spec())
//! # let _ = img; Ok(()) }
//! ```
//!
//! With a lock entry it returns the pinned image from the cache (verifying
//! its digests), or rebuilds it from exactly the pinned package versions and
//! fails if the result differs. Without one it builds from apt's current
//! packages and writes the lock. Builds need `apt-get` and `dpkg-deb`; where
//! they are missing the error names the alternative (an `image` node with
//! your own kernel and initrd).

pub mod apt;
pub mod cache;
pub mod cpio;
pub mod debian12;
pub mod digest;
pub mod kmod;
pub mod lock;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vmctl_spec::ImageSpec;

pub use cache::{CachedImage, Manifest};
pub use lock::{LockFile, LockedImage, LockedPackage};

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
        "{lock} pins debian-12 recipe {pinned}, but this vmctl builds recipe {current}; \
         run `vmctl image build --update` to re-pin"
    )]
    RecipeChanged {
        lock: String,
        pinned: u32,
        current: u32,
    },
    #[error("the debian-12 recipe failed: {0}")]
    Recipe(String),
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

/// A bootable image: what the VMM needs to boot a built-in Linux OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    /// The OS name (`debian-12`).
    pub name: String,
    /// Cache id (sha256 of the kernel and initrd digests).
    pub id: String,
    /// bzImage.
    pub kernel: PathBuf,
    /// gzip'd newc initramfs.
    pub initrd: PathBuf,
    pub cmdline: String,
    /// `uname -r` of the kernel.
    pub kernel_version: String,
}

impl BootImage {
    fn from_cached(img: &CachedImage) -> Self {
        BootImage {
            name: img.manifest.name.clone(),
            id: img.manifest.id.clone(),
            kernel: img.dir.join(cache::KERNEL_FILE),
            initrd: img.dir.join(cache::INITRD_FILE),
            cmdline: img.manifest.cmdline.clone(),
            kernel_version: img.manifest.kernel_version.clone(),
        }
    }

    /// As the spec's boot image (what `VmSpec.image` carries).
    pub fn to_image_spec(&self) -> ImageSpec {
        ImageSpec {
            name: self.name.clone(),
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            cmdline: self.cmdline.clone(),
        }
    }
}

/// How [`build_debian12`] treats the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Use the lock's pins when present; pin what was built when not.
    #[default]
    Honour,
    /// Ignore existing pins: build from apt's current packages and re-pin.
    Update,
}

/// The `debian-12` image for a VMM process, which knows its state directory
/// but not the KDL file: the image the last [`ensure_debian12`] on this state
/// directory resolved (recorded in `images/debian-12.id`), else
/// `ensure_debian12(state_dir, <state_dir>/../vmctl.lock)` — the lock's place
/// when the state directory is the default `.vmctl/` beside the KDL file.
pub fn debian12_for_vm(state_dir: &Path) -> Result<BootImage, ImageError> {
    let pointer = cache::images_dir(state_dir).join(POINTER_FILE);
    if let Ok(id) = std::fs::read_to_string(&pointer)
        && let Some(img) = cache::lookup(state_dir, id.trim())?
    {
        return Ok(BootImage::from_cached(&img));
    }
    let state_abs = std::path::absolute(state_dir).map_err(|e| ImageError::io(state_dir, e))?;
    let lock = state_abs
        .parent()
        .map(|p| p.join("vmctl.lock"))
        .unwrap_or_else(|| PathBuf::from("vmctl.lock"));
    ensure_debian12(state_dir, &lock)
}

/// `images/<POINTER_FILE>`: the id of the debian-12 image last resolved here.
pub const POINTER_FILE: &str = "debian-12.id";

/// The `debian-12` image, built if needed. `state_dir` is vmctl's state
/// directory (the cache is `state_dir/images/`); `lock_path` is the lab's
/// `vmctl.lock` (created or updated when nothing is pinned yet). Concurrent
/// callers are serialised by a lock on the cache directory.
pub fn ensure_debian12(state_dir: &Path, lock_path: &Path) -> Result<BootImage, ImageError> {
    build_debian12(state_dir, lock_path, LockMode::Honour)
}

/// [`ensure_debian12`] with a choice of lock handling (`vmctl image build --update`).
pub fn build_debian12(
    state_dir: &Path,
    lock_path: &Path,
    mode: LockMode,
) -> Result<BootImage, ImageError> {
    // Absolute paths: the VMM and the spec want them, whatever the caller's cwd.
    let state_dir = &std::path::absolute(state_dir).map_err(|e| ImageError::io(state_dir, e))?;
    let img = resolve_debian12(state_dir, lock_path, mode)?;
    write_atomic(
        &cache::images_dir(state_dir).join(POINTER_FILE),
        format!("{}\n", img.id).as_bytes(),
    )?;
    Ok(img)
}

fn resolve_debian12(
    state_dir: &Path,
    lock_path: &Path,
    mode: LockMode,
) -> Result<BootImage, ImageError> {
    let images = cache::images_dir(state_dir);
    std::fs::create_dir_all(&images).map_err(|e| ImageError::io(&images, e))?;
    let _guard = CacheLock::acquire(&images)?;
    let lock_name = lock_path.display().to_string();
    let mut lock = LockFile::read(lock_path)?;
    let pinned = match mode {
        LockMode::Honour => lock.images.get(debian12::NAME).cloned(),
        LockMode::Update => None,
    };

    if let Some(pin) = &pinned {
        if pin.recipe != debian12::RECIPE {
            return Err(ImageError::RecipeChanged {
                lock: lock_name,
                pinned: pin.recipe,
                current: debian12::RECIPE,
            });
        }
        if let Some(img) = cache::lookup(state_dir, &pin.image_id)? {
            return Ok(BootImage::from_cached(&img));
        }
        tracing::info!(id = %pin.image_id, "pinned debian-12 image not cached; rebuilding it");
        apt::require_tools()?;
        let packages: Vec<(String, String)> = pin
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        let work = ScratchDir::new(&images)?;
        let built = debian12::build(&work.0, &packages, Some(&pin.packages), &lock_name)?;
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

    if mode == LockMode::Honour && apt::require_tools().is_err() {
        // No apt here, nothing pinned: a cached image (e.g. built elsewhere
        // and copied in) is the best we can do; pin it.
        if let Some(img) = cache::list(state_dir)?
            .into_iter()
            .filter(|i| i.manifest.name == debian12::NAME && i.manifest.recipe == debian12::RECIPE)
            .max_by_key(|i| std::fs::metadata(&i.dir).and_then(|m| m.modified()).ok())
        {
            lock.images
                .insert(debian12::NAME.into(), locked_from_manifest(&img.manifest));
            lock.write(lock_path)?;
            return Ok(BootImage::from_cached(&img));
        }
    }
    apt::require_tools()?;
    let packages = debian12::resolve_packages()?;
    let work = ScratchDir::new(&images)?;
    let built = debian12::build(&work.0, &packages, None, &lock_name)?;
    let dir = cache::store(state_dir, &built.dir, &built.manifest)?;
    lock.images.insert(debian12::NAME.into(), built.locked());
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
        let (k, i) = (digest::sha256_hex(b"k"), digest::sha256_hex(b"i"));
        let manifest = Manifest {
            format_version: "1".into(),
            name: debian12::NAME.into(),
            id: cache::image_id(&k, &i),
            recipe: debian12::RECIPE,
            kernel_version: "6.1.0-test".into(),
            kernel_sha256: k.clone(),
            initrd_sha256: i.clone(),
            cmdline: debian12::CMDLINE.into(),
            packages: vec![],
            modules: vec![],
        };
        cache::store(&state, &build, &manifest).unwrap();
        let lock_path = dir.path().join("vmctl.lock");
        let mut lock = LockFile::default();
        lock.images
            .insert(debian12::NAME.into(), locked_from_manifest(&manifest));
        lock.write(&lock_path).unwrap();

        let img = ensure_debian12(&state, &lock_path).unwrap();
        assert_eq!(img.id, manifest.id);
        assert!(img.kernel.is_absolute());
        assert_eq!(std::fs::read(&img.initrd).unwrap(), b"i");
        assert_eq!(img.to_image_spec().initrd, Some(img.initrd.clone()));
        assert_eq!(debian12_for_vm(&state).unwrap(), img);
    }

    #[test]
    fn recipe_change_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("vmctl.lock");
        let mut lock = LockFile::default();
        lock.images.insert(
            debian12::NAME.into(),
            LockedImage {
                recipe: debian12::RECIPE + 1,
                packages: vec![],
                kernel_sha256: String::new(),
                initrd_sha256: String::new(),
                image_id: String::new(),
            },
        );
        lock.write(&lock_path).unwrap();
        let err = ensure_debian12(&dir.path().join(".vmctl"), &lock_path).unwrap_err();
        assert!(matches!(err, ImageError::RecipeChanged { .. }), "{err}");
        assert!(err.to_string().contains("--update"));
    }
}
