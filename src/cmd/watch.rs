//! `vmctl watch`: reconcile whenever the file changes.

use std::process::ExitCode;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// Destroy VMs removed from the file.
    #[arg(long)]
    pub prune: bool,
    /// Let a file with no VMs destroy everything (with --prune).
    #[arg(long)]
    pub allow_empty: bool,
    /// Seconds between drift checks.
    #[arg(long, default_value_t = 5)]
    pub drift_interval: u64,
}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`vmctl watch` is not implemented yet"))
}
