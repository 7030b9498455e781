//! `vmctl console`: attach to a VM's serial console (detach with Ctrl-]).

use std::process::ExitCode;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    pub name: String,
}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`vmctl console` is not implemented yet"))
}
