//! Test harness: a real etcd cluster on 127.0.0.1 (Debian's `etcd-server`,
//! binary `etcd`), with free ports and data directories in a tempdir. Tests
//! can find the leader, `kill -9` a member and restart it; everything started
//! is stopped by pid when the harness is dropped. Hidden from the docs: for
//! this crate's tests and the lead's scale-out tests in other crates.
//!
//! Where `etcd` is not installed a test prints that it was skipped, unless
//! `VMCTL_REQUIRE_ETCD` is set (CI), which makes it fail instead.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Etcd, EtcdConfig};

/// Set (to anything) to make a missing `etcd` fail the test.
pub const REQUIRE_ETCD: &str = "VMCTL_REQUIRE_ETCD";

/// How long a fresh cluster may take to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `etcd` binary on PATH, if any.
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// One member.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster on 127.0.0.1, stopped (by pid) on drop.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl EtcdCluster {
    /// Start an `n`-member cluster and wait until it has a leader; `None`
    /// (after printing `skipped: …`) where `etcd` is not installed. Panics
    /// — failing the test — when it cannot start, or when `etcd` is missing
    /// and `VMCTL_REQUIRE_ETCD` is set.
    pub fn start_or_skip(n: usize) -> Option<EtcdCluster> {
        let Some(bin) = etcd_binary() else {
            if std::env::var_os(REQUIRE_ETCD).is_some() {
                panic!(
                    "etcd is not installed and {REQUIRE_ETCD} is set (apt-get install etcd-server)"
                );
            }
            println!("skipped: etcd not installed (apt-get install etcd-server)");
            return None;
        };
        match EtcdCluster::start(&bin, n) {
            Ok(c) => Some(c),
            Err(e) => panic!("cannot start a {n}-member etcd: {e}"),
        }
    }

    /// Start an `n`-member cluster with `bin` and wait for a leader.
    pub fn start(bin: &Path, n: usize) -> Result<EtcdCluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("vmctl-etcd-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        // Hold every port until all are chosen so none is picked twice.
        let listeners: Vec<TcpListener> = (0..2 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot find a free port: {e}"))?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot find a free port: {e}"))?;
        drop(listeners);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            token: format!("vmctl-test-{}-{}", std::process::id(), ports[0]),
            dir,
            bin: bin.to_path_buf(),
            members,
            initial_cluster,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        c.wait_healthy(START_TIMEOUT)?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log_path = self.dir.path().join(format!("{}.log", m.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// A configuration for cluster name `cluster` over every member, with
    /// test-sized timeouts (dial 1 s, request 2 s, retries for 10 s).
    pub fn config(&self, cluster: &str) -> EtcdConfig {
        let mut c = EtcdConfig::new(self.endpoints(), cluster);
        c.dial_timeout = Duration::from_secs(1);
        c.request_timeout = Duration::from_secs(2);
        c.retry_for = Duration::from_secs(10);
        c
    }

    /// The member process ids (None: killed).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Where the members' data and logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn status_of(&self, i: usize) -> Result<(u64, u64), String> {
        let mut cfg = EtcdConfig::new(vec![self.endpoint(i)], "status");
        cfg.dial_timeout = Duration::from_millis(500);
        cfg.request_timeout = Duration::from_secs(1);
        cfg.retry_for = Duration::ZERO;
        let e = Etcd::connect(cfg).map_err(|e| e.to_string())?;
        e.member_status().map_err(|e| e.to_string())
    }

    /// Wait until every running member sees the same leader.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let seen: Result<Vec<u64>, String> = (0..self.members.len())
                .filter(|&i| self.members[i].child.is_some())
                .map(|i| {
                    self.status_of(i).and_then(|(_, l)| {
                        if l == 0 {
                            Err("no leader".into())
                        } else {
                            Ok(l)
                        }
                    })
                })
                .collect();
            match seen {
                Ok(l) if l.windows(2).all(|w| w[0] == w[1]) => return Ok(()),
                Ok(_) => {}
                Err(e) if start.elapsed() > timeout => {
                    return Err(format!(
                        "etcd not healthy after {timeout:?}: {e} (logs in {})",
                        self.dir.path().display()
                    ));
                }
                Err(_) => {}
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "etcd members disagree on the leader after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the current leader.
    pub fn leader(&self) -> Result<usize, String> {
        for i in (0..self.members.len()).filter(|&i| self.members[i].child.is_some()) {
            let (_, leader) = self.status_of(i)?;
            for j in (0..self.members.len()).filter(|&j| self.members[j].child.is_some()) {
                if self.status_of(j)?.0 == leader {
                    return Ok(j);
                }
            }
        }
        Err("no running member is the leader".into())
    }

    /// `kill -9` member `i` (by pid) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            kill9(&mut c);
        }
    }

    /// Start a killed member again on its data directory.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }
}

fn kill9(c: &mut Child) {
    // Child::kill is SIGKILL to this pid.
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                kill9(&mut c);
            }
        }
    }
}
