//! The coordinator side: [`RemoteBackend`] is the planner's [`Backend`] for
//! one host, spoken to over a child process's stdin and stdout — `ssh HOST
//! vmctl host-rpc --state-dir DIR` ([`SshTarget`]), or any argv that runs a
//! host-rpc server (tests run `vmctl host-rpc` directly).
//!
//! One request at a time, under a mutex. Every mutating call carries the
//! fencing token the backend holds. A host that cannot be reached, whose
//! connection died or that does not answer within the call's timeout gives a
//! `BackendError` saying `host NAME unreachable: ...`; the connection is then
//! dropped (its child killed) and the next call connects again.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use vmctl_planner::{
    Backend, BackendError, Capabilities, CopyReport, Desired, ObservedNetwork, ObservedState,
    ObservedVm,
};
use vmctl_spec::{NetworkSpec, VmSpec};

use crate::lines::{Line, read_line};
use crate::protocol::{ErrorKind, Hello, MAX_LINE, Op, PROTOCOL_VERSION, Request, Response};

/// How long a call may wait for its answer before the host counts as
/// unreachable. Generous: they bound a hang, they do not pace work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Starting the connection and `hello` (ssh's own connect included).
    pub connect: Duration,
    /// Observations and `capabilities`.
    pub read: Duration,
    /// Start, stop, destroy, hot-add, resize, weight, record, networks.
    pub action: Duration,
    /// Create, restart and copy (disk files are written).
    pub long: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(60),
            action: Duration::from_secs(300),
            long: Duration::from_secs(3600),
        }
    }
}

impl Timeouts {
    fn for_op(&self, op: &Op) -> Duration {
        match op {
            Op::Hello { .. } => self.connect,
            Op::Observe | Op::ObserveVm { .. } | Op::ObserveNetwork { .. } | Op::Capabilities => {
                self.read
            }
            Op::Create { .. } | Op::Restart { .. } | Op::Copy { .. } => self.long,
            _ => self.action,
        }
    }
}

/// How to reach a host's vmctl over ssh: `ssh -T -o BatchMode=yes -o
/// ConnectTimeout=5 -o ServerAliveInterval=5 -o ServerAliveCountMax=3
/// [-F CONFIG] [-i KEY] DESTINATION -- VMCTL host-rpc --state-dir DIR`.
///
/// The keepalives bound how long a host whose link died mid-call can hold
/// an apply: ssh gives up after ~15 s of silence and the call fails as
/// `unreachable`, instead of waiting out the call's own timeout (up to 300 s
/// for an action; found by `cargo xtask chaos`, link-cut).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// ssh's destination (`root@10.0.0.11`, or a `Host` of `ssh_config`).
    pub destination: String,
    /// vmctl's path on the host.
    pub vmctl: String,
    /// The state directory on the host.
    pub state_dir: String,
    /// An ssh_config file (`-F`).
    pub ssh_config: Option<PathBuf>,
    /// An identity file (`-i`).
    pub identity: Option<PathBuf>,
    /// The ssh program (default `ssh`).
    pub ssh: String,
}

impl SshTarget {
    pub fn new(destination: impl Into<String>, state_dir: impl Into<String>) -> Self {
        SshTarget {
            destination: destination.into(),
            vmctl: "vmctl".into(),
            state_dir: state_dir.into(),
            ssh_config: None,
            identity: None,
            ssh: "ssh".into(),
        }
    }

    /// The command line (program first).
    pub fn argv(&self) -> Vec<OsString> {
        self.argv_running(&["host-rpc", "--state-dir", self.state_dir.as_str()])
    }

    /// The command line that runs `vmctl ARGS...` on the host instead of
    /// `host-rpc` (a disk transfer of `vmctl move`).
    pub fn argv_running(&self, args: &[&str]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            self.ssh.clone().into(),
            "-T".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=5".into(),
            "-o".into(),
            "ServerAliveInterval=5".into(),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
        ];
        if let Some(f) = &self.ssh_config {
            v.push("-F".into());
            v.push(f.into());
        }
        if let Some(k) = &self.identity {
            v.push("-i".into());
            v.push(k.into());
        }
        v.push("--".into());
        v.push(self.destination.clone().into());
        // ssh joins the rest into one command line for the remote shell.
        let remote = std::iter::once(self.vmctl.as_str())
            .chain(args.iter().copied())
            .map(shell_quote)
            .collect::<Vec<_>>()
            .join(" ");
        v.push(remote.into());
        v
    }
}

/// `s` as one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How much of the server's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// How one exchange failed.
enum CallError {
    /// The request could not be written: the server never saw it, so it is
    /// safe to send it again on a new connection.
    NotSent(String),
    Failed(BackendError),
}

/// One live connection.
struct Conn {
    child: Child,
    stdin: ChildStdin,
    /// Answer lines, read by a thread (so a read can time out).
    lines: Receiver<Result<Vec<u8>, String>>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    /// The thread copying stderr into `stderr`.
    stderr_reader: std::thread::JoinHandle<()>,
}

impl Conn {
    fn stderr_tail(&self) -> String {
        let tail = match self.stderr.lock() {
            Ok(t) => t.iter().copied().collect::<Vec<u8>>(),
            Err(_) => Vec::new(),
        };
        String::from_utf8_lossy(&tail).trim().to_string()
    }

    /// Close the child's stdin (a server ends at EOF); kill it if it does
    /// not exit promptly.
    fn close(mut self) {
        drop(self.stdin);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server is known to be gone (or out of step) before a request is
    /// sent: its output ended, it exited, or it sent a line nobody asked for.
    fn is_dead(&mut self) -> bool {
        use std::sync::mpsc::TryRecvError;
        matches!(self.child.try_wait(), Ok(Some(_)))
            || !matches!(self.lines.try_recv(), Err(TryRecvError::Empty))
    }

    /// Kill the child and return what it wrote to stderr. Waits a little for
    /// the reader to reach the end (a grandchild such as an ssh
    /// ProxyCommand may hold the pipe open longer).
    fn kill_for_tail(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.stderr_reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stderr_tail()
    }
}

struct Inner {
    conn: Option<Conn>,
    next_id: u64,
    token: Option<u64>,
}

/// The planner's [`Backend`] for one remote host.
pub struct RemoteBackend {
    host: String,
    argv: Vec<OsString>,
    timeouts: Timeouts,
    inner: Mutex<Inner>,
    hello: Hello,
    capabilities: Capabilities,
}

impl std::fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBackend")
            .field("host", &self.host)
            .field("argv", &self.argv)
            .finish_non_exhaustive()
    }
}

fn unreachable(host: &str, why: impl std::fmt::Display) -> BackendError {
    BackendError::new(format!("host {host} unreachable: {why}"))
}

impl RemoteBackend {
    /// Connect to `host` (its name, for messages) by running `argv`, say
    /// hello and read its capabilities. `token` is the fencing token every
    /// mutating call carries (`None`: mutating calls are refused by the
    /// host).
    pub fn connect(
        host: impl Into<String>,
        argv: Vec<OsString>,
        token: Option<u64>,
        timeouts: Timeouts,
    ) -> Result<Self, BackendError> {
        let host = host.into();
        if argv.is_empty() {
            return Err(BackendError::new(format!(
                "host {host}: empty command line"
            )));
        }
        let mut inner = Inner {
            conn: None,
            next_id: 1,
            token,
        };
        let hello = Self::open(&host, &argv, &timeouts, &mut inner)?;
        let mut rb = RemoteBackend {
            host,
            argv,
            timeouts,
            inner: Mutex::new(inner),
            hello,
            capabilities: Capabilities::none(),
        };
        rb.capabilities = rb.call(Op::Capabilities)?;
        Ok(rb)
    }

    /// Connect over ssh ([`SshTarget::argv`]).
    pub fn ssh(
        host: impl Into<String>,
        target: &SshTarget,
        token: Option<u64>,
        timeouts: Timeouts,
    ) -> Result<Self, BackendError> {
        Self::connect(host, target.argv(), token, timeouts)
    }

    /// The host's name, as given.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What the host said in `hello` (protocol, vmctl version, host name,
    /// capacity) on the first connection.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The fencing token mutating calls carry from now on.
    pub fn set_token(&self, token: Option<u64>) {
        if let Ok(mut i) = self.inner.lock() {
            i.token = token;
        }
    }

    pub fn token(&self) -> Option<u64> {
        self.inner.lock().ok().and_then(|i| i.token)
    }

    /// Say hello again (a round trip that touches no VM; reconnects if the
    /// connection was lost).
    pub fn ping(&self) -> Result<Hello, BackendError> {
        self.call(Op::Hello {
            client: env!("CARGO_PKG_VERSION").into(),
        })
    }

    /// Start the child and say hello; `inner.conn` is set on success.
    fn open(
        host: &str,
        argv: &[OsString],
        timeouts: &Timeouts,
        inner: &mut Inner,
    ) -> Result<Hello, BackendError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| BackendError::new(format!("host {host}: empty command line")))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                unreachable(
                    host,
                    format!("cannot run {}: {e}", program.to_string_lossy()),
                )
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(unreachable(host, "the child has no pipes"));
        };
        let (tx, rx) = channel();
        let name = host.to_string();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let msg = match read_line(&mut r, MAX_LINE) {
                    Ok(Line::Line(l)) => Ok(l),
                    Ok(Line::Eof) => Err("the connection closed".to_string()),
                    Ok(Line::TooLong(n)) => {
                        Err(format!("an answer of {n} bytes is over the limit"))
                    }
                    Err(e) => Err(format!("reading the connection: {e}")),
                };
                let last = msg.is_err();
                if tx.send(msg).is_err() || last {
                    return;
                }
            }
        });
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let t2 = Arc::clone(&tail);
        let stderr_reader = std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        for l in text.lines() {
                            tracing::debug!(host = %name, "remote: {l}");
                        }
                        if let Ok(mut t) = t2.lock() {
                            t.extend(&buf[..n]);
                            let over = t.len().saturating_sub(STDERR_TAIL);
                            t.drain(..over);
                        }
                    }
                }
            }
        });
        inner.conn = Some(Conn {
            child,
            stdin,
            lines: rx,
            stderr: tail,
            stderr_reader,
        });
        let hello: Hello = Self::exchange(
            host,
            timeouts,
            inner,
            Op::Hello {
                client: env!("CARGO_PKG_VERSION").into(),
            },
        )
        .map_err(|e| {
            // Whatever went wrong, this connection is not used.
            let tail = inner
                .conn
                .take()
                .map(Conn::kill_for_tail)
                .unwrap_or_default();
            match e {
                CallError::NotSent(why) if tail.is_empty() => unreachable(host, why),
                CallError::NotSent(why) => unreachable(host, format!("{why}; it said: {tail}")),
                CallError::Failed(e) => e,
            }
        })?;
        if hello.protocol != PROTOCOL_VERSION {
            if let Some(c) = inner.conn.take() {
                c.kill();
            }
            return Err(BackendError::new(format!(
                "host {host} speaks host-rpc protocol {}, this vmctl {PROTOCOL_VERSION}",
                hello.protocol
            )));
        }
        Ok(hello)
    }

    /// One request and its answer on the open connection. A transport
    /// failure or timeout kills the connection.
    fn exchange<T: DeserializeOwned>(
        host: &str,
        timeouts: &Timeouts,
        inner: &mut Inner,
        op: Op,
    ) -> Result<T, CallError> {
        let id = inner.next_id;
        inner.next_id += 1;
        let op_name = op.name();
        let timeout = timeouts.for_op(&op);
        // Mutating calls carry the token, and so does `hello`: it raises
        // the host's fence as soon as this coordinator connects.
        let token = if op.is_mutating() || matches!(op, Op::Hello { .. }) {
            inner.token
        } else {
            None
        };
        let mut line = Request { id, token, op }.encode();
        line.push('\n');
        let Some(conn) = inner.conn.as_mut() else {
            return Err(CallError::NotSent("not connected".into()));
        };
        let sent = conn
            .stdin
            .write_all(line.as_bytes())
            .and_then(|()| conn.stdin.flush());
        let answer = match sent {
            // The server closed its input: it read nothing of this request.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return Err(CallError::NotSent(format!("sending {op_name}: {e}")));
            }
            Err(e) => Err(format!("sending {op_name}: {e}")),
            Ok(()) => match conn.lines.recv_timeout(timeout) {
                Ok(Ok(l)) => Ok(l),
                Ok(Err(why)) => Err(why),
                Err(RecvTimeoutError::Timeout) => {
                    Err(format!("no answer to {op_name} within {timeout:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => Err("the connection closed".to_string()),
            },
        };
        let fail = |inner: &mut Inner, why: String| {
            let Some(conn) = inner.conn.take() else {
                return unreachable(host, why);
            };
            let tail = conn.kill_for_tail();
            if tail.is_empty() {
                unreachable(host, why)
            } else {
                unreachable(host, format!("{why}; it said: {tail}"))
            }
        };
        let line = match answer {
            Ok(l) => l,
            Err(why) => return Err(CallError::Failed(fail(inner, why))),
        };
        let resp = match Response::decode(&line) {
            Ok(r) => r,
            Err(e) => {
                return Err(CallError::Failed(fail(
                    inner,
                    format!("bad answer to {op_name}: {e}"),
                )));
            }
        };
        if resp.id != Some(id) {
            // A stray or late answer: this connection is out of step.
            let why = match &resp.result {
                Err(e) => format!("answer for id {:?} instead of {id}: {e}", resp.id),
                Ok(_) => format!("answer for id {:?} instead of {id}", resp.id),
            };
            return Err(CallError::Failed(fail(inner, why)));
        }
        let result = match resp.result {
            Ok(v) => serde_json::from_value(v).map_err(|e| {
                BackendError::new(format!(
                    "host {host}: cannot read the answer to {op_name}: {e}"
                ))
            }),
            Err(e) => Err(BackendError::new(match e.kind {
                ErrorKind::Backend => format!("host {host}: {}", e.message),
                kind => format!(
                    "host {host}: {op_name} refused ({}): {}",
                    kind.as_str(),
                    e.message
                ),
            })),
        };
        result.map_err(CallError::Failed)
    }

    /// One call, connecting first when the last connection was lost. A
    /// request the server never read (its connection had died) is sent once
    /// more on a new connection; anything else is not retried here (the
    /// apply engine re-observes before acting).
    fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T, BackendError> {
        let mut inner = self.inner.lock().map_err(|_| {
            BackendError::new(format!("host {}: connection lock poisoned", self.host))
        })?;
        let mut last = String::new();
        for _ in 0..2 {
            if inner.conn.as_mut().is_some_and(Conn::is_dead)
                && let Some(c) = inner.conn.take()
            {
                c.kill();
            }
            if inner.conn.is_none() {
                Self::open(&self.host, &self.argv, &self.timeouts, &mut inner)?;
            }
            match Self::exchange(&self.host, &self.timeouts, &mut inner, op.clone()) {
                Ok(v) => return Ok(v),
                Err(CallError::Failed(e)) => return Err(e),
                Err(CallError::NotSent(why)) => {
                    tracing::debug!(host = %self.host, "connection lost ({why}); connecting again");
                    if let Some(c) = inner.conn.take() {
                        c.kill();
                    }
                    last = why;
                }
            }
        }
        Err(unreachable(&self.host, last))
    }
}

impl Drop for RemoteBackend {
    fn drop(&mut self) {
        let conn = match self.inner.get_mut() {
            Ok(i) => i.conn.take(),
            Err(p) => p.into_inner().conn.take(),
        };
        if let Some(c) = conn {
            c.close();
        }
    }
}

impl Backend for RemoteBackend {
    fn observe(&self) -> Result<ObservedState, BackendError> {
        self.call(Op::Observe)
    }

    fn observe_vm(&self, name: &str) -> Result<Option<ObservedVm>, BackendError> {
        self.call(Op::ObserveVm { name: name.into() })
    }

    fn observe_network(&self, name: &str) -> Result<Option<ObservedNetwork>, BackendError> {
        self.call(Op::ObserveNetwork { name: name.into() })
    }

    /// As the host said when the backend connected (a host's capabilities do
    /// not change while it runs one vmctl).
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        self.call(Op::Create { spec: spec.clone() })
    }

    fn start(&self, name: &str) -> Result<(), BackendError> {
        self.call(Op::Start { name: name.into() })
    }

    fn stop(&self, name: &str) -> Result<(), BackendError> {
        self.call(Op::Stop { name: name.into() })
    }

    fn restart(&self, old: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        self.call(Op::Restart {
            old: old.clone(),
            new: new.clone(),
        })
    }

    fn destroy(&self, name: &str, delete_external_disks: bool) -> Result<(), BackendError> {
        self.call(Op::Destroy {
            name: name.into(),
            delete_external_disks,
        })
    }

    fn hot_add_cpu(&self, name: &str, cpus: u32) -> Result<(), BackendError> {
        self.call(Op::HotAddCpu {
            name: name.into(),
            cpus,
        })
    }

    fn hot_add_memory(&self, name: &str, memory_mib: u64) -> Result<(), BackendError> {
        self.call(Op::HotAddMemory {
            name: name.into(),
            memory_mib,
        })
    }

    fn resize_disk(&self, name: &str, disk: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.call(Op::ResizeDisk {
            name: name.into(),
            disk: disk.into(),
            size_bytes,
        })
    }

    fn set_cpu_weight(&self, name: &str, weight: u32) -> Result<(), BackendError> {
        self.call(Op::SetCpuWeight {
            name: name.into(),
            weight,
        })
    }

    fn copy(&self, source: &str, new: &VmSpec) -> Result<CopyReport, BackendError> {
        self.call(Op::Copy {
            source: source.into(),
            new: new.clone(),
        })
    }

    fn create_network(&self, net: &NetworkSpec) -> Result<(), BackendError> {
        self.call(Op::CreateNetwork { net: net.clone() })
    }

    fn destroy_network(&self, name: &str) -> Result<(), BackendError> {
        self.call(Op::DestroyNetwork { name: name.into() })
    }

    fn record(&self, spec: &VmSpec, desired: Desired) -> Result<(), BackendError> {
        self.call(Op::Record {
            spec: spec.clone(),
            desired,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_argv_quotes_the_remote_command() {
        let mut t = SshTarget::new("root@10.0.0.11", "/var/lib/vmctl/my lab");
        t.vmctl = "/usr/local/bin/vmctl".into();
        t.ssh_config = Some("/tmp/cfg".into());
        t.identity = Some("/tmp/key".into());
        let argv: Vec<String> = t
            .argv()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            argv,
            [
                "ssh",
                "-T",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "-F",
                "/tmp/cfg",
                "-i",
                "/tmp/key",
                "--",
                "root@10.0.0.11",
                "/usr/local/bin/vmctl host-rpc --state-dir '/var/lib/vmctl/my lab'",
            ]
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    /// The error `RemoteBackend::connect` gives for a host `name` reached
    /// by running `argv` ("" if it connected).
    fn connect_error(name: &str, argv: Vec<OsString>, timeouts: Timeouts) -> String {
        RemoteBackend::connect(name, argv, Some(1), timeouts)
            .map(|_| ())
            .err()
            .map(|e| e.0)
            .unwrap_or_default()
    }

    /// `sh -c SCRIPT` as a host's transport.
    fn sh(script: &str) -> Vec<OsString> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn a_missing_program_is_unreachable() {
        let e = connect_error("h9", vec!["/nonexistent/ssh".into()], Timeouts::default());
        assert!(
            e.starts_with("host h9 unreachable: cannot run /nonexistent/ssh"),
            "{e}"
        );
    }

    #[test]
    fn a_child_that_exits_is_unreachable_with_what_it_said() {
        let e = connect_error(
            "h2",
            sh("echo 'ssh: connect to host h2 port 22: Connection refused' >&2; exit 255"),
            Timeouts::default(),
        );
        assert!(e.starts_with("host h2 unreachable: "), "{e}");
        assert!(e.contains("Connection refused"), "{e}");
    }

    #[test]
    fn a_silent_child_times_out_as_unreachable() {
        let timeouts = Timeouts {
            connect: Duration::from_millis(300),
            ..Timeouts::default()
        };
        // Reads its input, never answers. Without the timeout the connect
        // would hang: a generous bound turns that into a failure.
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(connect_error("h3", sh("cat >/dev/null"), timeouts));
        });
        let e = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("connect to a silent child hung"));
        assert!(
            e.starts_with("host h3 unreachable: no answer to hello within"),
            "{e}"
        );
    }

    #[test]
    fn an_answer_from_another_protocol_is_refused() {
        let e = connect_error(
            "h4",
            sh(r#"read l; echo '{"v":2,"id":1,"ok":null}'; cat >/dev/null"#),
            Timeouts::default(),
        );
        assert!(e.contains("protocol version 2"), "{e}");
    }

    #[test]
    fn a_refused_hello_is_an_error_naming_the_kind() {
        let e = connect_error(
            "h5",
            sh(
                r#"read l; echo '{"v":1,"id":1,"err":{"kind":"unsupported","message":"protocol version 1 is not supported"}}'; cat >/dev/null"#,
            ),
            Timeouts::default(),
        );
        assert_eq!(
            e,
            "host h5: hello refused (unsupported): protocol version 1 is not supported"
        );
    }
}
