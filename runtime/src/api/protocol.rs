//! Control socket messages: one JSON request per line, one JSON response per
//! line (docs/control-socket.md). Fields are only ever added.

use serde::{Deserialize, Serialize};

/// A request: `{"verb":"status"}`, `{"verb":"shutdown","timeout_ms":5000}`, …
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    Status,
    Pause,
    Resume,
    /// Ask the guest to power off (GED power button); after `timeout_ms`
    /// (default 10 s) stop it by force. The VMM exits afterwards.
    Shutdown {
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    Capabilities,
    /// Grow disk `disk` to `size_bytes` while the VM runs: the file is
    /// extended and the guest gets a virtio config-change notification.
    /// Shrinking is refused.
    ResizeDisk {
        disk: String,
        size_bytes: u64,
    },
    /// Make `cpus` vCPUs present while the VM runs: hot-add up to the max
    /// fixed at boot, or hot-remove down to 1 (the guest offlines and ejects
    /// them). Answered once the guest has acknowledged (docs/control-socket.md).
    HotAddCpu {
        cpus: u32,
    },
    /// Grow the RAM to `memory_mib` (up to the max fixed at boot, in 128 MiB
    /// steps). Answered once the guest has acknowledged.
    HotAddMemory {
        memory_mib: u64,
    },
    /// Stop the guest's disk I/O for a consistent copy: park every vCPU,
    /// complete every virtio-blk request the guest already submitted (no new
    /// one can start while the vCPUs are parked), `fdatasync` every disk.
    /// The VMM resumes by itself after `resume_after_ms` (default 60 s) if
    /// no `thaw` came, so a control plane that dies mid-copy cannot leave
    /// the VM paused forever.
    Quiesce {
        #[serde(default)]
        resume_after_ms: Option<u64>,
    },
    /// End quiesce `id` and resume the vCPUs. Refused when that quiesce
    /// already ended (its deadline, a `resume`, a shutdown): whatever was
    /// copied meanwhile may not be consistent.
    Thaw {
        id: u64,
    },
    /// Send one command line to the guest agent on COM2 and wait up to
    /// `timeout_ms` (default 5 s, at most 60 s) for its reply line with the
    /// same `id` (docs/runtime.md, "The agent channel"). `command` is a JSON
    /// object with a string `cmd`; the VMM sets its `id`.
    Agent {
        command: serde_json::Value,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// Default `timeout_ms` of `agent`.
pub const DEFAULT_AGENT_TIMEOUT_MS: u64 = 5_000;

/// Default `resume_after_ms` of `quiesce`.
pub const DEFAULT_QUIESCE_RESUME_AFTER_MS: u64 = 60_000;

/// Default grace period of `shutdown`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

/// A response: `{"ok":true,"result":{...}}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Self {
        Response {
            ok: true,
            result: serde_json::to_value(result).ok(),
            error: None,
        }
    }
    pub fn err(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }
}

pub use vmctl_spec::state::{Capabilities, RunState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub name: String,
    pub size_bytes: u64,
    pub path: String,
}

/// One NIC in the `status` result: what it is attached to and its live
/// counters (docs/networking.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicStatus {
    /// The NIC's name in the VM (its network).
    pub name: String,
    pub mac: String,
    /// The host TAP it is attached to.
    pub tap: String,
    #[serde(flatten)]
    pub stats: crate::devices::virtio::net::NetStats,
}

/// The `status` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub pid: u32,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskStatus>,
    /// virtio-net NICs, in machine-config order (absent from older VMMs).
    #[serde(default)]
    pub nics: Vec<NicStatus>,
    /// The latest JSON object the guest wrote on COM2, or null.
    pub guest: Option<serde_json::Value>,
    /// Milliseconds since the VM (last) booted.
    pub uptime_ms: u64,
    /// How many times the guest rebooted in this VMM.
    #[serde(default)]
    pub boots: u64,
    /// `polled` (no interrupt injection) or `irqchip`.
    #[serde(default)]
    pub irq_mode: String,
    /// Hot-add headroom fixed at boot.
    #[serde(default)]
    pub max_cpus: u32,
    #[serde(default)]
    pub max_memory_mib: u64,
    /// A hot-add or hot-remove waiting for the guest, e.g. "hot-add to 3 vCPUs".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_in_flight: Option<String>,
    /// The VM is shutting down: the guest was asked to power off and the
    /// VMM stops it by force (and exits) within this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_in_ms: Option<u64>,
}

/// The result of `hot_add_cpu` / `hot_add_memory`: what the VM has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugResult {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// The `quiesce` result: the VM is paused with its disks flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuiesceResult {
    /// Pass to `thaw`.
    pub id: u64,
    /// Microseconds from the pause request to disks flushed (park the
    /// vCPUs, drain the queues, fdatasync).
    pub quiesce_us: u64,
    /// Disks drained and flushed.
    pub disks: u32,
}

/// The `thaw` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThawResult {
    /// Microseconds the vCPUs were parked: from the start of `quiesce` to
    /// their resumption by this `thaw`.
    pub paused_us: u64,
}

/// The `shutdown` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownResult {
    /// True when the guest powered off by itself within the timeout.
    pub graceful: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"verb":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"verb":"shutdown","timeout_ms":250}"#).unwrap(),
            Request::Shutdown {
                timeout_ms: Some(250)
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"verb":"shutdown"}"#).unwrap(),
            Request::Shutdown { timeout_ms: None }
        );
        assert!(serde_json::from_str::<Request>(r#"{"verb":"explode"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"verb":"quiesce"}"#).unwrap(),
            Request::Quiesce {
                resume_after_ms: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Thaw { id: 3 }).unwrap(),
            r#"{"verb":"thaw","id":3}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"verb":"agent","command":{"cmd":"ping","nonce":"n1"},"timeout_ms":800}"#
            )
            .unwrap(),
            Request::Agent {
                command: serde_json::json!({"cmd":"ping","nonce":"n1"}),
                timeout_ms: Some(800)
            }
        );
        assert_eq!(
            serde_json::to_string(&Response::err("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::ok(RunState::Paused)).unwrap(),
            r#"{"ok":true,"result":"paused"}"#
        );
    }
}
