//! Quiesce for a consistent copy (docs/control-socket.md, docs/disks.md):
//! park the vCPUs, complete every virtio-blk request the guest already
//! submitted, `fdatasync` every disk — then the control plane copies the
//! files while nothing can change them, and `thaw`s.
//!
//! Why this is enough for a crash-consistent copy: a guest's disk writes
//! reach the file only through its virtqueues, and new requests appear in
//! a queue only when a vCPU writes the avail ring. With every vCPU parked
//! no request can be added; draining runs (under the transport's lock, so
//! after whatever the I/O thread was doing) every request already made
//! available; the sync makes them durable. The file then holds exactly
//! what a power cut at the pause instant would leave.

use std::time::{Duration, Instant};

use super::serve::Vmm;
use crate::api::protocol::{QuiesceResult, ThawResult};
use crate::devices::virtio::VirtioDevice;

/// A quiesce in effect: one pause, held by every copy that asked for it
/// meanwhile (two copies of one source in one apply share it); the vCPUs
/// resume when the last holder thaws.
pub(super) struct Quiesced {
    pub(super) ids: Vec<u64>,
    pub(super) since: Instant,
    /// The VMM resumes by itself here if not every holder thawed.
    pub(super) deadline: Instant,
}

impl Vmm {
    pub(super) fn quiesce(&mut self, resume_after: Duration) -> Result<QuiesceResult, String> {
        if let Some(q) = &mut self.quiesced {
            // Already paused and flushed: join that pause.
            self.next_quiesce_id += 1;
            let id = self.next_quiesce_id;
            q.ids.push(id);
            q.deadline = q.deadline.max(Instant::now() + resume_after);
            tracing::info!(id, "joined a quiesce in effect");
            return Ok(QuiesceResult {
                id,
                quiesce_us: 0,
                disks: self.machine.disks.len() as u32,
            });
        }
        if self.in_flight.is_some() {
            return Err("a hot-add or hot-remove is waiting for the guest".into());
        }
        let since = Instant::now();
        if !self.machine.pause() {
            self.machine.resume();
            return Err("some vCPUs did not pause in time".into());
        }
        let mut disks = 0;
        for (index, dev) in self.machine.disks.iter().enumerate() {
            // The lock waits for a pass of the I/O thread still running.
            let Ok(mut t) = dev.lock() else {
                self.machine.resume();
                return Err(format!("disk {index}: its device is poisoned"));
            };
            for queue in 0..t.device().queue_max_sizes().len() as u32 {
                t.process_queue(queue);
            }
            if let Err(e) = t.device().sync_data() {
                drop(t);
                self.machine.resume();
                return Err(format!("disk {index}: fdatasync failed: {e}"));
            }
            disks += 1;
        }
        self.next_quiesce_id += 1;
        let id = self.next_quiesce_id;
        self.quiesced = Some(Quiesced {
            ids: vec![id],
            since,
            deadline: since + resume_after,
        });
        let quiesce_us = since.elapsed().as_micros() as u64;
        tracing::info!(id, quiesce_us, disks, "quiesced for a copy");
        Ok(QuiesceResult {
            id,
            quiesce_us,
            disks,
        })
    }

    pub(super) fn thaw(&mut self, id: u64) -> Result<ThawResult, String> {
        let Some(q) = &mut self.quiesced else {
            return Err(not_in_effect(id));
        };
        if !q.ids.contains(&id) {
            return Err(not_in_effect(id));
        }
        q.ids.retain(|i| *i != id);
        let paused_us = q.since.elapsed().as_micros() as u64;
        if q.ids.is_empty() {
            self.quiesced = None;
            self.machine.resume();
            tracing::info!(id, paused_us, "thawed");
        }
        Ok(ThawResult { paused_us })
    }

    /// Resume a quiesce whose control plane never thawed it.
    pub(super) fn expire_quiesce(&mut self) {
        if let Some(q) = &self.quiesced
            && Instant::now() >= q.deadline
        {
            tracing::warn!(ids = ?q.ids, "quiesce not thawed in time: resuming the VM");
            self.quiesced = None;
            self.machine.resume();
        }
    }

    /// Anything that resumes the vCPUs ends the quiesce.
    pub(super) fn end_quiesce(&mut self, why: &str) {
        if let Some(q) = self.quiesced.take() {
            tracing::warn!(ids = ?q.ids, why, "quiesce ended before its thaw");
        }
    }
}

fn not_in_effect(id: u64) -> String {
    format!(
        "quiesce {id} is not in effect (it ended by its deadline, a resume or a reboot): a copy taken under it may not be consistent"
    )
}
