//! The I/O thread: virtio queues are processed here, not on the vCPU that
//! notified them.
//!
//! Each queue's `QueueNotify` register is backed by a KVM ioeventfd: the
//! guest's write completes inside KVM (no exit to the VMM) and signals an
//! eventfd; this thread waits on all of them with epoll and runs the queue
//! under the transport's lock. A slow disk (an `fsync` taking a second)
//! therefore delays only the completion of that request, not the vCPU: it
//! goes on running the guest, which can poll, take other interrupts or use
//! other devices meanwhile. Before, the request ran inside the vCPU's MMIO
//! exit while holding the transport lock, and the whole vCPU stalled.
//!
//! A guest that polls the used ring (diag) sees the completion as soon as
//! this thread has written it. Where ioeventfds cannot be registered, the
//! transport still handles a `QueueNotify` write itself (the old path).
//!
//! Besides notifiers, the thread watches host descriptors whose readability
//! is work for a queue ([`Readable`]: a virtio-net TAP means "run RX"). They
//! are edge-triggered, so a TAP with frames waiting while the guest has no
//! receive buffers does not wake the thread again and again; the device
//! picks the frames up when the guest posts buffers and notifies RX. A
//! handler that stops at its per-pass budget with work left
//! ([`QueueHandler::process`] returns true) is run again after the other
//! ready events, so one flooded queue cannot starve the rest and nothing is
//! left waiting for an edge that already came.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;
use super::mmio::MmioTransport;

/// Something whose queue `index` can be run when its notifier fires.
pub trait QueueHandler: Send + Sync {
    /// Run queue `queue`; true when it stopped with work left (run it again
    /// soon, without waiting for another event).
    fn process(&self, queue: u32) -> bool;
}

impl<D: VirtioDevice + Send> QueueHandler for Mutex<MmioTransport<D>> {
    fn process(&self, queue: u32) -> bool {
        match self.lock() {
            Ok(mut t) => {
                t.process_queue(queue);
                t.device().has_more(queue as usize)
            }
            Err(_) => false,
        }
    }
}

/// One notifier: when `fd` fires, run `queue` of `handler`.
pub struct Notifier {
    pub fd: EventFd,
    pub queue: u32,
    pub handler: Arc<dyn QueueHandler>,
}

/// A host descriptor (a TAP) whose readability is work for `queue` of
/// `handler`; watched edge-triggered (see the module doc).
pub struct Readable {
    pub fd: OwnedFd,
    pub queue: u32,
    pub handler: Arc<dyn QueueHandler>,
}

/// One thing the thread waits on.
enum Source {
    Notifier(Notifier),
    Readable(Readable),
}

impl Source {
    /// Its event came: consume it and run the queue.
    fn fire(&self) -> bool {
        if let Source::Notifier(n) = self {
            // Reading resets the counter; several notifies since the last
            // read are one pass over the queue (it runs until empty or its
            // budget).
            let _ = n.fd.read();
        }
        self.again()
    }

    /// Run the queue (again: it had work left).
    fn again(&self) -> bool {
        match self {
            Source::Notifier(n) => n.handler.process(n.queue),
            Source::Readable(r) => r.handler.process(r.queue),
        }
    }
}

/// The running I/O thread; dropping it stops and joins the thread.
pub struct IoThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("I/O thread: {0}")]
pub struct IoThreadError(#[from] std::io::Error);

/// epoll data value of the stop eventfd (notifiers use their index).
const STOP_TOKEN: u64 = u64::MAX;

impl IoThread {
    /// Start the thread serving `notifiers`.
    pub fn spawn(notifiers: Vec<Notifier>) -> Result<Self, IoThreadError> {
        Self::spawn_with(notifiers, Vec::new())
    }

    /// Start the thread serving `notifiers` and watching `readables`.
    pub fn spawn_with(
        notifiers: Vec<Notifier>,
        readables: Vec<Readable>,
    ) -> Result<Self, IoThreadError> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        let sources: Vec<Source> = notifiers
            .into_iter()
            .map(Source::Notifier)
            .chain(readables.into_iter().map(Source::Readable))
            .collect();
        for (i, s) in sources.iter().enumerate() {
            let (fd, events) = match s {
                Source::Notifier(n) => (n.fd.as_raw_fd(), EventSet::IN),
                Source::Readable(r) => (r.fd.as_raw_fd(), EventSet::IN | EventSet::EDGE_TRIGGERED),
            };
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, i as u64))?;
        }
        let stop_fd = stop.try_clone()?;
        let handle = crate::confine::spawn(
            "virtio-io".into(),
            crate::confine::ThreadKind::VirtioIo,
            move || run(epoll, stop_fd, sources),
        )?;
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }
}

fn run(epoll: Epoll, stop: EventFd, sources: Vec<Source>) {
    let mut events = vec![EpollEvent::default(); sources.len() + 1];
    // Sources that stopped at their budget with work left.
    let mut more = vec![false; sources.len()];
    loop {
        // Never block while some queue has work left; otherwise wait.
        let timeout = if more.iter().any(|m| *m) { 0 } else { -1 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "virtio I/O thread: epoll failed; stopping");
                return;
            }
        };
        let mut ran = vec![false; sources.len()];
        for ev in events.iter().take(n) {
            let token = ev.data();
            if token == STOP_TOKEN {
                let _ = stop.read();
                return;
            }
            let Some(i) = usize::try_from(token).ok().filter(|i| *i < sources.len()) else {
                continue;
            };
            more[i] = sources[i].fire();
            ran[i] = true;
        }
        for (i, s) in sources.iter().enumerate() {
            if more[i] && !ran[i] {
                more[i] = s.again();
            }
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A queue whose request does not finish until the test says so (a
    /// disk whose fsync hangs), reporting which thread ran it.
    struct Stuck {
        release: Mutex<mpsc::Receiver<()>>,
        done: Mutex<mpsc::Sender<(u32, String)>>,
    }

    impl QueueHandler for Stuck {
        fn process(&self, queue: u32) -> bool {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if let Ok(tx) = self.done.lock() {
                let _ = tx.send((queue, format!("started on {name}")));
            }
            if let Ok(rx) = self.release.lock() {
                let _ = rx.recv_timeout(Duration::from_secs(30));
            }
            if let Ok(tx) = self.done.lock() {
                let _ = tx.send((queue, "finished".into()));
            }
            false
        }
    }

    #[test]
    fn a_stuck_request_runs_on_the_io_thread_while_the_notifier_goes_on() {
        let (tx, rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let handler = Arc::new(Stuck {
            release: Mutex::new(release_rx),
            done: Mutex::new(tx),
        });
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let guest_side = fd.try_clone().unwrap();
        let io = IoThread::spawn(vec![Notifier {
            fd,
            queue: 0,
            handler,
        }])
        .unwrap();
        // What KVM does on the guest's QueueNotify write: this thread plays
        // the vCPU. It is not blocked by the stuck request: it notifies
        // again and goes on while the request is still in flight.
        guest_side.write(1).unwrap();
        let wait = Duration::from_secs(10);
        assert_eq!(
            rx.recv_timeout(wait).unwrap(),
            (0, "started on virtio-io".into())
        );
        guest_side.write(1).unwrap();
        assert!(rx.try_recv().is_err(), "the request is still in flight");
        release.send(()).unwrap();
        assert_eq!(rx.recv_timeout(wait).unwrap(), (0, "finished".into()));
        // The second notify is one more pass once the first is done.
        assert_eq!(
            rx.recv_timeout(wait).unwrap(),
            (0, "started on virtio-io".into())
        );
        release.send(()).unwrap();
        assert_eq!(rx.recv_timeout(wait).unwrap(), (0, "finished".into()));
        drop(io);
    }

    /// A queue that has work left for its first `left` passes.
    struct Budgeted {
        left: Mutex<u32>,
        passes: Mutex<mpsc::Sender<u32>>,
    }

    impl QueueHandler for Budgeted {
        fn process(&self, queue: u32) -> bool {
            if let Ok(tx) = self.passes.lock() {
                let _ = tx.send(queue);
            }
            let Ok(mut left) = self.left.lock() else {
                return false;
            };
            *left = left.saturating_sub(1);
            *left > 0
        }
    }

    #[test]
    fn a_readable_fd_runs_its_queue_and_work_left_is_run_again_without_an_event() {
        let (tx, rx) = mpsc::channel();
        let handler = Arc::new(Budgeted {
            left: Mutex::new(3),
            passes: Mutex::new(tx),
        });
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let io = IoThread::spawn_with(
            Vec::new(),
            vec![Readable {
                fd: a.into(),
                queue: 7,
                handler,
            }],
        )
        .unwrap();
        // One datagram: one edge. The handler says "more" twice, so it runs
        // three times in all, then the thread waits again (the datagram is
        // never read: edge-triggered, it does not wake the thread again).
        b.send(b"frame").unwrap();
        let wait = Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(rx.recv_timeout(wait).unwrap(), 7);
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "no busy loop"
        );
        // A new datagram is a new edge.
        b.send(b"frame").unwrap();
        assert_eq!(rx.recv_timeout(wait).unwrap(), 7);
        drop(io);
    }

    #[test]
    fn dropping_stops_the_thread_even_with_nothing_to_do() {
        let io = IoThread::spawn(Vec::new()).unwrap();
        drop(io);
    }
}
