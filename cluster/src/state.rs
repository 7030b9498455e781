//! Guarded writes of shared state: every write is one etcd transaction whose
//! first compare is `create_revision(lock key) == our token`. A coordinator
//! that lost the lock (paused past its lease, partitioned, broken) has each
//! write refused by etcd itself with `Fenced`, whatever it believes.

use std::sync::atomic::Ordering;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp};
use serde_json::Value;

use crate::ClusterError;
use crate::lock::{LockGuard, first_get};
use crate::retry::Failure;

/// How often an append looks for the next free journal slot before it
/// gives up (only a writer without the lock could take slots from under us).
const MAX_SLOT_TRIES: u32 = 16;

impl LockGuard {
    /// Write a VM's record (`/vmctl/<cluster>/vms/<name>`).
    pub fn put_vm(&self, name: &str, record: &Value) -> Result<(), ClusterError> {
        let key = self.etcd.keys().vm(name)?;
        let bytes = to_json(record)?;
        self.etcd.retry_write(
            || {
                self.guarded_once(vec![], vec![TxnOp::put(key.clone(), bytes.clone(), None)])?;
                Ok(())
            },
            || {
                Ok(self
                    .read_guarded(&key)?
                    .filter(|kv| kv.value() == bytes.as_slice())
                    .map(|_| ()))
            },
        )
    }

    /// Remove a VM's record (no error if it had none).
    pub fn delete_vm(&self, name: &str) -> Result<(), ClusterError> {
        let key = self.etcd.keys().vm(name)?;
        self.etcd.retry_write(
            || {
                self.guarded_once(vec![], vec![TxnOp::delete(key.clone(), None)])?;
                Ok(())
            },
            || {
                // Absent (and our token still current): the delete is done.
                match self.read_guarded(&key)? {
                    None => Ok(Some(())),
                    Some(_) => Ok(None),
                }
            },
        )
    }

    /// Append an entry to the journal; returns its sequence number.
    pub fn append_journal(&self, entry: &Value) -> Result<u64, ClusterError> {
        let bytes = to_json(entry)?;
        let last_tried = std::cell::Cell::new(None::<u64>);
        self.etcd.retry_write(
            || {
                for _ in 0..MAX_SLOT_TRIES {
                    let seq = self.last_journal_seq()?.map_or(1, |s| s.saturating_add(1));
                    let key = self.etcd.keys().journal(seq);
                    last_tried.set(Some(seq));
                    let took = self.guarded_once(
                        vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)],
                        vec![TxnOp::put(key, bytes.clone(), None)],
                    )?;
                    if took {
                        return Ok(seq);
                    }
                }
                Err(Failure::Fatal(ClusterError::Etcd {
                    op: "journal append",
                    message: "journal slots kept being taken: someone writes without the lock"
                        .into(),
                }))
            },
            || {
                // Did the slot we last tried get our entry?
                let Some(seq) = last_tried.get() else {
                    return Ok(None);
                };
                let key = self.etcd.keys().journal(seq);
                Ok(self
                    .read_guarded(&key)?
                    .filter(|kv| kv.value() == bytes.as_slice())
                    .map(|_| seq))
            },
        )
    }

    /// One guarded transaction: Ok(true) when it applied, Ok(false) when
    /// one of `extra` compares failed while our token is still current,
    /// `Fenced` when it is not.
    fn guarded_once(
        &self,
        extra: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, Failure<ClusterError>> {
        if !self.skip_local_check.load(Ordering::SeqCst) && self.is_lost() {
            return Err(Failure::Fatal(ClusterError::LeaseLost {
                token: self.token,
            }));
        }
        let lock = self.etcd.keys().lock();
        let mut compares = vec![Compare::create_revision(
            lock.clone(),
            CompareOp::Equal,
            self.token,
        )];
        compares.extend(extra);
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else([TxnOp::get(lock, None)]);
        let r = self
            .etcd
            .call_once("guarded txn", |mut c| async move { c.txn(txn).await })?;
        if r.succeeded() {
            return Ok(true);
        }
        let current = first_get(&r.op_responses()).map(|kv| kv.create_revision());
        if current != Some(self.token) {
            return Err(Failure::Fatal(ClusterError::Fenced {
                token: self.token,
                current,
            }));
        }
        Ok(false)
    }

    /// Read `key` in one snapshot with the lock key: `Fenced` if our token
    /// is no longer current (so a re-read never vouches for a write after
    /// we lost the lock).
    fn read_guarded(&self, key: &str) -> Result<Option<KeyValue>, Failure<ClusterError>> {
        let lock = self.etcd.keys().lock();
        let txn = Txn::new().and_then([TxnOp::get(lock, None), TxnOp::get(key.to_string(), None)]);
        let r = self
            .etcd
            .call_once("get", |mut c| async move { c.txn(txn).await })?;
        let gets: Vec<Option<KeyValue>> = r
            .op_responses()
            .into_iter()
            .map(|o| match o {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .collect();
        let current = gets
            .first()
            .cloned()
            .flatten()
            .map(|kv| kv.create_revision());
        if current != Some(self.token) {
            return Err(Failure::Fatal(ClusterError::Fenced {
                token: self.token,
                current,
            }));
        }
        Ok(gets.into_iter().nth(1).flatten())
    }

    fn last_journal_seq(&self) -> Result<Option<u64>, Failure<ClusterError>> {
        let prefix = self.etcd.keys().journal_prefix();
        let mut r = self.etcd.call_once("range", |mut c| async move {
            c.get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(1)
                        .with_keys_only(),
                ),
            )
            .await
        })?;
        Ok(r.take_kvs().first().and_then(|kv| {
            std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| self.etcd.keys().seq_of(k))
        }))
    }
}

fn to_json(v: &Value) -> Result<Vec<u8>, ClusterError> {
    serde_json::to_vec(v).map_err(|e| ClusterError::Etcd {
        op: "encode",
        message: e.to_string(),
    })
}
