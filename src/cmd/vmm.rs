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

pub fn run(_g: &Global, args: Args) -> miette::Result<ExitCode> {
    match vmctl_runtime::run_vmm(&args.vm_dir) {
        Ok(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        Err(e) => {
            // stderr is vmm.log; the spawner shows its last lines.
            tracing::error!(error = %e, "VMM failed before the guest ran");
            Err(miette::miette!("{e}"))
        }
    }
}
