//! Many hosts (docs/scale-out.md): what the CLI adds around the planner when
//! a file declares `host` nodes — routing each VM's actions to its host.
//! The shared state and lock live in the `vmctl-cluster` crate, the SSH
//! transport in `vmctl-hostrpc`; placement is the planner's.

pub mod route;
pub mod session;
pub mod transfer;
