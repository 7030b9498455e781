//! Live CPU add/remove and memory add, as control-socket verbs.
//!
//! A request starts the change on the running machine (vCPU created or
//! released, RAM mapped and registered, the controller's slot filled), raises
//! the GED, and is answered only when the guest has acknowledged it through
//! the hotplug controller — CINS / MINS acked, or the removed vCPU ejected —
//! or with an error after a timeout. Meanwhile the event loop keeps serving
//! (status, console, power). A request for the very change already in
//! flight (same kind, same target: an apply that was killed and re-run)
//! joins it and gets the same answer; any other change while one is in
//! flight is refused. Asking for what the VM already has is success.

use std::time::{Duration, Instant};

use super::serve::Vmm;
use crate::api::protocol::{HotplugResult, Response};
use crate::api::server::Pending;
use crate::devices::legacy::GedDevice;
use crate::devices::legacy::ged::{GED_CPU_HOTPLUG, GED_MEMORY_HOTPLUG};

/// How long the guest has to acknowledge a hot-add or eject a vCPU.
pub const GUEST_ACK_TIMEOUT: Duration = Duration::from_secs(60);

enum Op {
    AddCpus { indices: Vec<u32>, target: u32 },
    RemoveCpus { indices: Vec<u32>, target: u32 },
    AddMemory { slot: usize, target_mib: u64 },
}

impl Op {
    /// Whether a new request for `other` asks for exactly this change.
    fn same_change(&self, other: &Want) -> bool {
        match (self, other) {
            (Op::AddCpus { target, .. } | Op::RemoveCpus { target, .. }, Want::Cpus(t)) => {
                target == t
            }
            (Op::AddMemory { target_mib, .. }, Want::MemoryMib(t)) => target_mib == t,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Op::AddCpus { target, .. } => format!("hot-add to {target} vCPUs"),
            Op::RemoveCpus { target, .. } => format!("hot-remove to {target} vCPUs"),
            Op::AddMemory { target_mib, .. } => format!("hot-add to {target_mib} MiB"),
        }
    }
}

/// What a hot-add request asks for.
enum Want {
    Cpus(u32),
    MemoryMib(u64),
}

pub(super) struct InFlight {
    op: Op,
    /// Every client waiting for this change (the first requester, and any
    /// later one that asked for the same change).
    replies: Vec<Pending>,
    deadline: Instant,
}

impl Vmm {
    fn result(&self) -> HotplugResult {
        HotplugResult {
            cpus: self.cfg.cpus,
            memory_mib: self.cfg.memory_mib,
        }
    }

    pub(super) fn in_flight_description(&self) -> Option<String> {
        self.in_flight.as_ref().map(|f| f.op.describe())
    }

    /// When a change is already waiting for the guest: join it if `p`
    /// asks for the same change, refuse `p` otherwise. Returns `None` when
    /// `p` was taken care of.
    fn busy(&mut self, want: &Want, p: Pending) -> Option<Pending> {
        let Some(f) = &mut self.in_flight else {
            return Some(p);
        };
        if f.op.same_change(want) {
            tracing::info!(
                what = f.op.describe(),
                "a second client joins the change in flight"
            );
            f.replies.push(p);
        } else {
            let _ = p.reply.send(Response::err(format!(
                "another hot-add is in flight ({}); try again when it has finished",
                f.op.describe()
            )));
        }
        None
    }

    fn raise(&self, bits: u32) {
        GedDevice::notify(&self.keep.ged, self.machine.ged_irq.as_ref(), bits);
    }

    /// `hot_add_cpu {cpus}`: add or remove vCPUs until `target` are present.
    pub(super) fn start_cpu_change(&mut self, target: u32, p: Pending) {
        let Some(p) = self.busy(&Want::Cpus(target), p) else {
            return;
        };
        let present = self.machine.cpu_hotplug.present_cpus();
        let have = present.len() as u32;
        if target == 0 || target > self.cfg.max_cpus {
            let _ = p.reply.send(Response::err(format!(
                "cannot have {target} vCPUs: this VM takes 1 to {} (its max, fixed at boot)",
                self.cfg.max_cpus
            )));
            return;
        }
        if target == have {
            let _ = p.reply.send(Response::ok(self.result()));
            return;
        }
        let op = if target > have {
            let indices: Vec<u32> = (0..self.cfg.max_cpus)
                .filter(|i| !present.contains(i))
                .take((target - have) as usize)
                .collect();
            for &i in &indices {
                let done = self
                    .machine
                    .add_vcpu(i)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        self.machine
                            .cpu_hotplug
                            .insert(i)
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = done {
                    let _ = p
                        .reply
                        .send(Response::err(format!("cannot add vCPU {i}: {e}")));
                    return;
                }
            }
            tracing::info!(?indices, target, "vCPU hot-add: waiting for the guest");
            Op::AddCpus { indices, target }
        } else {
            let mut indices: Vec<u32> = present.iter().copied().filter(|&i| i != 0).collect();
            indices.sort_unstable_by(|a, b| b.cmp(a));
            indices.truncate((have - target) as usize);
            for &i in &indices {
                if let Err(e) = self.machine.cpu_hotplug.request_remove(i) {
                    let _ = p
                        .reply
                        .send(Response::err(format!("cannot remove vCPU {i}: {e}")));
                    return;
                }
            }
            tracing::info!(
                ?indices,
                target,
                "vCPU hot-remove: waiting for the guest to eject"
            );
            Op::RemoveCpus { indices, target }
        };
        self.raise(GED_CPU_HOTPLUG);
        self.in_flight = Some(InFlight {
            op,
            replies: vec![p],
            deadline: Instant::now() + GUEST_ACK_TIMEOUT,
        });
    }

    /// `hot_add_memory {memory_mib}`: grow the RAM to `target_mib`.
    pub(super) fn start_memory_add(&mut self, target_mib: u64, p: Pending) {
        let Some(p) = self.busy(&Want::MemoryMib(target_mib), p) else {
            return;
        };
        let have = self.cfg.memory_mib;
        let refuse = |p: Pending, msg: String| {
            let _ = p.reply.send(Response::err(msg));
        };
        if target_mib < have {
            return refuse(
                p,
                format!("memory cannot shrink live ({have} MiB → {target_mib} MiB)"),
            );
        }
        if target_mib > self.cfg.max_memory_mib {
            return refuse(
                p,
                format!(
                    "{target_mib} MiB exceeds this VM's hot-add max of {} MiB (fixed at boot)",
                    self.cfg.max_memory_mib
                ),
            );
        }
        if target_mib == have {
            let _ = p.reply.send(Response::ok(self.result()));
            return;
        }
        match self.machine.add_memory((target_mib - have) << 20) {
            Ok((slot, base)) => {
                tracing::info!(
                    slot,
                    base,
                    target_mib,
                    "memory hot-add: waiting for the guest"
                );
                self.raise(GED_MEMORY_HOTPLUG);
                self.in_flight = Some(InFlight {
                    op: Op::AddMemory { slot, target_mib },
                    replies: vec![p],
                    deadline: Instant::now() + GUEST_ACK_TIMEOUT,
                });
            }
            Err(e) => refuse(p, format!("cannot add memory: {e}")),
        }
    }

    /// Park the threads of vCPUs the guest ejected; finish an in-flight
    /// change the guest has acknowledged, or fail it past its deadline.
    pub(super) fn poll_in_flight(&mut self) {
        for i in self.machine.cpu_hotplug.take_ejected() {
            tracing::info!(index = i, "the guest ejected a vCPU: parking its thread");
            self.machine.park_vcpu(i);
            self.cfg.cpus = self.machine.cpu_hotplug.present_cpus().len() as u32;
        }
        let Some(f) = &self.in_flight else {
            return;
        };
        let hp = &self.machine.cpu_hotplug;
        let done = match &f.op {
            Op::AddCpus { indices, .. } => indices.iter().all(|&i| !hp.inserting(i)),
            Op::RemoveCpus { indices, .. } => indices.iter().all(|&i| !hp.present(i)),
            Op::AddMemory { slot, .. } => !self.machine.memory_hotplug.inserting(*slot),
        };
        let expired = Instant::now() >= f.deadline;
        if !done && !expired {
            return;
        }
        let Some(f) = self.in_flight.take() else {
            return;
        };
        self.cfg.cpus = self.machine.cpu_hotplug.present_cpus().len() as u32;
        if let Op::AddMemory { target_mib, .. } = f.op
            && done
        {
            self.cfg.memory_mib = target_mib;
        }
        let response = if done {
            tracing::info!(what = f.op.describe(), "the guest acknowledged");
            Response::ok(self.result())
        } else {
            let secs = GUEST_ACK_TIMEOUT.as_secs();
            Response::err(match &f.op {
                Op::AddCpus { indices, .. } => format!(
                    "the guest did not acknowledge vCPU(s) {indices:?} within {secs} s; they stay present for it to pick up"
                ),
                Op::RemoveCpus { indices, .. } => format!(
                    "the guest did not eject vCPU(s) {indices:?} within {secs} s; the VM keeps them"
                ),
                Op::AddMemory { slot, .. } => format!(
                    "the guest did not acknowledge memory slot {slot} within {secs} s; the memory stays plugged"
                ),
            })
        };
        for p in &f.replies {
            let _ = p.reply.send(response.clone());
        }
    }

    /// Answer an in-flight change with an error (reset, shutdown).
    pub(super) fn fail_in_flight(&mut self, why: &str) {
        if let Some(f) = self.in_flight.take() {
            let response = Response::err(format!("{}: {why}", f.op.describe()));
            for p in &f.replies {
                let _ = p.reply.send(response.clone());
            }
        }
    }
}
