//! A VM's share of host CPU time (`cpu-weight`): each VMM process runs in a
//! cgroup of its own, `vmctl/<vm>-<id>` under the host's cpu controller, whose
//! `cpu.weight` (cgroup v2) or `cpu.shares` (cgroup v1, for hosts where the cpu
//! controller is still on v1) is set from the VM's weight. Changing the weight
//! of a running VM is one write — a live change.
//!
//! The group is managed from the vmctl side (the runtime facade), not by the
//! VMM: it is created and joined right after the VMM is spawned (moving a
//! process moves all its threads), rewritten on a live change, and removed
//! when the VM stops. Where no cpu controller is writable, nothing is
//! enforced and the runtime reports `live_cpu_weight: false`.

use std::path::{Path, PathBuf};

/// The parent group of every VM's group.
const PARENT: &str = "vmctl";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which cgroup hierarchy carries the cpu controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuController {
    /// cgroup v2: `cpu.weight` (1..=10000, default 100) — vmctl's own unit.
    V2(PathBuf),
    /// cgroup v1: `cpu.shares` (default 1024).
    V1(PathBuf),
}

/// cgroup v1 shares for a v2 weight (systemd's mapping: 100 ↔ 1024).
pub fn weight_to_shares(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / 100).clamp(2, 262_144)
}

/// Find the cpu controller in a `/proc/self/mounts` text: the cgroup2 mount
/// if its `cgroup.controllers` (read through `controllers_of`) lists `cpu`,
/// else a cgroup v1 mount with the `cpu` option.
pub fn find_controller(
    mounts: &str,
    controllers_of: impl Fn(&Path) -> Option<String>,
) -> Option<CpuController> {
    let mut v1 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, target, fstype, options, ..] = f[..] else {
            continue;
        };
        let target = PathBuf::from(target);
        match fstype {
            "cgroup2" => {
                let ctl = controllers_of(&target).unwrap_or_default();
                if ctl.split_whitespace().any(|c| c == "cpu") {
                    return Some(CpuController::V2(target));
                }
            }
            "cgroup" if options.split(',').any(|o| o == "cpu") => {
                v1.get_or_insert(CpuController::V1(target));
            }
            _ => {}
        }
    }
    v1
}

impl CpuController {
    /// The host's cpu controller, if there is one.
    pub fn detect() -> Option<Self> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        find_controller(&mounts, |p| {
            std::fs::read_to_string(p.join("cgroup.controllers")).ok()
        })
    }

    /// The host's cpu controller if vmctl may create groups under it (its
    /// `vmctl/` group, or else the controller's root, is writable) — checked
    /// with access(2), so nothing is written.
    pub fn usable() -> Option<Self> {
        let ctl = Self::detect()?;
        if let CpuController::V2(root) = &ctl {
            // Use the cpu controller only where the host already hands it to
            // child groups (systemd does): vmctl never changes the host's
            // root controller setup, which every other process shares.
            let sub = std::fs::read_to_string(root.join("cgroup.subtree_control")).ok()?;
            if !sub.split_whitespace().any(|c| c == "cpu") {
                return None;
            }
        }
        let parent = ctl.root().join(PARENT);
        let probe = if parent.is_dir() {
            parent
        } else {
            ctl.root().to_path_buf()
        };
        let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: access(2) reads a NUL-terminated path we own.
        (unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0).then_some(ctl)
    }

    fn root(&self) -> &Path {
        match self {
            CpuController::V2(p) | CpuController::V1(p) => p,
        }
    }

    /// The group of the VM whose directory is `vm_dir` (unique per state
    /// directory, so two labs with a VM of the same name do not share one).
    pub fn group(&self, name: &str, vm_dir: &Path) -> VmGroup {
        let key = std::fs::canonicalize(vm_dir).unwrap_or_else(|_| vm_dir.to_path_buf());
        let id = fnv1a(key.as_os_str().as_encoded_bytes());
        VmGroup {
            path: self.root().join(PARENT).join(format!("{name}-{id:016x}")),
            v2: matches!(self, CpuController::V2(_)),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One VM's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmGroup {
    pub path: PathBuf,
    v2: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl VmGroup {
    fn weight_file(&self) -> PathBuf {
        self.path
            .join(if self.v2 { "cpu.weight" } else { "cpu.shares" })
    }

    /// Create the group (and, on v2, enable the cpu controller for the
    /// children of vmctl's own `vmctl/` group — never the host's root).
    pub fn create(&self) -> Result<(), CgroupError> {
        std::fs::create_dir_all(&self.path).map_err(io(&self.path))?;
        if self.v2
            && let Some(parent) = self.path.parent()
        {
            // Already enabled, or not allowed: the weight write says.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu");
        }
        Ok(())
    }

    /// What the weight file holds for `weight` (1..=10000): the weight
    /// itself on v2, its shares on v1.
    pub fn file_value(&self, weight: u32) -> u64 {
        if self.v2 {
            u64::from(weight.clamp(1, 10_000))
        } else {
            weight_to_shares(weight)
        }
    }

    /// Whether process `pid` is in this group (its `/proc/PID/cgroup`).
    pub fn holds(&self, pid: i32) -> bool {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        text.lines().any(|l| {
            let rel = l
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .trim_start_matches('/');
            !rel.is_empty() && self.path.ends_with(rel)
        })
    }

    /// Set the VM's weight (1..=10000).
    pub fn set_weight(&self, weight: u32) -> Result<(), CgroupError> {
        let value = self.file_value(weight);
        let file = self.weight_file();
        std::fs::write(&file, value.to_string()).map_err(io(&file))
    }

    /// The raw value in the group's weight file (`cpu.weight` or
    /// `cpu.shares`).
    pub fn raw_weight(&self) -> Option<u64> {
        std::fs::read_to_string(self.weight_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Move a process (all its threads) into the group.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let file = self.path.join("cgroup.procs");
        std::fs::write(&file, pid.to_string()).map_err(io(&file))
    }

    /// Create the group, set the weight and move `pid` in.
    pub fn place(&self, pid: u32, weight: u32) -> Result<(), CgroupError> {
        self.create()?;
        self.set_weight(weight)?;
        self.add_process(pid)
    }

    /// Remove the group once it is empty. The VMM has exited by now, but the
    /// kernel may take a moment to release its tasks (rmdir says EBUSY), so
    /// retry briefly. Missing is fine; a group still busy after that is left
    /// for the next stop to remove (and logged).
    pub fn remove(&self) {
        for _ in 0..100 {
            match std::fs::remove_dir(&self.path) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cgroup not removed");
                    return;
                }
                _ => return,
            }
        }
        tracing::warn!(path = %self.path.display(), "cgroup still busy; not removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn finds_v2_with_cpu_else_v1_cpu_mount_not_cpuset_or_cpuacct() {
        let none = |_: &Path| Some("memory pids".to_string());
        assert_eq!(
            find_controller(HYBRID, none),
            Some(CpuController::V1("/sys/fs/cgroup/cpu".into()))
        );
        let with_cpu = |_: &Path| Some("cpuset cpu io memory".to_string());
        assert_eq!(
            find_controller(HYBRID, with_cpu),
            Some(CpuController::V2("/sys/fs/cgroup/unified".into()))
        );
        assert_eq!(find_controller("proc /proc proc rw 0 0\n", none), None);
        assert_eq!(find_controller("garbage\n\n  \n", none), None);
    }

    #[test]
    fn weights_map_to_shares_like_systemd() {
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(weight_to_shares(200), 2048);
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(10_000), 102_400);
        assert_eq!(weight_to_shares(0), 2);
    }

    #[test]
    fn groups_are_per_vm_dir() {
        let c = CpuController::V1("/cg".into());
        let a = c.group("web", Path::new("/labs/a/.vmctl/vms/web"));
        let b = c.group("web", Path::new("/labs/b/.vmctl/vms/web"));
        assert_ne!(a.path, b.path);
        assert!(a.path.starts_with("/cg/vmctl"));
        assert!(a.path.to_string_lossy().contains("/web-"));
    }
}
