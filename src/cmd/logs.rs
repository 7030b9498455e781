//! `vmctl logs`: print a VM's console log.

use std::process::ExitCode;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    pub name: String,
    /// Keep printing as the log grows.
    #[arg(long)]
    pub follow: bool,
}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`vmctl logs` is not implemented yet"))
}
