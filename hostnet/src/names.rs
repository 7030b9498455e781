//! Interface names: deterministic, at most 15 bytes (IFNAMSIZ - 1), and
//! recognisably this lab's.
//!
//! A name is `vm` + 6 hex digits of the lab's tag + `b` (bridge) or `t`
//! (tap) + 6 hex digits of the item: `vm3fa2c1b0e91d4` — exactly 15 bytes.
//! The lab tag is a stable hash of the lab's identity (the canonical path
//! of its state directory), so two labs on one host never share names, and
//! vmctl only ever deletes interfaces that match this exact shape with its
//! own tag: the host's own interfaces (`eth0`, `vmbr0`, `virbr0`, ...)
//! cannot match.

use std::path::{Path, PathBuf};

use vmctl_spec::net::stable_hash;

/// The lab's identity: the canonical absolute path of its state directory.
/// The directory need not exist yet (`vmctl plan` creates nothing): the
/// deepest existing ancestor is canonicalized and the rest appended, which
/// is the path the directory will have once it is made.
pub fn lab_identity(state_dir: &Path) -> String {
    let abs = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let mut cur: PathBuf = abs.clone();
    loop {
        if let Ok(c) = cur.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out.to_string_lossy().into_owned();
        }
        match (cur.file_name().map(|f| f.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                cur = parent.to_path_buf();
            }
            _ => return abs.to_string_lossy().into_owned(),
        }
    }
}

fn hex6(h: u64) -> String {
    format!("{:06x}", h & 0xff_ffff)
}

/// `vm` + the lab's tag: the prefix of every interface this lab makes.
pub fn lab_prefix(state_dir: &Path) -> String {
    prefix_of(&lab_identity(state_dir))
}

fn prefix_of(lab: &str) -> String {
    format!("vm{}", hex6(stable_hash(&["vmctl-lab", lab])))
}

/// The bridge of network `network` in the lab at `state_dir`.
pub fn bridge_name(state_dir: &Path, network: &str) -> String {
    let lab = lab_identity(state_dir);
    format!(
        "{}b{}",
        prefix_of(&lab),
        hex6(stable_hash(&[&lab, "network", network]))
    )
}

/// The TAP of the `nic_index`th NIC (0-based, in declaration order) of VM
/// `vm` in the lab at `state_dir`. The VMM opens this persistent TAP by name.
pub fn tap_name(state_dir: &Path, vm: &str, nic_index: usize) -> String {
    let lab = lab_identity(state_dir);
    format!(
        "{}t{}",
        prefix_of(&lab),
        hex6(stable_hash(&[&lab, "tap", vm, &nic_index.to_string()]))
    )
}

/// What kind of this lab's interface `name` is, if it is one.
pub fn lab_link_kind(prefix: &str, name: &str) -> Option<LinkKind> {
    let rest = name.strip_prefix(prefix)?;
    let (kind, item) = rest.split_at_checked(1)?;
    if item.len() != 6 || !item.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match kind {
        "b" => Some(LinkKind::Bridge),
        "t" => Some(LinkKind::Tap),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Tap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_recognised() {
        let d = Path::new("/nonexistent-vmctl/lab/.vmctl");
        let b = bridge_name(d, "lab");
        let t = tap_name(d, "web", 0);
        assert_eq!(b.len(), 15, "{b}");
        assert_eq!(t.len(), 15, "{t}");
        let p = lab_prefix(d);
        assert_eq!(lab_link_kind(&p, &b), Some(LinkKind::Bridge));
        assert_eq!(lab_link_kind(&p, &t), Some(LinkKind::Tap));
        assert_ne!(t, tap_name(d, "web", 1));
        assert_ne!(t, tap_name(d, "db", 0));
        assert_eq!(t, tap_name(d, "web", 0));
        // Another lab: other names, and not recognised as this lab's.
        let other = Path::new("/nonexistent-vmctl/other/.vmctl");
        assert_ne!(bridge_name(other, "lab"), b);
        assert_eq!(lab_link_kind(&p, &bridge_name(other, "lab")), None);
        for host in ["eth0", "vmbr0", "virbr0", "lo", "vm", "vmbr0123456789a"] {
            assert_eq!(lab_link_kind(&p, host), None, "{host}");
        }
    }

    #[test]
    fn identity_is_canonical_even_before_the_directory_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        let via_dots = tmp.path().join("x/../.vmctl");
        std::fs::create_dir(tmp.path().join("x")).unwrap();
        assert_eq!(
            lab_identity(&via_dots),
            real.join(".vmctl").to_string_lossy()
        );
        std::fs::create_dir(tmp.path().join(".vmctl")).unwrap();
        assert_eq!(
            lab_identity(&via_dots),
            real.join(".vmctl").to_string_lossy()
        );
    }
}
