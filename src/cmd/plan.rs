//! `vmctl plan`: show what apply would change, and why.
//!
//! Loads the file, observes through the backend (reading only: with no state
//! directory yet everything is created and nothing is written), plans with
//! `vmctl-planner` and prints the text, JSON or markdown plan. With `--out
//! FILE` it also saves the plan with its basis (`vmctl apply FILE` applies
//! exactly it, or refuses when anything changed; docs/workflows.md). Exit
//! codes follow the contract: 0 ok, 1 error; with `--detailed-exitcode` 0
//! no changes, 2 changes.

use std::path::PathBuf;
use std::process::ExitCode;

use vmctl_planner::saved::SavedPlan;
use vmctl_planner::{Backend, Capabilities, ObservedState, Plan, render};
use vmctl_spec::DesiredState;

use crate::cli::{FileArg, OutputFormat};
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the plan as JSON (the same as `--format json`).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// How to print the plan.
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Also save the plan to this file, for `vmctl apply FILE` (`-out FILE` works too).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let file = &args.file.file;
    let loaded = crate::cmd::load(g, file)?;
    if !loaded.state.hosts.is_empty() {
        return run_on_hosts(&loaded.state, &args);
    }
    let state_dir = g.state_dir_for(file);
    let backend = crate::backend::open(&state_dir)
        .map_err(|e| miette::miette!("cannot open {}: {e}", state_dir.display()))?;
    let observed = backend
        .observe()
        .map_err(|e| miette::miette!("cannot observe the VMs in {}: {e}", state_dir.display()))?;
    let caps = backend.capabilities();
    let plan = match &args.out {
        None => plan_of(&loaded.state, &observed, &caps)?,
        Some(out) => {
            let basis = crate::saved_plan::basis(&loaded.state, file, caps, &observed);
            let created = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or(p.to_path_buf());
            let (saved, plan) = SavedPlan::new(
                crate::saved_plan::VMCTL_VERSION,
                created,
                abs(file),
                abs(&state_dir),
                basis,
            )
            .map_err(|e| miette::miette!("{e}"))?;
            crate::saved_plan::write(out, &saved)?;
            plan
        }
    };
    let format = OutputFormat::pick(args.format, args.json);
    crate::cmd::print_stdout(&render_as(&plan, format)?)?;
    if let Some(out) = &args.out {
        // stderr: stdout stays the plan alone (a markdown or JSON artifact).
        eprintln!(
            "Saved the plan to {0}. `vmctl apply {0}` applies exactly this plan, \
             and refuses if anything it was computed from has changed.",
            out.display()
        );
    }
    Ok(exit_code(
        plan.summary().has_changes(),
        args.detailed_exitcode,
    ))
}

/// A plan in one of the output formats.
/// `plan` of a lab over hosts: every host observed over SSH (read-only),
/// the VMs placed, one plan whose actions carry their host. It takes no
/// lock and writes nothing.
fn run_on_hosts(desired: &DesiredState, args: &Args) -> miette::Result<ExitCode> {
    if args.out.is_some() {
        return Err(miette::miette!(
            help = "plan and apply it in one step: `vmctl apply` shows the plan and asks",
            "saved plans (--out) of a lab over hosts are not supported yet"
        ));
    }
    let sv = crate::cluster::session::survey_read_only(desired)?;
    if let Some(note) = &sv.note {
        eprintln!("warning: {note}");
    }
    for why in sv.backend.unreachable().values() {
        eprintln!("warning: {why} (its VMs' actions will fail)");
    }
    for line in crate::cluster::session::assumed_lines(&sv.assumed) {
        eprintln!("warning: {line}");
    }
    let plan = vmctl_planner::plan_on_hosts(
        desired,
        &sv.observed,
        &sv.backend.capabilities(),
        &sv.placement,
    )
    .map_err(|e| miette::miette!("{e}"))?;
    let format = OutputFormat::pick(args.format, args.json);
    crate::cmd::print_stdout(&render_as(&plan, format)?)?;
    Ok(exit_code(
        plan.summary().has_changes(),
        args.detailed_exitcode,
    ))
}

pub fn render_as(plan: &Plan, format: OutputFormat) -> miette::Result<String> {
    Ok(match format {
        OutputFormat::Text => render::text(plan),
        OutputFormat::Markdown => vmctl_planner::markdown::markdown(plan),
        OutputFormat::Json => {
            let mut t = serde_json::to_string_pretty(&render::json(plan))
                .map_err(|e| miette::miette!("cannot render the plan as JSON: {e}"))?;
            t.push('\n');
            t
        }
    })
}

/// Plan and render; also says whether anything differs.
pub fn plan_of(
    desired: &DesiredState,
    observed: &ObservedState,
    caps: &Capabilities,
) -> miette::Result<Plan> {
    vmctl_planner::plan(desired, observed, caps).map_err(|e| miette::miette!("{e}"))
}

#[cfg(test)]
fn render_plan(
    desired: &DesiredState,
    observed: &ObservedState,
    caps: &Capabilities,
    json: bool,
) -> miette::Result<(String, bool)> {
    let plan = plan_of(desired, observed, caps)?;
    let format = OutputFormat::pick(None, json);
    Ok((render_as(&plan, format)?, plan.summary().has_changes()))
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
            cluster: None,
            hosts: Vec::new(),
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
