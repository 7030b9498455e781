//! Debouncing: an editor's save is a burst of events (truncate, writes,
//! close, or create-temp + rename). Watch acts once per burst, when no event
//! has arrived for a quiet window, so it never reads a half-written file.
//!
//! There is deliberately no "maximum wait": a file that keeps changing is not
//! applied until it stops, because a half-written file may still parse (with
//! fewer VMs) and must not reach the planner. Time is passed in, so the logic
//! is tested without sleeping.

use std::time::{Duration, Instant};

/// One settled burst of file events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    /// The first and last event of the burst (monotonic).
    pub first: Instant,
    pub last: Instant,
    /// `CLOCK_MONOTONIC` ns of the first and last event, for timing logs.
    pub first_ns: u64,
    pub last_ns: u64,
    /// How many relevant events the burst had.
    pub events: u32,
}

/// Collects events until a quiet window has passed.
#[derive(Debug)]
pub struct Debouncer {
    window: Duration,
    pending: Option<Burst>,
}

impl Debouncer {
    pub fn new(window: Duration) -> Self {
        Debouncer {
            window,
            pending: None,
        }
    }

    /// A relevant event arrived at `now` (`now_ns` on `CLOCK_MONOTONIC`).
    pub fn record(&mut self, now: Instant, now_ns: u64) {
        match &mut self.pending {
            Some(b) => {
                b.last = b.last.max(now);
                b.last_ns = b.last_ns.max(now_ns);
                b.events = b.events.saturating_add(1);
            }
            None => {
                self.pending = Some(Burst {
                    first: now,
                    last: now,
                    first_ns: now_ns,
                    last_ns: now_ns,
                    events: 1,
                });
            }
        }
    }

    /// When the pending burst settles if nothing else arrives.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.map(|b| b.last + self.window)
    }

    /// The burst, once `now` is a full window after its last event.
    pub fn settle(&mut self, now: Instant) -> Option<Burst> {
        match self.deadline() {
            Some(d) if now >= d => self.pending.take(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(100);

    #[test]
    fn nothing_pending_without_events() {
        let mut d = Debouncer::new(W);
        assert_eq!(d.deadline(), None);
        assert_eq!(d.settle(Instant::now()), None);
    }

    #[test]
    fn a_burst_settles_once_after_the_quiet_window() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(W);
        d.record(t0, 1);
        d.record(t0 + Duration::from_millis(30), 2);
        d.record(t0 + Duration::from_millis(60), 3);
        // 100 ms after the first event but only 40 ms after the last: not yet.
        assert_eq!(d.settle(t0 + Duration::from_millis(100)), None);
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(160)));
        let b = d.settle(t0 + Duration::from_millis(160)).unwrap();
        assert_eq!(b.events, 3);
        assert_eq!((b.first, b.last), (t0, t0 + Duration::from_millis(60)));
        assert_eq!((b.first_ns, b.last_ns), (1, 3));
        // Settled bursts are consumed.
        assert_eq!(d.settle(t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn a_file_that_keeps_changing_is_never_applied_half_written() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(W);
        for i in 0..50u64 {
            let t = t0 + Duration::from_millis(i * 50);
            d.record(t, i);
            assert_eq!(d.settle(t + Duration::from_millis(99)), None);
        }
        assert!(
            d.settle(t0 + Duration::from_millis(49 * 50 + 100))
                .is_some()
        );
    }

    #[test]
    fn separate_bursts_settle_separately() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(W);
        d.record(t0, 0);
        assert!(d.settle(t0 + W).is_some());
        d.record(t0 + Duration::from_secs(1), 0);
        let b = d.settle(t0 + Duration::from_secs(1) + W).unwrap();
        assert_eq!(b.events, 1);
    }
}
