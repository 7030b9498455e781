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

use crate::{Etcd, EtcdConfig, TlsFiles};

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

/// The certificates of a TLS cluster, made with the `openssl` command: a CA,
/// one server certificate for 127.0.0.1 that every member uses, and a client
/// certificate the members require.
#[derive(Debug, Clone)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Make them in `dir`.
    pub fn make(dir: &Path) -> Result<TestCerts, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run openssl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(key);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=vmctl-test-ca",
        ]);
        run(&ca)?;
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let ext = format!("{name}.ext");
            std::fs::write(
                dir.join(&ext),
                format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"),
            )
            .map_err(|e| e.to_string())?;
            let (k, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subj = format!("/CN=vmctl-test-{name}");
            let mut req = vec!["req"];
            req.extend(key);
            req.extend(["-keyout", &k, "-out", &csr, "-subj", &subj]);
            run(&req)?;
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ])?;
        }
        Ok(TestCerts {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        })
    }

    /// What a client needs: the CA and the client certificate.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
        }
    }
}

/// A running etcd cluster on 127.0.0.1, stopped (by pid) on drop.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    tls: Option<TestCerts>,
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
        EtcdCluster::start_or_skip_with(n, false)
    }

    /// Like `start_or_skip`, with client TLS when `tls`: `https://`
    /// endpoints, a client certificate required (`TestCerts`).
    pub fn start_or_skip_with(n: usize, tls: bool) -> Option<EtcdCluster> {
        let Some(bin) = etcd_binary() else {
            if std::env::var_os(REQUIRE_ETCD).is_some() {
                panic!(
                    "etcd is not installed and {REQUIRE_ETCD} is set (apt-get install etcd-server)"
                );
            }
            println!("skipped: etcd not installed (apt-get install etcd-server)");
            return None;
        };
        match EtcdCluster::start(&bin, n, tls) {
            Ok(c) => Some(c),
            Err(e) => panic!("cannot start a {n}-member etcd: {e}"),
        }
    }

    /// Start an `n`-member cluster with `bin` (client TLS when `tls`) and
    /// wait for a leader.
    pub fn start(bin: &Path, n: usize, tls: bool) -> Result<EtcdCluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("vmctl-etcd-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let tls = if tls {
            Some(TestCerts::make(dir.path())?)
        } else {
            None
        };
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
            tls,
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
        let client = format!("{}://127.0.0.1:{}", self.scheme(), m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&self.bin);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
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
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The certificates, for a TLS cluster.
    pub fn certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }

    /// A configuration for cluster name `cluster` over every member, with
    /// test-sized timeouts (dial 1 s, request 2 s, retries for 10 s) and,
    /// for a TLS cluster, the CA and client certificate.
    pub fn config(&self, cluster: &str) -> EtcdConfig {
        let mut c = EtcdConfig::new(self.endpoints(), cluster);
        c.dial_timeout = Duration::from_secs(1);
        c.request_timeout = Duration::from_secs(2);
        c.retry_for = Duration::from_secs(10);
        c.tls = self.tls.as_ref().map(TestCerts::files);
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
        cfg.tls = self.tls.as_ref().map(TestCerts::files);
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

    /// Turn etcd's auth on with a `root` user (role `root`) whose password
    /// is `password`; from then on every request needs credentials.
    pub fn enable_auth(&self, password: &str) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let endpoints = self.endpoints();
        let opts = match &self.tls {
            Some(t) => Some(
                etcd_client::ConnectOptions::new()
                    .with_tls(crate::tls::options(&t.files()).map_err(|e| e.to_string())?),
            ),
            None => None,
        };
        rt.block_on(async {
            let mut c = etcd_client::Client::connect(endpoints, opts).await?;
            c.user_add("root", password, None).await?;
            c.user_grant_role("root", "root").await?;
            c.auth_enable().await?;
            Ok::<_, etcd_client::Error>(())
        })
        .map_err(|e| format!("enabling auth: {e}"))
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
