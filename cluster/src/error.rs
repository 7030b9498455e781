//! The one error type of the crate. Callers branch on the variant: `Fenced`
//! and `LeaseLost` mean "stop, someone else coordinates now", `Held` means
//! "someone else is applying", `Unavailable` means "etcd cannot agree on
//! anything right now" (no quorum or no endpoint answered).

use std::path::PathBuf;
use std::time::Duration;

use crate::lock::LockStatus;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Nothing could be agreed on: no endpoint answered, or the members that
    /// answered have no quorum. Every attempt of the retry budget failed.
    #[error(
        "etcd is unavailable at {endpoints}: {detail} ({attempts} attempts over {elapsed:.1?}){}",
        if *outcome_unknown { "; the last write may or may not have landed" } else { "" }
    )]
    Unavailable {
        endpoints: String,
        detail: String,
        attempts: u32,
        elapsed: Duration,
        /// A write timed out and no re-read could tell whether it landed.
        outcome_unknown: bool,
    },
    /// etcd refused a guarded write: the lock key's creation revision is no
    /// longer our token (our lease expired and someone else took the lock,
    /// or it was broken). `current` is the token now, if anyone holds it.
    #[error("write refused by etcd: our fencing token {token} is no longer current ({})",
        match current { Some(c) => format!("the lock is held with token {c}"), None => "nobody holds the lock".to_string() })]
    Fenced { token: i64, current: Option<i64> },
    /// Our lease could not be renewed in time; we refuse to write before
    /// etcd has to.
    #[error("the lock's lease (token {token}) was lost: its renewal failed or came too late")]
    LeaseLost { token: i64 },
    /// Someone else holds the lock.
    #[error("the lock is held by {} (token {}, running {:?}){}", .holder.holder.holder, .holder.token, .holder.holder.command,
        match .waited { Some(w) => format!("; gave up after waiting {w:.1?}"), None => String::new() })]
    Held {
        holder: Box<LockStatus>,
        waited: Option<Duration>,
    },
    /// etcd rejected our credentials or the user may not touch these keys.
    #[error("etcd refused the request ({op}): {message}")]
    Auth { op: &'static str, message: String },
    /// A request etcd answered with an error that retrying cannot fix.
    #[error("etcd request {op} failed: {message}")]
    Etcd { op: &'static str, message: String },
    /// The configuration cannot work (bad endpoint, bad name, bad TTL).
    #[error("invalid etcd configuration: {0}")]
    Config(String),
    /// A TLS or credential file could not be read.
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value in etcd is not what vmctl wrote (not JSON, wrong shape).
    #[error("the value of {key} in etcd is not valid: {message}")]
    Corrupt { key: String, message: String },
    /// The tokio runtime behind the blocking calls could not start.
    #[error("cannot start the etcd client runtime")]
    Runtime(#[source] std::io::Error),
}

impl ClusterError {
    /// A short stable name of the variant, for `--json` output and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterError::Unavailable { .. } => "unavailable",
            ClusterError::Fenced { .. } => "fenced",
            ClusterError::LeaseLost { .. } => "lease-lost",
            ClusterError::Held { .. } => "held",
            ClusterError::Auth { .. } => "auth",
            ClusterError::Etcd { .. } => "etcd",
            ClusterError::Config(_) => "config",
            ClusterError::ReadFile { .. } => "read-file",
            ClusterError::Corrupt { .. } => "corrupt",
            ClusterError::Runtime(_) => "runtime",
        }
    }
}
