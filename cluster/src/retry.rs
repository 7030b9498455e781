//! Bounded retries with exponential backoff, and the rule for writes: a
//! write whose answer never came (timed out, connection dropped) may have
//! landed, so it is re-read before it is tried again. Pure logic over
//! closures, so a fake store can test it (see the tests below).

use std::time::{Duration, Instant};

/// How one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    /// Transport trouble, a timeout, no leader: worth another attempt. For
    /// a write it also means the outcome is unknown.
    Retryable(String),
    /// An answer that retrying cannot change.
    Fatal(E),
}

/// Why a retried call gave up.
#[derive(Debug)]
pub(crate) enum GaveUp<E> {
    Fatal(E),
    Exhausted {
        last: String,
        attempts: u32,
        elapsed: Duration,
        outcome_unknown: bool,
    },
}

/// Backoff from `first` doubling up to `max`, for at most `budget` in all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub budget: Duration,
}

impl Backoff {
    pub fn new(budget: Duration) -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
            budget,
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// Retry a read (or any idempotent call) until it succeeds, fails for
/// good, or the budget is spent.
pub(crate) fn read<T, E>(
    b: &Backoff,
    mut call: impl FnMut() -> Result<T, Failure<E>>,
) -> Result<T, GaveUp<E>> {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match call() {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(GaveUp::Fatal(e)),
            Err(Failure::Retryable(last)) => {
                tracing::debug!(attempts, "etcd call failed, retrying: {last}");
                if !sleep_within(b, start, attempts) {
                    return Err(GaveUp::Exhausted {
                        last,
                        attempts,
                        elapsed: start.elapsed(),
                        outcome_unknown: false,
                    });
                }
            }
        }
    }
}

/// Retry a write. After a retryable failure the write's outcome is
/// unknown: `landed` is asked (and retried) until it can say whether the
/// write took effect — `Some(v)` ends with that result, `None` allows the
/// write to be tried again. A write is never re-sent while its previous
/// attempt might have landed.
pub(crate) fn write<T, E>(
    b: &Backoff,
    mut write: impl FnMut() -> Result<T, Failure<E>>,
    mut landed: impl FnMut() -> Result<Option<T>, Failure<E>>,
) -> Result<T, GaveUp<E>> {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let mut last = match write() {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(GaveUp::Fatal(e)),
            Err(Failure::Retryable(last)) => last,
        };
        // Unknown outcome: find out before writing again.
        loop {
            tracing::debug!(attempts, "etcd write outcome unknown, re-reading: {last}");
            if !sleep_within(b, start, attempts) {
                return Err(GaveUp::Exhausted {
                    last,
                    attempts,
                    elapsed: start.elapsed(),
                    outcome_unknown: true,
                });
            }
            attempts += 1;
            match landed() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => break,
                Err(Failure::Fatal(e)) => return Err(GaveUp::Fatal(e)),
                Err(Failure::Retryable(l)) => last = l,
            }
        }
        if !sleep_within(b, start, attempts) {
            return Err(GaveUp::Exhausted {
                last,
                attempts,
                elapsed: start.elapsed(),
                outcome_unknown: false,
            });
        }
    }
}

/// Sleep the backoff for `attempts` if that stays within the budget.
fn sleep_within(b: &Backoff, start: Instant, attempts: u32) -> bool {
    let d = b.delay(attempts.saturating_sub(1));
    if start.elapsed() + d > b.budget {
        return false;
    }
    std::thread::sleep(d);
    true
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    /// A fake etcd: a map, and a script saying what the next writes do.
    #[derive(Default)]
    struct Fake {
        store: RefCell<BTreeMap<u64, String>>,
        /// Per write attempt: (apply it?, then report a timeout?).
        script: RefCell<Vec<(bool, bool)>>,
        writes: RefCell<u32>,
        reads: RefCell<u32>,
        /// Re-reads that time out before one answers.
        failing_reads: RefCell<u32>,
    }

    impl Fake {
        /// A journal append: the next free seq gets `entry`.
        fn append(&self, entry: &str) -> Result<u64, Failure<String>> {
            *self.writes.borrow_mut() += 1;
            let (apply, time_out) = self.script.borrow_mut().pop().unwrap_or((true, false));
            let seq = self.store.borrow().keys().next_back().map_or(1, |s| s + 1);
            if apply {
                self.store.borrow_mut().insert(seq, entry.to_string());
            }
            if time_out {
                return Err(Failure::Retryable("deadline exceeded".into()));
            }
            Ok(seq)
        }

        fn find(&self, entry: &str) -> Result<Option<u64>, Failure<String>> {
            *self.reads.borrow_mut() += 1;
            if *self.failing_reads.borrow() > 0 {
                *self.failing_reads.borrow_mut() -= 1;
                return Err(Failure::Retryable("connection refused".into()));
            }
            Ok(self
                .store
                .borrow()
                .iter()
                .find(|(_, v)| v.as_str() == entry)
                .map(|(k, _)| *k))
        }
    }

    fn fast() -> Backoff {
        Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(2),
            budget: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_write_that_landed_but_timed_out_is_not_applied_twice() {
        let f = Fake::default();
        // First attempt lands, but its answer is lost.
        f.script.borrow_mut().push((true, true));
        *f.failing_reads.borrow_mut() = 2;
        let seq = write(&fast(), || f.append("e1"), || f.find("e1")).unwrap();
        assert_eq!(seq, 1);
        assert_eq!(*f.writes.borrow(), 1, "the write was re-sent");
        assert_eq!(*f.reads.borrow(), 3, "two failed re-reads, then one answer");
        assert_eq!(f.store.borrow().len(), 1);
    }

    #[test]
    fn a_write_that_did_not_land_is_retried_once_it_is_known_lost() {
        let f = Fake::default();
        f.script.borrow_mut().push((false, true));
        let seq = write(&fast(), || f.append("e1"), || f.find("e1")).unwrap();
        assert_eq!(seq, 1);
        assert_eq!(*f.writes.borrow(), 2);
        assert_eq!(f.store.borrow().values().collect::<Vec<_>>(), ["e1"]);
    }

    #[test]
    fn fatal_answers_are_not_retried() {
        let mut n = 0;
        let r: Result<(), _> = write(
            &fast(),
            || {
                n += 1;
                Err(Failure::Fatal("fenced".to_string()))
            },
            || Ok(None),
        );
        assert!(matches!(r, Err(GaveUp::Fatal(e)) if e == "fenced"));
        assert_eq!(n, 1);
    }

    #[test]
    fn the_budget_bounds_a_write_whose_outcome_stays_unknown() {
        let b = Backoff {
            budget: Duration::from_millis(20),
            ..fast()
        };
        let r: Result<(), GaveUp<String>> = write(
            &b,
            || Err(Failure::Retryable("timed out".into())),
            || Err(Failure::Retryable("timed out".into())),
        );
        match r {
            Err(GaveUp::Exhausted {
                outcome_unknown, ..
            }) => assert!(outcome_unknown),
            other => panic!("{other:?}"),
        }
        let r: Result<(), GaveUp<String>> = read(&b, || Err(Failure::Retryable("refused".into())));
        assert!(matches!(
            r,
            Err(GaveUp::Exhausted {
                outcome_unknown: false,
                ..
            })
        ));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff::new(Duration::from_secs(10));
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(400));
        assert_eq!(b.delay(30), Duration::from_secs(1));
    }
}
