//! `vmctl destroy`: stop and remove VMs.

use std::process::ExitCode;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// VMs to destroy (default: every VM in the state directory).
    pub names: Vec<String>,
    #[arg(long)]
    pub auto_approve: bool,
    /// Also delete disks placed outside the state directory with `path=`.
    #[arg(long)]
    pub delete_external_disks: bool,
    /// Give up waiting for the state lock after this many seconds.
    #[arg(long)]
    pub lock_timeout: Option<u64>,
}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`vmctl destroy` is not implemented yet"))
}
