//! `vmctl logs NAME [--follow]`: print a VM's serial console log
//! (`<state>/vms/<name>/console.log`), optionally following it as it grows.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use miette::{IntoDiagnostic, WrapErr};

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// The VM whose console log to print.
    pub name: String,
    /// Keep printing as the log grows (Ctrl-C to stop).
    #[arg(long)]
    pub follow: bool,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let vm_dir = g
        .state_dir_for(&args.file.file)
        .join("vms")
        .join(&args.name);
    if !vm_dir.is_dir() {
        return Err(miette::miette!(
            help = "`vmctl status` lists the VMs in this state directory",
            "no VM named {:?} in {}",
            args.name,
            vm_dir
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    let path = vm_dir.join("console.log");
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    loop {
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                let len = f.metadata().into_diagnostic()?.len();
                if len < pos {
                    pos = 0; // truncated or recreated (VM re-created)
                }
                f.seek(SeekFrom::Start(pos)).into_diagnostic()?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("reading {}", path.display()))?;
                pos += buf.len() as u64;
                out.write_all(&buf).into_diagnostic()?;
                out.flush().into_diagnostic()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.follow => {}
            Err(e) => {
                return Err(e)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("reading {}", path.display()));
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
