//! `vmctl status`: show what is really running.

use std::process::ExitCode;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    #[arg(long)]
    pub json: bool,
}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`vmctl status` is not implemented yet"))
}
