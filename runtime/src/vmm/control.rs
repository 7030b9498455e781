//! The control socket's requests (docs/control-socket.md), answered by the
//! event loop.

use std::time::Duration;

use super::serve::Vmm;
use super::{CAPABILITIES, Outcome};
use crate::api::protocol::{
    DEFAULT_AGENT_TIMEOUT_MS, DEFAULT_QUIESCE_RESUME_AFTER_MS, DEFAULT_SHUTDOWN_TIMEOUT_MS,
    DiskStatus, NicStatus, Request, Response, RunState, ShutdownResult, Status,
};
use crate::api::server::Pending;

impl Vmm {
    pub(super) fn status(&self) -> Status {
        let disks = self
            .cfg
            .disks
            .iter()
            .map(|d| DiskStatus {
                name: d.name.clone(),
                size_bytes: std::fs::metadata(&d.path).map(|m| m.len()).unwrap_or(0),
                path: d.path.display().to_string(),
            })
            .collect();
        let hosts = self.keep.nics.lock().ok();
        let nics = self
            .cfg
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| NicStatus {
                name: n.name.clone(),
                mac: n.mac.clone(),
                tap: n.tap.clone(),
                stats: hosts
                    .as_ref()
                    .and_then(|h| h.get(i))
                    .map(|h| h.counters.snapshot())
                    .unwrap_or_default(),
            })
            .collect();
        Status {
            state: if self.machine.is_paused() {
                RunState::Paused
            } else {
                RunState::Running
            },
            pid: std::process::id(),
            vcpus: self.cfg.cpus,
            memory_mib: self.cfg.memory_mib,
            disks,
            nics,
            guest: self.keep.report.lock().ok().and_then(|r| r.clone()),
            uptime_ms: self.booted.elapsed().as_millis() as u64,
            boots: self.boots,
            irq_mode: self.cfg.irq_mode.as_str().into(),
            max_cpus: self.cfg.max_cpus,
            max_memory_mib: self.cfg.max_memory_mib,
            hotplug_in_flight: self.in_flight_description(),
            stopping_in_ms: self.stopping_until.map(|t| {
                t.saturating_duration_since(std::time::Instant::now())
                    .as_millis() as u64
            }),
        }
    }

    /// Start an agent command: register it, then put its line into COM2's
    /// receive FIFO — after a newline, which ends whatever partial line an
    /// earlier command the guest did not finish reading left behind.
    fn send_agent_command(
        &mut self,
        command: &serde_json::Value,
        timeout: Duration,
        reply: std::sync::mpsc::Sender<Response>,
    ) {
        let answer: crate::devices::agent::Answer = Box::new(move |r| {
            let _ = reply.send(match r {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e.to_string()),
            });
        });
        let Some(line) = self.keep.agent.begin(command, timeout, answer) else {
            return;
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.push(b'\n');
        bytes.extend_from_slice(&line);
        match self.machine.com2.lock() {
            Ok(mut com2) => com2.send(&bytes),
            Err(_) => self.keep.agent.fail("COM2's device is poisoned"),
        }
    }

    /// Answer one request; `Some` when the VMM must exit.
    pub(super) fn on_request(&mut self, p: Pending) -> Option<Outcome> {
        // A quiesced VM's disks must not change until its thaw.
        if self.quiesced.is_some()
            && matches!(
                p.request,
                Request::ResizeDisk { .. }
                    | Request::HotAddCpu { .. }
                    | Request::HotAddMemory { .. }
            )
        {
            let _ = p.reply.send(Response::err(
                "the VM is quiesced for a copy; try again after it",
            ));
            return None;
        }
        let response = match p.request {
            Request::Status => Response::ok(self.status()),
            Request::Capabilities => Response::ok(CAPABILITIES),
            Request::Pause => {
                if self.machine.pause() {
                    Response::ok(RunState::Paused)
                } else {
                    Response::err("some vCPUs did not pause in time")
                }
            }
            Request::Resume => {
                self.end_quiesce("a resume request");
                self.machine.resume();
                Response::ok(RunState::Running)
            }
            Request::Quiesce { resume_after_ms } => {
                let after = Duration::from_millis(
                    resume_after_ms.unwrap_or(DEFAULT_QUIESCE_RESUME_AFTER_MS),
                );
                match self.quiesce(after) {
                    Ok(r) => Response::ok(r),
                    Err(e) => Response::err(e),
                }
            }
            Request::Thaw { id } => match self.thaw(id) {
                Ok(r) => Response::ok(r),
                Err(e) => Response::err(e),
            },
            Request::ResizeDisk { disk, size_bytes } => match self.resize_disk(&disk, size_bytes) {
                Ok(bytes) => Response::ok(bytes),
                Err(e) => Response::err(e),
            },
            Request::HotAddCpu { cpus } => {
                // Answered when the guest has acknowledged (or not).
                self.start_cpu_change(cpus, p);
                return None;
            }
            Request::HotAddMemory { memory_mib } => {
                self.start_memory_add(memory_mib, p);
                return None;
            }
            Request::Agent {
                command,
                timeout_ms,
            } => {
                // Answered by the guest's reply (on a vCPU thread) or by
                // the loop's timeout (`expire_agent`).
                let timeout = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_AGENT_TIMEOUT_MS));
                self.send_agent_command(&command, timeout, p.reply);
                return None;
            }
            Request::Shutdown { timeout_ms } => {
                let grace =
                    Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_MS));
                let outcome = self.shutdown(grace);
                let graceful = outcome.reason == "poweroff";
                let _ = p.reply.send(Response::ok(ShutdownResult { graceful }));
                let _ = p.written.recv_timeout(Duration::from_secs(1));
                return Some(Outcome {
                    reason: if graceful { "shutdown" } else { outcome.reason },
                    ..outcome
                });
            }
        };
        let _ = p.reply.send(response);
        None
    }
}
