//! `vmctl __vmm`: the hidden entry point of one VMM process (started detached by
//! vmctl itself; never by a user).
//!
//! The spawner always runs exactly `vmctl __vmm --vm-dir DIR`, and that
//! form takes a fast path ([`fast_path`]) before clap: building the whole
//! CLI's parser and an `EnvFilter` touched code all over the binary, which
//! the VMM then kept resident for its whole life (about 1 MiB of its RSS,
//! docs/benchmarks.md). Any other form goes through clap as before.

use std::ffi::OsString;
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
    Ok(vmm(&args.vm_dir))
}

fn vmm(vm_dir: &std::path::Path) -> ExitCode {
    match vmctl_runtime::run_vmm(vm_dir) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // stderr is vmm.log; the spawner shows its last lines.
            tracing::error!(error = %e, "VMM failed before the guest ran");
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The VM directory when `args` (program name first) are exactly
/// `__vmm --vm-dir DIR` or `__vmm --vm-dir=DIR`.
fn vm_dir_of(args: &[OsString]) -> Option<PathBuf> {
    match args {
        [_, cmd, flag, dir] if cmd == "__vmm" && flag == "--vm-dir" => Some(dir.into()),
        [_, cmd, flag] if cmd == "__vmm" => flag
            .to_str()?
            .strip_prefix("--vm-dir=")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        _ => None,
    }
}

/// Runs the VMM for the spawner's exact command line, with logging set up
/// from `VMCTL_LOG` (a plain level such as `info` without parsing filter
/// directives); `None` for anything else, which the CLI parses normally.
pub fn fast_path(args: &[OsString]) -> Option<ExitCode> {
    let vm_dir = vm_dir_of(args)?;
    let level = std::env::var("VMCTL_LOG").unwrap_or_default();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match level.parse::<tracing_subscriber::filter::LevelFilter>() {
        Ok(level) => {
            let _ = tracing_subscriber::fmt()
                .with_max_level(level)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .try_init();
        }
        Err(_) => {
            let filter = tracing_subscriber::EnvFilter::try_new(&level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .try_init();
        }
    }
    Some(vmm(&vm_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_the_spawners_exact_form_takes_the_fast_path() {
        assert_eq!(
            vm_dir_of(&args(&["vmctl", "__vmm", "--vm-dir", "s/vms/a"])),
            Some(PathBuf::from("s/vms/a"))
        );
        assert_eq!(
            vm_dir_of(&args(&["vmctl", "__vmm", "--vm-dir=s/vms/a"])),
            Some(PathBuf::from("s/vms/a"))
        );
        for other in [
            &["vmctl", "__vmm"][..],
            &["vmctl", "__vmm", "--vm-dir="],
            &["vmctl", "__vmm", "--help"],
            &["vmctl", "__vmm", "--vm-dir", "d", "-v"],
            &["vmctl", "-v", "__vmm", "--vm-dir", "d"],
            &["vmctl", "status", "--vm-dir", "d"],
        ] {
            assert_eq!(vm_dir_of(&args(other)), None, "{other:?}");
        }
    }
}
