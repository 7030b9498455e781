//! The apply engine: walks a [`Plan`] in dependency order, up to N actions at
//! once, on a [`Backend`].
//!
//! Every action is journaled (`started`, then `finished` or `failed`, each
//! fsync'd) and checks the VM's observed state first, skipping work already
//! done — so re-running a plan, or finishing a killed apply by planning again,
//! is safe. A failed action stops its dependents (transitively); unrelated
//! actions carry on. Progress is reported through an event callback so the CLI
//! can draw progress bars, plain lines or JSON events.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vmctl_spec::{DesiredState, VmSpec};

use crate::backend::{Backend, BackendError, CopyReport};
use crate::capabilities::ActionKind;
use crate::journal::{Journal, JournalEntry, JournalEvent, now_ms};
use crate::observed::{ObservedNetwork, ObservedVm, RunState};
use crate::plan::{Action, Plan};

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most actions in flight at once (at least 1) — per host when the
    /// plan's actions carry hosts (a lab over several hosts): each host,
    /// and the actions without one, get this many.
    pub parallelism: usize,
    /// Let destroy/replace delete disks at user-chosen paths.
    pub delete_external_disks: bool,
    /// Names this apply in the journal.
    pub apply_id: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            parallelism: 4,
            delete_external_disks: false,
            apply_id: crate::journal::new_apply_id(),
        }
    }
}

/// Why an action did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The observed state already matched (idempotent re-run).
    AlreadyDone,
    /// An action it depends on (directly or not) failed or was skipped for
    /// that reason; names the failed action.
    DependencyFailed(String),
    /// A refused entry of the plan.
    Refused,
}

/// Progress, reported as it happens (from worker threads). Every action that
/// runs gets `Started` and then one of `Finished`, `Failed` or
/// `Skipped { AlreadyDone }`; actions that never run get only `Skipped`.
#[derive(Debug)]
pub enum Event<'a> {
    /// An action a previous, killed apply started and never finished.
    Interrupted {
        entry: &'a JournalEntry,
    },
    Started {
        action: &'a Action,
    },
    Finished {
        action: &'a Action,
        duration: Duration,
        /// What a copy did (its source's pause), for copy actions.
        copy: Option<CopyReport>,
    },
    Failed {
        action: &'a Action,
        error: &'a BackendError,
        duration: Duration,
    },
    Skipped {
        action: &'a Action,
        reason: SkipReason,
    },
}

/// What happened, by action id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub finished: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<(String, SkipReason)>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

struct Sched {
    ready: BTreeSet<usize>,
    waiting_on: Vec<usize>,
    remaining: usize,
    outcome: Outcome,
    /// Per action: the failure that blocks it.
    blocked: Vec<Option<String>>,
    /// Per bucket (see [`buckets`]): actions in flight.
    busy: Vec<usize>,
}

/// Each action's bucket: one per distinct host (in order of first
/// appearance), actions without a host share one. Returns the buckets and
/// their count.
fn buckets(actions: &[Action]) -> (Vec<usize>, usize) {
    let mut hosts: Vec<Option<&str>> = Vec::new();
    let of = actions
        .iter()
        .map(|a| {
            let h = a.host.as_deref();
            match hosts.iter().position(|x| *x == h) {
                Some(i) => i,
                None => {
                    hosts.push(h);
                    hosts.len() - 1
                }
            }
        })
        .collect();
    (of, hosts.len().max(1))
}

/// For an apply whose plan has nothing to do: the actions a killed apply
/// left open in the journal are done already (the fresh plan, made from the
/// observed state, found nothing left of them). Each is passed to
/// `on_settled` and closed in the journal with a `finished`, `skipped` line
/// under `apply_id`, so that this apply, not the killed one, is the latest
/// and no later apply reports them as interrupted again. Returns how many.
pub fn settle_interrupted(
    journal: &Journal,
    apply_id: &str,
    on_settled: &mut dyn FnMut(&JournalEntry),
) -> Result<usize, crate::journal::JournalError> {
    let open = journal.interrupted_before()?;
    for entry in &open {
        on_settled(entry);
        journal.append(&JournalEntry {
            ts: now_ms(),
            apply_id: apply_id.to_string(),
            action: entry.action.clone(),
            vm: entry.vm.clone(),
            kind: entry.kind,
            event: JournalEvent::Finished,
            skipped: true,
            error: None,
        })?;
    }
    Ok(open.len())
}

/// Carry out `plan`. `desired` is the state the plan was made for (used for
/// the final record step); `journal` is `None` only in tests.
pub fn apply(
    backend: &dyn Backend,
    plan: &Plan,
    desired: &DesiredState,
    journal: Option<&Journal>,
    opts: &Options,
    on_event: &(dyn Fn(&Event<'_>) + Sync),
) -> Outcome {
    if let Some(j) = journal {
        match j.interrupted_before() {
            Ok(open) => {
                for entry in &open {
                    on_event(&Event::Interrupted { entry });
                }
            }
            Err(e) => tracing::warn!("cannot read the journal: {e}"),
        }
    }

    let actions = &plan.actions;
    let index: HashMap<&str, usize> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id.as_str(), i))
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); actions.len()];
    let mut waiting_on = vec![0usize; actions.len()];
    for (i, a) in actions.iter().enumerate() {
        for d in &a.depends_on {
            if let Some(&j) = index.get(d.as_str()) {
                dependents[j].push(i);
                waiting_on[i] += 1;
            }
        }
    }
    let mut outcome = Outcome::default();
    let mut ready = BTreeSet::new();
    let mut remaining = 0;
    for (i, a) in actions.iter().enumerate() {
        if a.is_refused() {
            on_event(&Event::Skipped {
                action: a,
                reason: SkipReason::Refused,
            });
            outcome.skipped.push((a.id.clone(), SkipReason::Refused));
        } else {
            remaining += 1;
            if waiting_on[i] == 0 {
                ready.insert(i);
            }
        }
    }

    // `parallelism` per host: a single-host plan is one bucket, so this is
    // the plain limit there.
    let limit = opts.parallelism.max(1);
    let (bucket, nbuckets) = buckets(actions);
    let state = Mutex::new(Sched {
        ready,
        waiting_on,
        remaining,
        outcome,
        blocked: vec![None; actions.len()],
        busy: vec![0; nbuckets],
    });
    let wake = Condvar::new();
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());

    std::thread::scope(|s| {
        for _ in 0..limit.saturating_mul(nbuckets) {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut st = lock();
                        loop {
                            if st.remaining == 0 {
                                wake.notify_all();
                                return;
                            }
                            // The first ready action whose host has room.
                            let busy = &st.busy;
                            let pick = st.ready.iter().copied().find(|&i| busy[bucket[i]] < limit);
                            if let Some(i) = pick {
                                st.ready.remove(&i);
                                st.busy[bucket[i]] += 1;
                                break i;
                            }
                            st = wake.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    let a = &actions[i];
                    let copies: Vec<&Action> = dependents[i]
                        .iter()
                        .map(|&d| &actions[d])
                        .filter(|d| d.kind == ActionKind::Copy)
                        .collect();
                    let result = run_one(backend, a, &copies, journal, opts, on_event);
                    let mut st = lock();
                    st.remaining -= 1;
                    st.busy[bucket[i]] -= 1;
                    match result {
                        Ok(done) => {
                            if done {
                                st.outcome
                                    .skipped
                                    .push((a.id.clone(), SkipReason::AlreadyDone));
                            } else {
                                st.outcome.finished.push(a.id.clone());
                            }
                            release(&mut st, i, &dependents, actions);
                        }
                        Err(e) => {
                            st.outcome.failed.push((a.id.clone(), e.to_string()));
                            block(&mut st, i, &a.id, &dependents, actions, on_event);
                        }
                    }
                    wake.notify_all();
                }
            });
        }
    });

    let mut outcome = state
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .outcome;
    record_step(backend, plan, desired, &mut outcome);
    outcome
}

/// A dependency succeeded: dependents whose last dependency this was (and
/// that are not blocked by a failure) become ready.
fn release(st: &mut Sched, i: usize, dependents: &[Vec<usize>], actions: &[Action]) {
    for &d in &dependents[i] {
        st.waiting_on[d] -= 1;
        if st.waiting_on[d] == 0 && st.blocked[d].is_none() && !actions[d].is_refused() {
            st.ready.insert(d);
        }
    }
}

/// A failure: every transitive dependent is skipped (once).
fn block(
    st: &mut Sched,
    i: usize,
    failed: &str,
    dependents: &[Vec<usize>],
    actions: &[Action],
    on_event: &(dyn Fn(&Event<'_>) + Sync),
) {
    let mut stack: Vec<usize> = dependents[i].clone();
    while let Some(d) = stack.pop() {
        if st.blocked[d].is_some() || actions[d].is_refused() {
            continue;
        }
        // A copy source is started again even when a copy failed: a failed
        // copy must not leave its source down.
        if actions[d].id.ends_with(":start-after-copy") {
            st.waiting_on[d] -= 1;
            if st.waiting_on[d] == 0 {
                st.ready.insert(d);
            }
            continue;
        }
        st.blocked[d] = Some(failed.to_string());
        st.remaining -= 1;
        let reason = SkipReason::DependencyFailed(failed.to_string());
        on_event(&Event::Skipped {
            action: &actions[d],
            reason: reason.clone(),
        });
        st.outcome.skipped.push((actions[d].id.clone(), reason));
        stack.extend(dependents[d].iter().copied());
    }
}

fn journal_line(
    journal: Option<&Journal>,
    opts: &Options,
    a: &Action,
    event: JournalEvent,
    skipped: bool,
    error: Option<String>,
) -> Result<(), BackendError> {
    let Some(j) = journal else { return Ok(()) };
    j.append(&JournalEntry {
        ts: now_ms(),
        apply_id: opts.apply_id.clone(),
        action: a.id.clone(),
        vm: a.vm.clone(),
        kind: a.kind,
        event,
        skipped,
        error,
    })
    .map_err(|e| BackendError::new(e.to_string()))
}

/// Journal, check, act, journal. `Ok(true)`: it was already done.
fn run_one(
    backend: &dyn Backend,
    a: &Action,
    copies: &[&Action],
    journal: Option<&Journal>,
    opts: &Options,
    on_event: &(dyn Fn(&Event<'_>) + Sync),
) -> Result<bool, BackendError> {
    let t0 = Instant::now();
    // The intent is on disk before anything changes.
    if let Err(e) = journal_line(journal, opts, a, JournalEvent::Started, false, None) {
        on_event(&Event::Failed {
            action: a,
            error: &e,
            duration: t0.elapsed(),
        });
        return Err(e);
    }
    on_event(&Event::Started { action: a });
    let result = if a.is_network() {
        backend.observe_network(&a.vm).and_then(|o| {
            if network_done(a, o.as_ref()) {
                Ok((true, None))
            } else {
                execute_network(backend, a).map(|()| (false, None))
            }
        })
    } else {
        backend.observe_vm(&a.vm).and_then(|o| {
            if already_done(a, o.as_ref()) || copies_done(backend, a, copies)? {
                Ok((true, None))
            } else {
                execute(backend, a, opts).map(|copy| (false, copy))
            }
        })
    };
    let duration = t0.elapsed();
    match result {
        Ok((done, copy)) => {
            journal_line(journal, opts, a, JournalEvent::Finished, done, None)?;
            if done {
                on_event(&Event::Skipped {
                    action: a,
                    reason: SkipReason::AlreadyDone,
                });
            } else {
                on_event(&Event::Finished {
                    action: a,
                    duration,
                    copy,
                });
            }
            Ok(done)
        }
        Err(e) => {
            // Best effort: the failure is reported even if the journal is not writable.
            let _ = journal_line(
                journal,
                opts,
                a,
                JournalEvent::Failed,
                false,
                Some(e.to_string()),
            );
            on_event(&Event::Failed {
                action: a,
                error: &e,
                duration,
            });
            Err(e)
        }
    }
}

fn runs_as_wanted(o: &ObservedVm, spec: &VmSpec) -> bool {
    o.live.state.has_vmm() == spec.autostart && o.live.state != RunState::Crashed
}

/// Whether the observed VM already shows the action's effect.
pub fn already_done(a: &Action, o: Option<&ObservedVm>) -> bool {
    let new = a.new.as_ref();
    match a.kind {
        // What runs, not only the record: a hot-add killed between the VMM's
        // change and the record's leaves the record behind what runs.
        ActionKind::Create | ActionKind::Copy | ActionKind::Restart | ActionKind::Replace => {
            match (o, new) {
                (Some(o), Some(n)) => {
                    o.record.spec == *n && o.current() == *n && runs_as_wanted(o, n)
                }
                _ => false,
            }
        }
        ActionKind::Start => o.is_some_and(|o| o.live.state.has_vmm()),
        ActionKind::Stop => o.is_none_or(|o| o.live.state == RunState::Stopped),
        ActionKind::Destroy => o.is_none(),
        // Never planned as executable (a move is reported, not applied).
        ActionKind::Move => false,
        ActionKind::HotAddCpu | ActionKind::HotRemoveCpu => match (o, new) {
            (Some(o), Some(n)) => o.current().cpus == n.cpus,
            _ => false,
        },
        ActionKind::HotAddMemory => match (o, new) {
            (Some(o), Some(n)) => o.current().memory_mib == n.memory_mib,
            _ => false,
        },
        ActionKind::SetCpuWeight => match (o, new) {
            (Some(o), Some(n)) => o.record.spec.cpu_weight == n.cpu_weight,
            _ => false,
        },
        ActionKind::ResizeDisk => match (o, new, disk_of(a)) {
            (Some(o), Some(n), Some(d)) => {
                let want = n.disks.iter().find(|x| x.name == d).map(|x| x.size_bytes);
                let have = o
                    .current()
                    .disks
                    .into_iter()
                    .find(|x| x.name == d)
                    .map(|x| x.size_bytes);
                matches!((want, have), (Some(w), Some(h)) if h >= w)
            }
            _ => false,
        },
    }
}

/// Whether the observed network already shows a network action's effect.
pub fn network_done(a: &Action, o: Option<&ObservedNetwork>) -> bool {
    match a.kind {
        ActionKind::Destroy => o.is_none(),
        _ => match (o, &a.network) {
            (Some(o), Some(n)) => o.present && o.spec == *n,
            _ => false,
        },
    }
}

fn execute_network(backend: &dyn Backend, a: &Action) -> Result<(), BackendError> {
    match a.kind {
        ActionKind::Destroy => backend.destroy_network(&a.vm),
        ActionKind::Create | ActionKind::Replace => backend.create_network(
            a.network
                .as_ref()
                .ok_or_else(|| missing(a, "network configuration"))?,
        ),
        other => Err(BackendError::new(format!(
            "{}: a network has no `{}` action",
            a.id,
            other.label()
        ))),
    }
}

/// A source's stop for copying is moot when every copy it serves is done.
fn copies_done(
    backend: &dyn Backend,
    a: &Action,
    copies: &[&Action],
) -> Result<bool, BackendError> {
    if !a.id.ends_with(":stop-for-copy") || copies.is_empty() {
        return Ok(false);
    }
    for c in copies {
        if !already_done(c, backend.observe_vm(&c.vm)?.as_ref()) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn disk_of(a: &Action) -> Option<&str> {
    a.changes.iter().find_map(|c| c.disk.as_deref())
}

fn missing(a: &Action, what: &str) -> BackendError {
    BackendError::new(format!("{}: the plan carries no {what}", a.id))
}

/// Carry out one action; a copy says what it did.
fn execute(
    backend: &dyn Backend,
    a: &Action,
    opts: &Options,
) -> Result<Option<CopyReport>, BackendError> {
    let new = || {
        a.new
            .as_ref()
            .ok_or_else(|| missing(a, "target configuration"))
    };
    match a.kind {
        ActionKind::Create => backend.create(new()?),
        ActionKind::Copy => {
            let src = a
                .source
                .as_deref()
                .ok_or_else(|| missing(a, "copy source"))?;
            return backend.copy(src, new()?).map(Some);
        }
        ActionKind::Start => backend.start(&a.vm),
        ActionKind::Stop => backend.stop(&a.vm),
        ActionKind::Restart => {
            let old = a
                .old
                .as_ref()
                .ok_or_else(|| missing(a, "observed configuration"))?;
            backend.restart(old, new()?)
        }
        ActionKind::Replace => {
            backend.destroy(&a.vm, opts.delete_external_disks)?;
            backend.create(new()?)
        }
        ActionKind::Destroy => backend.destroy(&a.vm, opts.delete_external_disks),
        ActionKind::HotAddCpu | ActionKind::HotRemoveCpu => backend.hot_add_cpu(&a.vm, new()?.cpus),
        ActionKind::HotAddMemory => backend.hot_add_memory(&a.vm, new()?.memory_mib),
        ActionKind::SetCpuWeight => backend.set_cpu_weight(&a.vm, new()?.cpu_weight),
        ActionKind::Move => {
            return Err(BackendError::new(format!(
                "{}: apply does not move VMs between hosts; use `vmctl move`",
                a.id
            )));
        }
        ActionKind::ResizeDisk => {
            let d = disk_of(a).ok_or_else(|| missing(a, "disk"))?;
            let size = new()?
                .disks
                .iter()
                .find(|x| x.name == d)
                .map(|x| x.size_bytes)
                .ok_or_else(|| missing(a, "disk size"))?;
            backend.resize_disk(&a.vm, d, size)
        }
    }
    .map(|()| None)
}

/// After the walk: bring the record's runtime-free fields (`depends-on`,
/// `copy-from`, `autostart`) in line with the file for every VM none of whose
/// actions failed, was blocked or refused.
fn record_step(backend: &dyn Backend, plan: &Plan, desired: &DesiredState, out: &mut Outcome) {
    let mut unsettled: BTreeSet<&str> = BTreeSet::new();
    let by_id: HashMap<&str, &Action> = plan.actions.iter().map(|a| (a.id.as_str(), a)).collect();
    for (id, _) in &out.failed {
        if let Some(a) = by_id.get(id.as_str()) {
            unsettled.insert(&a.vm);
        }
    }
    for (id, r) in &out.skipped {
        if *r != SkipReason::AlreadyDone
            && let Some(a) = by_id.get(id.as_str())
        {
            unsettled.insert(&a.vm);
        }
    }
    let mut failures = Vec::new();
    for spec in &desired.vms {
        if unsettled.contains(spec.name.as_str()) {
            continue;
        }
        let o = match backend.observe_vm(&spec.name) {
            Ok(Some(o)) => o,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(vm = %spec.name, "cannot observe for the record step: {e}");
                continue;
            }
        };
        let want = VmSpec {
            depends_on: spec.depends_on.clone(),
            copy_from: spec.copy_from.clone(),
            autostart: spec.autostart,
            ..o.record.spec.clone()
        };
        if want != o.record.spec
            && let Err(e) = backend.record(&want, o.record.desired)
        {
            failures.push((format!("{}:record", spec.name), e.to_string()));
        }
    }
    out.failed.extend(failures);
}
