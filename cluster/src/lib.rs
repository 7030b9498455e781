//! vmctl's shared state on etcd, for labs that span several hosts
//! (docs/scale-out.md, "Shared state on etcd").
//!
//! - [`Etcd`]: a blocking handle (its own tokio current-thread runtime
//!   inside) with bounded retries and backoff; reads of VM records and the
//!   journal; `lock show` / `lock break`.
//! - [`LockGuard`]: the cluster lock, a key held through a renewed lease;
//!   its creation revision is the fencing token, and every write of shared
//!   state ([`LockGuard::put_vm`], [`LockGuard::delete_vm`],
//!   [`LockGuard::append_journal`]) is a transaction that etcd applies only
//!   while that token is current.
//! - [`testkit`]: a 3-node etcd on 127.0.0.1 for tests (hidden from docs).
//!
//! ```no_run
//! use vmctl_cluster::{AcquireOptions, Etcd, EtcdConfig};
//! # fn main() -> Result<(), vmctl_cluster::ClusterError> {
//! let etcd = Etcd::connect(EtcdConfig::new(vec!["http://127.0.0.1:2379".into()], "lab"))?;
//! let lock = etcd.lock(&AcquireOptions { command: "apply".into(), wait: std::time::Duration::from_secs(60) })?;
//! lock.put_vm("db", &serde_json::json!({ "host": "h1" }))?;
//! lock.append_journal(&serde_json::json!({ "created": "db" }))?;
//! # Ok(()) }
//! ```

mod client;
mod config;
mod error;
mod keys;
mod lock;
mod retry;
mod state;
#[doc(hidden)]
pub mod testkit;
mod tls;

pub use client::{Etcd, JournalEntry};
pub use config::{Auth, DEFAULT_LOCK_TTL, EtcdConfig, TlsFiles};
pub use error::ClusterError;
pub use keys::{Keys, check_name};
pub use lock::{AcquireOptions, HolderInfo, LockGuard, LockStatus};
