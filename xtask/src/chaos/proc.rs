//! A `vmctl` process the chaos test can hurt: its stdout and stderr are
//! read line by line (so a fault can be aimed at "the N-th line" or "the
//! first action") and copied to a log file, and it can be sent SIGKILL,
//! SIGSTOP and SIGCONT by its pid. Every wait is bounded: a vmctl that does
//! not finish in time is killed and reported as hung, never waited on
//! forever.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ChaosError;

/// A spawned vmctl.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    what: String,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawn `cmd` (described as `what`), its output also appended to `log`.
    pub fn spawn(mut cmd: Command, what: &str, log: &Path) -> Result<Proc, ChaosError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ChaosError::Io {
                path: log.to_path_buf(),
                source,
            })?;
        let file = Arc::new(Mutex::new(file));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ChaosError::Spawn {
                what: what.to_string(),
                source,
            })?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out: Option<Box<dyn std::io::Read + Send>> = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let err: Option<Box<dyn std::io::Read + Send>> = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [out, err].into_iter().flatten() {
            let lines = Arc::clone(&lines);
            let file = Arc::clone(&file);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut f) = file.lock() {
                        let _ = writeln!(f, "{line}");
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            }));
        }
        Ok(Proc {
            child,
            lines,
            readers,
            what: what.to_string(),
            status: None,
        })
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    /// Everything printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The exit status, if it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Wait (at most `timeout`) until a printed line satisfies `pred`;
    /// false when it ended or the time ran out first.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines().iter().any(|l| pred(l)) {
                return true;
            }
            if self.exited().is_some() || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sleep `d`, or less if it ends first; true if still running after.
    pub fn run_for(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.exited().is_none()
    }

    /// Send `sig` to the process (by its pid); false if it had ended.
    pub fn signal(&mut self, sig: i32) -> bool {
        if self.exited().is_some() {
            return false;
        }
        // SAFETY: kill(2) of a child this harness spawned and has not reaped.
        unsafe { libc::kill(self.pid(), sig) == 0 }
    }

    /// SIGKILL it and reap it; true if it was still running (a kill landed).
    pub fn kill9(&mut self) -> bool {
        let landed = self.signal(libc::SIGKILL);
        let _ = self.child.wait().map(|s| self.status = Some(s));
        self.join_readers();
        landed
    }

    /// Wait for it to end within `timeout`; if it does not, SIGKILL it and
    /// say it hung.
    pub fn finish(&mut self, timeout: Duration) -> Result<ExitStatus, ChaosError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                self.join_readers();
                return Ok(s);
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(ChaosError::Hung {
                    what: self.what.clone(),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn join_readers(&mut self) {
        // The pipes close when vmctl and its children (ssh) have gone; an
        // ssh to a host whose link is down may hold them open for long, so
        // wait a little (bounded) for the last lines, then leave the
        // readers be.
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    /// All output, joined.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal(libc::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
