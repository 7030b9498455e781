//! The real [`Engine`]: `vmctl_spec::load_file` to validate, then
//! `crate::reconcile::reconcile` for one pass, which takes the state lock for
//! that pass only (so `status` and a manual `apply` work while watch idles).
//! A drift check that holds VMs back runs reconcile's two halves itself —
//! `prepare` (load, lock, observe, plan), then `execute` — and in between
//! checks that reconcile read the file watch validated and takes the held
//! VMs' actions out of the plan ([`super::hold`]).
//! [`PassResult::from_outcome`] is the one place that knows the shape of
//! `ReconcileOutcome`.

use std::path::PathBuf;
use std::time::Duration;

use vmctl_spec::DesiredState;

use super::hold::hold_back;
use super::session::{ActionDone, Engine, LoadReport, PassRequest, PassResult, Trigger};
use crate::cmd::Global;
#[cfg(test)]
use crate::reconcile::Ran;
use crate::reconcile::{self, ReconcileOptions, ReconcileOutcome};
use crate::report::{Mode, Reporter};

/// How long a drift check waits for a lock someone else holds before it
/// skips (the next tick tries again). Change passes wait as long as it takes.
const DRIFT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ReconcileEngine<'g> {
    global: &'g Global,
    file: PathBuf,
    parallelism: usize,
    /// What the last successful [`Engine::load`] read: a held-back pass
    /// applies only if reconcile read the same, so a save landing between
    /// validation and planning is not applied unvalidated (it is handled as
    /// its own change).
    validated: Option<DesiredState>,
}

impl<'g> ReconcileEngine<'g> {
    pub fn new(global: &'g Global, file: PathBuf, parallelism: usize) -> Self {
        ReconcileEngine {
            global,
            file,
            parallelism,
            validated: None,
        }
    }
}

impl Engine for ReconcileEngine<'_> {
    fn load(&mut self) -> Result<LoadReport, String> {
        self.validated = None;
        if !self.file.exists() {
            return Err(format!(
                "  × {} does not exist (deleted, or not yet renamed into place)",
                self.file.display()
            ));
        }
        match crate::cmd::load_quiet(self.global, &self.file) {
            Ok(loaded) => {
                let report = LoadReport {
                    vms: loaded.state.vms.len(),
                    warnings: loaded.warnings.iter().map(|w| format!("{w:?}")).collect(),
                };
                self.validated = Some(loaded.state);
                Ok(report)
            }
            Err(e) => Err(format!("{:?}", miette::Report::new(e))),
        }
    }

    fn pass(&mut self, req: &PassRequest) -> Result<PassResult, String> {
        if self.validated.is_none() {
            return Err(format!(
                "  × {} has not been validated; nothing was applied",
                self.file.display()
            ));
        }
        let opts = ReconcileOptions {
            file: self.file.clone(),
            parallelism: self.parallelism.max(1),
            prune: req.prune,
            allow_empty: req.allow_empty,
            lock_timeout: match req.trigger {
                Trigger::Drift => Some(DRIFT_LOCK_TIMEOUT),
                Trigger::Startup | Trigger::Change => None,
            },
            print: false,
            // Plan exactly what load() validated: a save after it is the
            // next change, never planned unseen.
            desired: self.validated.clone(),
        };
        let render = |report: miette::Report| format!("{report:?}");
        if req.hold.is_empty() {
            return reconcile::reconcile(self.global, &opts)
                .map(PassResult::from_outcome)
                .map_err(render);
        }
        // Holding VMs back: run reconcile's halves with the held actions
        // taken out in between.
        let mut prepared = reconcile::prepare(self.global, &opts).map_err(render)?;
        let back = hold_back(&mut prepared.plan, &req.hold);
        let reporter = Reporter::new(Mode::Quiet);
        let outcome = reconcile::execute(&prepared, opts.parallelism, &reporter).map_err(render)?;
        let mut r = PassResult::from_outcome(outcome);
        r.held_needing = Some(back.held);
        r.held_waiting = back.waiting;
        Ok(r)
    }

    fn can_hold(&self) -> bool {
        true
    }
}

impl PassResult {
    /// Watch's view of a reconcile outcome.
    pub fn from_outcome(o: ReconcileOutcome) -> Self {
        let actions = o
            .ran
            .into_iter()
            .map(|r| ActionDone {
                vm: r.vm,
                kind: r.kind,
                ok: r.ok,
            })
            .collect();
        PassResult {
            plan_text: o.plan_text,
            succeeded: o.succeeded,
            failed: o.failed,
            unmanaged: o.unmanaged,
            no_changes: o.no_changes,
            actions,
            errors: o.errors,
            held_needing: None,
            held_waiting: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(g: &Global, file: PathBuf) -> ReconcileEngine<'_> {
        ReconcileEngine::new(g, file, 1)
    }

    #[test]
    fn a_pass_plans_what_was_validated_not_a_later_save() {
        let dir = tempfile::tempdir().unwrap();
        let g = Global {
            state_dir: Some(dir.path().join("state")),
        };
        let file = dir.path().join("vmctl.kdl");
        // autostart off everywhere, so applying needs no KVM.
        std::fs::write(&file, "vm \"a\" { os \"diag\"; autostart #false; }\n").unwrap();
        let mut e = engine(&g, file.clone());
        assert_eq!(e.load().unwrap().vms, 1);
        // Saved again between validation and the pass: the pass applies the
        // validated version; the new save is the next change.
        std::fs::write(&file, "vm \"b\" { os \"diag\"; autostart #false; }\n").unwrap();
        let req = PassRequest {
            trigger: Trigger::Change,
            prune: true,
            allow_empty: false,
            hold: Vec::new(),
        };
        e.pass(&req).unwrap();
        assert!(dir.path().join("state/vms/a/vm.json").exists());
        assert!(!dir.path().join("state/vms/b").exists());
        // Without a load first, nothing is applied at all.
        let mut fresh = engine(&g, file);
        let err = fresh.pass(&req).unwrap_err();
        assert!(err.contains("not been validated"), "{err}");
        assert!(!dir.path().join("state/vms/b").exists());
    }

    #[test]
    fn load_counts_vms_and_renders_problems_and_missing_files() {
        let g = Global { state_dir: None };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmctl.kdl");
        let mut e = engine(&g, file.clone());
        let missing = e.load().unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        std::fs::write(&file, "vm \"a\" {\n    os \"diag\"\n    memory 128\n}\n").unwrap();
        let bad = e.load().unwrap_err();
        assert!(bad.contains("vmctl.kdl") && bad.contains("128"), "{bad}");
        std::fs::write(
            &file,
            "vm \"a\" { os \"diag\"; }\nvm \"b\" { os \"diag\"; }\n",
        )
        .unwrap();
        assert_eq!(e.load().unwrap().vms, 2);
        std::fs::write(&file, "// nothing\n").unwrap();
        assert_eq!(e.load().unwrap().vms, 0);
    }

    #[test]
    // The update keeps this test compiling when the outcome gains fields.
    #[allow(clippy::needless_update)]
    fn outcome_maps_through() {
        let o = ReconcileOutcome {
            plan_text: "  ~ db start\n".into(),
            ran: vec![Ran {
                vm: "db".into(),
                kind: "start".into(),
                ok: false,
            }],
            errors: vec!["db-start: VMM did not come up".into()],
            succeeded: 1,
            failed: 0,
            unmanaged: vec!["old".into()],
            no_changes: false,
            ..ReconcileOutcome::default()
        };
        let r = PassResult::from_outcome(o);
        assert_eq!(
            r.actions,
            [ActionDone {
                vm: "db".into(),
                kind: "start".into(),
                ok: false
            }]
        );
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.unmanaged, ["old"]);
        assert_eq!(r.held_needing, None);
    }
}
