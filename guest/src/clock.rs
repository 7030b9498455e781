//! Bounded waits without a timer. diag has no interrupts, so it measures
//! time with the TSC, assuming a rate of about 3 GHz (real rates are
//! 1–5 GHz: waits are right within a small factor, which is all a bound
//! needs). `pause` is no clock: on this machine's KVM one costs ~2.5 µs
//! (it exits), on bare metal ~40 ns. Should the TSC not advance at all, a
//! deadline still expires after a fixed number of polls.

use crate::cpu::pause;

/// Assumed TSC ticks per millisecond.
pub const TSC_PER_MS: u64 = 3_000_000;
/// Polls without the TSC moving after which a deadline counts as expired.
const STUCK_POLLS: u32 = 1_000_000;

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A point in the future, `ms` milliseconds (approximately) from creation.
pub struct Deadline {
    start: u64,
    ticks: u64,
    last: u64,
    stuck: u32,
}

impl Deadline {
    pub fn after_ms(ms: u64) -> Self {
        let now = rdtsc();
        Self {
            start: now,
            ticks: ms.saturating_mul(TSC_PER_MS),
            last: now,
            stuck: 0,
        }
    }

    /// True once the time is up. Call it in every iteration of a wait.
    pub fn expired(&mut self) -> bool {
        let now = rdtsc();
        if now == self.last {
            self.stuck += 1;
            return self.stuck >= STUCK_POLLS;
        }
        self.last = now;
        now.wrapping_sub(self.start) >= self.ticks
    }
}

/// Waits about `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    let mut d = Deadline::after_ms(ms);
    while !d.expired() {
        pause();
    }
}

/// Waits about `ms` milliseconds, asking the VMM to park the vCPU meanwhile
/// (the idle port), so a polling guest costs the host almost nothing. What
/// the VMM does not sleep is waited out on the TSC.
pub fn idle_ms(ms: u64) {
    let mut d = Deadline::after_ms(ms);
    crate::cpu::outl(crate::layout::IDLE_PORT, ms.min(u64::from(u32::MAX)) as u32);
    while !d.expired() {
        pause();
    }
}
