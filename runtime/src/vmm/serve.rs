//! The VMM's event loop: one [`Vmm`] per process, one loop for every event of
//! every boot (crate::vmm::events), guest resets rebuilt in place, and the
//! graceful shutdown (power button, then force).

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::boot::BootImage;
use super::config::MachineConfig;
use super::events::{self, MainEvent};
use super::hotplug::InFlight;
use super::machine::{Com1, Machine, Persistent};
use super::{Outcome, VmmError};
use crate::api::protocol::{Request, Response};
use crate::devices::legacy::GED_POWER_BUTTON;
use crate::vstate::vcpu::VmEvent;

/// How often the loop looks at an in-flight hot-add while no event comes.
const HOTPLUG_TICK: Duration = Duration::from_millis(20);

pub(super) struct Vmm {
    /// What this VMM was asked to build; hot-add updates `cpus` and
    /// `memory_mib`, so a guest reset boots with what the guest has now.
    pub(super) cfg: MachineConfig,
    pub(super) image: BootImage,
    pub(super) keep: Persistent,
    pub(super) machine: Machine,
    pub(super) com1: Arc<Mutex<Option<Com1>>>,
    pub(super) tx: Sender<MainEvent>,
    pub(super) rx: Receiver<MainEvent>,
    pub(super) booted: Instant,
    /// Boots so far; also the generation of the current machine's events.
    pub(super) boots: u64,
    /// A hot-add or hot-remove waiting for the guest.
    pub(super) in_flight: Option<InFlight>,
    /// While a shutdown waits for the guest: when it stops the VM by force
    /// (reported in `status`, so an observer can wait for the exit instead
    /// of planning changes to a VM that is about to be gone).
    pub(super) stopping_until: Option<Instant>,
    /// A quiesce for a copy, until its thaw or deadline.
    pub(super) quiesced: Option<super::quiesce::Quiesced>,
    pub(super) next_quiesce_id: u64,
}

impl Vmm {
    pub(super) fn serve(&mut self) -> Outcome {
        crate::confine::trip_point(crate::confine::ThreadKind::Main);
        loop {
            let tick = match &self.quiesced {
                Some(q) => Some(q.deadline.saturating_duration_since(Instant::now())),
                None => self.in_flight.is_some().then_some(HOTPLUG_TICK),
            };
            // An agent command waiting for the guest times out on time.
            let tick = match (tick, self.keep.agent.deadline()) {
                (t, Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    Some(t.map_or(left, |t| t.min(left)))
                }
                (t, None) => t,
            };
            let ev = if let Some(tick) = tick {
                match self.rx.recv_timeout(tick) {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return channel_closed(),
                }
            } else {
                match self.rx.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => return channel_closed(),
                }
            };
            self.poll_in_flight();
            self.expire_quiesce();
            self.keep.agent.expire(Instant::now());
            let Some(ev) = ev else { continue };
            match ev {
                MainEvent::Vm { generation, event } => {
                    if let Some(event) = events::current(generation, self.boots, event)
                        && let Some(out) = self.on_vm_event(event)
                    {
                        return out;
                    }
                }
                MainEvent::Api(p) => {
                    if let Some(out) = self.on_request(p) {
                        return out;
                    }
                }
                MainEvent::Signal(sig) => {
                    tracing::info!(signal = sig, "stop signal: shutting the guest down");
                    let out = self.shutdown(super::SIGNAL_SHUTDOWN_GRACE);
                    let graceful = out.reason == "poweroff";
                    return Outcome {
                        reason: if graceful { "shutdown" } else { out.reason },
                        ..out
                    };
                }
            }
        }
    }

    fn on_vm_event(&mut self, ev: VmEvent) -> Option<Outcome> {
        match ev {
            VmEvent::PowerOff => Some(Outcome {
                reason: "poweroff",
                detail: "the guest powered off".into(),
                code: 0,
            }),
            VmEvent::Crash(detail) => {
                tracing::error!(%detail, "guest crashed");
                Some(Outcome {
                    reason: "crash",
                    detail,
                    code: 2,
                })
            }
            VmEvent::Reset => match self.reboot() {
                Ok(()) => None,
                Err(e) => Some(Outcome {
                    reason: "crash",
                    detail: format!("reboot failed: {e}"),
                    code: 2,
                }),
            },
        }
    }

    fn reboot(&mut self) -> Result<(), VmmError> {
        tracing::info!("guest reset: rebuilding the VM");
        self.fail_in_flight("the guest reset");
        self.end_quiesce("the guest reset");
        self.keep.agent.fail("the guest reset");
        self.machine.stop();
        self.machine.release_memory();
        // What the guest reported describes the boot that just ended.
        if let Ok(mut r) = self.keep.report.lock() {
            *r = None;
        }
        let generation = self.boots + 1;
        let machine = Machine::build(
            &self.cfg,
            &self.image,
            &self.keep,
            events::sink(&self.tx, generation),
        )?;
        // The old machine (and its memory) goes away before the new one runs.
        self.machine = machine;
        self.boots = generation;
        if let Ok(mut c) = self.com1.lock() {
            *c = Some(self.machine.com1.clone());
        }
        self.machine.start()?;
        self.booted = Instant::now();
        Ok(())
    }

    /// Press the power button and wait for the guest to power off; after
    /// `grace`, stop it by force.
    pub(super) fn shutdown(&mut self, grace: Duration) -> Outcome {
        self.fail_in_flight("the VM is shutting down");
        self.end_quiesce("the VM is shutting down");
        self.keep.agent.fail("the VM is shutting down");
        self.machine.resume();
        self.keep.ged.raise(GED_POWER_BUTTON);
        if let Some(irq) = &self.machine.ged_irq {
            irq.trigger();
        }
        let deadline = Instant::now() + grace;
        self.stopping_until = Some(deadline);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(MainEvent::Vm { generation, event }) => {
                    match events::current(generation, self.boots, event) {
                        Some(VmEvent::PowerOff) => {
                            return Outcome {
                                reason: "poweroff",
                                detail: "the guest powered off on request".into(),
                                code: 0,
                            };
                        }
                        Some(VmEvent::Crash(detail)) => {
                            return Outcome {
                                reason: "crash",
                                detail,
                                code: 2,
                            };
                        }
                        Some(VmEvent::Reset) => {
                            return Outcome {
                                reason: "shutdown",
                                detail: "the guest reset during shutdown; stopped".into(),
                                code: 0,
                            };
                        }
                        None => {}
                    }
                }
                Ok(MainEvent::Signal(_)) => {}
                Ok(MainEvent::Api(p)) => {
                    let r = match p.request {
                        Request::Status => Response::ok(self.status()),
                        _ => Response::err("the VM is shutting down"),
                    };
                    let _ = p.reply.send(r);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Outcome {
                        reason: "shutdown",
                        detail: format!(
                            "the guest did not power off within {} ms; stopped",
                            grace.as_millis()
                        ),
                        code: 0,
                    };
                }
                Err(RecvTimeoutError::Disconnected) => return channel_closed(),
            }
        }
    }
}

fn channel_closed() -> Outcome {
    Outcome {
        reason: "crash",
        detail: "event channel closed".into(),
        code: 2,
    }
}
