//! Crash-loop protection for drift healing. Each time a drift pass has to
//! start a VM again, the VM gets a try; the next try waits 1 s, 2 s, 4 s …
//! (capped), and after the last try watch gives up on the VM until the file
//! changes. A VM that stays up long enough is forgotten, so one crash a day
//! never adds up to "giving up". Time is passed in; nothing here sleeps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How hard watch tries to keep a crashing VM up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Wait after the first try; doubled for each further try.
    pub base: Duration,
    /// The longest wait between tries.
    pub cap: Duration,
    /// Tries before giving up.
    pub max_tries: u32,
    /// A VM not restarted for this long starts again from zero tries.
    pub forget_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_tries: 5,
            forget_after: Duration::from_secs(120),
        }
    }
}

impl BackoffPolicy {
    /// How long to leave a VM alone after try number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// What a restart observed in a drift pass means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try `attempt` of `max`; the VM is left alone for `next_in`.
    Tried {
        attempt: u32,
        max: u32,
        next_in: Duration,
    },
    /// More restarts than allowed: stop healing this VM.
    GiveUp { tries: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Record {
    tries: u32,
    last: Instant,
    gave_up: bool,
}

/// Per-VM tries since the file last changed.
#[derive(Debug)]
pub struct RestartTracker {
    policy: BackoffPolicy,
    vms: BTreeMap<String, Record>,
}

impl RestartTracker {
    pub fn new(policy: BackoffPolicy) -> Self {
        RestartTracker {
            policy,
            vms: BTreeMap::new(),
        }
    }

    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// The file changed: every VM gets a fresh set of tries.
    pub fn forget_all(&mut self) {
        self.vms.clear();
    }

    /// Forget VMs that have stayed up long enough (never the given-up ones).
    pub fn expire(&mut self, now: Instant) {
        let policy = self.policy;
        self.vms.retain(|_, r| {
            let quiet = policy.forget_after.max(policy.delay(r.tries));
            r.gave_up || now < r.last + quiet
        });
    }

    /// A drift pass (re)started `vm` at `now`.
    pub fn record_restart(&mut self, vm: &str, now: Instant) -> Verdict {
        let r = self.vms.entry(vm.to_string()).or_insert(Record {
            tries: 0,
            last: now,
            gave_up: false,
        });
        r.tries = r.tries.saturating_add(1);
        r.last = now;
        if r.tries > self.policy.max_tries {
            r.gave_up = true;
            return Verdict::GiveUp {
                tries: self.policy.max_tries,
            };
        }
        Verdict::Tried {
            attempt: r.tries,
            max: self.policy.max_tries,
            next_in: self.policy.delay(r.tries),
        }
    }

    /// `vm` needed healing again after its last try. True if this is news.
    pub fn give_up(&mut self, vm: &str, now: Instant) -> bool {
        let r = self.vms.entry(vm.to_string()).or_insert(Record {
            tries: self.policy.max_tries,
            last: now,
            gave_up: false,
        });
        !std::mem::replace(&mut r.gave_up, true)
    }

    /// VMs a pass must not heal now: inside their backoff window, out of
    /// tries (held so a pass can say whether they went down again), or given up.
    pub fn held(&self, now: Instant) -> Vec<String> {
        self.vms
            .iter()
            .filter(|(_, r)| {
                r.gave_up
                    || r.tries >= self.policy.max_tries
                    || now < r.last + self.policy.delay(r.tries)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The earliest end of a backoff window still ahead: when the next try
    /// may happen.
    pub fn next_window_end(&self, now: Instant) -> Option<Instant> {
        self.vms
            .values()
            .filter(|r| !r.gave_up)
            .map(|r| r.last + self.policy.delay(r.tries))
            .filter(|t| *t > now)
            .min()
    }

    /// VMs watch has given up on.
    pub fn given_up(&self) -> Vec<String> {
        self.vms
            .iter()
            .filter(|(_, r)| r.gave_up)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether `vm` has used all its tries (given up or not yet).
    pub fn out_of_tries(&self, vm: &str) -> bool {
        self.vms
            .get(vm)
            .is_some_and(|r| r.gave_up || r.tries >= self.policy.max_tries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn delays_double_and_are_capped() {
        let p = BackoffPolicy {
            cap: s(10),
            ..BackoffPolicy::default()
        };
        let d: Vec<u64> = (0..7).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(d, [0, 1, 2, 4, 8, 10, 10]);
        assert_eq!(p.delay(200), s(10));
    }

    #[test]
    fn tries_back_off_then_give_up() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(BackoffPolicy {
            max_tries: 3,
            ..BackoffPolicy::default()
        });
        assert_eq!(
            t.record_restart("db", t0),
            Verdict::Tried {
                attempt: 1,
                max: 3,
                next_in: s(1)
            }
        );
        assert_eq!(t.held(t0), ["db"]);
        assert_eq!(t.next_window_end(t0), Some(t0 + s(1)));
        assert!(t.held(t0 + s(1)).is_empty());
        assert_eq!(t.next_window_end(t0 + s(1)), None);

        let t1 = t0 + s(1);
        assert!(matches!(
            t.record_restart("db", t1),
            Verdict::Tried { attempt: 2, next_in, .. } if next_in == s(2)
        ));
        assert_eq!(t.held(t1 + Duration::from_millis(1999)), ["db"]);
        assert!(t.held(t1 + s(2)).is_empty());

        let t2 = t1 + s(2);
        assert!(matches!(
            t.record_restart("db", t2),
            Verdict::Tried { attempt: 3, .. }
        ));
        // Out of tries: held even after the window, so a pass can tell
        // whether it went down again without restarting it.
        assert_eq!(t.held(t2 + s(60)), ["db"]);
        assert!(t.out_of_tries("db"));
        assert!(t.given_up().is_empty());

        // An engine that cannot hold restarts it a fourth time: give up.
        assert_eq!(
            t.record_restart("db", t2 + s(4)),
            Verdict::GiveUp { tries: 3 }
        );
        assert_eq!(t.given_up(), ["db"]);
        assert_eq!(t.next_window_end(t2 + s(4)), None);
    }

    #[test]
    fn give_up_reports_once_and_survives_expiry_until_the_file_changes() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(BackoffPolicy::default());
        assert!(t.give_up("web", t0));
        assert!(!t.give_up("web", t0));
        t.expire(t0 + s(3600));
        assert_eq!(t.held(t0 + s(3600)), ["web"]);
        t.forget_all();
        assert!(t.held(t0 + s(3600)).is_empty());
        assert!(t.given_up().is_empty());
    }

    #[test]
    fn a_vm_that_stays_up_is_forgotten() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(BackoffPolicy::default());
        t.record_restart("db", t0);
        t.record_restart("db", t0 + s(1));
        t.expire(t0 + s(100));
        assert!(t.held(t0 + s(100)).is_empty());
        // Not yet forgotten: the next crash is try 3.
        assert!(matches!(
            t.record_restart("db", t0 + s(100)),
            Verdict::Tried { attempt: 3, .. }
        ));
        t.expire(t0 + s(100) + s(120));
        assert!(matches!(
            t.record_restart("db", t0 + s(400)),
            Verdict::Tried { attempt: 1, .. }
        ));
    }

    #[test]
    fn vms_are_tracked_separately() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(BackoffPolicy::default());
        t.record_restart("a", t0);
        t.record_restart("b", t0);
        t.record_restart("b", t0 + s(1));
        assert_eq!(t.held(t0 + s(1)), ["b"]);
        assert_eq!(t.next_window_end(t0 + s(1)), Some(t0 + s(3)));
    }
}
