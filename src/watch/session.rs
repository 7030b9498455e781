//! What watch does on each trigger — start-up, a settled file change, a drift
//! tick — and what it prints. The reconcile pass itself sits behind [`Engine`]
//! and time is passed in, so every rule here (validate first, the empty-file
//! guard, backoff, giving up, not repeating itself) is tested without KVM,
//! files or sleeping.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use super::backoff::{BackoffPolicy, RestartTracker, Verdict};
use super::clock;
use super::debounce::Burst;
use super::guard::{self, Gate, Safety};

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Change,
    Drift,
}

/// The file loaded and validated.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub vms: usize,
    /// Rendered warnings (e.g. more vCPUs than the host has).
    pub warnings: Vec<String>,
}

/// One reconcile pass as watch asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassRequest {
    pub trigger: Trigger,
    pub prune: bool,
    pub allow_empty: bool,
    /// VMs this pass must leave as they are (backoff, given up).
    pub hold: Vec<String>,
}

/// One action a pass ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionDone {
    pub vm: String,
    /// The plan kind: `create`, `start`, `restart`, ...
    pub kind: String,
    pub ok: bool,
}

/// What a pass did, as watch needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassResult {
    pub plan_text: String,
    pub succeeded: usize,
    pub failed: usize,
    pub unmanaged: Vec<String>,
    pub no_changes: bool,
    pub actions: Vec<ActionDone>,
    /// Failure messages of actions that failed.
    pub errors: Vec<String>,
    /// Held VMs the plan would have healed; `None` when the engine cannot hold.
    pub held_needing: Option<Vec<String>>,
    /// Other VMs whose actions waited for a held VM (depends-on).
    pub held_waiting: Vec<String>,
}

/// One load-and-validate and one reconcile pass. Errors are rendered
/// diagnostics.
pub trait Engine {
    fn load(&mut self) -> Result<LoadReport, String>;
    fn pass(&mut self, req: &PassRequest) -> Result<PassResult, String>;
    /// Whether [`PassRequest::hold`] is honoured.
    fn can_hold(&self) -> bool;
}

/// Plan kinds that bring a VM (back) up: in a drift pass they mean the VM
/// was down.
const HEALING_KINDS: [&str; 5] = ["start", "restart", "replace", "create", "copy"];

/// watch's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file as the user named it, for messages.
    pub file_label: String,
    pub safety: Safety,
    /// `None`: no drift checks.
    pub drift_interval: Option<Duration>,
    pub backoff: BackoffPolicy,
    /// Print `timing ...` lines with `CLOCK_MONOTONIC` readings.
    pub print_timings: bool,
}

/// The state watch keeps between passes.
pub struct Session<E, W> {
    engine: E,
    out: W,
    cfg: Config,
    tracker: RestartTracker,
    /// The file loaded at the last change; drift checks pause while it doesn't.
    file_ok: bool,
    next_drift: Option<Instant>,
    /// Last unmanaged list printed by a drift check, so it isn't repeated.
    last_unmanaged: Vec<String>,
    /// Last list of VMs waiting for a held one, so it isn't repeated.
    last_waiting: Vec<String>,
    /// Last drift error printed, so a busy lock doesn't flood the output.
    last_drift_error: Option<String>,
    /// Drift checks stopped (an engine that cannot hold gave up on a VM).
    drift_paused: bool,
    /// Writing the output failed with a broken pipe.
    output_closed: bool,
}

impl<E: Engine, W: Write> Session<E, W> {
    pub fn new(engine: E, out: W, cfg: Config) -> Self {
        let tracker = RestartTracker::new(cfg.backoff);
        Session {
            engine,
            out,
            cfg,
            tracker,
            file_ok: false,
            next_drift: None,
            last_unmanaged: Vec::new(),
            last_waiting: Vec::new(),
            last_drift_error: None,
            drift_paused: false,
            output_closed: false,
        }
    }

    /// When the next drift check is due (`None`: none scheduled).
    pub fn next_drift(&self) -> Option<Instant> {
        self.next_drift
    }

    /// Print one line (e.g. a watcher warning).
    pub fn note(&mut self, text: &str) {
        self.line(text);
    }

    /// Whether the output is gone (e.g. `vmctl watch | head` ended): nobody
    /// would see what watch does any more, so the loop stops.
    pub fn output_closed(&self) -> bool {
        self.output_closed
    }

    /// The first pass, before any event.
    pub fn startup(&mut self, now: Instant) {
        self.change_pass(now, Trigger::Startup, None);
    }

    /// A settled burst of file events.
    pub fn on_change(&mut self, now: Instant, burst: Option<Burst>) {
        self.change_pass(now, Trigger::Change, burst);
    }

    fn change_pass(&mut self, now: Instant, trigger: Trigger, burst: Option<Burst>) {
        let settled_ns = clock::monotonic_ns();
        let header = match trigger {
            Trigger::Startup => format!("start-up: reconciling {}", self.cfg.file_label),
            _ => format!("change detected ({})", self.cfg.file_label),
        };
        self.line(&header);
        // A changed file is a new intent: every VM gets its tries back.
        self.tracker.forget_all();
        self.drift_paused = false;
        self.last_drift_error = None;
        self.schedule_drift(now);

        let loaded = match self.engine.load() {
            Ok(l) => l,
            Err(diag) => {
                self.file_ok = false;
                self.raw(&diag);
                self.line(&format!(
                    "not applied: {} is not valid; nothing changed (fix it and save again)",
                    self.cfg.file_label
                ));
                return;
            }
        };
        for w in &loaded.warnings {
            self.raw(w);
        }
        let (prune, allow_empty) = match guard::decide(loaded.vms, self.cfg.safety) {
            Gate::Apply { prune, allow_empty } => (prune, allow_empty),
            Gate::RefuseEmpty => {
                self.file_ok = false;
                self.line(&format!(
                    "not applied: {} declares no VMs; nothing changed \
                     (an empty file never destroys VMs unless --allow-empty is given)",
                    self.cfg.file_label
                ));
                return;
            }
        };
        self.file_ok = true;
        let req = PassRequest {
            trigger,
            prune,
            allow_empty,
            hold: Vec::new(),
        };
        let start_ns = clock::monotonic_ns();
        let started = Instant::now();
        let result = self.engine.pass(&req);
        let end_ns = clock::monotonic_ns();
        match result {
            Ok(r) => {
                self.print_plan(&r);
                self.print_unmanaged(&r.unmanaged);
                self.last_unmanaged = r.unmanaged.clone();
                self.print_result(&r, started.elapsed());
            }
            Err(diag) => {
                self.raw(&diag);
                self.line("reconcile failed; the next drift check or save tries again");
            }
        }
        if self.cfg.print_timings {
            let (events, first, last) =
                burst.map_or((0, 0, 0), |b| (b.events, b.first_ns, b.last_ns));
            self.raw(&format!(
                "timing trigger={} events={events} first_event_ns={first} last_event_ns={last} \
                 settled_ns={settled_ns} reconcile_start_ns={start_ns} reconcile_end_ns={end_ns}",
                trigger_name(trigger)
            ));
        }
        self.schedule_drift(Instant::now().max(now));
    }

    /// A drift tick: observe and heal, quietly unless something happened.
    pub fn on_drift(&mut self, now: Instant) {
        let Some(interval) = self.cfg.drift_interval else {
            self.next_drift = None;
            return;
        };
        self.next_drift = Some(now + interval);
        if !self.file_ok || self.drift_paused {
            return;
        }
        self.tracker.expire(now);
        let can_hold = self.engine.can_hold();
        if !can_hold {
            // This engine cannot leave one VM alone, so the whole check waits
            // for the backoff window, and stops once a VM is given up on.
            if let Some(end) = self.tracker.next_window_end(now) {
                self.next_drift = Some(end);
                return;
            }
            if !self.tracker.given_up().is_empty() {
                self.pause_drift();
                return;
            }
        }
        // The file may be mid-change; the change pass will report it. The
        // empty-file guard applies here too.
        let Ok(loaded) = self.engine.load() else {
            return;
        };
        let Gate::Apply { prune, allow_empty } = guard::decide(loaded.vms, self.cfg.safety) else {
            return;
        };
        let hold = if can_hold {
            self.tracker.held(now)
        } else {
            Vec::new()
        };
        let req = PassRequest {
            trigger: Trigger::Drift,
            prune,
            allow_empty,
            hold,
        };
        let started = Instant::now();
        let r = match self.engine.pass(&req) {
            Ok(r) => r,
            Err(diag) => {
                if self.last_drift_error.as_deref() != Some(diag.as_str()) {
                    self.line("drift check failed");
                    self.raw(&diag);
                    self.last_drift_error = Some(diag);
                }
                return;
            }
        };
        self.last_drift_error = None;

        let mut notes = Vec::new();
        let healed: BTreeSet<&str> = r
            .actions
            .iter()
            .filter(|a| HEALING_KINDS.contains(&a.kind.as_str()))
            .map(|a| a.vm.as_str())
            .collect();
        for vm in healed {
            match self.tracker.record_restart(vm, now) {
                Verdict::Tried {
                    attempt,
                    max,
                    next_in,
                } => notes.push(format!(
                    "healing VM {vm}: try {attempt}/{max}; next try not before {} s",
                    next_in.as_secs_f64()
                )),
                Verdict::GiveUp { tries } => notes.push(self.give_up_text(vm, tries)),
            }
        }
        for vm in r.held_needing.iter().flatten() {
            if self.tracker.out_of_tries(vm) && self.tracker.give_up(vm, now) {
                let tries = self.tracker.policy().max_tries;
                notes.push(self.give_up_text(vm, tries));
            }
        }
        if r.held_waiting != self.last_waiting {
            if !r.held_waiting.is_empty() {
                notes.push(format!(
                    "waiting for a held-back VM they depend on: {}",
                    r.held_waiting.join(", ")
                ));
            }
            self.last_waiting = r.held_waiting.clone();
        }
        let unmanaged_changed = r.unmanaged != self.last_unmanaged;
        if r.no_changes && r.failed == 0 && notes.is_empty() && !unmanaged_changed {
            self.reschedule_for_backoff(now);
            return;
        }
        self.line("drift detected");
        self.print_plan(&r);
        for n in &notes {
            self.raw(n);
        }
        if unmanaged_changed {
            self.print_unmanaged(&r.unmanaged);
            self.last_unmanaged = r.unmanaged.clone();
        }
        self.print_result(&r, started.elapsed());
        if !can_hold && !self.tracker.given_up().is_empty() {
            self.pause_drift();
            return;
        }
        self.reschedule_for_backoff(now);
    }

    /// A signal: say goodbye. VMs are separate processes and keep running.
    pub fn stopping(&mut self, signal: &str) {
        self.line(&format!("{signal} received: watch stops; VMs keep running"));
    }

    fn give_up_text(&self, vm: &str, tries: u32) -> String {
        format!(
            "giving up on VM {vm} after {tries} restarts; it is left alone until {} changes",
            self.cfg.file_label
        )
    }

    fn pause_drift(&mut self) {
        self.drift_paused = true;
        self.next_drift = None;
        self.line(&format!(
            "drift healing paused until {} changes",
            self.cfg.file_label
        ));
    }

    fn schedule_drift(&mut self, now: Instant) {
        self.next_drift = self.cfg.drift_interval.map(|i| now + i);
    }

    /// Check again when a backoff window ends, if that is sooner.
    fn reschedule_for_backoff(&mut self, now: Instant) {
        if let (Some(next), Some(end)) = (self.next_drift, self.tracker.next_window_end(now)) {
            self.next_drift = Some(next.min(end));
        }
    }

    fn print_plan(&mut self, r: &PassResult) {
        let text = r.plan_text.trim_end();
        if !text.is_empty() && !r.no_changes {
            self.raw(text);
        }
        for e in &r.errors {
            self.raw(&format!("failed: {e}"));
        }
    }

    fn print_unmanaged(&mut self, unmanaged: &[String]) {
        if unmanaged.is_empty() {
            return;
        }
        let text = if self.cfg.safety.prune {
            format!("no longer managed: {}", unmanaged.join(", "))
        } else {
            format!(
                "no longer managed (left running; --prune destroys them): {}",
                unmanaged.join(", ")
            )
        };
        self.raw(&text);
    }

    fn print_result(&mut self, r: &PassResult, took: Duration) {
        let held: &[String] = r.held_needing.as_deref().unwrap_or_default();
        let text = if r.no_changes && r.failed == 0 && !held.is_empty() {
            format!("nothing applied (held back: {})", held.join(", "))
        } else if r.no_changes && r.failed == 0 {
            "no changes".to_string()
        } else if r.failed == 0 {
            format!(
                "applied: {} succeeded in {:.2} s",
                r.succeeded,
                took.as_secs_f64()
            )
        } else {
            format!(
                "apply incomplete: {} succeeded, {} failed in {:.2} s",
                r.succeeded,
                r.failed,
                took.as_secs_f64()
            )
        };
        self.line(&text);
    }

    fn line(&mut self, text: &str) {
        let stamped = format!("[{}] {text}", clock::now_stamp());
        self.raw(&stamped);
    }

    fn raw(&mut self, text: &str) {
        let result = writeln!(self.out, "{}", text.trim_end()).and_then(|()| self.out.flush());
        if let Err(e) = result
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.output_closed = true;
        }
    }
}

fn trigger_name(t: Trigger) -> &'static str {
    match t {
        Trigger::Startup => "startup",
        Trigger::Change => "change",
        Trigger::Drift => "drift",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A scripted engine: loads and passes answer from queues (the last
    /// answer repeats), and every request is recorded.
    struct Fake {
        loads: VecDeque<Result<LoadReport, String>>,
        passes: VecDeque<Result<PassResult, String>>,
        requests: Vec<PassRequest>,
        hold: bool,
    }

    impl Fake {
        fn new(hold: bool) -> Self {
            Fake {
                loads: VecDeque::from([Ok(vms(1))]),
                passes: VecDeque::from([Ok(nothing())]),
                requests: Vec::new(),
                hold,
            }
        }
    }

    fn next<T: Clone>(q: &mut VecDeque<T>) -> T {
        if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            q.front().cloned().unwrap()
        }
    }

    impl Engine for Fake {
        fn load(&mut self) -> Result<LoadReport, String> {
            next(&mut self.loads)
        }
        fn pass(&mut self, req: &PassRequest) -> Result<PassResult, String> {
            self.requests.push(req.clone());
            next(&mut self.passes)
        }
        fn can_hold(&self) -> bool {
            self.hold
        }
    }

    fn vms(n: usize) -> LoadReport {
        LoadReport {
            vms: n,
            warnings: Vec::new(),
        }
    }

    fn nothing() -> PassResult {
        PassResult {
            no_changes: true,
            held_needing: Some(Vec::new()),
            ..PassResult::default()
        }
    }

    fn started(vm: &str) -> PassResult {
        PassResult {
            plan_text: format!("  start {vm}: crashed\n"),
            succeeded: 1,
            actions: vec![ActionDone {
                vm: vm.to_string(),
                kind: "start".to_string(),
                ok: true,
            }],
            held_needing: Some(Vec::new()),
            ..PassResult::default()
        }
    }

    fn cfg(prune: bool, allow_empty: bool) -> Config {
        Config {
            file_label: "vmctl.kdl".to_string(),
            safety: Safety { prune, allow_empty },
            drift_interval: Some(Duration::from_secs(5)),
            backoff: BackoffPolicy {
                max_tries: 3,
                ..BackoffPolicy::default()
            },
            print_timings: false,
        }
    }

    fn session(fake: Fake, c: Config) -> Session<Fake, Vec<u8>> {
        Session::new(fake, Vec::new(), c)
    }

    fn take_out(s: &mut Session<Fake, Vec<u8>>) -> String {
        String::from_utf8(std::mem::take(&mut s.out)).unwrap()
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn startup_reconciles_with_the_users_flags_and_prints_a_block() {
        let mut f = Fake::new(false);
        f.passes = VecDeque::from([Ok(started("db"))]);
        let mut w = session(f, cfg(true, false));
        let t0 = Instant::now();
        w.startup(t0);
        let out = take_out(&mut w);
        assert!(out.contains("] start-up: reconciling vmctl.kdl"), "{out}");
        assert!(out.contains("  start db: crashed"), "{out}");
        assert!(out.contains("] applied: 1 succeeded"), "{out}");
        assert!(out.starts_with("[20"), "{out}");
        let req = &w.engine.requests[0];
        assert_eq!(req.trigger, Trigger::Startup);
        assert!(req.prune && !req.allow_empty && req.hold.is_empty());
        assert!(w.next_drift().is_some());
    }

    #[test]
    fn a_broken_file_never_reaches_reconcile_and_the_next_good_save_does() {
        let mut f = Fake::new(false);
        f.loads = VecDeque::from([
            Ok(vms(1)),
            Err("  × expected a size\n   ╭─[vmctl.kdl:3:12]".to_string()),
            Ok(vms(1)),
        ]);
        let mut w = session(f, cfg(false, false));
        let t0 = Instant::now();
        w.startup(t0);
        take_out(&mut w);
        w.on_change(t0 + s(1), None);
        let out = take_out(&mut w);
        assert!(out.contains("expected a size"), "{out}");
        assert!(out.contains("not applied: vmctl.kdl is not valid; nothing changed"));
        assert_eq!(w.engine.requests.len(), 1);
        // Drift checks pause while the file is broken.
        w.on_drift(t0 + s(10));
        assert_eq!(w.engine.requests.len(), 1);
        w.on_change(t0 + s(11), None);
        assert_eq!(w.engine.requests.len(), 2);
        assert_eq!(w.engine.requests[1].trigger, Trigger::Change);
        assert!(take_out(&mut w).contains("] no changes"));
    }

    #[test]
    fn an_empty_file_changes_nothing_even_with_prune() {
        let mut f = Fake::new(false);
        f.loads = VecDeque::from([Ok(vms(0))]);
        let mut w = session(f, cfg(true, false));
        w.startup(Instant::now());
        let out = take_out(&mut w);
        assert!(out.contains("declares no VMs; nothing changed"), "{out}");
        assert!(w.engine.requests.is_empty());
        w.on_drift(Instant::now() + s(10));
        assert!(w.engine.requests.is_empty());
    }

    #[test]
    fn a_drift_check_never_acts_on_a_file_that_became_empty() {
        let mut f = Fake::new(false);
        f.loads = VecDeque::from([Ok(vms(2)), Ok(vms(0))]);
        let mut w = session(f, cfg(true, false));
        let t0 = Instant::now();
        w.startup(t0);
        w.on_drift(t0 + s(5));
        assert_eq!(w.engine.requests.len(), 1);
    }

    #[test]
    fn allow_empty_passes_an_empty_file_through() {
        let mut f = Fake::new(false);
        f.loads = VecDeque::from([Ok(vms(0))]);
        let mut w = session(f, cfg(true, true));
        w.startup(Instant::now());
        let req = &w.engine.requests[0];
        assert!(req.prune && req.allow_empty);
    }

    #[test]
    fn unmanaged_vms_are_reported_and_not_repeated_by_drift_checks() {
        let mut f = Fake::new(false);
        f.passes = VecDeque::from([Ok(PassResult {
            unmanaged: vec!["old".to_string()],
            ..nothing()
        })]);
        let mut w = session(f, cfg(false, false));
        let t0 = Instant::now();
        w.startup(t0);
        let out = take_out(&mut w);
        assert!(
            out.contains("no longer managed (left running; --prune destroys them): old"),
            "{out}"
        );
        assert!(!w.engine.requests[0].prune);
        w.on_drift(t0 + s(5));
        assert_eq!(w.engine.requests.len(), 2);
        assert_eq!(take_out(&mut w), "");
    }

    #[test]
    fn quiet_drift_checks_print_nothing_and_reschedule() {
        let mut w = session(Fake::new(false), cfg(false, false));
        let t0 = Instant::now();
        w.startup(t0);
        take_out(&mut w);
        w.on_drift(t0 + s(5));
        assert_eq!(take_out(&mut w), "");
        assert_eq!(w.next_drift(), Some(t0 + s(10)));
        assert_eq!(w.engine.requests[1].trigger, Trigger::Drift);
    }

    #[test]
    fn no_drift_interval_means_no_drift_checks() {
        let mut c = cfg(false, false);
        c.drift_interval = None;
        let mut w = session(Fake::new(false), c);
        w.startup(Instant::now());
        assert_eq!(w.next_drift(), None);
    }

    #[test]
    fn a_drift_error_is_printed_once() {
        let mut f = Fake::new(false);
        f.passes = VecDeque::from([Ok(nothing()), Err("lock busy".to_string())]);
        let mut w = session(f, cfg(false, false));
        let t0 = Instant::now();
        w.startup(t0);
        take_out(&mut w);
        w.on_drift(t0 + s(5));
        assert!(take_out(&mut w).contains("lock busy"));
        w.on_drift(t0 + s(10));
        assert_eq!(take_out(&mut w), "");
    }

    /// Drive drift checks at the times the session asks for, `n` times.
    fn drift_n(w: &mut Session<Fake, Vec<u8>>, n: usize) -> Vec<Instant> {
        let mut at = Vec::new();
        for _ in 0..n {
            let t = w.next_drift().unwrap();
            w.on_drift(t);
            at.push(t);
        }
        at
    }

    #[test]
    fn a_crash_looping_vm_backs_off_then_is_given_up_with_hold() {
        let mut f = Fake::new(true);
        let gave_up = PassResult {
            held_needing: Some(vec!["db".to_string()]),
            ..nothing()
        };
        f.passes = VecDeque::from([
            Ok(nothing()),
            Ok(started("db")),
            Ok(started("db")),
            Ok(started("db")),
            Ok(gave_up),
        ]);
        let mut w = session(f, cfg(false, false));
        let t0 = Instant::now();
        w.startup(t0);
        take_out(&mut w);
        let at = drift_n(&mut w, 4);
        // 5 s tick, then the backoff windows: 1 s, 2 s, then held (out of tries).
        assert_eq!(at[1] - at[0], s(1));
        assert_eq!(at[2] - at[1], s(2));
        let out = take_out(&mut w);
        assert!(
            out.contains("healing VM db: try 1/3; next try not before 1 s"),
            "{out}"
        );
        assert!(out.contains("healing VM db: try 3/3"), "{out}");
        assert!(
            out.contains(
                "giving up on VM db after 3 restarts; it is left alone until vmctl.kdl changes"
            ),
            "{out}"
        );
        let reqs = &w.engine.requests;
        assert!(reqs[2].hold.is_empty(), "{:?}", reqs[2]);
        assert_eq!(reqs[4].hold, ["db"]);
        // Given up: held from now on, and not announced again.
        w.on_drift(w.next_drift().unwrap());
        assert_eq!(w.engine.requests.last().unwrap().hold, ["db"]);
        assert!(!take_out(&mut w).contains("giving up"));
        assert!(out.contains("] nothing applied (held back: db)"), "{out}");
        // A change gives it its tries back.
        w.on_change(w.next_drift().unwrap(), None);
        w.on_drift(w.next_drift().unwrap());
        assert!(w.engine.requests.last().unwrap().hold.is_empty());
    }

    #[test]
    fn vms_waiting_for_a_held_vm_are_named_once() {
        let mut f = Fake::new(true);
        let waiting = PassResult {
            held_needing: Some(vec!["db".to_string()]),
            held_waiting: vec!["web".to_string()],
            ..nothing()
        };
        f.passes = VecDeque::from([Ok(nothing()), Ok(waiting)]);
        let mut w = session(f, cfg(false, false));
        let t0 = Instant::now();
        w.startup(t0);
        take_out(&mut w);
        w.on_drift(t0 + s(5));
        let out = take_out(&mut w);
        assert!(
            out.contains("waiting for a held-back VM they depend on: web"),
            "{out}"
        );
        w.on_drift(t0 + s(10));
        assert_eq!(take_out(&mut w), "");
    }

    #[test]
    fn without_hold_drift_waits_for_the_window_and_pauses_after_giving_up() {
        let mut f = Fake::new(false);
        f.passes = VecDeque::from([Ok(nothing()), Ok(started("db"))]);
        let mut c = cfg(false, false);
        c.backoff.max_tries = 2;
        let mut w = session(f, c);
        let t0 = Instant::now();
        w.startup(t0);
        take_out(&mut w);
        let first = w.next_drift().unwrap();
        w.on_drift(first); // try 1
        assert_eq!(w.next_drift(), Some(first + s(1)));
        // Called early (inside the window): no pass, rescheduled to its end.
        w.on_drift(first + Duration::from_millis(500));
        assert_eq!(w.engine.requests.len(), 2);
        assert_eq!(w.next_drift(), Some(first + s(1)));
        drift_n(&mut w, 2); // try 2, then a third restart: give up
        let out = take_out(&mut w);
        assert!(out.contains("giving up on VM db after 2 restarts"), "{out}");
        assert!(
            out.contains("drift healing paused until vmctl.kdl changes"),
            "{out}"
        );
        assert_eq!(w.next_drift(), None);
        let n = w.engine.requests.len();
        w.on_drift(first + s(100));
        assert_eq!(w.engine.requests.len(), n);
        w.on_change(first + s(101), None);
        assert!(w.next_drift().is_some());
    }

    /// An output whose reader has gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_is_noticed() {
        let mut w = Session::new(Fake::new(false), Closed, cfg(false, false));
        assert!(!w.output_closed());
        w.startup(Instant::now());
        assert!(w.output_closed());
    }

    #[test]
    fn timings_are_printed_when_asked() {
        let mut c = cfg(false, false);
        c.print_timings = true;
        let mut w = session(Fake::new(false), c);
        let t0 = Instant::now();
        let burst = Burst {
            first: t0,
            last: t0,
            first_ns: 7,
            last_ns: 9,
            events: 2,
        };
        w.on_change(t0, Some(burst));
        let out = take_out(&mut w);
        assert!(
            out.contains(
                "timing trigger=change events=2 first_event_ns=7 last_event_ns=9 settled_ns="
            ),
            "{out}"
        );
    }
}
