//! A typed client for the control socket, with timeouts: what `vmctl` (status,
//! stop, the apply engine) uses to talk to a running VMM.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{
    Capabilities, HotplugResult, QuiesceResult, Request, Response, ShutdownResult, Status,
    ThawResult,
};

/// Default time allowed for one request/response (shutdown adds its grace period).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("the VMM closed the connection without answering")]
    Closed,
    #[error("the VMM sent an invalid response: {0}")]
    BadResponse(String),
    #[error("the VMM refused: {0}")]
    Refused(String),
}

/// A connection-per-request client.
#[derive(Debug, Clone)]
pub struct ApiClient {
    path: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(path: impl AsRef<Path>) -> Self {
        ApiClient {
            path: path.as_ref().to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Send one request, return the raw response.
    pub fn request(&self, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut line =
            serde_json::to_vec(req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(&answer)
            .map_err(|e| ClientError::BadResponse(format!("{e}: {}", answer.trim())))
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: &Request,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let resp = self.request(req, timeout)?;
        if !resp.ok {
            return Err(ClientError::Refused(
                resp.error.unwrap_or_else(|| "unknown error".into()),
            ));
        }
        let value = resp.result.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        self.call(&Request::Status, self.timeout)
    }

    pub fn pause(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(&Request::Pause, self.timeout)
            .map(|_| ())
    }

    pub fn resume(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(&Request::Resume, self.timeout)
            .map(|_| ())
    }

    /// Graceful shutdown with `grace` before the VMM forces it; returns
    /// whether the guest powered off by itself.
    pub fn shutdown(&self, grace: Duration) -> Result<bool, ClientError> {
        let req = Request::Shutdown {
            timeout_ms: Some(grace.as_millis() as u64),
        };
        self.call::<ShutdownResult>(&req, grace + self.timeout)
            .map(|r| r.graceful)
    }

    pub fn capabilities(&self) -> Result<Capabilities, ClientError> {
        self.call(&Request::Capabilities, self.timeout)
    }

    /// Grow a disk of the running VM; returns the new size in bytes.
    pub fn resize_disk(&self, disk: &str, size_bytes: u64) -> Result<u64, ClientError> {
        let req = Request::ResizeDisk {
            disk: disk.to_string(),
            size_bytes,
        };
        self.call(&req, self.timeout)
    }

    /// Make `cpus` vCPUs present (hot-add or hot-remove); answered once the
    /// guest acknowledged, so it may take up to `wait`.
    pub fn hot_add_cpu(&self, cpus: u32, wait: Duration) -> Result<HotplugResult, ClientError> {
        self.call(&Request::HotAddCpu { cpus }, wait + self.timeout)
    }

    /// Grow the RAM to `memory_mib`; answered once the guest acknowledged.
    pub fn hot_add_memory(
        &self,
        memory_mib: u64,
        wait: Duration,
    ) -> Result<HotplugResult, ClientError> {
        self.call(&Request::HotAddMemory { memory_mib }, wait + self.timeout)
    }

    /// Send `command` (a JSON object with a string `cmd`) to the guest
    /// agent on COM2 and return the guest's reply object (which carries the
    /// VMM-assigned `id`); refused when the guest did not answer within
    /// `wait` (docs/runtime.md, "The agent channel").
    pub fn agent(
        &self,
        command: serde_json::Value,
        wait: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        let req = Request::Agent {
            command,
            timeout_ms: Some(wait.as_millis() as u64),
        };
        self.call(&req, wait + self.timeout)
    }

    /// Pause the VM with its disks drained and flushed, for a copy. The
    /// quiesce is held by the returned session's connection: its
    /// [`QuiesceSession::thaw`] resumes the VM, and so does the VMM when
    /// the connection closes without one (this process dies) or after
    /// `resume_after`.
    pub fn quiesce(&self, resume_after: Duration) -> Result<QuiesceSession, ClientError> {
        let stream = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut session = QuiesceSession {
            reader: BufReader::new(stream.try_clone()?),
            stream,
            result: QuiesceResult {
                id: 0,
                quiesce_us: 0,
                disks: 0,
            },
        };
        let req = Request::Quiesce {
            resume_after_ms: Some(resume_after.as_millis() as u64),
        };
        session.result = session.call(&req)?;
        Ok(session)
    }
}

/// A quiesce in effect, held by its connection (see [`ApiClient::quiesce`]).
#[derive(Debug)]
pub struct QuiesceSession {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    pub result: QuiesceResult,
}

impl QuiesceSession {
    fn call<T: serde::de::DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        let mut line =
            serde_json::to_vec(req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        line.push(b'\n');
        self.stream.write_all(&line)?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::Closed);
        }
        let resp: Response = serde_json::from_str(&answer)
            .map_err(|e| ClientError::BadResponse(format!("{e}: {}", answer.trim())))?;
        if !resp.ok {
            return Err(ClientError::Refused(
                resp.error.unwrap_or_else(|| "unknown error".into()),
            ));
        }
        serde_json::from_value(resp.result.unwrap_or(serde_json::Value::Null))
            .map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// Resume the VM; refused if this quiesce had already ended (a copy
    /// taken meanwhile may not be consistent).
    pub fn thaw(mut self) -> Result<ThawResult, ClientError> {
        let id = self.result.id;
        self.call(&Request::Thaw { id })
    }
}
