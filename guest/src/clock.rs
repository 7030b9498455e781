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

/// Whether the VMM parks the vCPU on the idle port (it answers a read with
/// the magic value); asked once per wait — one exit, cheaper than guessing.
pub fn vmm_idles() -> bool {
    crate::cpu::inl(crate::layout::IDLE_PORT) == crate::layout::IDLE_MAGIC
}

/// Waits about `ms` milliseconds. Where the VMM supports the idle port
/// (`idles`), it parks the vCPU for the interval, so a polling guest costs
/// the host almost nothing; elsewhere the interval is waited out on the TSC.
pub fn idle_ms(ms: u64, idles: bool) {
    if idles {
        crate::cpu::outl(crate::layout::IDLE_PORT, ms.min(u64::from(u32::MAX)) as u32);
        return;
    }
    sleep_ms(ms);
}
