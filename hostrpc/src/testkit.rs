//! SSH "hosts" on this one machine, for tests of vmctl across hosts
//! (docs/scale-out.md) and `cargo xtask chaos`, which share this one copy
//! (hidden from the docs: test support, not API). Each host is a network namespace the test makes
//! (`vmctl-h<pid>-<seq>`), with its own `sshd` listening on 127.0.0.1:22 of
//! that namespace (own host key, root login with a test-generated key only,
//! no PAM) and its own state directory. The ssh client reaches it without any
//! veth or address outside loopback: the `ssh_config` written here has
//! `ProxyCommand ip netns exec NS socat - TCP:127.0.0.1:22`, and host keys
//! are checked strictly against a `known_hosts` written here.
//!
//! [`Hosts`]' `Drop` kills whatever runs in the namespaces (VMMs, sshd and
//! its sessions) by pid and deletes the namespaces, also when a test fails.
//! Needs root, `sshd` (openssh-server), `ssh`/`ssh-keygen`, `socat` and
//! `ip`: without them [`Hosts::start`] skips (returns `None`), or fails when
//! `VMCTL_REQUIRE_KVM=1` (CI, where they are installed); [`Hosts::try_start`]
//! says why instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{RemoteBackend, SshTarget, Timeouts};

/// One "host".
pub struct Host {
    /// `h1`, `h2`, ...: its `Host` in the ssh_config.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its vmctl state directory.
    pub state_dir: PathBuf,
    sshd: Option<Child>,
    dir: PathBuf,
}

/// Several hosts, one ssh_config.
pub struct Hosts {
    pub hosts: Vec<Host>,
    /// The ssh_config naming every host.
    pub ssh_config: PathBuf,
    /// Every namespace made so far (deleted on drop even if start failed
    /// half-way).
    made: Vec<String>,
    ip: &'static str,
    /// The vmctl binary each host runs (`vmctl host-rpc`).
    vmctl: PathBuf,
    _dir: tempfile::TempDir,
}

fn find(cands: &[&'static str]) -> Option<&'static str> {
    cands.iter().copied().find(|p| Path::new(p).exists())
}

fn ip_path() -> Option<&'static str> {
    find(&["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"])
}

/// What is missing to run the hosts, if anything.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    for (what, cands) in [
        (
            "sshd (apt-get install openssh-server)",
            &["/usr/sbin/sshd"][..],
        ),
        ("ssh (openssh-client)", &["/usr/bin/ssh"][..]),
        ("ssh-keygen (openssh-client)", &["/usr/bin/ssh-keygen"][..]),
        ("socat", &["/usr/bin/socat"][..]),
        (
            "ip (iproute2)",
            &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"][..],
        ),
    ] {
        if find(cands).is_none() {
            return Some(format!("needs {what}"));
        }
    }
    None
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn keygen(path: &Path) -> Result<String, String> {
    run(Command::new("/usr/bin/ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vmctl-test", "-f"])
        .arg(path))?;
    let pubkey = std::fs::read_to_string(path.with_extension("pub"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(pubkey.trim().to_string())
}

impl Hosts {
    /// `n` hosts running `vmctl`, each with sshd ready to accept the
    /// test's key; `None` when this machine cannot run them (printed as a
    /// skip). Panics (failing the test) when they cannot start.
    pub fn start(n: usize, vmctl: &Path) -> Option<Hosts> {
        if let Some(why) = missing() {
            if std::env::var_os("VMCTL_REQUIRE_KVM").is_some_and(|v| v == "1") {
                panic!("ssh hosts: {why} (VMCTL_REQUIRE_KVM=1: CI must run this)");
            }
            println!("skipped: ssh hosts: {why}");
            return None;
        }
        match Hosts::try_start(n, vmctl) {
            Ok(h) => Some(h),
            Err(e) => panic!("starting {n} ssh hosts: {e}"),
        }
    }

    /// `n` hosts running `vmctl`, or why not (something missing, or a
    /// failed start; whatever was started is stopped again).
    pub fn try_start(n: usize, vmctl: &Path) -> Result<Hosts, String> {
        if let Some(why) = missing() {
            return Err(why);
        }
        let ip = ip_path().ok_or("needs ip (iproute2)")?;
        let dir = tempfile::Builder::new()
            .prefix("vmctl-hosts-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let mut hosts = Hosts {
            hosts: Vec::new(),
            ssh_config: dir.path().join("ssh_config"),
            made: Vec::new(),
            ip,
            vmctl: vmctl.to_path_buf(),
            _dir: dir,
        };
        hosts.setup(n)?;
        Ok(hosts)
    }

    fn root(&self) -> &Path {
        self._dir.path()
    }

    fn setup(&mut self, n: usize) -> Result<(), String> {
        let root = self.root().to_path_buf();
        let client_key = root.join("id_ed25519");
        let client_pub = keygen(&client_key)?;
        let authorized = root.join("authorized_keys");
        std::fs::write(&authorized, format!("{client_pub}\n")).map_err(|e| e.to_string())?;
        // sshd's privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        let mut ssh_config = String::new();
        let mut known_hosts = String::new();
        // Tests of one binary run in one process, side by side.
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        for i in 1..=n {
            let name = format!("h{i}");
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let netns = format!("vmctl-h{}-{seq}", std::process::id());
            run(Command::new(self.ip).args(["netns", "add", &netns]))?;
            self.made.push(netns.clone());
            run(Command::new(self.ip).args(["-n", &netns, "link", "set", "lo", "up"]))?;
            let hdir = root.join(&name);
            std::fs::create_dir_all(&hdir).map_err(|e| e.to_string())?;
            let host_key = hdir.join("host_key");
            let host_pub = keygen(&host_key)?;
            let cfg = hdir.join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "ListenAddress 127.0.0.1:22\n\
                     HostKey {key}\n\
                     PidFile none\n\
                     AuthorizedKeysFile {auth}\n\
                     PermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     X11Forwarding no\n\
                     AllowTcpForwarding no\n\
                     PrintMotd no\n\
                     LogLevel VERBOSE\n",
                    key = host_key.display(),
                    auth = authorized.display(),
                ),
            )
            .map_err(|e| e.to_string())?;
            let log = std::fs::File::create(hdir.join("sshd.log")).map_err(|e| e.to_string())?;
            let sshd = Command::new(self.ip)
                .args(["netns", "exec", &netns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("sshd: {e}"))?;
            let state_dir = hdir.join("state");
            self.hosts.push(Host {
                name: name.clone(),
                netns: netns.clone(),
                state_dir,
                sshd: Some(sshd),
                dir: hdir,
            });
            ssh_config.push_str(&format!(
                "Host {name}\n\
                 \x20 HostName 127.0.0.1\n\
                 \x20 User root\n\
                 \x20 IdentityFile {key}\n\
                 \x20 IdentitiesOnly yes\n\
                 \x20 ProxyCommand {ip} netns exec {netns} /usr/bin/socat - TCP:127.0.0.1:22\n\
                 \x20 HostKeyAlias {name}\n\
                 \x20 StrictHostKeyChecking yes\n\
                 \x20 UserKnownHostsFile {known}\n\
                 \x20 GlobalKnownHostsFile /dev/null\n\
                 \x20 BatchMode yes\n\
                 \x20 LogLevel ERROR\n",
                key = client_key.display(),
                ip = self.ip,
                known = root.join("known_hosts").display(),
            ));
            let mut fields = host_pub.split_whitespace();
            let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
                return Err(format!("odd host key {host_pub}"));
            };
            known_hosts.push_str(&format!("{name} {kind} {key}\n"));
        }
        std::fs::write(&self.ssh_config, ssh_config).map_err(|e| e.to_string())?;
        std::fs::write(root.join("known_hosts"), known_hosts).map_err(|e| e.to_string())?;
        // Ready when ssh gets in (bounded).
        for h in &self.hosts {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = Command::new("/usr/bin/ssh")
                    .arg("-F")
                    .arg(&self.ssh_config)
                    .args([&h.name, "true"])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("ssh: {e}"))?;
                if out.status.success() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{}: ssh never got in: {}\nsshd log:\n{}",
                        h.name,
                        String::from_utf8_lossy(&out.stderr),
                        h.sshd_log()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// How to reach `name`'s vmctl over ssh (the binary given at start).
    pub fn target(&self, name: &str) -> SshTarget {
        let h = self.host(name);
        SshTarget {
            vmctl: self.vmctl.to_string_lossy().into_owned(),
            ssh_config: Some(self.ssh_config.clone()),
            ..SshTarget::new(&h.name, h.state_dir.to_string_lossy())
        }
    }

    /// A [`RemoteBackend`] for `name` over ssh.
    pub fn backend(
        &self,
        name: &str,
        token: Option<u64>,
        timeouts: Timeouts,
    ) -> Result<RemoteBackend, vmctl_planner::BackendError> {
        RemoteBackend::ssh(name, &self.target(name), token, timeouts)
    }

    /// Kill `name`'s sshd listener (sessions already open live on): new
    /// connections are refused.
    pub fn kill_sshd(&mut self, name: &str) {
        if let Some(h) = self.hosts.iter_mut().find(|h| h.name == name)
            && let Some(mut c) = h.sshd.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Take `name`'s loopback down: its sshd, and open connections to it,
    /// go silent (nothing answers, nothing is refused).
    pub fn link_down(&self, name: &str) {
        self.try_link(name, false).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Set `name`'s loopback up (`up`) or down, or say why not.
    pub fn try_link(&self, name: &str, up: bool) -> Result<(), String> {
        let ns = &self
            .hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| format!("no host {name}"))?
            .netns;
        let state = if up { "up" } else { "down" };
        run(Command::new(self.ip).args(["-n", ns, "link", "set", "lo", state]))
    }

    /// Pids of every process in `netns`.
    fn pids_in(&self, netns: &str) -> Vec<i32> {
        Command::new(self.ip)
            .args(["netns", "pids", netns])
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Host {
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            for pid in vmm_pids_under(&h.state_dir) {
                // SAFETY: kill(2) of a VMM this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(mut c) = h.sshd.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for ns in self.made.clone() {
            // sshd's sessions, host-rpc servers, socat: all started in the
            // namespace by this test.
            for pid in self.pids_in(&ns) {
                // SAFETY: kill(2) of a process in this test's namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = Command::new(self.ip)
                .args(["netns", "del", &ns])
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// VMM processes (not zombies) whose command line names `state`: the VMs
/// that state directory started.
pub fn vmm_pids_under(state: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    let needle = state.to_string_lossy().to_string();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if cmd.contains("__vmm") && cmd.contains(&needle) && !zombie {
            out.push(pid);
        }
    }
    out
}
