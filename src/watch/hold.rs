//! Holding VMs back from one pass. A VM in its crash-loop backoff window, or
//! one watch has given up on, must not be started again by a drift check,
//! while every other VM is still healed. This takes the held VMs' actions out
//! of a plan — and, transitively, the actions that wait for them, so a VM
//! that `depends-on` a held one is not started without it — and says which
//! held VMs the plan wanted to act on (so watch knows they are down).

use std::collections::BTreeSet;

use vmctl_planner::Plan;

/// What [`hold_back`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldBack {
    /// Held VMs that had actions (sorted).
    pub held: Vec<String>,
    /// Other VMs whose actions waited for a held one (sorted).
    pub waiting: Vec<String>,
}

/// Remove from `plan` every action of a VM in `hold` and every action that
/// depends (directly or not) on a removed one.
pub fn hold_back(plan: &mut Plan, hold: &[String]) -> HeldBack {
    if hold.is_empty() {
        return HeldBack::default();
    }
    let mut removed: BTreeSet<String> = plan
        .actions
        .iter()
        .filter(|a| hold.contains(&a.vm))
        .map(|a| a.id.clone())
        .collect();
    // Dependents of removed actions, until nothing changes (the plan is a DAG,
    // so this ends after at most one round per action).
    loop {
        let more: Vec<String> = plan
            .actions
            .iter()
            .filter(|a| !removed.contains(&a.id))
            .filter(|a| a.depends_on.iter().any(|d| removed.contains(d)))
            .map(|a| a.id.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        removed.extend(more);
    }
    let mut out = HeldBack::default();
    let mut held = BTreeSet::new();
    let mut waiting = BTreeSet::new();
    for a in plan.actions.iter().filter(|a| removed.contains(&a.id)) {
        if hold.contains(&a.vm) {
            held.insert(a.vm.clone());
        } else {
            waiting.insert(a.vm.clone());
        }
    }
    plan.actions.retain(|a| !removed.contains(&a.id));
    out.held = held.into_iter().collect();
    out.waiting = waiting.into_iter().collect();
    out
}

#[cfg(test)]
mod tests {
    use vmctl_planner::plan::Action;
    use vmctl_planner::{ActionKind, Disruption};

    use super::*;

    fn action(vm: &str, kind: ActionKind, deps: &[&str]) -> Action {
        Action {
            id: format!("{vm}:{}", kind.label()),
            vm: vm.to_string(),
            kind,
            disruption: Disruption::None,
            reason: None,
            changes: Vec::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            new: None,
            old: None,
            source: None,
            resource: Default::default(),
            network: None,
            network_old: None,
            host: None,
        }
    }

    fn ids(p: &Plan) -> Vec<&str> {
        p.actions.iter().map(|a| a.id.as_str()).collect()
    }

    fn lab() -> Plan {
        Plan {
            actions: vec![
                action("db", ActionKind::Start, &[]),
                action("web", ActionKind::Start, &["db:start"]),
                action("probe", ActionKind::Start, &["web:start"]),
                action("other", ActionKind::Start, &[]),
            ],
        }
    }

    #[test]
    fn nothing_held_changes_nothing() {
        let mut p = lab();
        assert_eq!(hold_back(&mut p, &[]), HeldBack::default());
        assert_eq!(p.actions.len(), 4);
    }

    #[test]
    fn a_held_vm_and_everything_waiting_for_it_sit_this_pass_out() {
        let mut p = lab();
        let h = hold_back(&mut p, &["db".to_string()]);
        assert_eq!(h.held, ["db"]);
        assert_eq!(h.waiting, ["probe", "web"]);
        assert_eq!(ids(&p), ["other:start"]);
    }

    #[test]
    fn a_held_vm_without_actions_is_not_reported() {
        let mut p = lab();
        let h = hold_back(&mut p, &["idle".to_string(), "other".to_string()]);
        assert_eq!(h.held, ["other"]);
        assert!(h.waiting.is_empty());
        assert_eq!(ids(&p), ["db:start", "web:start", "probe:start"]);
    }
}
