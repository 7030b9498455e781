//! The `debian-12-minimal` image recipe: a stock Debian cloud kernel plus an
//! initramfs assembled here from Debian packages — busybox-static, the
//! virtio/ACPI-button modules the cloud kernel builds as `.ko`, and vmctl's
//! init + guest agent script (image/debian-12-minimal/). The initramfs is the
//! whole guest: fast and tiny, for tests and labs that need no userland. Nothing is installed on
//! the host: packages are fetched with `apt-get download` and unpacked with
//! `dpkg-deb -x`.

use std::io::Write;
use std::path::Path;

use flate2::{Compression, GzBuilder};

use super::Built;
use super::cache::{self, Manifest};
use super::cpio::Archive;
use super::lock::LockedPackage;
use super::{ImageError, apt, digest, kmod};

/// The OS name in KDL (`os "debian-12-minimal"`).
pub const NAME: &str = "debian-12-minimal";
/// Bump whenever the initramfs layout or the agent script changes: a lock
/// made by another recipe cannot reproduce its digests.
pub const RECIPE: u32 = 1;
/// The metapackage that names the current cloud kernel.
pub const KERNEL_META: &str = "linux-image-cloud-amd64";
pub const BUSYBOX: &str = "busybox-static";
/// Modules the guest needs (their dependencies are added): virtio-mmio
/// discovery (ACPI `LNRO0005`), virtio-blk disks, and the ACPI power button
/// with its input device, for clean shutdown.
pub const MODULES: &[&str] = &["virtio_mmio", "virtio_blk", "button", "evdev"];
/// The command line the image boots with. `memhp_default_state=online` makes
/// the kernel online hot-added memory itself (the agent also does it).
pub const CMDLINE: &str = "console=ttyS0 memhp_default_state=online";

/// The init + guest agent script (PID 1 of the guest).
pub const INIT_SCRIPT: &str = include_str!("../debian-12-minimal/init");
/// Run by busybox acpid on the power button.
pub const POWER_BUTTON_SCRIPT: &str = include_str!("../debian-12-minimal/poweroff-on-button");

/// The packages to build from: the lock's pins, or apt's current candidates.
pub fn resolve_packages() -> Result<Vec<(String, String)>, ImageError> {
    let meta_version = apt::candidate_version(KERNEL_META)?;
    let kernel = apt::depends(KERNEL_META, &meta_version)?
        .into_iter()
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| {
            ImageError::Recipe(format!(
                "{KERNEL_META} {meta_version} does not depend on a linux-image-* package"
            ))
        })?;
    let kernel_version = apt::candidate_version(&kernel)?;
    let busybox_version = apt::candidate_version(BUSYBOX)?;
    Ok(vec![
        (kernel, kernel_version),
        (BUSYBOX.to_string(), busybox_version),
    ])
}

/// Build the image from exactly `packages` (name, version) in `work`
/// (a scratch directory), leaving `vmlinuz` and `initrd.img` in `work/out`.
/// `pinned` (from the lock) is checked against the downloaded `.deb`s.
pub fn build(
    work: &Path,
    packages: &[(String, String)],
    pinned: Option<&[LockedPackage]>,
    lock_name: &str,
) -> Result<Built, ImageError> {
    let debs_dir = work.join("debs");
    let root = work.join("root");
    let out = work.join("out");
    for d in [&root, &out] {
        std::fs::create_dir_all(d).map_err(|e| ImageError::io(d, e))?;
    }
    let mut locked = Vec::new();
    for (name, version) in packages {
        let deb = apt::download(name, version, &debs_dir.join(name), lock_name)?;
        let sha256 = digest::sha256_file(&deb)?;
        if let Some(pin) = pinned.and_then(|p| p.iter().find(|p| &p.name == name))
            && pin.sha256 != sha256
        {
            return Err(ImageError::LockMismatch {
                lock: lock_name.to_string(),
                what: format!("{name} {version} .deb"),
                pinned: pin.sha256.clone(),
                got: sha256,
            });
        }
        apt::extract(&deb, &root)?;
        locked.push(LockedPackage {
            name: name.clone(),
            version: version.clone(),
            sha256,
        });
    }

    let BootParts {
        kernel_version,
        kernel_out,
        modules,
        busybox,
    } = boot_parts(&root, &out, MODULES)?;
    let archive = initramfs(&busybox, &modules, &kernel_version)?;
    let initrd_out = write_initrd(&archive, &out)?;

    let kernel_sha256 = digest::sha256_file(&kernel_out)?;
    let initrd_sha256 = digest::sha256_file(&initrd_out)?;
    let manifest = Manifest {
        format_version: "1".into(),
        name: NAME.into(),
        id: cache::image_id(&kernel_sha256, &initrd_sha256),
        recipe: RECIPE,
        kernel_version,
        kernel_sha256,
        initrd_sha256,
        cmdline: CMDLINE.into(),
        packages: locked,
        modules: modules.iter().map(|m| m.file_name.clone()).collect(),
        variant: NAME.into(),
        rootfs_sha256: None,
        rootfs_bytes: None,
    };
    Ok(Built { dir: out, manifest })
}

/// What both recipes take from an unpacked Debian tree (`root`): the
/// kernel (copied to `out`), the modules `wanted` with their dependencies
/// in load order, and busybox for the initramfs.
pub struct BootParts {
    pub kernel_version: String,
    pub kernel_out: std::path::PathBuf,
    pub modules: Vec<kmod::Module>,
    pub busybox: Vec<u8>,
}

pub fn boot_parts(root: &Path, out: &Path, wanted: &[&str]) -> Result<BootParts, ImageError> {
    let kernel_version = single_kernel_version(root)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{kernel_version}"));
    let kernel_out = out.join(cache::KERNEL_FILE);
    std::fs::copy(&vmlinuz, &kernel_out).map_err(|e| ImageError::io(&vmlinuz, e))?;
    let mod_root = root
        .join("lib/modules")
        .join(&kernel_version)
        .join("kernel");
    let index = kmod::index(&mod_root)?;
    let modules = kmod::resolve(&index, wanted)?;
    let busybox_path = root.join("bin/busybox");
    let busybox = std::fs::read(&busybox_path).map_err(|e| ImageError::io(&busybox_path, e))?;
    Ok(BootParts {
        kernel_version,
        kernel_out,
        modules,
        busybox,
    })
}

/// The modules (in load order) as `lib/modules/<file>` and their order as
/// `etc/vmctl/modules`, which both initramfs inits read.
pub fn add_modules(a: &mut Archive, modules: &[kmod::Module]) -> Result<(), ImageError> {
    let mut order = String::new();
    for m in modules {
        let data = std::fs::read(&m.path).map_err(|e| ImageError::io(&m.path, e))?;
        a.file(&format!("lib/modules/{}", m.file_name), 0o644, data)?;
        order.push_str(&m.file_name);
        order.push('\n');
    }
    a.file("etc/vmctl/modules", 0o644, order.into_bytes())?;
    Ok(())
}

/// Write `archive` gzip'd (reproducibly) as `out/initrd.img`.
pub fn write_initrd(archive: &Archive, out: &Path) -> Result<std::path::PathBuf, ImageError> {
    let initrd_out = out.join(cache::INITRD_FILE);
    let cpio = archive.to_bytes()?;
    let gz = gzip(&cpio).map_err(|e| ImageError::io(&initrd_out, e))?;
    std::fs::write(&initrd_out, gz).map_err(|e| ImageError::io(&initrd_out, e))?;
    Ok(initrd_out)
}

/// The one kernel version a kernel package ships modules for.
pub fn single_kernel_version(root: &Path) -> Result<String, ImageError> {
    let dir = root.join("lib/modules");
    let rd = std::fs::read_dir(&dir).map_err(|e| ImageError::io(&dir, e))?;
    let versions: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join("kernel").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(ImageError::Recipe(format!(
            "expected one kernel under {}, found {versions:?}",
            dir.display()
        ))),
    }
}

/// The initramfs: busybox, modules (+ load order), init and the power-button hook.
pub fn initramfs(
    busybox: &[u8],
    modules: &[kmod::Module],
    kernel_version: &str,
) -> Result<Archive, ImageError> {
    let mut a = Archive::new();
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "mnt",
        "var/log",
        "var/run",
        "etc/vmctl",
        "lib/modules",
    ] {
        a.dir(d, 0o755)?;
    }
    a.dir("tmp", 0o1777)?;
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.char_dev("dev/null", 0o666, 1, 3)?;
    a.file("bin/busybox", 0o755, busybox.to_vec())?;
    a.symlink("bin/sh", "busybox")?;
    a.symlink("sbin/poweroff", "../bin/busybox")?;
    a.file("init", 0o755, INIT_SCRIPT.as_bytes().to_vec())?;
    a.file(
        "etc/acpi/PWRF/00000080",
        0o755,
        POWER_BUTTON_SCRIPT.as_bytes().to_vec(),
    )?;
    add_modules(&mut a, modules)?;
    a.file(
        "etc/vmctl/kernel-version",
        0o644,
        format!("{kernel_version}\n").into_bytes(),
    )?;
    Ok(a)
}

/// gzip with a fixed header (no name, mtime 0) so equal input gives equal bytes.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzBuilder::new()
        .mtime(0)
        .write(Vec::with_capacity(data.len() / 2), Compression::best());
    enc.write_all(data)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_layout() {
        let a = initramfs(b"\x7fELF", &[], "6.1.0-test").unwrap();
        for p in [
            "init",
            "bin/busybox",
            "bin/sh",
            "sbin/poweroff",
            "dev/console",
            "etc/acpi/PWRF/00000080",
            "etc/vmctl/modules",
        ] {
            assert!(a.contains(p), "{p} missing");
        }
    }

    #[test]
    fn gzip_is_deterministic_and_valid() {
        let data = b"hello initramfs".repeat(100);
        let a = gzip(&data).unwrap();
        assert_eq!(a, gzip(&data).unwrap());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a[..]), &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn agent_script_speaks_the_documented_protocol() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh"));
        for needle in [
            "\"agent\":\"debian-12\"",
            "memtotal_kib",
            "/dev/ttyS1",
            "size_bytes",
            "acpid",
        ] {
            assert!(INIT_SCRIPT.contains(needle), "{needle}");
        }
    }
}
