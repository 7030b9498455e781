//! The control socket: protocol types, server (in the VMM) and client (in vmctl).
//! The wire format is documented in docs/control-socket.md.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{ApiClient, ClientError};
pub use protocol::{Capabilities, DiskStatus, Request, Response, RunState, Status};
