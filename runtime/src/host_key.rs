//! The SSH host key a guest reports, pinned the first time vmctl sees it,
//! so `vmctl ssh` checks the VM's identity without a trust-on-first-use
//! prompt: the key arrives over the VM's own agent channel (COM2), which
//! nothing on the network can spoof. A debian-12 guest makes its host key
//! at first boot (vmctl-config) and reports it in every agent line
//! (`ssh_host_key`); the pin is the VM directory's `ssh_host_key` file and
//! lives as long as the VM (destroy and replace remove it with the
//! directory). A different key reported later is not trusted: it is logged,
//! and `vmctl ssh` keeps checking against the pin.

use crate::state::{StateError, VmDir};

/// The longest key line accepted from a guest (an Ed25519 key line is 80
/// bytes; the guest is hostile input).
const MAX_KEY_LEN: usize = 512;

/// `ssh-ed25519 AAAA…` as the guest reported it, if it is a well-formed
/// Ed25519 public key line (type and base64 only, no comment, no options).
pub fn from_report(guest: &serde_json::Value) -> Option<String> {
    let key = guest.get("ssh_host_key")?.as_str()?;
    valid(key).then(|| key.to_string())
}

fn valid(key: &str) -> bool {
    let Some(b64) = key.strip_prefix("ssh-ed25519 ") else {
        return false;
    };
    key.len() <= MAX_KEY_LEN
        && b64.len() >= 60
        && b64
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
}

/// The pinned key of the VM in `dir`, if any.
pub fn pinned(dir: &VmDir) -> Option<String> {
    let text = std::fs::read_to_string(dir.ssh_host_key()).ok()?;
    let key = text.trim();
    valid(key).then(|| key.to_string())
}

/// What [`pin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The first key this VM reported: written.
    Pinned,
    /// The same key as the pin.
    Same,
    /// A different key than the pin: not trusted, the pin is kept.
    Changed { pinned: String },
}

/// Pin `key` for the VM in `dir` unless a key is pinned already.
pub fn pin(dir: &VmDir, key: &str) -> Result<Pin, StateError> {
    match pinned(dir) {
        Some(p) if p == key => Ok(Pin::Same),
        Some(p) => Ok(Pin::Changed { pinned: p }),
        None => {
            crate::state::write_atomic_mode(
                &dir.ssh_host_key(),
                format!("{key}\n").as_bytes(),
                0o644,
            )?;
            Ok(Pin::Pinned)
        }
    }
}

/// An OpenSSH `known_hosts` line for `host` (an IP address) with `key`.
pub fn known_hosts_line(host: &str, key: &str) -> String {
    format!("{host} {key}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJq8qVAEJffTYY0vDmWlk6kCc8mOlM/UjceTldmdxmBW";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBq8qVAEJffTYY0vDmWlk6kCc8mOlM/UjceTldmdxmBW";

    #[test]
    fn only_well_formed_ed25519_keys_are_taken_from_a_report() {
        assert_eq!(
            from_report(&json!({"ssh_host_key": KEY})).as_deref(),
            Some(KEY)
        );
        for bad in [
            json!({}),
            json!({"ssh_host_key": null}),
            json!({"ssh_host_key": 7}),
            json!({"ssh_host_key": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ"}),
            json!({"ssh_host_key": format!("{KEY} comment")}),
            json!({"ssh_host_key": format!("{KEY}\n10.0.0.1 ssh-ed25519 AAAA")}),
            json!({"ssh_host_key": "ssh-ed25519 short"}),
            json!({"ssh_host_key": format!("ssh-ed25519 {}", "A".repeat(600))}),
        ] {
            assert_eq!(from_report(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_first_key_is_pinned_and_a_later_different_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path());
        assert_eq!(pinned(&dir), None);
        assert_eq!(pin(&dir, KEY).unwrap(), Pin::Pinned);
        assert_eq!(pinned(&dir).as_deref(), Some(KEY));
        assert_eq!(pin(&dir, KEY).unwrap(), Pin::Same);
        assert_eq!(
            pin(&dir, OTHER).unwrap(),
            Pin::Changed { pinned: KEY.into() }
        );
        assert_eq!(pinned(&dir).as_deref(), Some(KEY));
        assert_eq!(
            known_hosts_line("10.20.0.10", KEY),
            format!("10.20.0.10 {KEY}\n")
        );
    }
}
