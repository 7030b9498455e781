//! The `debian-12` image recipe: a real Debian 12 system. `mmdebstrap`
//! installs systemd, udev, openssh-server, iproute2, e2fsprogs, sudo, the
//! cloud kernel and its modules, and the VM's extra packages from the host's
//! apt sources; vmctl adds its guest agent and its configuration service
//! (image/debian-12/) and strips what must differ per VM (SSH host keys,
//! machine id, hostname). The tree becomes an ext4 file (`rootfs.ext4`) that
//! each VM's root disk starts as a copy of; the cloud kernel boots it through
//! a small initramfs of ours (busybox + the virtio modules) that mounts the
//! filesystem labelled `vmctl-root` and hands over to systemd.

use std::path::Path;

use super::cache::{self, Manifest};
use super::cpio::Archive;
use super::lock::{LockedImage, LockedPackage};
use super::minimal::{BootParts, add_modules, boot_parts, write_initrd};
use super::{Built, ImageError, Variant, digest, kmod, rootfs};

/// The OS name in KDL (`os "debian-12"`).
pub const NAME: &str = "debian-12";
/// Bump whenever the layout, the guest files or the package list change.
pub const RECIPE: u32 = 6;
/// What every debian-12 image has, before the VM's own `packages`.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-cloud-amd64",
    "openssh-server",
    "iproute2",
    "e2fsprogs",
    "sudo",
    "kmod",
    "procps",
    "util-linux",
    // The guest agent and the configuration service read JSON with jq.
    "jq",
    // Our initramfs's userland (and nothing else uses it).
    "busybox-static",
];
/// Modules the initramfs loads before it mounts `/` (ext4 is built in).
pub const MODULES: &[&str] = &["virtio_mmio", "virtio_blk"];
/// `memhp_default_state=online`: the kernel onlines hot-added memory itself.
pub const CMDLINE: &str = "console=ttyS0 memhp_default_state=online";

pub const INIT: &str = include_str!("../debian-12/init");
pub const AGENT: &str = include_str!("../debian-12/vmctl-agent");
pub const AGENT_UNIT: &str = include_str!("../debian-12/vmctl-agent.service");
pub const CONFIG: &str = include_str!("../debian-12/vmctl-config");
pub const CONFIG_UNIT: &str = include_str!("../debian-12/vmctl-config.service");

/// Timers that reach for the network or scrub disks on a schedule: masked
/// (labs have no route out; a failed apt-daily would mark the system degraded).
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
];

fn write(root: &Path, path: &str, mode: u32, data: &str) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(path.trim_start_matches('/'));
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
    }
    std::fs::write(&p, data).map_err(|e| ImageError::io(&p, e))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io(&p, e))
}

fn symlink(root: &Path, path: &str, target: &str) -> Result<(), ImageError> {
    let p = root.join(path.trim_start_matches('/'));
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
    }
    let _ = std::fs::remove_file(&p);
    std::os::unix::fs::symlink(target, &p).map_err(|e| ImageError::io(&p, e))
}

fn remove_matching(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(), ImageError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep(&name) {
            let p = e.path();
            std::fs::remove_file(&p).map_err(|err| ImageError::io(&p, err))?;
        }
    }
    Ok(())
}

/// The digest of what vmctl itself adds to the root filesystem (part of
/// the image id, so a changed agent or service never reuses a cached image).
pub fn vmctl_files_sha256() -> String {
    let mut text = format!("recipe {RECIPE}\n");
    for f in [INIT, AGENT, AGENT_UNIT, CONFIG, CONFIG_UNIT] {
        text.push_str(&digest::sha256_hex(f.as_bytes()));
        text.push('\n');
    }
    digest::sha256_hex(text.as_bytes())
}

/// vmctl's part of the root filesystem: the guest agent and configuration
/// service, enabled; nothing that must differ per VM.
pub fn customise(root: &Path) -> Result<(), ImageError> {
    write(root, "/usr/local/sbin/vmctl-agent", 0o755, AGENT)?;
    write(root, "/usr/local/sbin/vmctl-config", 0o755, CONFIG)?;
    write(
        root,
        "/etc/systemd/system/vmctl-agent.service",
        0o644,
        AGENT_UNIT,
    )?;
    write(
        root,
        "/etc/systemd/system/vmctl-config.service",
        0o644,
        CONFIG_UNIT,
    )?;
    symlink(
        root,
        "/etc/systemd/system/multi-user.target.wants/vmctl-agent.service",
        "/etc/systemd/system/vmctl-agent.service",
    )?;
    symlink(
        root,
        "/etc/systemd/system/sysinit.target.wants/vmctl-config.service",
        "/etc/systemd/system/vmctl-config.service",
    )?;
    // NICs are configured by systemd-networkd from the files vmctl-config
    // writes (none: it does nothing).
    symlink(
        root,
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    )?;
    for unit in MASKED {
        symlink(root, &format!("/etc/systemd/system/{unit}"), "/dev/null")?;
    }
    std::fs::create_dir_all(root.join("etc/vmctl")).map_err(|e| ImageError::io(root, e))?;
    write(
        root,
        "/etc/fstab",
        0o644,
        &format!(
            "LABEL={} / ext4 defaults,errors=remount-ro 0 1\n",
            rootfs::ROOT_LABEL
        ),
    )?;
    // Per VM: SSH host keys (vmctl-config generates them at first boot), the
    // machine id (systemd makes one at first boot when the file is empty),
    // the hostname (vmctl-config), and nothing of the build host's.
    remove_matching(&root.join("etc/ssh"), |n| !n.starts_with("ssh_host_"))?;
    write(
        root,
        "/etc/ssh/sshd_config.d/vmctl.conf",
        0o644,
        "# vmctl: one host key per VM, made at its first boot by vmctl-config.\nHostKey /etc/ssh/ssh_host_ed25519_key\n",
    )?;
    write(root, "/etc/machine-id", 0o444, "")?;
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    write(root, "/etc/hostname", 0o644, "debian\n")?;
    write(root, "/etc/resolv.conf", 0o644, "")?;
    // Debian's own initramfs is not used (ours mounts the root filesystem).
    remove_matching(&root.join("boot"), |n| !n.starts_with("initrd.img"))?;
    // Build logs with the build's times.
    for f in [
        "var/log/dpkg.log",
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/log/alternatives.log",
        "var/log/bootstrap.log",
    ] {
        let _ = std::fs::remove_file(root.join(f));
    }
    Ok(())
}

/// Our initramfs: busybox (from the image's own busybox-static), the
/// modules, their load order and the init that mounts the root filesystem.
pub fn initramfs(busybox: &[u8], modules: &[kmod::Module]) -> Result<Archive, ImageError> {
    let mut a = Archive::new();
    for d in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "usr/bin",
        "usr/sbin",
        "newroot",
        "etc/vmctl",
        "lib/modules",
    ] {
        a.dir(d, 0o755)?;
    }
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.char_dev("dev/null", 0o666, 1, 3)?;
    a.file("bin/busybox", 0o755, busybox.to_vec())?;
    a.symlink("bin/sh", "busybox")?;
    a.file("init", 0o755, INIT.as_bytes().to_vec())?;
    add_modules(&mut a, modules)?;
    Ok(a)
}

fn first_difference(
    want: &[LockedPackage],
    got: &[LockedPackage],
) -> Option<(String, String, String)> {
    for w in want {
        match got.iter().find(|g| g.name == w.name) {
            None => {
                return Some((
                    w.name.clone(),
                    format!("{} {}", w.version, w.sha256),
                    "not installed".into(),
                ));
            }
            Some(g) if g != w => {
                return Some((
                    w.name.clone(),
                    format!("{} {}", w.version, w.sha256),
                    format!("{} {}", g.version, g.sha256),
                ));
            }
            Some(_) => {}
        }
    }
    got.iter()
        .find(|g| !want.iter().any(|w| w.name == g.name))
        .map(|g| {
            (
                g.name.clone(),
                "not pinned".into(),
                format!("{} {}", g.version, g.sha256),
            )
        })
}

/// Build the image of `variant` in `work` (a scratch directory), leaving its
/// files in `work/out`. With `pinned`, install exactly the pinned package
/// set and fail unless that is what came out.
pub fn build(
    work: &Path,
    variant: &Variant,
    pinned: Option<&LockedImage>,
    lock_name: &str,
) -> Result<Built, ImageError> {
    let root = work.join("root");
    let out = work.join("out");
    std::fs::create_dir_all(&out).map_err(|e| ImageError::io(&out, e))?;
    let include: Vec<String> = match pinned {
        Some(pin) => pin
            .packages
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect(),
        None => BASE_PACKAGES
            .iter()
            .map(|p| p.to_string())
            .chain(variant.packages.iter().cloned())
            .collect(),
    };
    tracing::info!(variant = %variant.key(), packages = include.len(), "building the root filesystem with mmdebstrap");
    rootfs::mmdebstrap(&root, &include)?;
    let packages = rootfs::package_set(&root)?;
    if let Some(pin) = pinned
        && let Some((name, want, got)) = first_difference(&pin.packages, &packages)
    {
        return Err(ImageError::LockMismatch {
            lock: lock_name.to_string(),
            what: format!("package {name}"),
            pinned: want,
            got,
        });
    }
    customise(&root)?;

    let BootParts {
        kernel_version,
        kernel_out,
        modules,
        busybox,
    } = boot_parts(&root, &out, MODULES)?;
    let initrd_out = write_initrd(&initramfs(&busybox, &modules)?, &out)?;

    let rootfs_out = out.join(cache::ROOTFS_FILE);
    // Content + 30 % (ext4 metadata, block rounding) + 256 MiB to boot in;
    // each VM's copy is grown to its declared root size.
    let used = rootfs::apparent_size(&root)?;
    let rootfs_bytes = used + used * 3 / 10 + (256 << 20);
    let rootfs_bytes = rootfs::ext4_from_dir(&root, &rootfs_out, rootfs::ROOT_LABEL, rootfs_bytes)?;
    let rootfs_sha256 = digest::sha256_file(&rootfs_out)?;
    let kernel_sha256 = digest::sha256_file(&kernel_out)?;
    let initrd_sha256 = digest::sha256_file(&initrd_out)?;
    let manifest = Manifest {
        format_version: "1".into(),
        name: NAME.into(),
        id: cache::image_id_with_packages(
            &kernel_sha256,
            &initrd_sha256,
            &packages,
            &vmctl_files_sha256(),
        ),
        recipe: RECIPE,
        kernel_version,
        kernel_sha256,
        initrd_sha256,
        cmdline: CMDLINE.into(),
        packages,
        modules: modules.iter().map(|m| m.file_name.clone()).collect(),
        variant: variant.key(),
        rootfs_sha256: Some(rootfs_sha256),
        rootfs_bytes: Some(rootfs_bytes),
    };
    Ok(Built { dir: out, manifest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customise_strips_what_must_differ_per_vm_and_enables_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/sshd_config",
            "boot/initrd.img-6.1",
            "boot/vmlinuz-6.1",
        ] {
            write(root, f, 0o600, "x").unwrap();
        }
        customise(root).unwrap();
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(root.join("etc/ssh/sshd_config").exists());
        assert!(!root.join("boot/initrd.img-6.1").exists());
        assert!(root.join("boot/vmlinuz-6.1").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/machine-id")).unwrap(),
            ""
        );
        let wants = root.join("etc/systemd/system/multi-user.target.wants/vmctl-agent.service");
        assert_eq!(
            std::fs::read_link(wants).unwrap(),
            Path::new("/etc/systemd/system/vmctl-agent.service")
        );
        assert!(
            std::fs::read_to_string(root.join("etc/fstab"))
                .unwrap()
                .contains("LABEL=vmctl-root")
        );
    }

    #[test]
    fn the_initramfs_mounts_the_labelled_root_and_runs_systemd() {
        let a = initramfs(b"\x7fELF", &[]).unwrap();
        for p in [
            "init",
            "bin/busybox",
            "bin/sh",
            "dev/console",
            "etc/vmctl/modules",
        ] {
            assert!(a.contains(p), "{p} missing");
        }
        assert!(
            INIT.contains("LABEL=vmctl-root") && INIT.contains("switch_root /newroot /sbin/init")
        );
    }

    #[test]
    fn the_agent_reports_what_the_issue_asks_for() {
        for needle in [
            "\"agent\\\":\\\"debian-12\\\"",
            "root_fs_bytes",
            "is-system-running",
            "PRETTY_NAME",
            "/dev/ttyS1",
            "resize2fs",
        ] {
            assert!(AGENT.contains(needle), "{needle}");
        }
    }

    #[test]
    fn a_rebuild_that_differs_from_the_lock_names_the_package() {
        let p = |n: &str, v: &str| LockedPackage {
            name: n.into(),
            version: v.into(),
            sha256: "s".into(),
        };
        let want = vec![p("a", "1"), p("b", "2")];
        assert_eq!(first_difference(&want, &want.clone()), None);
        let (name, _, got) = first_difference(&want, &[p("a", "1"), p("b", "3")]).unwrap();
        assert_eq!((name.as_str(), got.as_str()), ("b", "3 s"));
        let (name, want_s, _) =
            first_difference(&want, &[p("a", "1"), p("b", "2"), p("c", "1")]).unwrap();
        assert_eq!((name.as_str(), want_s.as_str()), ("c", "not pinned"));
    }
}
