//! `vmctl __vmm`: the hidden entry point of one VMM process (started detached by
//! vmctl itself; never by a user).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The VM's directory inside the state directory.
    #[arg(long)]
    pub vm_dir: PathBuf,
}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("the VMM is not implemented yet"))
}
