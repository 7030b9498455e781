//! `vmctl logs NAME [--follow]`: print a VM's serial console log
//! (`<state>/vms/<name>/console.log`, after `console.log.1` when the VMM has
//! rotated it), optionally following it as it grows.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
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
    #[arg(value_name = "NAME")]
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
    // The VMM rotates console.log to console.log.1 when it grows past its
    // cap: the older part comes first.
    let rotated = vm_dir.join("console.log.1");
    let mut out = std::io::stdout().lock();
    // The file being followed (by inode) and how much of it was printed.
    let mut current: Option<(u64, u64)> = None;
    if let Ok(bytes) = std::fs::read(&rotated) {
        out.write_all(&bytes).into_diagnostic()?;
    }
    loop {
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                let meta = f.metadata().into_diagnostic()?;
                let ino = meta.ino();
                let mut pos = match current {
                    Some((i, p)) if i == ino => p,
                    Some((old_ino, p)) => {
                        // Rotated since the last look: finish the old file
                        // (now console.log.1) before starting the new one.
                        finish_rotated(&rotated, old_ino, p, &mut out)?;
                        0
                    }
                    None => 0,
                };
                if meta.len() < pos {
                    pos = 0; // truncated or recreated (VM re-created)
                }
                f.seek(SeekFrom::Start(pos)).into_diagnostic()?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("reading {}", path.display()))?;
                pos += buf.len() as u64;
                current = Some((ino, pos));
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

/// Print what was appended to the file we were following (inode `ino`,
/// printed up to `pos`) before it was rotated to `rotated`.
fn finish_rotated(
    rotated: &std::path::Path,
    ino: u64,
    pos: u64,
    out: &mut impl Write,
) -> miette::Result<()> {
    let Ok(mut f) = std::fs::File::open(rotated) else {
        return Ok(());
    };
    let meta = f.metadata().into_diagnostic()?;
    if meta.ino() != ino || meta.len() < pos {
        return Ok(());
    }
    f.seek(SeekFrom::Start(pos)).into_diagnostic()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).into_diagnostic()?;
    out.write_all(&buf).into_diagnostic()
}
