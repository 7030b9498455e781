//! `vmctl validate`: parse and validate a KDL file, print the resolved desired state.

use std::process::ExitCode;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the resolved desired state as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`vmctl validate` is not implemented yet"))
}
