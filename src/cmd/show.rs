//! `vmctl show PLANFILE`: render a saved plan (`vmctl plan --out FILE`) for
//! a reviewer or a CI comment, without touching any VM or the state
//! directory. Text and markdown are the plan's renderings; `--json` prints
//! the saved plan document itself, so its output is a valid plan file again.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::OutputFormat;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The saved plan.
    #[arg(value_name = "PLANFILE")]
    pub plan_file: PathBuf,
    /// Print the saved plan document (the same as `--format json`).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// How to print it.
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
}

pub fn run(_g: &Global, args: Args) -> miette::Result<ExitCode> {
    let (saved, plan) = crate::saved_plan::read(&args.plan_file)?;
    let text = match OutputFormat::pick(args.format, args.json) {
        OutputFormat::Json => {
            let mut t = serde_json::to_string_pretty(&saved)
                .map_err(|e| miette::miette!("cannot render the saved plan as JSON: {e}"))?;
            t.push('\n');
            t
        }
        OutputFormat::Markdown => crate::cmd::plan::render_as(&plan, OutputFormat::Markdown)?,
        OutputFormat::Text => {
            let lock = match &saved.basis.lock.sha256 {
                Some(d) => format!("{} sha256 {}", saved.basis.lock.path.display(), d),
                None => format!("{} absent", saved.basis.lock.path.display()),
            };
            format!(
                "Saved plan {} (vmctl {}, made {})\n  file:      {}\n  state dir: {}\n  basis:     {} VM(s) declared, {} VM(s) observed, {}\n\n{}",
                args.plan_file.display(),
                saved.vmctl_version,
                crate::watch::clock::format_utc(saved.created_unix),
                saved.file.display(),
                saved.state_dir.display(),
                saved.basis.desired.vms.len(),
                saved.basis.vms.len(),
                lock,
                crate::cmd::plan::render_as(&plan, OutputFormat::Text)?
            )
        }
    };
    crate::cmd::print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
