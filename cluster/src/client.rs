//! The blocking facade over the async `etcd-client`: a handle that owns a
//! tokio current-thread runtime and turns every call into a bounded, retried,
//! blocking one. Nothing async leaks out, so the planner and the CLI stay
//! synchronous. Reads of shared state live here; guarded writes need the
//! lock and live on `LockGuard` (state.rs).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::retry::{self, Backoff, Failure, GaveUp};
use crate::{ClusterError, EtcdConfig, Keys};

/// A connection to etcd for one cluster's keys. Cheap to clone; every call
/// blocks (calls from several threads at once are served one at a time).
#[derive(Clone)]
pub struct Etcd {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub cfg: EtcdConfig,
    pub keys: Keys,
    pub rt: Runtime,
    opts: ConnectOptions,
    /// One client per endpoint, connected on first use. A request goes to
    /// the current endpoint; a retryable failure moves on to the next one.
    /// (etcd-client's own balancing over several endpoints kept picking a
    /// dead member after a `kill -9`.)
    slots: Vec<Mutex<Option<Client>>>,
    current: AtomicUsize,
    /// Test hook: how many more write answers to drop after etcd applied
    /// the write (`lose_write_answers_for_tests`).
    lose_answers: AtomicU32,
}

/// The calls whose answers the test hook can drop: the writes that are
/// re-read after a lost answer.
const WRITE_OPS: [&str; 2] = ["lock txn", "guarded txn"];

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.inner.cfg.endpoints)
            .field("cluster", &self.inner.cfg.cluster)
            .finish()
    }
}

/// One journal entry as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub seq: u64,
    pub value: Value,
}

impl Etcd {
    /// Check the configuration and connect to the first endpoint that
    /// answers (without auth that makes no request yet; with auth the
    /// credentials are checked here).
    pub fn connect(cfg: EtcdConfig) -> Result<Etcd, ClusterError> {
        cfg.validate()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let etcd = Etcd {
            inner: Arc::new(Inner {
                keys: Keys::new(&cfg.cluster),
                opts: connect_options(&cfg)?,
                slots: cfg.endpoints.iter().map(|_| Mutex::new(None)).collect(),
                current: AtomicUsize::new(0),
                lose_answers: AtomicU32::new(0),
                rt,
                cfg,
            }),
        };
        etcd.retry_read(|| etcd.current_client().map(|_| ()))?;
        Ok(etcd)
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.inner.cfg
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// One VM's record, if it has one.
    pub fn get_vm(&self, name: &str) -> Result<Option<Value>, ClusterError> {
        let key = self.inner.keys.vm(name)?;
        match self.get(&key)? {
            Some(kv) => Ok(Some(json_of(&key, kv.value())?)),
            None => Ok(None),
        }
    }

    /// Every VM record, by name. Keys under `vms/` that are not a valid
    /// name are skipped with a warning.
    pub fn list_vms(&self) -> Result<BTreeMap<String, Value>, ClusterError> {
        let mut out = BTreeMap::new();
        for kv in self.range_prefix(&self.inner.keys.vms_prefix())? {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match self.inner.keys.vm_name_of(&key) {
                Some(name) => {
                    out.insert(name.to_string(), json_of(&key, kv.value())?);
                }
                None => tracing::warn!("ignoring unexpected key {key:?} in etcd"),
            }
        }
        Ok(out)
    }

    /// The whole journal, oldest first.
    pub fn list_journal(&self) -> Result<Vec<JournalEntry>, ClusterError> {
        let mut out = Vec::new();
        for kv in self.range_prefix(&self.inner.keys.journal_prefix())? {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match self.inner.keys.seq_of(&key) {
                Some(seq) => out.push(JournalEntry {
                    seq,
                    value: json_of(&key, kv.value())?,
                }),
                None => tracing::warn!("ignoring unexpected key {key:?} in etcd"),
            }
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Test hook: the next `n` lock or guarded-write transactions are
    /// applied by etcd but their answers are dropped, as if they had timed
    /// out, so a test can show they are re-read, not applied twice.
    #[doc(hidden)]
    pub fn lose_write_answers_for_tests(&self, n: u32) {
        self.inner.lose_answers.store(n, Ordering::SeqCst);
    }

    /// The member this handle's first endpoint reaches: (its id, the
    /// leader's id as it sees it; 0 while there is none). For the test
    /// harness and diagnostics.
    #[doc(hidden)]
    pub fn member_status(&self) -> Result<(u64, u64), ClusterError> {
        let s =
            self.retry_read(|| self.call_once("status", |mut c| async move { c.status().await }))?;
        let id = s.header().map_or(0, |h| h.member_id());
        Ok((id, s.leader()))
    }

    // ---- the plumbing the lock and guarded writes use ----

    /// One key, read linearizably (retried).
    pub(crate) fn get(&self, key: &str) -> Result<Option<KeyValue>, ClusterError> {
        self.retry_read(|| self.get_once(key))
    }

    pub(crate) fn get_once(&self, key: &str) -> Result<Option<KeyValue>, Failure<ClusterError>> {
        let key = key.to_string();
        let mut r = self.call_once("get", |mut c| async move { c.get(key, None).await })?;
        Ok(r.take_kvs().into_iter().next())
    }

    /// Every key under a prefix (retried).
    pub(crate) fn range_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, ClusterError> {
        self.retry_read(|| {
            let p = prefix.to_string();
            let mut r = self.call_once("range", |mut c| async move {
                c.get(p, Some(GetOptions::new().with_prefix())).await
            })?;
            Ok(r.take_kvs())
        })
    }

    /// The current endpoint's index and client, connecting it if needed;
    /// a failed connect moves on to the next endpoint.
    pub(crate) fn current_client(&self) -> Result<(usize, Client), Failure<ClusterError>> {
        let n = self.inner.slots.len();
        let i = self.inner.current.load(Ordering::SeqCst) % n.max(1);
        let Some(slot) = self.inner.slots.get(i) else {
            return Err(Failure::Fatal(ClusterError::Config("no endpoints".into())));
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok((i, c.clone()));
        }
        let endpoint = self.inner.cfg.endpoints[i].clone();
        let t = self.inner.cfg.dial_timeout + self.inner.cfg.request_timeout;
        let opts = self.inner.opts.clone();
        let r = self.inner.rt.block_on(async {
            tokio::time::timeout(t, Client::connect([endpoint.as_str()], Some(opts))).await
        });
        let failure = match r {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                return Ok((i, c));
            }
            Err(_) => Failure::Retryable(format!("connect to {endpoint} timed out after {t:?}")),
            Ok(Err(e)) => classify("connect", e),
        };
        drop(slot);
        if matches!(failure, Failure::Retryable(_)) {
            self.move_on_from(i);
        }
        Err(failure)
    }

    /// The endpoint `i` failed: the next request goes to the next one.
    pub(crate) fn move_on_from(&self, i: usize) {
        let n = self.inner.slots.len().max(1);
        let _ =
            self.inner
                .current
                .compare_exchange(i, (i + 1) % n, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Run `f` against the current endpoint's client once, bounded by the
    /// request timeout, and sort its failure into retryable or not (a
    /// retryable one moves on to the next endpoint).
    pub(crate) fn call_once<T, F, Fut>(
        &self,
        op: &'static str,
        f: F,
    ) -> Result<T, Failure<ClusterError>>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let (i, client) = self.current_client()?;
        let t = self.inner.cfg.request_timeout;
        let failure = match self
            .inner
            .rt
            .block_on(async { tokio::time::timeout(t, f(client)).await })
        {
            Ok(Ok(_))
                if WRITE_OPS.contains(&op)
                    && self
                        .inner
                        .lose_answers
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok() =>
            {
                Failure::Retryable(format!("{op}: answer lost (injected by a test)"))
            }
            Ok(Ok(v)) => return Ok(v),
            Err(_) => Failure::Retryable(format!("{op} timed out after {t:?}")),
            Ok(Err(e)) => classify(op, e),
        };
        if matches!(failure, Failure::Retryable(_)) {
            self.move_on_from(i);
        }
        Err(failure)
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.inner.cfg.retry_for)
    }

    pub(crate) fn retry_read<T>(
        &self,
        call: impl FnMut() -> Result<T, Failure<ClusterError>>,
    ) -> Result<T, ClusterError> {
        retry::read(&self.backoff(), call).map_err(|g| self.gave_up(g))
    }

    pub(crate) fn retry_write<T>(
        &self,
        write: impl FnMut() -> Result<T, Failure<ClusterError>>,
        landed: impl FnMut() -> Result<Option<T>, Failure<ClusterError>>,
    ) -> Result<T, ClusterError> {
        retry::write(&self.backoff(), write, landed).map_err(|g| self.gave_up(g))
    }

    pub(crate) fn gave_up(&self, g: GaveUp<ClusterError>) -> ClusterError {
        match g {
            GaveUp::Fatal(e) => e,
            GaveUp::Exhausted {
                last,
                attempts,
                elapsed,
                outcome_unknown,
            } => ClusterError::Unavailable {
                endpoints: self.inner.cfg.endpoints_display(),
                detail: last,
                attempts,
                elapsed,
                outcome_unknown,
            },
        }
    }
}

/// etcd-client's options for `cfg`: timeouts, TLS, credentials.
fn connect_options(cfg: &EtcdConfig) -> Result<ConnectOptions, ClusterError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.dial_timeout)
        .with_timeout(cfg.request_timeout)
        .with_keep_alive(cfg.request_timeout, cfg.request_timeout)
        // A member that lost its leader answers "no leader" at once instead
        // of holding the request until it times out.
        .with_require_leader(true);
    if let Some(tls) = &cfg.tls {
        opts = opts.with_tls(crate::tls::options(tls)?);
    }
    if let Some(a) = &cfg.auth {
        opts = opts.with_user(a.user.clone(), a.password.clone());
    }
    Ok(opts)
}

/// Which etcd failures are worth another attempt.
pub(crate) fn classify(op: &'static str, e: etcd_client::Error) -> Failure<ClusterError> {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        // etcd answers refused credentials with InvalidArgument.
        E::GRpcStatus(s) if is_auth_message(s.message()) => Failure::Fatal(ClusterError::Auth {
            op,
            message: s.message().to_string(),
        }),
        E::GRpcStatus(s) => match s.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Unknown => Failure::Retryable(format!("{op}: {}", s.message())),
            Code::Unauthenticated | Code::PermissionDenied => Failure::Fatal(ClusterError::Auth {
                op,
                message: s.message().to_string(),
            }),
            _ => Failure::Fatal(ClusterError::Etcd {
                op,
                message: s.message().to_string(),
            }),
        },
        E::TransportError(t) => Failure::Retryable(format!("{op}: {t}")),
        E::IoError(io) => Failure::Retryable(format!("{op}: {io}")),
        E::LeaseKeepAliveError(m) => Failure::Retryable(format!("{op}: {m}")),
        other => Failure::Fatal(ClusterError::Etcd {
            op,
            message: other.to_string(),
        }),
    }
}

/// etcd's messages for missing or wrong credentials and for auth that is
/// not enabled (its codes for them vary).
fn is_auth_message(m: &str) -> bool {
    let m = m.strip_prefix("etcdserver: ").unwrap_or(m);
    [
        "authentication failed",
        "user name is empty",
        "user name not found",
        "permission denied",
        "authentication is not enabled",
    ]
    .iter()
    .any(|p| m.starts_with(p))
}

/// A value vmctl wrote as JSON; anything else in etcd is reported, not
/// trusted.
pub(crate) fn json_of(key: &str, bytes: &[u8]) -> Result<Value, ClusterError> {
    serde_json::from_slice(bytes).map_err(|e| ClusterError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}
