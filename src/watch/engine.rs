//! The real [`Engine`]: `vmctl_spec::load_file` to validate, then
//! `crate::reconcile::reconcile` for one pass, which takes the state lock for
//! that pass only (so `status` and a manual `apply` work while watch idles).
//! [`PassResult::from_outcome`] is the one place that knows the shape of
//! `ReconcileOutcome`.

use std::path::PathBuf;
use std::time::Duration;

use super::session::{ActionDone, Engine, LoadReport, PassRequest, PassResult, Trigger};
use crate::cmd::Global;
use crate::reconcile::{self, ReconcileOptions, ReconcileOutcome};

/// How long a drift check waits for a lock someone else holds before it
/// skips (the next tick tries again). Change passes wait as long as it takes.
const DRIFT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ReconcileEngine<'g> {
    pub global: &'g Global,
    pub file: PathBuf,
    pub parallelism: usize,
}

impl Engine for ReconcileEngine<'_> {
    fn load(&mut self) -> Result<LoadReport, String> {
        if !self.file.exists() {
            return Err(format!(
                "  × {} does not exist (deleted, or not yet renamed into place)",
                self.file.display()
            ));
        }
        match vmctl_spec::load_file(&self.file) {
            Ok(loaded) => Ok(LoadReport {
                vms: loaded.state.vms.len(),
                warnings: loaded.warnings.iter().map(|w| format!("{w:?}")).collect(),
            }),
            Err(e) => Err(format!("{:?}", miette::Report::new(e))),
        }
    }

    fn pass(&mut self, req: &PassRequest) -> Result<PassResult, String> {
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
        };
        reconcile::reconcile(self.global, &opts)
            .map(PassResult::from_outcome)
            .map_err(|report| format!("{report:?}"))
    }

    fn can_hold(&self) -> bool {
        false
    }
}

impl PassResult {
    /// Watch's view of a reconcile outcome. Until the outcome lists its
    /// actions, they are read back from the plan text.
    pub fn from_outcome(o: ReconcileOutcome) -> Self {
        let actions = actions_from_plan_text(&o.plan_text, o.failed == 0);
        PassResult {
            plan_text: o.plan_text,
            succeeded: o.succeeded,
            failed: o.failed,
            unmanaged: o.unmanaged,
            no_changes: o.no_changes,
            actions,
            held_needing: None,
        }
    }
}

/// The symbols the planner puts in front of an action line.
const SYMBOLS: [&str; 7] = ["+", "=>", "-", "-/+", "~!", "~", "!"];

/// (vm, kind) pairs read back from the planner's text plan, whose action
/// lines are `  <symbol> <vm> <kind>[ (refused)][ from <source>]` (two spaces
/// in; detail lines are indented further). Refused actions did not run.
pub fn actions_from_plan_text(text: &str, ok: bool) -> Vec<ActionDone> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("  ") else {
            continue;
        };
        if rest.starts_with(' ') {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        let [symbol, vm, kind, ..] = words[..] else {
            continue;
        };
        if !SYMBOLS.contains(&symbol) || symbol == "!" {
            continue;
        }
        out.push(ActionDone {
            vm: vm.to_string(),
            kind: kind.to_string(),
            ok,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        actions_from_plan_text(text, true)
            .into_iter()
            .map(|a| (a.vm, a.kind))
            .collect()
    }

    #[test]
    fn reads_actions_back_from_plan_lines() {
        let text = "vmctl will perform the following actions:\n\n\
            \x20 ~ web start\n\
            \x20     # drift: VM crashed (its VMM is gone but it should run): start\n\
            \x20     state: crashed → running\n\n\
            \x20 ~! db restart\n\
            \x20     # cpus 2 → 1: vCPUs cannot be removed live: restart\n\n\
            \x20 + new create\n\
            \x20     os: diag\n\n\
            \x20 ! big restart (refused)\n\n\
            \x20 => web-2 copy from web\n\n\
            Plan: 1 to create, 0 to update live, 1 to restart, 0 to replace, 0 to destroy, 1 to start.\n";
        assert_eq!(
            pairs(text),
            [
                ("web".into(), "start".into()),
                ("db".into(), "restart".into()),
                ("new".into(), "create".into()),
                ("web-2".into(), "copy".into())
            ]
        );
    }

    fn engine(g: &Global, file: PathBuf) -> ReconcileEngine<'_> {
        ReconcileEngine {
            global: g,
            file,
            parallelism: 1,
        }
    }

    #[test]
    fn load_counts_vms_and_renders_problems_and_missing_files() {
        let g = Global {
            state_dir: None,
            verbose: 0,
        };
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
    fn an_empty_plan_has_no_actions() {
        assert!(pairs("").is_empty());
        assert!(pairs("No changes.\n").is_empty());
    }

    #[test]
    // The update keeps this test compiling when the outcome gains fields.
    #[allow(clippy::needless_update)]
    fn outcome_maps_through() {
        let o = ReconcileOutcome {
            plan_text: "  ~ db start\n".into(),
            succeeded: 1,
            failed: 0,
            unmanaged: vec!["old".into()],
            no_changes: false,
            ..ReconcileOutcome::default()
        };
        let r = PassResult::from_outcome(o);
        assert_eq!(r.actions.len(), 1);
        assert_eq!(r.unmanaged, ["old"]);
        assert_eq!(r.held_needing, None);
    }
}
