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

/// A quiesce in effect.
pub(super) struct Quiesced {
    pub(super) id: u64,
    pub(super) since: Instant,
    /// The VMM resumes by itself here if no `thaw` came.
    pub(super) deadline: Instant,
}

impl Vmm {
    pub(super) fn quiesce(&mut self, resume_after: Duration) -> Result<QuiesceResult, String> {
        if self.quiesced.is_some() {
            return Err("the VM is already quiesced for another copy".into());
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
            id,
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
        match self.quiesced.take() {
            Some(q) if q.id == id => {
                self.machine.resume();
                let paused_us = q.since.elapsed().as_micros() as u64;
                tracing::info!(id, paused_us, "thawed");
                Ok(ThawResult { paused_us })
            }
            other => {
                self.quiesced = other;
                Err(format!(
                    "quiesce {id} is not in effect (it ended by its deadline, a resume or a reboot): a copy taken under it may not be consistent"
                ))
            }
        }
    }

    /// Resume a quiesce whose control plane never thawed it.
    pub(super) fn expire_quiesce(&mut self) {
        if let Some(q) = &self.quiesced
            && Instant::now() >= q.deadline
        {
            tracing::warn!(id = q.id, "quiesce not thawed in time: resuming the VM");
            self.quiesced = None;
            self.machine.resume();
        }
    }

    /// Anything that resumes the vCPUs ends the quiesce.
    pub(super) fn end_quiesce(&mut self, why: &str) {
        if let Some(q) = self.quiesced.take() {
            tracing::warn!(id = q.id, why, "quiesce ended before its thaw");
        }
    }
}
