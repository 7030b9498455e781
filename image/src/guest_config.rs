//! First-boot configuration of a `debian-12` VM: vmctl writes the VM's
//! declared hostname, users, files (and, for the agent's report, its
//! packages) as `/etc/vmctl/config.json` into the VM's root filesystem, with
//! the VM stopped, using `debugfs` (e2fsprogs) on the disk file — no mount,
//! no loop device. The guest's `vmctl-config` service applies it at every
//! boot, so writing it before a start is how a restart re-applies a changed
//! configuration.

use std::path::Path;
use std::process::Command;

use serde::Serialize;
use vmctl_spec::model::{FileSpec, UserSpec, VmSpec};

use super::ImageError;

/// Where the guest reads it.
pub const GUEST_PATH: &str = "/etc/vmctl/config.json";

/// The JSON the guest's `vmctl-config` service and agent read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigFile<'a> {
    pub format_version: &'static str,
    pub hostname: &'a str,
    pub packages: &'a [String],
    pub users: &'a [UserSpec],
    pub files: &'a [FileSpec],
    /// One systemd-networkd file per NIC (matched by MAC).
    pub nics: Vec<NicConfig>,
}

/// A NIC as the guest configures it: a static address on the NIC with
/// this MAC, and a default route only through a NAT network's host side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicConfig {
    /// The network's name (for people reading the file).
    pub network: String,
    pub mac: String,
    /// `10.20.0.10/24`.
    pub address: String,
    /// The default route: the host side of a `nat #true` network; none
    /// otherwise (a lab network reaches only the host and its peers).
    pub gateway: Option<String>,
}

impl<'a> ConfigFile<'a> {
    /// The configuration `spec` declares (hostname default: the VM name),
    /// with its resolved NICs.
    pub fn of(spec: &'a VmSpec, nics: Vec<NicConfig>) -> Self {
        ConfigFile {
            format_version: "1",
            hostname: spec.config.hostname.as_deref().unwrap_or(&spec.name),
            packages: &spec.packages,
            users: &spec.config.users,
            files: &spec.config.files,
            nics,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

fn debugfs(disk: &Path, args: &[&str]) -> Result<Vec<u8>, ImageError> {
    let out = Command::new("debugfs")
        .args(args)
        .arg(disk)
        .output()
        .map_err(|source| ImageError::Io {
            path: "debugfs (apt-get install e2fsprogs)".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            command: format!("debugfs {} {}", args.join(" "), disk.display()),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// Write `json` as [`GUEST_PATH`] (root-owned, 0600) into the ext4
/// filesystem in the disk file `disk`, which no running VM may be using,
/// and read it back to check it landed.
pub fn write_into(disk: &Path, json: &[u8]) -> Result<(), ImageError> {
    let scratch = tempfile_beside(disk)?;
    std::fs::write(&scratch, json).map_err(|e| ImageError::io(&scratch, e))?;
    let host = scratch.display().to_string();
    if host.contains(char::is_whitespace) || host.contains('"') {
        let _ = std::fs::remove_file(&scratch);
        return Err(ImageError::Recipe(format!(
            "{host}: debugfs cannot take a path with spaces or quotes"
        )));
    }
    // Errors of single commands (`mkdir` of an existing directory, `rm` of a
    // missing file) are expected; the read-back below is the check.
    let script = format!(
        "mkdir /etc\nmkdir /etc/vmctl\ncd /etc/vmctl\nrm config.json\nwrite {host} config.json\n\
         set_inode_field config.json mode 0100600\nset_inode_field config.json uid 0\n\
         set_inode_field config.json gid 0\n"
    );
    let cmds = scratch.with_extension("debugfs");
    std::fs::write(&cmds, script).map_err(|e| ImageError::io(&cmds, e))?;
    let cmds_s = cmds.display().to_string();
    let res = debugfs(disk, &["-w", "-f", &cmds_s]);
    let _ = std::fs::remove_file(&scratch);
    let _ = std::fs::remove_file(&cmds);
    res?;
    let back = read_from(disk)?;
    if back.as_deref() != Some(json) {
        return Err(ImageError::Recipe(format!(
            "{}: {GUEST_PATH} did not read back as written (is it the VM's ext4 root disk?)",
            disk.display()
        )));
    }
    Ok(())
}

/// The configuration currently in the disk, if any.
pub fn read_from(disk: &Path) -> Result<Option<Vec<u8>>, ImageError> {
    let out = debugfs(disk, &["-R", &format!("cat {GUEST_PATH}")])?;
    Ok((!out.is_empty()).then_some(out))
}

fn tempfile_beside(disk: &Path) -> Result<std::path::PathBuf, ImageError> {
    let dir = disk.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!(".vmctl-config-{}.json", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        let mut s = VmSpec::diag("web");
        s.os = "debian-12".into();
        s.packages = vec!["nginx".into()];
        s.config.users.push(UserSpec {
            name: "alice".into(),
            ssh_keys: vec!["ssh-ed25519 AAAA alice@laptop".into()],
            sudo: true,
        });
        s.config.files.push(FileSpec {
            path: "/etc/motd".into(),
            content: "lab 3\n".into(),
            mode: 0o644,
        });
        s
    }

    #[test]
    fn the_hostname_defaults_to_the_vm_name() {
        let s = spec();
        let json: serde_json::Value =
            serde_json::from_slice(&ConfigFile::of(&s, vec![]).to_json()).unwrap();
        assert_eq!(json["hostname"], "web");
        assert_eq!(json["users"][0]["sudo"], true);
        assert_eq!(json["files"][0]["mode"], 420);
        let mut named = spec();
        named.config.hostname = Some("www".into());
        assert_eq!(ConfigFile::of(&named, vec![]).hostname, "www");
        assert_eq!(json["nics"], serde_json::json!([]));
        let nic = NicConfig {
            network: "lab".into(),
            mac: "52:54:00:12:34:56".into(),
            address: "10.20.0.10/24".into(),
            gateway: None,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&ConfigFile::of(&s, vec![nic]).to_json()).unwrap();
        assert_eq!(
            json["nics"],
            serde_json::json!([{"network": "lab", "mac": "52:54:00:12:34:56",
                "address": "10.20.0.10/24", "gateway": null}])
        );
    }

    /// Real e2fsprogs on a real (small) ext4 file: written, read back,
    /// replaced.
    #[test]
    fn written_into_an_ext4_file_without_mounting_it() {
        if Command::new("mke2fs").arg("-V").output().is_err() {
            eprintln!("skipped: no mke2fs (apt-get install e2fsprogs)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let ok = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4"])
            .arg(&disk)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(read_from(&disk).unwrap(), None);
        let s = spec();
        write_into(&disk, &ConfigFile::of(&s, vec![]).to_json()).unwrap();
        assert_eq!(
            read_from(&disk).unwrap().unwrap(),
            ConfigFile::of(&s, vec![]).to_json()
        );
        let mut changed = spec();
        changed.config.hostname = Some("other".into());
        write_into(&disk, &ConfigFile::of(&changed, vec![]).to_json()).unwrap();
        let back = read_from(&disk).unwrap().unwrap();
        assert!(String::from_utf8_lossy(&back).contains("\"other\""));
        // Not an ext4 filesystem: a clear error, not silence.
        let junk = dir.path().join("junk.raw");
        std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
        assert!(write_into(&junk, b"{}").is_err());
    }
}
