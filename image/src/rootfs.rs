//! A Debian root filesystem from the host's apt sources: `mmdebstrap`
//! (a Debian package) installs the packages into a directory, we read back
//! the exact package set and the digest of every `.deb` it used (the pins of
//! `vmctl.lock`), and `mke2fs -d` writes the directory as an ext4 filesystem
//! into a sparse file — no loop mounts, nothing installed on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::lock::LockedPackage;
use super::{ImageError, digest};

/// The ext4 label our initramfs mounts as `/` (and `/etc/fstab` names).
pub const ROOT_LABEL: &str = "vmctl-root";

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// The host tools a root filesystem build runs, beyond apt's.
pub fn require_tools() -> Result<(), ImageError> {
    for (tool, package) in [("mmdebstrap", "mmdebstrap"), ("mke2fs", "e2fsprogs")] {
        if !on_path(tool) {
            return Err(ImageError::MissingTool { tool, package });
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| ImageError::Io {
        path: PathBuf::from(command.clone()),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ImageError::Tool {
            command,
            detail: tail(&format!("{stdout}\n{stderr}"), 25),
        });
    }
    Ok(stdout)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The host's apt source files (what `apt-get` on this host reads).
fn host_sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let list = PathBuf::from("/etc/apt/sources.list");
    if std::fs::read_to_string(&list).is_ok_and(|t| {
        t.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    }) {
        out.push(list);
    }
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        out.extend(more);
    }
    out
}

/// What apt said when a requested package does not exist, if that is why
/// it failed.
pub fn unknown_package(detail: &str) -> Option<String> {
    for marker in ["Unable to locate package ", "has no installation candidate"] {
        for line in detail.lines() {
            if let Some(i) = line.find(marker) {
                if marker.starts_with("Unable") {
                    let rest = &line[i + marker.len()..];
                    return rest.split_whitespace().next().map(str::to_string);
                }
                // "E: Package 'foo' has no installation candidate"
                return line.split('\'').nth(1).map(str::to_string);
            }
        }
    }
    None
}

/// Install `include` (package names, or `name=version` pins) and the
/// essential set of Debian 12 into `root` (which must not exist) with the
/// host's apt sources, keeping the downloaded `.deb`s for their digests.
pub fn mmdebstrap(root: &Path, include: &[String]) -> Result<(), ImageError> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--mode=root",
        "--variant=minbase",
        "--skip=download/empty",
        "--skip=essential/unlink",
        "--skip=cleanup/apt/cache",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--aptopt=APT::Install-Recommends \"false\"",
    ])
    .arg(format!("--include={}", include.join(",")))
    .arg("bookworm")
    .arg(root);
    for s in host_sources() {
        cmd.arg(s);
    }
    run(&mut cmd).map_err(|e| match e {
        ImageError::Tool { ref detail, .. } => match unknown_package(detail) {
            Some(package) => ImageError::UnknownPackage {
                package,
                context: " in Debian 12 (the host's apt sources)".into(),
            },
            None => e,
        },
        e => e,
    })?;
    Ok(())
}

/// The installed package set of the root filesystem at `root`, with the
/// digest of each package's `.deb` from its apt cache (which is then
/// emptied: the image does not carry the archives).
pub fn package_set(root: &Path) -> Result<Vec<LockedPackage>, ImageError> {
    let admindir = root.join("var/lib/dpkg");
    let out = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args([
            "-W",
            "-f=${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ]))?;
    let archives = root.join("var/cache/apt/archives");
    let mut debs: BTreeMap<String, PathBuf> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(&archives) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".deb") {
                debs.insert(name, e.path());
            }
        }
    }
    let mut set = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [status, name, version, arch] = f.as_slice() else {
            continue;
        };
        if !status.starts_with("ii") {
            continue;
        }
        // apt names a cached .deb `name_version_arch.deb`, with the epoch's
        // colon escaped.
        let file = format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"));
        let deb = debs.get(&file).ok_or_else(|| {
            ImageError::Recipe(format!(
                "{name} {version} is installed but its .deb ({file}) is not in the apt cache"
            ))
        })?;
        set.push(LockedPackage {
            name: name.to_string(),
            version: version.to_string(),
            sha256: digest::sha256_file(deb)?,
        });
    }
    set.sort_by(|a, b| a.name.cmp(&b.name));
    for deb in debs.values() {
        std::fs::remove_file(deb).map_err(|e| ImageError::io(deb, e))?;
    }
    Ok(set)
}

/// Bytes the files below `dir` hold (`du --apparent-size`).
pub fn apparent_size(dir: &Path) -> Result<u64, ImageError> {
    let used = run(Command::new("du")
        .args(["-s", "-B1", "--apparent-size"])
        .arg(dir))?;
    used.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ImageError::Recipe(format!("du of {}: {used}", dir.display())))
}

/// Write the directory tree `dir` as an ext4 filesystem labelled `label`
/// into the sparse file `out` of `bytes` (rounded up to whole MiB), owned by
/// root; returns its size. `mke2fs -d`: no mount, no loop device.
pub fn ext4_from_dir(dir: &Path, out: &Path, label: &str, bytes: u64) -> Result<u64, ImageError> {
    let size = bytes.div_ceil(1 << 20) << 20;
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out).map_err(|e| ImageError::io(out, e))?;
    f.set_len(size).map_err(|e| ImageError::io(out, e))?;
    drop(f);
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            label,
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(dir)
        .arg(out))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_errors_name_the_package() {
        let e = "W: x\nE: Unable to locate package nginxx\nE: failed";
        assert_eq!(unknown_package(e).as_deref(), Some("nginxx"));
        let e = "E: Package 'foo' has no installation candidate";
        assert_eq!(unknown_package(e).as_deref(), Some("foo"));
        assert_eq!(unknown_package("E: something else"), None);
    }
}
