//! `vmctl apply`: make the running VMs match the file.
//!
//! Takes the state lock, observes, plans and shows the plan, asks on a TTY
//! (refuses without one unless `--auto-approve`), then walks the action graph
//! with up to `--parallelism` actions at once. VMs the file no longer declares
//! are destroyed (Terraform's semantics), except that a file with no VMs at
//! all never destroys everything.
//!
//! `vmctl apply PLANFILE` applies a saved plan (`plan --out`) exactly and
//! without asking: under the lock it observes again and refuses, naming
//! each change and running nothing, unless everything the plan was computed
//! from is as it was.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use vmctl_planner::render;

use crate::cli::FileArg;
use crate::cmd::Global;
use crate::reconcile::{self, Prepared, ReconcileOptions};
use crate::report::{Mode, Reporter};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A saved plan (`vmctl plan --out FILE`): apply exactly it, without
    /// asking; refused (exit 1, nothing run) if anything changed since.
    #[arg(value_name = "PLANFILE", conflicts_with = "file")]
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub file: FileArg,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// How many actions may run at once.
    #[arg(long, default_value_t = 4)]
    pub parallelism: usize,
    /// One JSON event per action.
    #[arg(long)]
    pub json: bool,
    /// Give up waiting for the state lock after this many seconds.
    #[arg(long)]
    pub lock_timeout: Option<u64>,
}

/// Ask "yes" on the terminal; anything else is no.
pub fn confirm(question: &str) -> miette::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(miette::miette!(
            help = "pass --auto-approve to apply without asking",
            "refusing to {question} without confirmation: stdin is not a terminal"
        ));
    }
    print!("\nDo you want to {question}? Only 'yes' will be accepted: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| miette::miette!("cannot read the answer: {e}"))?;
    Ok(answer.trim() == "yes")
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    if let Some(plan_file) = &args.plan_file {
        return run_saved(g, &args, plan_file);
    }
    let opts = options(&args, args.file.file.clone(), None);
    let prepared = reconcile::prepare(g, &opts)?;
    carry_out(&prepared, &args, !args.auto_approve)
}

fn options(
    args: &Args,
    file: PathBuf,
    desired: Option<vmctl_spec::DesiredState>,
) -> ReconcileOptions {
    ReconcileOptions {
        file,
        parallelism: args.parallelism,
        prune: true,
        allow_empty: false,
        lock_timeout: args.lock_timeout.map(Duration::from_secs),
        print: !args.json,
        desired,
    }
}

/// `apply PLANFILE`: check the saved plan's basis against what is there now
/// (under the lock), then carry out exactly the saved plan.
fn run_saved(g: &Global, args: &Args, plan_file: &std::path::Path) -> miette::Result<ExitCode> {
    let (saved, plan) = crate::saved_plan::read(plan_file)?;
    if let Some(dir) = &g.state_dir {
        let dir = std::path::absolute(dir).unwrap_or(dir.clone());
        if dir != saved.state_dir {
            return Err(miette::miette!(
                "the saved plan {} was computed against the state directory {}, not {}; nothing was applied",
                plan_file.display(),
                saved.state_dir.display(),
                dir.display()
            ));
        }
    }
    let g = Global {
        state_dir: Some(saved.state_dir.clone()),
    };
    let desired = crate::cmd::load(&g, &saved.file).map_err(|e| {
        e.wrap_err(format!(
            "the saved plan's file {} no longer loads; nothing was applied",
            saved.file.display()
        ))
    })?;
    let opts = options(args, saved.file.clone(), Some(desired.state));
    let mut prepared = reconcile::prepare(&g, &opts)?;
    let now = crate::saved_plan::basis(
        &prepared.desired,
        &saved.file,
        prepared.target.backend().capabilities(),
        &prepared.observed,
    );
    let changes = saved.staleness(crate::saved_plan::VMCTL_VERSION, &now);
    if !changes.is_empty() {
        return Err(crate::saved_plan::Stale {
            path: plan_file.to_path_buf(),
            changes: changes.iter().map(ToString::to_string).collect(),
        }
        .into());
    }
    // The basis is what it was, so this is the plan the reviewer saw.
    prepared.plan = plan;
    carry_out(&prepared, args, false)
}

/// Show the plan, ask when `ask`, apply, report.
fn carry_out(prepared: &Prepared, args: &Args, ask: bool) -> miette::Result<ExitCode> {
    let reporter = Reporter::new(Mode::detect(args.json));
    let summary = prepared.plan.summary();
    // Refused changes (a disk shrink, a copy the runtime cannot make) are
    // errors: reported by name, and apply exits 1 once the rest is applied.
    let refused: Vec<String> = prepared
        .plan
        .actions
        .iter()
        .filter(|a| a.is_refused())
        .map(|a| format!("{}: {}", a.vm, a.reason.as_deref().unwrap_or("refused")))
        .collect();

    if args.json {
        reporter.json_line(json!({"event": "plan", "plan": render::json(&prepared.plan)}));
    } else {
        print!("{}", render::text(&prepared.plan));
    }
    if !summary.has_actions() {
        reconcile::settle(prepared, &reporter)?;
        if args.json {
            reporter.json_line(json!({"event": "summary", "no_changes": refused.is_empty(),
                "succeeded": 0, "failed": 0, "refused": refused.len()}));
        }
        return Ok(refused_exit(&refused, args.json));
    }
    if ask && !confirm("perform these actions")? {
        println!("Apply cancelled.");
        return Ok(ExitCode::from(1));
    }
    let out = reconcile::execute(prepared, args.parallelism, &reporter)?;
    if args.json {
        reporter.json_line(json!({
            "event": "summary",
            "no_changes": false,
            "succeeded": out.succeeded,
            "failed": out.failed,
            "errors": out.errors,
            "refused": refused.len(),
            "duration_ms": out.apply_time.as_millis() as u64,
        }));
    } else if out.failed == 0 {
        println!(
            "\nApply complete: {} action(s) in {:.1}s.",
            out.succeeded,
            out.apply_time.as_secs_f64()
        );
    } else {
        println!(
            "\nApply failed: {} action(s) done, {} failed in {:.1}s:",
            out.succeeded,
            out.failed,
            out.apply_time.as_secs_f64()
        );
        for e in &out.errors {
            println!("  {e}");
        }
    }
    let code = refused_exit(&refused, args.json);
    Ok(if out.failed == 0 {
        code
    } else {
        ExitCode::from(1)
    })
}

/// Name every refused change; exit 1 if there is any.
fn refused_exit(refused: &[String], json: bool) -> ExitCode {
    if refused.is_empty() {
        return ExitCode::SUCCESS;
    }
    if !json {
        eprintln!(
            "\nError: {} change(s) refused (everything else was applied):",
            refused.len()
        );
        for r in refused {
            eprintln!("  {r}");
        }
    }
    ExitCode::from(1)
}
