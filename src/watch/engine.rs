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

/// The plan kinds of design.md, longest first so `hot-add-cpu` is not read
/// as something shorter.
const KINDS: [&str; 10] = [
    "hot-add-memory",
    "hot-add-cpu",
    "resize-disk",
    "replace",
    "restart",
    "destroy",
    "create",
    "start",
    "stop",
    "copy",
];

/// Best-effort (vm, kind) pairs from a rendered plan: a line names a kind as
/// a word and the VM as the first quoted word, else the word after the kind.
pub fn actions_from_plan_text(text: &str, ok: bool) -> Vec<ActionDone> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
            .filter(|w| !w.is_empty())
            .collect();
        let Some((i, kind)) = words
            .iter()
            .enumerate()
            .find_map(|(i, w)| KINDS.iter().find(|k| **k == *w).map(|k| (i, *k)))
        else {
            continue;
        };
        let quoted = line.split('"').nth(1).filter(|q| !q.is_empty());
        let vm = quoted.or_else(|| {
            words
                .get(i + 1)
                .copied()
                .filter(|w| *w != "vm")
                .or_else(|| words.get(i + 2).copied())
        });
        if let Some(vm) = vm {
            out.push(ActionDone {
                vm: vm.trim_matches(|c| c == '\'' || c == '`').to_string(),
                kind: kind.to_string(),
                ok,
            });
        }
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
        let p = pairs(
            "  + create \"db\"\n  start web: crashed (VMM gone)\n  ~ hot-add-cpu vm db 2 → 4\n\nPlan: 3 to change\n",
        );
        assert_eq!(
            p,
            [
                ("db".into(), "create".into()),
                ("web".into(), "start".into()),
                ("db".into(), "hot-add-cpu".into())
            ]
        );
    }

    #[test]
    fn an_empty_plan_has_no_actions() {
        assert!(pairs("").is_empty());
        assert!(pairs("No changes.\n").is_empty());
    }

    #[test]
    fn outcome_maps_through() {
        let o = ReconcileOutcome {
            plan_text: "start \"db\"\n".into(),
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
