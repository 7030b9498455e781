//! `vmctl apply`: make the running VMs match the file.

use std::process::ExitCode;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
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

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`vmctl apply` is not implemented yet"))
}
