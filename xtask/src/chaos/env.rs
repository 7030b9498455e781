//! The chaos test's world: a real 3-member etcd on 127.0.0.1
//! (`vmctl_cluster::testkit`), three SSH "hosts" that are network
//! namespaces with their own sshd and state directory
//! (`vmctl_hostrpc::testkit`, the same harness tests/cluster.rs uses), and a
//! lab file over them in two versions the scenarios alternate between, so
//! every apply has work: VMs added, removed and changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vmctl_cluster::testkit::EtcdCluster;
use vmctl_hostrpc::testkit::Hosts;

use super::ChaosError;
use super::proc::Proc;

/// The cluster's name in the lab file (its etcd key prefix).
pub const CLUSTER: &str = "chaos";
/// The lab's lock TTL: short, so a stopped coordinator loses its lease
/// quickly (scenario d).
pub const LOCK_TTL: Duration = Duration::from_secs(2);
/// Re-applies allowed before a run counts as not converged.
pub const MAX_ATTEMPTS: usize = 5;
/// The most one apply may take here (5 diag VMs over 3 hosts take seconds).
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(180);

/// One desired VM: name, cpus, memory in MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub name: &'static str,
    pub cpus: u64,
    pub memory_mib: u64,
    /// `host "…"` (pinned) or `None` (placed, spread over the racks).
    pub pin: Option<&'static str>,
}

const fn vm(name: &'static str, cpus: u64, pin: Option<&'static str>) -> Vm {
    Vm {
        name,
        cpus,
        memory_mib: 128,
        pin,
    }
}

/// The two versions of the lab. From one to the other: `web-1` changes
/// (1 → 2 CPUs), `cache` and `batch-a` go, `queue` and `batch-b` come.
pub const VERSIONS: [&[Vm]; 2] = [
    &[
        vm("db", 1, Some("h1")),
        vm("web-1", 1, None),
        vm("web-2", 1, None),
        vm("cache", 1, Some("h3")),
        vm("batch-a", 1, None),
    ],
    &[
        vm("db", 1, Some("h1")),
        vm("web-1", 2, None),
        vm("web-2", 1, None),
        vm("queue", 1, Some("h2")),
        vm("batch-b", 1, None),
    ],
];

pub struct Env {
    pub vmctl: PathBuf,
    pub etcd: EtcdCluster,
    pub hosts: Hosts,
    /// The lab directory: the KDL file and every vmctl run's log.
    pub dir: PathBuf,
    /// Which of [`VERSIONS`] the file holds now.
    pub version: usize,
    /// The host `db` is pinned to: the `kill-move` scenario moves it
    /// between h1 and h2 (both versions of the lab pin it here).
    pub db_host: &'static str,
    seq: usize,
}

impl Env {
    pub fn start(vmctl: &Path, dir: &Path) -> Result<Env, ChaosError> {
        let bin = vmctl_cluster::testkit::etcd_binary()
            .ok_or_else(|| ChaosError::Setup("etcd not installed (etcd-server)".into()))?;
        let etcd = EtcdCluster::start(&bin, 3, false).map_err(ChaosError::Setup)?;
        let hosts = Hosts::try_start(3, vmctl).map_err(ChaosError::Setup)?;
        std::fs::create_dir_all(dir.join("logs")).map_err(|source| ChaosError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let env = Env {
            vmctl: vmctl.to_path_buf(),
            etcd,
            hosts,
            dir: dir.to_path_buf(),
            version: 0,
            db_host: "h1",
            seq: 0,
        };
        env.write(0)?;
        Ok(env)
    }

    pub fn kdl_path(&self) -> PathBuf {
        self.dir.join("vmctl.kdl")
    }

    /// The lab file of version `v`.
    pub fn kdl(&self, v: usize) -> String {
        let mut kdl = format!(
            "cluster \"{CLUSTER}\" {{\n    state \"etcd\" endpoints=\"{}\" lock-ttl=\"{}s\"\n}}\n",
            self.etcd.endpoints().join(","),
            LOCK_TTL.as_secs()
        );
        for (h, rack) in self.hosts.hosts.iter().zip(["a", "b", "b"]) {
            kdl.push_str(&format!(
                "host \"{}\" {{\n    ssh \"{}\"\n    labels rack=\"{rack}\"\n    vmctl \"{}\"\n    state-dir \"{}\"\n}}\n",
                h.name,
                h.name,
                self.vmctl.display(),
                h.state_dir.display()
            ));
        }
        for vm in VERSIONS[v % 2] {
            let pin = if vm.name == "db" {
                Some(self.db_host)
            } else {
                vm.pin
            };
            let place = match pin {
                Some(h) => format!("    host \"{h}\"\n"),
                None => "    placement {\n        spread \"rack\"\n    }\n".to_string(),
            };
            kdl.push_str(&format!(
                "vm \"{}\" {{\n    os \"diag\"\n    cpus {}\n    memory \"{}MiB\"\n{place}}}\n",
                vm.name, vm.cpus, vm.memory_mib
            ));
        }
        kdl
    }

    pub fn write(&self, v: usize) -> Result<(), ChaosError> {
        std::fs::write(self.kdl_path(), self.kdl(v)).map_err(|source| ChaosError::Io {
            path: self.kdl_path(),
            source,
        })
    }

    /// Switch the file to the other version: the next apply has work.
    pub fn flip(&mut self) -> Result<(), ChaosError> {
        self.version = (self.version + 1) % 2;
        self.write(self.version)
    }

    pub fn desired(&self) -> &'static [Vm] {
        VERSIONS[self.version % 2]
    }

    /// `vmctl ARGS -f FILE`, reaching the hosts through the harness's
    /// ssh_config.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.vmctl);
        c.args(args)
            .arg("-f")
            .arg(self.kdl_path())
            .current_dir(&self.dir)
            .env("VMCTL_SSH_CONFIG", &self.hosts.ssh_config)
            .env_remove("VMCTL_STATE_DIR")
            .stdin(Stdio::null());
        c
    }

    /// A fresh log file for `what`.
    pub fn log(&mut self, what: &str) -> PathBuf {
        self.seq += 1;
        self.dir
            .join("logs")
            .join(format!("{:03}-{what}.log", self.seq))
    }

    /// Start `vmctl apply --auto-approve`.
    pub fn spawn_apply(&mut self, what: &str) -> Result<Proc, ChaosError> {
        self.spawn(what, &["apply", "--auto-approve"])
    }

    /// Start `vmctl ARGS`.
    pub fn spawn(&mut self, what: &str, args: &[&str]) -> Result<Proc, ChaosError> {
        let log = self.log(what);
        Proc::spawn(self.cmd(args), &format!("vmctl {}", args.join(" ")), &log)
    }

    /// Run `vmctl ARGS` to its end (bounded); its exit code and output.
    pub fn run(
        &mut self,
        what: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(Option<i32>, String), ChaosError> {
        let log = self.log(what);
        let mut p = Proc::spawn(self.cmd(args), &format!("vmctl {}", args.join(" ")), &log)?;
        let status = p.finish(timeout)?;
        Ok((status.code(), p.text()))
    }

    /// Apply until `vmctl plan --detailed-exitcode` says nothing is left
    /// (exit 0), at most [`MAX_ATTEMPTS`] applies; the applies it took, or
    /// `None` if it never converged (with the last plan's output).
    pub fn converge(&mut self) -> Result<Result<usize, String>, ChaosError> {
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let (_, _) = self.run("reapply", &["apply", "--auto-approve"], APPLY_TIMEOUT)?;
            let (code, text) = self.run(
                "plan",
                &["plan", "--detailed-exitcode"],
                Duration::from_secs(120),
            )?;
            if code == Some(0) {
                return Ok(Ok(attempt));
            }
            last = text;
        }
        Ok(Err(last))
    }
}
