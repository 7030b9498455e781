//! The VMM's one event loop input: vCPU and device events, control-socket
//! requests and stop signals, all on one channel.
//!
//! Every machine (one boot) gets its own [`EventSink`] that tags what its
//! vCPUs and devices report with the machine's generation (the boot count).
//! After a reboot, a late event from the old machine's vCPUs — a triple
//! fault of a vCPU that was still running, a second reset — carries the old
//! generation and is dropped instead of rebooting or "crashing" the new
//! machine. (Before, each boot started another forwarding thread and events
//! were anonymous.)

use std::sync::mpsc::Sender;

use crate::api::server::Pending;
use crate::vstate::vcpu::{EventSink, VmEvent};

pub(super) enum MainEvent {
    Vm {
        generation: u64,
        event: VmEvent,
    },
    Api(Pending),
    /// SIGTERM/SIGINT/SIGHUP: shut down gracefully.
    Signal(i32),
}

/// The sink for the machine of `generation`.
pub(super) fn sink(tx: &Sender<MainEvent>, generation: u64) -> EventSink {
    let tx = tx.clone();
    EventSink::new(move |event| {
        let _ = tx.send(MainEvent::Vm { generation, event });
    })
}

/// The event of `generation` if it concerns the machine of `current`.
pub(super) fn current(generation: u64, current: u64, event: VmEvent) -> Option<VmEvent> {
    if generation == current {
        Some(event)
    } else {
        tracing::debug!(
            generation,
            current,
            ?event,
            "event of an earlier boot dropped"
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn events_are_tagged_and_a_late_one_from_the_previous_boot_is_dropped() {
        let (tx, rx) = mpsc::channel();
        let old = sink(&tx, 1);
        let new = sink(&tx, 2);
        // The old machine's vCPU reports after the reboot built machine 2.
        old.send(VmEvent::Crash("vCPU 1: triple fault".into()));
        new.send(VmEvent::PowerOff);
        let mut seen = Vec::new();
        for ev in rx.try_iter() {
            if let MainEvent::Vm { generation, event } = ev
                && let Some(e) = current(generation, 2, event)
            {
                seen.push(e);
            }
        }
        assert_eq!(seen, vec![VmEvent::PowerOff]);
    }
}
