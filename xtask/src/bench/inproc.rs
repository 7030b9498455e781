//! Row "no-op plan of a 10,000-VM lab, in process": the planner alone
//! (`vmctl_planner::plan` over a converged synthetic lab, the same shape
//! as the criterion bench in planner/benches), no process start, parse or
//! observation. No peer; the goal is ≤ 20 ms.

use std::hint::black_box;
use std::time::Instant;

use vmctl_planner::synthetic::{converged, lab};
use vmctl_planner::{Capabilities, plan};

use super::BenchError;

/// `runs` timed no-op plans of an `n`-VM lab (after one untimed warm-up),
/// ms each.
pub fn noop_plan(n: usize, runs: usize) -> Result<Vec<f64>, BenchError> {
    let desired = lab(n);
    let observed = converged(&desired);
    let caps = Capabilities::all();
    let mut samples = Vec::with_capacity(runs);
    for i in 0..=runs {
        let t0 = Instant::now();
        let p = plan(black_box(&desired), black_box(&observed), &caps)
            .map_err(|e| BenchError::Run(format!("planning the {n}-VM lab: {e}")))?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if p.summary().has_changes() {
            return Err(BenchError::Run(format!(
                "the converged {n}-VM lab planned changes"
            )));
        }
        if i > 0 {
            samples.push(ms);
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_lab_plans_nothing() {
        assert_eq!(noop_plan(20, 2).unwrap().len(), 2);
    }
}
