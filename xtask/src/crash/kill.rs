//! Killing an apply *inside* an action, and proving afterwards that it was.
//!
//! Actions of diag VMs take milliseconds (a disk resize ~10 ms, a copy
//! ~30 ms, a graceful stop ~0.5 s), so a kill after a blind random delay
//! mostly lands in planning or between actions. Instead the killer tails
//! the apply's own lines in `journal.jsonl` (its apply id ends in its pid),
//! waits for the targeted action's `started`, sleeps a random part of that
//! kind's measured duration, then freezes the apply (SIGSTOP, every thread
//! seen stopped) and reads the journal again: with an action open it sends
//! SIGKILL, otherwise it lets the apply go on (SIGCONT) and tries again on
//! the next action. Freezing changes nothing the apply could observe — it
//! is what the scheduler does to it anyway — and makes the check race-free.
//!
//! Whether the kill landed inside an action is then judged independently,
//! from the journal as the dead apply left it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vmctl_planner::ActionKind;
use vmctl_planner::journal::{JournalEntry, JournalEvent};

use super::CrashError;
use super::scenario::Rng;

/// How long an apply may run before the harness calls it hung.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Every entry of the journal in `state` (a torn or foreign line skipped).
pub fn read_journal(state: &Path) -> Result<Vec<JournalEntry>, CrashError> {
    let path = state.join("journal.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(CrashError::Io { path, source }),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The lines of the apply run by process `pid`, started at or after
/// `since_ms` (an apply id is `<start ms>-<pid>`; the time rules out a
/// reused pid).
pub fn entries_of(entries: &[JournalEntry], pid: u32, since_ms: u64) -> Vec<JournalEntry> {
    let suffix = format!("-{pid}");
    entries
        .iter()
        .filter(|e| {
            e.apply_id
                .strip_suffix(&suffix)
                .and_then(|ts| ts.parse::<u64>().ok())
                .is_some_and(|ts| ts + 1000 >= since_ms)
        })
        .cloned()
        .collect()
}

/// Actions `started` in `entries` with no `finished` or `failed` after.
pub fn open_actions(entries: &[JournalEntry]) -> Vec<JournalEntry> {
    let mut open: Vec<JournalEntry> = Vec::new();
    for e in entries {
        match e.event {
            JournalEvent::Started => open.push(e.clone()),
            JournalEvent::Finished | JournalEvent::Failed => open.retain(|o| o.action != e.action),
        }
    }
    open
}

/// Mean duration (ms) of each action kind, measured from the journal, to
/// place a kill within a running action.
#[derive(Debug, Default)]
pub struct Durations {
    by_kind: HashMap<ActionKind, (u64, u64)>,
}

impl Durations {
    /// Learn from every action in `entries` that ended.
    pub fn learn(&mut self, entries: &[JournalEntry]) {
        let mut started: HashMap<(&str, &str), u64> = HashMap::new();
        self.by_kind.clear();
        for e in entries {
            match e.event {
                JournalEvent::Started => {
                    started.insert((&e.apply_id, &e.action), e.ts);
                }
                JournalEvent::Finished | JournalEvent::Failed => {
                    if let Some(t0) = started.remove(&(e.apply_id.as_str(), e.action.as_str())) {
                        let s = self.by_kind.entry(e.kind).or_default();
                        s.0 += e.ts.saturating_sub(t0);
                        s.1 += 1;
                    }
                }
            }
        }
    }

    /// Mean in ms (20 ms for a kind not seen yet), at least 2.
    pub fn mean_ms(&self, kind: ActionKind) -> u64 {
        match self.by_kind.get(&kind) {
            Some(&(sum, n)) if n > 0 => (sum / n).max(2),
            _ => 20,
        }
    }
}

/// How a kill was aimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aim {
    /// At an action of this kind (or, if it is missed, the next action).
    Action(Option<ActionKind>),
    /// After a blind random delay from the start: the control group that
    /// shows how often naive timing lands outside actions.
    Blind { delay_ms: u64 },
}

/// What one attempt did.
#[derive(Debug)]
pub struct Attempt {
    pub pid: u32,
    /// False: the apply finished (status in `exit`) before it was killed.
    pub killed: bool,
    pub exit: Option<ExitStatus>,
    /// The killed apply's actions open in the journal after its death.
    pub in_flight: Vec<JournalEntry>,
    /// Freezes that found no action open and let the apply go on.
    pub misses: u32,
}

/// Run `vmctl apply` on the lab and SIGKILL it as `aim` says.
pub fn attempt(
    vmctl: &Path,
    kdl: &Path,
    state: &Path,
    log: PathBuf,
    aim: Aim,
    durations: &Durations,
    rng: &mut Rng,
) -> Result<Attempt, CrashError> {
    let out = std::fs::File::create(&log).map_err(|source| CrashError::Io {
        path: log.clone(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| CrashError::Io {
        path: log.clone(),
        source,
    })?;
    let since = vmctl_planner::journal::now_ms();
    let mut child = Command::new(vmctl)
        .args(["apply", "--auto-approve", "--parallelism", "2", "-f"])
        .arg(kdl)
        .env_remove("VMCTL_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| CrashError::Spawn {
            what: "vmctl apply".into(),
            source,
        })?;
    let pid = child.id();
    let (killed, misses) = match aim {
        Aim::Blind { delay_ms } => {
            std::thread::sleep(Duration::from_millis(delay_ms));
            if exited(&mut child)?.is_some() {
                (false, 0)
            } else {
                sigkill(&mut child)?;
                (true, 0)
            }
        }
        Aim::Action(kind) => aim_at_action(&mut child, state, since, kind, durations, rng)?,
    };
    let (exit, in_flight) = if killed {
        let after = entries_of(&read_journal(state)?, pid, since);
        (None, open_actions(&after))
    } else {
        (child.wait().ok(), Vec::new())
    };
    Ok(Attempt {
        pid,
        killed,
        exit,
        in_flight,
        misses,
    })
}

/// Tail the journal; kill the apply with an action open. Returns (killed,
/// freezes that found nothing open). Not killed means the apply exited.
fn aim_at_action(
    child: &mut Child,
    state: &Path,
    since: u64,
    mut want: Option<ActionKind>,
    durations: &Durations,
    rng: &mut Rng,
) -> Result<(bool, u32), CrashError> {
    let pid = child.id();
    let deadline = Instant::now() + APPLY_TIMEOUT;
    let mut misses = 0u32;
    loop {
        if exited(child)?.is_some() {
            return Ok((false, misses));
        }
        let mine = entries_of(&read_journal(state)?, pid, since);
        let open = open_actions(&mine);
        let target = open
            .iter()
            .find(|e| want.is_none_or(|k| e.kind == k))
            .map(|e| e.kind);
        if let Some(kind) = target {
            // A random point within the action's usual duration; after a
            // miss, aim earlier.
            let span = (durations.mean_ms(kind) >> misses.min(4)).max(1);
            std::thread::sleep(Duration::from_millis(rng.below(span)));
            sigstop(pid)?;
            let still = open_actions(&entries_of(&read_journal(state)?, pid, since));
            if !still.is_empty() {
                sigkill(child)?;
                return Ok((true, misses));
            }
            misses += 1;
            want = None;
            sigcont(pid)?;
        } else if let Some(k) = want
            && mine.iter().any(|e| e.kind == k)
        {
            // The targeted action came and went between two looks: take
            // the next one instead.
            want = None;
        }
        if Instant::now() >= deadline {
            sigkill(child)?;
            return Err(CrashError::Hung {
                what: format!("the apply to be killed (pid {pid})"),
                secs: APPLY_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn exited(child: &mut Child) -> Result<Option<ExitStatus>, CrashError> {
    child.try_wait().map_err(|source| CrashError::Spawn {
        what: "waiting for vmctl apply".into(),
        source,
    })
}

fn sigkill(child: &mut Child) -> Result<(), CrashError> {
    // Child::kill is SIGKILL; it is a no-op error only if already reaped.
    let _ = child.kill();
    child.wait().map_err(|source| CrashError::Spawn {
        what: "reaping the killed apply".into(),
        source,
    })?;
    Ok(())
}

fn signal(pid: u32, sig: libc::c_int) -> Result<(), CrashError> {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return Ok(());
    };
    // SAFETY: kill(2) of our own, not yet reaped, child.
    let rc = unsafe { libc::kill(p, sig) };
    if rc != 0 {
        return Err(CrashError::Spawn {
            what: format!("signal {sig} to the apply (pid {pid})"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Freeze the apply and wait until every one of its threads is stopped (or
/// it exited), so the journal cannot change under the look that follows.
fn sigstop(pid: u32) -> Result<(), CrashError> {
    signal(pid, libc::SIGSTOP)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if all_threads_stopped(pid) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CrashError::Hung {
                what: format!("SIGSTOP of the apply (pid {pid})"),
                secs: 5,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn sigcont(pid: u32) -> Result<(), CrashError> {
    signal(pid, libc::SIGCONT)
}

/// Every task of `pid` is stopped (`T`/`t`) or dead (`Z`/`X`, or gone).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        match stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
        {
            Some(s) => matches!(s, "T" | "t" | "Z" | "X"),
            None => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(apply: &str, action: &str, event: JournalEvent) -> JournalEntry {
        JournalEntry {
            ts: 0,
            apply_id: apply.into(),
            action: action.into(),
            vm: "v".into(),
            kind: ActionKind::Create,
            event,
            skipped: false,
            error: None,
        }
    }

    #[test]
    fn open_actions_are_started_and_not_ended() {
        let j = [
            e("1-9", "a:create", JournalEvent::Started),
            e("1-9", "b:create", JournalEvent::Started),
            e("1-9", "a:create", JournalEvent::Finished),
        ];
        let open = open_actions(&j);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].action, "b:create");
    }

    #[test]
    fn an_apply_is_found_by_its_pid_and_start_time() {
        let j = [
            e("2000-42", "a", JournalEvent::Started),
            e("2000-142", "b", JournalEvent::Started),
            e("10-42", "c", JournalEvent::Started),
        ];
        let mine = entries_of(&j, 42, 2500);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].action, "a");
    }
}
