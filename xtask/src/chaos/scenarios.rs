//! The four faults, each injected into a `vmctl apply` that has work (the
//! lab file was just switched to its other version), followed by re-applies
//! until converged and the invariants (`invariants.rs`):
//!
//! * `kill-apply` — SIGKILL the coordinator at a random point: a random
//!   delay after spawn, or on a random line of its output;
//! * `kill-etcd-leader` — SIGKILL the etcd leader once the apply is acting,
//!   restart the member afterwards;
//! * `link-cut` — take a host with work down (its namespace's loopback)
//!   once the apply is acting: the apply must end non-zero within its bound;
//! * `stop-coordinator` — SIGSTOP the coordinator past its lease, let a
//!   second apply take over and complete, SIGCONT the first: everything it
//!   then tries must be refused (etcd's guarded writes, the hosts' fence);
//! * `etcd-quorum-lost` — SIGKILL two of the three etcd members once the
//!   apply is acting: it must end non-zero within its bound (its records
//!   cannot be written), never hang; with the members back, re-apply
//!   converges;
//! * `kill-move` — re-pin `db` to the other of h1/h2 and SIGKILL `vmctl
//!   move db` at a random point (stopped, copying, committed, started,
//!   cleaning up); a second `vmctl move db` must finish or redo it, and
//!   `db` must end on its new host exactly once.

use std::time::Duration;

use crate::crash::scenario::Rng;

use super::ChaosError;
use super::env::{APPLY_TIMEOUT, Env, LOCK_TTL};
use super::invariants::{self, Check};
use super::proc::Proc;

/// The scenarios, in the order they run.
pub const NAMES: [&str; 6] = [
    "kill-apply",
    "kill-etcd-leader",
    "etcd-quorum-lost",
    "link-cut",
    "stop-coordinator",
    "kill-move",
];

/// What one run of a scenario did and found.
#[derive(Debug, Default)]
pub struct RunResult {
    /// Faults that landed (a kill of a process still running, a cut link).
    pub faults: usize,
    /// What was done, in words.
    pub fault: String,
    /// Applies it took to converge; `None`: not within the bound.
    pub attempts: Option<usize>,
    pub check: Check,
    /// Scenario-specific failures (an apply that hung, a stale coordinator
    /// that was not refused, a take-over that did not complete).
    pub problems: Vec<String>,
}

/// How long to wait for an apply to print its plan (it has the lock and has
/// observed every host by then).
const PLAN_WAIT: Duration = Duration::from_secs(120);

/// An action has started (`web-1: create started`): the apply is acting.
/// Actions on diag VMs take ~0.1-0.3 s here, so a fault aimed later than
/// that after the first one lands after the work, not in it.
fn acting(line: &str) -> bool {
    line.contains(": ") && line.trim_end().ends_with(" started")
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n    ")
}

/// Run scenario `name` once.
pub fn run(name: &str, env: &mut Env, rng: &mut Rng) -> Result<RunResult, ChaosError> {
    env.flip()?;
    let mut r = RunResult::default();
    match name {
        "kill-apply" => kill_apply(env, rng, &mut r)?,
        "kill-etcd-leader" => kill_leader(env, rng, &mut r)?,
        "link-cut" => link_cut(env, rng, &mut r)?,
        "stop-coordinator" => stop_coordinator(env, rng, &mut r)?,
        "kill-move" => kill_move(env, rng, &mut r)?,
        "etcd-quorum-lost" => quorum_lost(env, rng, &mut r)?,
        other => return Err(ChaosError::Setup(format!("no scenario {other}"))),
    }
    match env.converge()? {
        Ok(n) => r.attempts = Some(n),
        Err(last) => r.problems.push(format!(
            "did not converge in the bound; last plan:\n    {}",
            tail(&last)
        )),
    }
    r.check = invariants::check(env)?;
    Ok(r)
}

fn kill_apply(env: &mut Env, rng: &mut Rng, r: &mut RunResult) -> Result<(), ChaosError> {
    let mut p = env.spawn_apply("apply-killed")?;
    // A whole apply of this lab takes ~1 s here: most blind kills land
    // inside it, some after (counted as no kill).
    kill_somewhere(&mut p, rng, r, "SIGKILL", 1000, 12);
    Ok(())
}

/// SIGKILL `p` a random 0..`max_ms` after spawn, or on a random line
/// 1..=`max_line` of its output; counts the kill if it landed.
fn kill_somewhere(
    p: &mut Proc,
    rng: &mut Rng,
    r: &mut RunResult,
    what: &str,
    max_ms: u64,
    max_line: u64,
) {
    if rng.chance(50) {
        let ms = rng.below(max_ms);
        r.fault = format!("{what} {ms} ms after spawn");
        p.run_for(Duration::from_millis(ms));
    } else {
        let n = 1 + rng.below(max_line) as usize;
        r.fault = format!("{what} on output line {n}");
        let deadline = std::time::Instant::now() + APPLY_TIMEOUT;
        while p.lines().len() < n && p.exited().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if p.kill9() {
        r.faults += 1;
    } else {
        r.fault.push_str(" (it had finished: no kill)");
    }
}

fn kill_leader(env: &mut Env, rng: &mut Rng, r: &mut RunResult) -> Result<(), ChaosError> {
    let mut p = env.spawn_apply("apply-leader-killed")?;
    let acted = p.wait_line(PLAN_WAIT, acting);
    let ms = rng.below(150);
    p.run_for(Duration::from_millis(ms));
    let leader = env.etcd.leader().map_err(ChaosError::Setup)?;
    let mid = p.exited().is_none();
    env.etcd.kill(leader);
    r.faults += 1;
    let code = match p.finish(APPLY_TIMEOUT) {
        Ok(s) => format!("{:?}", s.code()),
        Err(e) => {
            r.problems.push(format!("with the etcd leader killed: {e}"));
            "hung".into()
        }
    };
    r.fault = format!(
        "SIGKILL etcd member m{leader} (the leader) {ms} ms into the actions{}; that apply exited {code}",
        if acted && mid {
            ""
        } else {
            " (apply had already ended)"
        }
    );
    env.etcd.restart(leader).map_err(ChaosError::Setup)?;
    env.etcd
        .wait_healthy(Duration::from_secs(60))
        .map_err(ChaosError::Setup)?;
    Ok(())
}

fn link_cut(env: &mut Env, rng: &mut Rng, r: &mut RunResult) -> Result<(), ChaosError> {
    let mut p = env.spawn_apply("apply-link-cut")?;
    // The whole plan is printed before the first action starts.
    p.wait_line(PLAN_WAIT, acting);
    // A host the plan gives work to, so the cut lands in the apply.
    let names: Vec<String> = env.hosts.hosts.iter().map(|h| h.name.clone()).collect();
    let lines = p.lines();
    let busy: Vec<&String> = names
        .iter()
        .filter(|h| lines.iter().any(|l| l.contains(&format!(" on {h}"))))
        .collect();
    let host = match busy.len() {
        0 => names[rng.below(names.len() as u64) as usize].clone(),
        n => busy[rng.below(n as u64) as usize].clone(),
    };
    let ms = rng.below(100);
    p.run_for(Duration::from_millis(ms));
    // Mid-apply: an action still in flight. A cut after the last action
    // ended may come after the apply's last call to the host, and then
    // exit 0 is right.
    let lines = p.lines();
    let started = lines.iter().filter(|l| acting(l)).count();
    let ended = lines
        .iter()
        .filter(|l| l.contains(": ") && (l.contains(" done (") || l.contains(" failed")))
        .count();
    let mid = p.exited().is_none() && started > ended;
    env.hosts
        .try_link(&host, false)
        .map_err(ChaosError::Setup)?;
    r.faults += 1;
    let started = std::time::Instant::now();
    let outcome = p.finish(APPLY_TIMEOUT);
    let took = started.elapsed().as_secs_f64();
    match outcome {
        Ok(s) if mid && s.success() => r.problems.push(format!(
            "the apply exited 0 with {host}'s link cut mid-apply:\n    {}",
            tail(&p.text())
        )),
        Ok(s) => {
            r.fault = format!(
                "{host}'s link cut {ms} ms into the actions{}; apply exited {:?} {took:.1} s later",
                if mid {
                    ""
                } else {
                    " (apply had already ended)"
                },
                s.code()
            )
        }
        Err(e) => r.problems.push(format!("with {host}'s link cut: {e}")),
    }
    if r.fault.is_empty() {
        r.fault = format!("{host}'s link cut {ms} ms into the actions");
    }
    env.hosts.try_link(&host, true).map_err(ChaosError::Setup)?;
    Ok(())
}

fn stop_coordinator(env: &mut Env, rng: &mut Rng, r: &mut RunResult) -> Result<(), ChaosError> {
    let mut first = env.spawn_apply("apply-stopped")?;
    first.wait_line(PLAN_WAIT, acting);
    let ms = rng.below(60);
    first.run_for(Duration::from_millis(ms));
    if !first.signal(libc::SIGSTOP) {
        r.fault = format!("SIGSTOP {ms} ms into the actions came too late: the apply had ended");
        return Ok(());
    }
    r.faults += 1;
    // Past the lease: etcd frees the lock by itself.
    std::thread::sleep(LOCK_TTL + Duration::from_secs(2));
    let (code, text) = env.run(
        "apply-takeover",
        &["apply", "--auto-approve"],
        APPLY_TIMEOUT,
    )?;
    if code != Some(0) {
        r.problems.push(format!(
            "the second apply did not complete while the first was stopped (exit {code:?}):\n    {}",
            tail(&text)
        ));
    }
    first.signal(libc::SIGCONT);
    match first.finish(APPLY_TIMEOUT) {
        Ok(s) => {
            let t = first.text().to_lowercase();
            // The hosts' fence says `fenced`; etcd's guarded writes say
            // `refused by etcd` (token no longer current) or the lease
            // was lost (refused before etcd has to).
            let by_hosts = t.contains("is fenced");
            let by_etcd = t.contains("refused by etcd") || t.contains("lease");
            let refused = by_hosts || by_etcd;
            r.fault = format!(
                "SIGSTOP {ms} ms into the actions, take-over exited {code:?}, SIGCONT: the stale apply exited {:?}, refused by{}{}",
                s.code(),
                if by_hosts { " the hosts" } else { "" },
                if by_etcd { " etcd" } else { "" },
            );
            if s.success() || !refused {
                r.problems.push(format!(
                    "the stale coordinator was not refused (exit {:?}):\n    {}",
                    s.code(),
                    tail(&first.text())
                ));
            }
        }
        Err(e) => r.problems.push(format!("the stale coordinator: {e}")),
    }
    Ok(())
}

fn kill_move(env: &mut Env, rng: &mut Rng, r: &mut RunResult) -> Result<(), ChaosError> {
    // The lab as the flipped file wants it first: the move moves a running
    // VM, with nothing else in flight.
    if let Err(last) = env.converge()? {
        r.problems.push(format!(
            "did not converge before the move:\n    {}",
            tail(&last)
        ));
        return Ok(());
    }
    let to = if env.db_host == "h1" { "h2" } else { "h1" };
    env.db_host = to;
    env.write(env.version)?;
    let mut p = env.spawn("move-killed", &["move", "db"])?;
    // A move of a diag VM takes ~1 s here; its lines: stopping, copying,
    // starting, moved.
    let what = format!("SIGKILL of `vmctl move db` (to {to})");
    kill_somewhere(&mut p, rng, r, &what, 1500, 4);
    // Whatever it left, a second move finishes (or redoes) it.
    let (code, text) = env.run("move-again", &["move", "db"], APPLY_TIMEOUT)?;
    let done = code == Some(0)
        && (text.contains("Moved db from") || text.contains(&format!("db is on {to} already")));
    if !done {
        r.problems.push(format!(
            "the second `vmctl move db` did not finish the move (exit {code:?}):\n    {}",
            tail(&text)
        ));
    }
    let status = env
        .cmd(&["status", "--json"])
        .output()
        .map_err(|e| ChaosError::Setup(format!("vmctl status: {e}")))?;
    let on = serde_json::from_slice::<serde_json::Value>(&status.stdout)
        .ok()
        .and_then(|s| {
            s["vms"].as_array().and_then(|v| {
                v.iter()
                    .find(|v| v["name"] == "db")
                    .map(|v| v["host"].clone())
            })
        });
    if on.as_ref().and_then(|h| h.as_str()) != Some(to) {
        r.problems
            .push(format!("db is on {on:?} after the move, not on {to}"));
    }
    Ok(())
}

fn quorum_lost(env: &mut Env, rng: &mut Rng, r: &mut RunResult) -> Result<(), ChaosError> {
    let mut p = env.spawn_apply("apply-quorum-lost")?;
    let acted = p.wait_line(PLAN_WAIT, acting);
    let ms = rng.below(100);
    p.run_for(Duration::from_millis(ms));
    let mid = acted && p.exited().is_none();
    // Two of three: the leader and one other.
    let leader = env.etcd.leader().map_err(ChaosError::Setup)?;
    let other = (leader + 1 + rng.below(2) as usize) % 3;
    env.etcd.kill(leader);
    env.etcd.kill(other);
    r.faults += 1;
    let started = std::time::Instant::now();
    match p.finish(APPLY_TIMEOUT) {
        Ok(s) if mid && s.success() => r.problems.push(format!(
            "the apply exited 0 with etcd's quorum lost mid-apply (its records cannot have been written):\n    {}",
            tail(&p.text())
        )),
        Ok(s) => {
            r.fault = format!(
                "SIGKILL of etcd members m{leader} (the leader) and m{other} {ms} ms into the actions{}; apply exited {:?} {:.1} s later",
                if mid { "" } else { " (apply had already ended)" },
                s.code(),
                started.elapsed().as_secs_f64()
            )
        }
        Err(e) => r.problems.push(format!("with etcd's quorum lost: {e}")),
    }
    if r.fault.is_empty() {
        r.fault =
            format!("SIGKILL of etcd members m{leader} and m{other} {ms} ms into the actions");
    }
    for m in [leader, other] {
        env.etcd.restart(m).map_err(ChaosError::Setup)?;
    }
    env.etcd
        .wait_healthy(Duration::from_secs(60))
        .map_err(ChaosError::Setup)?;
    Ok(())
}
