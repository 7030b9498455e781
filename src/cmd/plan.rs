//! `vmctl plan`: show what apply would change, and why.
//!
//! Loads the file, observes through the backend (reading only: with no state
//! directory yet everything is created and nothing is written), plans with
//! `vmctl-planner` and prints the text or JSON plan. Exit codes follow the
//! contract: 0 ok, 1 error; with `--detailed-exitcode` 0 no changes, 2 changes.

use std::process::ExitCode;

use vmctl_planner::{Backend, Capabilities, ObservedState, Plan, render};
use vmctl_spec::DesiredState;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let loaded = crate::cmd::load(g, &args.file.file)?;
    let state_dir = g.state_dir_for(&args.file.file);
    let backend = crate::backend::open(&state_dir)
        .map_err(|e| miette::miette!("cannot open {}: {e}", state_dir.display()))?;
    let observed = backend
        .observe()
        .map_err(|e| miette::miette!("cannot observe the VMs in {}: {e}", state_dir.display()))?;
    let (text, changes) =
        render_plan(&loaded.state, &observed, &backend.capabilities(), args.json)?;

    crate::cmd::print_stdout(&text)?;
    Ok(exit_code(changes, args.detailed_exitcode))
}

/// Plan and render; also says whether anything differs.
pub fn plan_of(
    desired: &DesiredState,
    observed: &ObservedState,
    caps: &Capabilities,
) -> miette::Result<Plan> {
    vmctl_planner::plan(desired, observed, caps).map_err(|e| miette::miette!("{e}"))
}

fn render_plan(
    desired: &DesiredState,
    observed: &ObservedState,
    caps: &Capabilities,
    json: bool,
) -> miette::Result<(String, bool)> {
    let plan = plan_of(desired, observed, caps)?;
    let changes = plan.summary().has_changes();
    let text = if json {
        let mut t = serde_json::to_string_pretty(&render::json(&plan))
            .map_err(|e| miette::miette!("cannot render the plan as JSON: {e}"))?;
        t.push('\n');
        t
    } else {
        render::text(&plan)
    };
    Ok((text, changes))
}

fn exit_code(changes: bool, detailed: bool) -> ExitCode {
    if detailed && changes {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmctl_planner::{Desired, Live, ObservedVm, Record, RunState};
    use vmctl_spec::VmSpec;

    fn vm(name: &str) -> VmSpec {
        VmSpec::diag(name)
    }

    fn desired(vms: Vec<VmSpec>) -> DesiredState {
        DesiredState {
            format_version: "1".into(),
            vms,
            images: vec![],
            networks: vec![],
        }
    }

    #[test]
    fn fresh_state_creates_everything() {
        let d = desired(vec![vm("a"), vm("b")]);
        let (text, changes) =
            render_plan(&d, &ObservedState::new(), &Capabilities::none(), false).unwrap();
        assert!(changes);
        assert!(text.contains("+ a create"), "{text}");
        assert!(
            text.ends_with(
                "Plan: 2 to create, 0 to update live, 0 to restart, 0 to replace, 0 to destroy.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn converged_state_has_no_changes() {
        let d = desired(vec![vm("a")]);
        let mut o = ObservedState::new();
        o.insert(ObservedVm {
            record: Record::new(vm("a"), Desired::Running),
            live: Live {
                state: RunState::Running,
                ..Live::stopped()
            },
        });
        let (text, changes) = render_plan(&d, &o, &Capabilities::none(), false).unwrap();
        assert!(!changes);
        assert_eq!(
            text,
            "No changes. Infrastructure matches the configuration.\n"
        );
        let (json, _) = render_plan(&d, &o, &Capabilities::none(), true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["format_version"], "1");
        assert_eq!(v["actions"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(true, true), ExitCode::from(2));
        assert_eq!(exit_code(false, true), ExitCode::SUCCESS);
        assert_eq!(exit_code(true, false), ExitCode::SUCCESS);
    }
}
