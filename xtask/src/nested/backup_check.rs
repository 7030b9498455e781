//! The nested lab's live-backup check (issue 14; docs/nested-lab.md, "The
//! live-backup check"): only in L2 does a real Linux with the debian-12
//! agent run, so only there can `vmctl backup` show that the agent's
//! `fsfreeze` makes the copy filesystem-consistent. Self-contained: the
//! shell part (`backup-check.sh`, sourced by l1-init.sh), what it needs in
//! L1's initramfs (`e2fsck`) and its line of `scenario.env`. Its markers
//! are ordinary `@@NESTED step=…` lines, judged like every other step.

use vmctl_spec::DesiredState;

/// The shell function `backup_check VM`, installed in L1 at [`SCRIPT_PATH`].
pub const SCRIPT: &str = include_str!("backup-check.sh");

/// Where L1's init finds [`SCRIPT`] (inside the initramfs).
pub const SCRIPT_PATH: &str = "etc/l1/backup-check.sh";

/// Binaries the check runs in L1 besides busybox and debugfs: (name on
/// the host's PATH, path inside the initramfs).
pub const BINARIES: &[(&str, &str)] = &[("e2fsck", "usr/sbin/e2fsck")];

/// The VM the check backs up: the first debian-12 VM with a `root` disk
/// (a real Debian with the agent that freezes); `None` skips the check.
pub fn vm(state: &DesiredState) -> Option<&str> {
    state
        .vms
        .iter()
        .find(|v| v.os == "debian-12" && v.disks.iter().any(|d| d.name == "root"))
        .map(|v| v.name.as_str())
}

/// `scenario.env`'s line for the check (an empty `BACKUP_VM` skips it).
pub fn env(state: &DesiredState) -> String {
    format!("BACKUP_VM=\"{}\"\n", vm(state).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(kdl: &str) -> DesiredState {
        vmctl_spec::parse_str("lab.kdl", kdl, std::path::Path::new("."), 64)
            .expect("lab parses")
            .state
    }

    #[test]
    fn the_first_debian_vm_with_a_root_disk_is_backed_up() {
        let two = lab(include_str!("../../labs/two-debian.kdl"));
        assert_eq!(vm(&two), Some("db"));
        assert_eq!(env(&two), "BACKUP_VM=\"db\"\n");
        let minimal =
            lab("vm \"a\" {\n    os \"debian-12-minimal\"\n    disk \"root\" size=\"64MiB\"\n}\n");
        assert_eq!(vm(&minimal), None);
        assert_eq!(env(&minimal), "BACKUP_VM=\"\"\n");
    }

    #[test]
    fn the_script_defines_the_function_and_its_steps() {
        assert!(SCRIPT.contains("backup_check() {"));
        for step in [
            "backup-live",
            "backup-filesystem-consistent",
            "backup-no-journal-replay",
            "backup-fsck-clean",
        ] {
            assert!(SCRIPT.contains(&format!("step={step} ")), "{step}");
        }
    }
}
