//! Copies of a VM's disk files that are consistent as of one instant, taken
//! without stopping the VM: `copy-from`, `vmctl backup` and `vmctl export`
//! all go through [`Runtime::snapshot_disks`].
//!
//! For a running VM the VMM is asked to `quiesce` (vCPUs parked, every
//! submitted virtio-blk request completed, every disk fdatasynced —
//! crate::vmm::quiesce), the files are copied — by reflink (`FICLONE`)
//! where the filesystem shares blocks, else sparsely — and the VMM is
//! `thaw`ed. The copy is *crash-consistent*: exactly what a power cut at
//! the pause instant would have left on the disks — or, when the guest
//! agent offers it, *filesystem-consistent*: the agent freezes the guest's
//! filesystems before the pause and thaws them after (crate::freeze). The
//! copies are written as `<to>.partial` and renamed into place only once
//! complete and synced (after the thaw: syncing does not need the guest
//! paused).

use std::path::PathBuf;
use std::time::Duration;

use crate::api::ApiClient;
use crate::facade::{RunState, Runtime, RuntimeError};
use crate::freeze::{Consistency, GuestFreeze};
use crate::sparse::{CopyMethod, clone_or_copy_unsynced, partial_path};

/// One disk file copied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskCopy {
    pub disk: String,
    pub from: PathBuf,
    pub to: PathBuf,
    pub method: CopyMethod,
    /// Bytes of data written (the data extents); for a reflink, the file's
    /// length (nothing is written).
    pub bytes: u64,
}

/// What a snapshot did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub disks: Vec<DiskCopy>,
    /// The VM was running: it was quiesced, copied, thawed.
    pub live: bool,
    /// Microseconds the VM's vCPUs were parked (the VMM's own measure).
    pub paused_us: Option<u64>,
    /// Of which: parking the vCPUs, draining and flushing the disks.
    pub quiesce_us: Option<u64>,
    /// How consistent the copies are (docs/disks.md, "Consistency levels").
    pub consistency: Consistency,
    /// The guest filesystems frozen over the pause (mount points as the
    /// guest agent named them).
    pub frozen: Vec<String>,
    /// Why a live copy is only crash-consistent.
    pub consistency_note: Option<String>,
}

/// How long the VMM waits for the thaw before resuming by itself: a minute
/// plus the time to copy every data byte at a slow 20 MiB/s.
fn resume_after(froms: &[PathBuf]) -> Duration {
    use std::os::unix::fs::MetadataExt;
    let data: u64 = froms
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.blocks().saturating_mul(512))
        .sum();
    Duration::from_secs(60 + data / (20 << 20))
}

impl Runtime {
    /// Copy disks of VM `name` — `(disk name, destination file)` pairs —
    /// consistent as of one instant, without stopping the VM (see the
    /// module doc). Destinations appear only complete (0600).
    pub fn snapshot_disks(
        &self,
        name: &str,
        targets: &[(String, PathBuf)],
    ) -> Result<Snapshot, RuntimeError> {
        let Some(obs) = self.observe(name)? else {
            return Err(RuntimeError::NoSuchVm(name.into()));
        };
        let dir = self.state_dir().vm(name);
        let mut pairs = Vec::with_capacity(targets.len());
        for (disk, to) in targets {
            let Some(spec) = obs.record.spec.disks.iter().find(|d| &d.name == disk) else {
                return Err(RuntimeError::NoSuchDisk {
                    vm: name.into(),
                    disk: disk.clone(),
                });
            };
            pairs.push((disk.clone(), dir.disk_path(spec), to.clone()));
        }
        let snap_err = |message: String| RuntimeError::Snapshot {
            vm: name.into(),
            message,
        };
        let live = obs.live == RunState::Running;
        let client = ApiClient::new(dir.api_sock());
        // First the guest's filesystems (if its agent can), then the VM:
        // thawed in the reverse order, also on every error path below
        // (GuestFreeze's drop).
        let report = obs.status.as_ref().and_then(|s| s.guest.as_ref());
        let mut freeze = live.then(|| GuestFreeze::begin(&client, report));
        let quiesced = if live {
            let froms: Vec<PathBuf> = pairs.iter().map(|(_, f, _)| f.clone()).collect();
            Some(
                client
                    .quiesce(resume_after(&froms))
                    .map_err(|e| snap_err(format!("quiesce: {e}")))?,
            )
        } else {
            None
        };
        if let Some(f) = &mut freeze {
            f.paused();
        }
        // While paused: only the copies (a reflink is one ioctl).
        let mut copied = Vec::with_capacity(pairs.len());
        let mut failure = None;
        for (disk, from, to) in &pairs {
            let partial = partial_path(to);
            match clone_or_copy_unsynced(from, &partial) {
                Ok((file, method, bytes)) => copied.push((file, disk, from, to, method, bytes)),
                Err(source) => {
                    failure = Some(RuntimeError::Io {
                        path: from.clone(),
                        source,
                    });
                    break;
                }
            }
        }
        let quiesce_us = quiesced.as_ref().map(|q| q.result.quiesce_us);
        let thawed = quiesced.map(|q| q.thaw());
        let cleanup = |pairs: &[(String, PathBuf, PathBuf)]| {
            for (_, _, to) in pairs {
                let _ = std::fs::remove_file(partial_path(to));
            }
        };
        if let Some(e) = failure {
            cleanup(&pairs);
            return Err(e);
        }
        let paused_us = match thawed {
            Some(Ok(t)) => Some(t.paused_us),
            Some(Err(e)) => {
                cleanup(&pairs);
                return Err(snap_err(format!("thaw: {e}")));
            }
            None => None,
        };
        let level = freeze.map(GuestFreeze::thaw);
        let (consistency, frozen, consistency_note) = match level {
            Some(o) => (o.consistency, o.frozen, o.note),
            None => (Consistency::Offline, Vec::new(), None),
        };
        let mut disks = Vec::with_capacity(copied.len());
        for (file, disk, from, to, method, bytes) in copied {
            let partial = partial_path(to);
            file.sync_all().map_err(|source| RuntimeError::Io {
                path: partial.clone(),
                source,
            })?;
            std::fs::rename(&partial, to).map_err(|source| RuntimeError::Io {
                path: to.clone(),
                source,
            })?;
            tracing::info!(vm = name, disk, to = %to.display(), method = method.as_str(), bytes, "disk copied");
            disks.push(DiskCopy {
                disk: disk.clone(),
                from: from.clone(),
                to: to.clone(),
                method,
                bytes,
            });
        }
        Ok(Snapshot {
            disks,
            live,
            paused_us,
            quiesce_us,
            consistency,
            frozen,
            consistency_note,
        })
    }
}
