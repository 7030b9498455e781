//! The `vmctl` command line: parses arguments, wires the crates together and
//! turns their typed errors into miette reports.

mod backend;
mod builtin_os;
mod bundle;
mod cli;
mod cluster;
mod cmd;
mod gitignore_hint;
mod lock;
mod reconcile;
mod report;
mod saved_plan;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A VMM process skips clap (src/cmd/vmm.rs says why).
    if let Some(code) = cmd::vmm::fast_path(&args) {
        return code;
    }
    let cli = cli::Cli::parse_from(cli::normalise_args(args));
    cmd::init_tracing(&cli);
    match cmd::run(cli) {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(1)
        }
    }
}
