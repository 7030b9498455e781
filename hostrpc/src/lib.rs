//! `vmctl-hostrpc`: the planner's [`Backend`](vmctl_planner::Backend) across
//! hosts. A coordinator reaches each host with `ssh HOST vmctl host-rpc
//! --state-dir DIR`, which speaks versioned JSON lines on stdin/stdout.
//!
//! * [`protocol`] — the wire format: requests, answers, `hello`, error kinds,
//!   the 16 MiB line bound.
//! * [`fence`] — the host's record of the highest fencing token it has seen;
//!   mutating calls with a lower token are refused (`fenced`).
//! * [`server`] — answers requests with any `Backend` (vmctl's
//!   `RuntimeBackend` in `vmctl host-rpc`).
//! * [`client`] — [`RemoteBackend`], a `Backend` over a child process (ssh),
//!   with per-call timeouts: a dead or hung host is `unreachable`.
//!
//! ```text
//! let target = SshTarget { vmctl: "/usr/local/bin/vmctl".into(),
//!                          ..SshTarget::new("root@10.0.0.11", "/var/lib/vmctl/lab") };
//! let h1 = RemoteBackend::ssh("h1", &target, Some(token), Timeouts::default())?;
//! let observed = h1.observe()?;          // as if the state directory were local
//! h1.start("db")?;                       // carries `token`; refused once a newer one was seen
//! ```
//!
//! docs/scale-out.md ("Actions over SSH") describes the protocol and the
//! fence.

pub mod client;
pub mod fence;
pub mod lines;
pub mod protocol;
pub mod server;
#[doc(hidden)]
pub mod testkit;

pub use client::{RemoteBackend, SshTarget, Timeouts};
pub use fence::{FenceError, FenceGuard, FenceStore};
pub use protocol::{ErrorKind, Hello, MAX_LINE, Op, PROTOCOL_VERSION, Request, Response, RpcError};
pub use server::{Server, ServerInfo};
