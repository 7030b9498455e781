//! The cluster lock: the key `/vmctl/<cluster>/lock`, created only if absent
//! (`create_revision == 0`) and attached to a lease that a background thread
//! renews every TTL/3. Its creation revision is the fencing token: every
//! guarded write compares it (state.rs), so a holder that lost its lease —
//! paused, partitioned, or broken by `vmctl lock break` — cannot write.
//! A holder that dies stops renewing and the lease frees the lock by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Compare, CompareOp, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use serde::{Deserialize, Serialize};

use crate::ClusterError;
use crate::client::Etcd;
use crate::retry::Failure;

/// Who holds the lock: the JSON value of the lock key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    pub format_version: String,
    /// `user@hostname pid N`.
    pub holder: String,
    /// What the holder is doing (`apply`, `destroy`, …).
    pub command: String,
    /// When it took the lock (RFC 3339, UTC).
    pub started_at: String,
}

impl HolderInfo {
    /// This process, about to run `command`.
    pub fn current(command: &str) -> Self {
        HolderInfo {
            format_version: "1".into(),
            holder: format!("{}@{} pid {}", user_name(), host_name(), std::process::id()),
            command: command.to_string(),
            started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

/// What `vmctl lock show` prints: the holder, its token and its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockStatus {
    pub holder: HolderInfo,
    /// The lock key's creation revision.
    pub token: i64,
    /// The lease the key is attached to (0: none — written by hand).
    pub lease_id: i64,
    /// Seconds until the lease expires unless renewed (None: unknown or
    /// already expired).
    pub ttl_left_secs: Option<i64>,
    /// The lease's TTL as granted.
    pub granted_ttl_secs: Option<i64>,
}

/// How to take the lock.
#[derive(Debug, Clone)]
pub struct AcquireOptions {
    /// Recorded in the holder info (`apply`, `destroy`, …).
    pub command: String,
    /// How long to wait for a holder to finish; zero: fail with `Held` at once.
    pub wait: Duration,
}

/// The lock, held until dropped (dropping revokes the lease, which deletes
/// the key). Guarded writes are its methods (state.rs).
pub struct LockGuard {
    pub(crate) etcd: Etcd,
    pub(crate) token: i64,
    lease_id: i64,
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub(crate) skip_local_check: AtomicBool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("token", &self.token)
            .field("lease_id", &self.lease_id)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// What the keepalive thread and the guard share.
struct Shared {
    lost: AtomicBool,
    /// The lease lives at least until then: the send time of the last
    /// answered renewal plus the TTL etcd gave it.
    valid_until: Mutex<Instant>,
}

/// One try at the lock.
enum Attempt {
    Got { token: i64 },
    HeldBy(Box<LockStatus>),
}

impl Etcd {
    /// Take the lock, printing once to stderr who holds it while waiting.
    pub fn lock(&self, opts: &AcquireOptions) -> Result<LockGuard, ClusterError> {
        self.lock_with(opts, |s| {
            eprintln!(
                "waiting for the cluster lock held by {} (token {}, running {:?} since {}, lease {}s left)",
                s.holder.holder,
                s.token,
                s.holder.command,
                s.holder.started_at,
                s.ttl_left_secs.map_or("?".to_string(), |t| t.to_string())
            );
        })
    }

    /// Take the lock; `on_wait` is called once, when it is found held and
    /// `opts.wait` allows waiting.
    pub fn lock_with(
        &self,
        opts: &AcquireOptions,
        mut on_wait: impl FnMut(&LockStatus),
    ) -> Result<LockGuard, ClusterError> {
        let info = HolderInfo::current(&opts.command);
        let value = serde_json::to_vec(&info).map_err(|e| ClusterError::Etcd {
            op: "lock",
            message: e.to_string(),
        })?;
        let start = Instant::now();
        let poll = (self.inner.cfg.lock_ttl / 8)
            .clamp(Duration::from_millis(50), Duration::from_millis(500));
        let mut told = false;
        loop {
            let (attempt, lease) = self.try_lock(&value)?;
            match attempt {
                Attempt::Got { token } => {
                    let (lease_id, granted, sent) = lease.ok_or_else(|| ClusterError::Etcd {
                        op: "lock",
                        message: "took the lock without a lease".into(),
                    })?;
                    tracing::info!(token, lease_id, "took the cluster lock");
                    return LockGuard::start(self.clone(), token, lease_id, granted, sent);
                }
                Attempt::HeldBy(status) => {
                    let waited = start.elapsed();
                    if waited >= opts.wait {
                        return Err(ClusterError::Held {
                            holder: status,
                            waited: (!opts.wait.is_zero()).then_some(waited),
                        });
                    }
                    if !told {
                        on_wait(&status);
                        told = true;
                    }
                    std::thread::sleep(poll.min(opts.wait - waited));
                }
            }
        }
    }

    /// Who holds the lock, if anyone.
    pub fn lock_status(&self) -> Result<Option<LockStatus>, ClusterError> {
        match self.get(&self.inner.keys.lock())? {
            Some(kv) => Ok(Some(self.status_of(&kv))),
            None => Ok(None),
        }
    }

    /// Free the lock whoever holds it, by revoking the holder's lease (a key
    /// without a lease is deleted, if it is still the same key). Returns
    /// what was broken; the holder's next guarded write is `Fenced`.
    pub fn break_lock(&self) -> Result<Option<LockStatus>, ClusterError> {
        let key = self.inner.keys.lock();
        let Some(kv) = self.get(&key)? else {
            return Ok(None);
        };
        let status = self.status_of(&kv);
        if status.lease_id != 0 {
            let id = status.lease_id;
            let r = self.retry_read(|| {
                self.call_once(
                    "lease revoke",
                    |mut c| async move { c.lease_revoke(id).await },
                )
            });
            if let Err(e) = r {
                // An expired lease is not found: fine if the key went with it.
                if self
                    .get(&key)?
                    .is_some_and(|k| k.create_revision() == status.token)
                {
                    return Err(e);
                }
            }
        } else {
            let token = status.token;
            self.retry_read(|| {
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        token,
                    )])
                    .and_then([TxnOp::delete(key.clone(), None)]);
                self.call_once("txn", |mut c| async move { c.txn(txn).await })
            })?;
        }
        tracing::info!(token = status.token, "broke the cluster lock");
        Ok(Some(status))
    }

    /// One attempt: Held, or the key created with a fresh lease.
    #[allow(clippy::type_complexity)]
    fn try_lock(
        &self,
        value: &[u8],
    ) -> Result<(Attempt, Option<(i64, i64, Instant)>), ClusterError> {
        let key = self.inner.keys.lock();
        if let Some(kv) = self.get(&key)? {
            return Ok((Attempt::HeldBy(Box::new(self.status_of(&kv))), None));
        }
        let ttl = self.inner.cfg.lock_ttl_secs();
        // A lease granted twice (an answer lost) only leaks one that expires.
        let (grant, sent) = self.retry_read(|| {
            let sent = Instant::now();
            self.call_once("lease grant", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .map(|g| (g, sent))
        })?;
        let lease_id = grant.id();
        let granted = grant.ttl();
        let write = || {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(
                        key.clone(),
                        value.to_vec(),
                        Some(PutOptions::new().with_lease(lease_id)),
                    ),
                    TxnOp::get(key.clone(), None),
                ])
                .or_else([TxnOp::get(key.clone(), None)]);
            let r = self.call_once("lock txn", |mut c| async move { c.txn(txn).await })?;
            let kv = first_get(&r.op_responses());
            match kv {
                Some(kv) if r.succeeded() => Ok(Attempt::Got {
                    token: kv.create_revision(),
                }),
                Some(kv) => Ok(Attempt::HeldBy(Box::new(self.status_of(&kv)))),
                None => Err(Failure::Retryable(
                    "the lock key vanished during the transaction".into(),
                )),
            }
        };
        // The create may have landed with its answer lost: our lease on the
        // key says so.
        let landed = || match self.get_once(&key)? {
            Some(kv) if kv.lease() == lease_id => Ok(Some(Attempt::Got {
                token: kv.create_revision(),
            })),
            Some(kv) => Ok(Some(Attempt::HeldBy(Box::new(self.status_of(&kv))))),
            None => Ok(None),
        };
        let attempt = self.retry_write(write, landed);
        match attempt {
            Ok(Attempt::Got { token }) => {
                Ok((Attempt::Got { token }, Some((lease_id, granted, sent))))
            }
            other => {
                // Not ours: give the lease back rather than let it linger.
                let _ = self.call_once("lease revoke", |mut c| async move {
                    c.lease_revoke(lease_id).await
                });
                other.map(|a| (a, None))
            }
        }
    }

    fn status_of(&self, kv: &KeyValue) -> LockStatus {
        let holder =
            serde_json::from_slice::<HolderInfo>(kv.value()).unwrap_or_else(|e| HolderInfo {
                format_version: "1".into(),
                holder: format!("<unreadable holder info: {e}>"),
                command: String::new(),
                started_at: String::new(),
            });
        let lease_id = kv.lease();
        let ttl = if lease_id == 0 {
            None
        } else {
            self.call_once("lease ttl", |mut c| async move {
                c.lease_time_to_live(lease_id, None).await
            })
            .ok()
        };
        LockStatus {
            holder,
            token: kv.create_revision(),
            lease_id,
            ttl_left_secs: ttl.as_ref().map(|t| t.ttl()).filter(|t| *t >= 0),
            granted_ttl_secs: ttl.as_ref().map(|t| t.granted_ttl()).filter(|t| *t > 0),
        }
    }
}

/// The first key a transaction's get returned.
pub(crate) fn first_get(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

impl LockGuard {
    /// Start renewing the lease on a client of its own (a client's
    /// connections run on the runtime that made it; the pair moves to the
    /// keepalive thread). Without one the lock is given back at once.
    fn start(
        etcd: Etcd,
        token: i64,
        lease_id: i64,
        granted_secs: i64,
        sent: Instant,
    ) -> Result<LockGuard, ClusterError> {
        let ttl = Duration::from_secs(u64::try_from(granted_secs).unwrap_or(0).max(1));
        let shared = Arc::new(Shared {
            lost: AtomicBool::new(false),
            valid_until: Mutex::new(sent + ttl),
        });
        let (stop, stop_rx) = mpsc::channel();
        let mut guard = LockGuard {
            etcd,
            token,
            lease_id,
            shared,
            stop: Some(stop),
            thread: None,
            skip_local_check: AtomicBool::new(false),
        };
        // On any error below, dropping `guard` revokes the lease.
        let own = Etcd::connect(guard.etcd.inner.cfg.clone())?;
        let sh = guard.shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("etcd-lease-{lease_id:x}"))
            .spawn(move || keepalive(&own, lease_id, ttl, &sh, &stop_rx))
            .map_err(ClusterError::Runtime)?;
        guard.thread = Some(thread);
        Ok(guard)
    }

    /// The fencing token: the lock key's creation revision.
    pub fn token(&self) -> i64 {
        self.token
    }

    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The lease could not be renewed in time: the lock may already be
    /// someone else's, and every guarded write fails.
    pub fn is_lost(&self) -> bool {
        if self.shared.lost.load(Ordering::SeqCst) {
            return true;
        }
        let until = *self
            .shared
            .valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Instant::now() >= until
    }

    /// Let guarded writes reach etcd even when the lease is known lost, so
    /// a test can show that etcd itself refuses them.
    #[doc(hidden)]
    pub fn skip_local_loss_check_for_tests(&self) {
        self.skip_local_check.store(true, Ordering::SeqCst);
    }

    /// Release the lock now (what dropping does), reporting a failure to
    /// revoke the lease (the lock then frees itself when the lease expires).
    /// A lease that already expired or was broken counts as released.
    pub fn release(mut self) -> Result<(), ClusterError> {
        self.stop_keepalive();
        let id = self.lease_id;
        self.lease_id = 0;
        self.etcd
            .retry_read(|| {
                self.etcd.call_once(
                    "lease revoke",
                    |mut c| async move { c.lease_revoke(id).await },
                )
            })
            .map(|_| ())
            .or_else(|e| match e {
                // Already expired (or broken): released all the same.
                ClusterError::Etcd { ref message, .. } if message.contains("lease not found") => {
                    Ok(())
                }
                e => Err(e),
            })
    }

    fn stop_keepalive(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_keepalive();
        if self.lease_id != 0 {
            let id = self.lease_id;
            // One bounded attempt: a lease we fail to revoke expires anyway.
            if let Err(e) =
                self.etcd.call_once(
                    "lease revoke",
                    |mut c| async move { c.lease_revoke(id).await },
                )
            {
                tracing::debug!("could not revoke the lock's lease {id:x}: {e:?}");
            }
        }
    }
}

/// The keepalive thread: renew every TTL/3 on its own client; mark the lock
/// lost when etcd says the lease is gone or no renewal came in time.
fn keepalive(
    etcd: &Etcd,
    lease_id: i64,
    ttl: Duration,
    shared: &Shared,
    stop: &mpsc::Receiver<()>,
) {
    let every = ttl / 3;
    let mark_lost = |why: &str| {
        shared.lost.store(true, Ordering::SeqCst);
        tracing::warn!("the cluster lock's lease {lease_id:x} is lost: {why}");
    };
    let mut stream = None;
    loop {
        match stop.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let sent = Instant::now();
        match renew_once(etcd, lease_id, &mut stream) {
            Ok(ttl) if ttl > 0 => {
                let secs = u64::try_from(ttl).unwrap_or(0);
                *shared.valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    sent + Duration::from_secs(secs);
            }
            Ok(_) => return mark_lost("etcd says it expired"),
            Err(e) => {
                tracing::debug!("lease renewal failed: {e}");
                stream = None;
                if Instant::now() >= *shared.valid_until.lock().unwrap_or_else(|p| p.into_inner()) {
                    return mark_lost("no renewal was answered within its TTL");
                }
            }
        }
    }
}

/// A keepalive stream and the endpoint it runs to.
type Renewal = (usize, LeaseKeeper, LeaseKeepAliveStream);

/// One renewal on the open stream (opened first if needed): the TTL etcd
/// answers (0: the lease is gone). A failure moves on to the next endpoint.
fn renew_once(etcd: &Etcd, lease_id: i64, stream: &mut Option<Renewal>) -> Result<i64, String> {
    let t = etcd.inner.cfg.request_timeout;
    if stream.is_none() {
        let (i, mut client) = etcd.current_client().map_err(|e| format!("{e:?}"))?;
        match etcd
            .inner
            .rt
            .block_on(async { tokio::time::timeout(t, client.lease_keep_alive(lease_id)).await })
        {
            Ok(Ok((keeper, s))) => *stream = Some((i, keeper, s)),
            other => {
                etcd.move_on_from(i);
                return Err(format!("opening the keepalive stream: {other:?}"));
            }
        }
    }
    let Some((i, keeper, s)) = stream.as_mut() else {
        return Err("no keepalive stream".into());
    };
    let r = etcd.inner.rt.block_on(async {
        tokio::time::timeout(t, async {
            keeper.keep_alive().await?;
            s.message().await
        })
        .await
    });
    match r {
        Ok(Ok(Some(resp))) => Ok(resp.ttl()),
        other => {
            etcd.move_on_from(*i);
            Err(format!("{other:?}"))
        }
    }
}

fn user_name() -> String {
    if let Ok(u) = std::env::var("USER")
        && !u.is_empty()
    {
        return u;
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the length given; getpwuid_r writes
    // the entry into `pw` and its strings into `buf`, and sets `result` to
    // `pw` on success.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            pw.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        // SAFETY: on success `pw` is initialised and `pw_name` points to a
        // NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr((*result).pw_name) };
        if let Ok(n) = name.to_str()
            && !n.is_empty()
        {
            return n.to_string();
        }
    }
    format!("uid{uid}")
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_info_names_this_process() {
        let h = HolderInfo::current("apply");
        assert!(
            h.holder.contains(&format!("pid {}", std::process::id())),
            "{}",
            h.holder
        );
        assert!(h.holder.contains('@'));
        assert_eq!(h.command, "apply");
        assert!(h.started_at.ends_with('Z'), "{}", h.started_at);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["format_version"], "1");
    }
}
