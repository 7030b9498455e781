//! `cargo xtask`: developer tasks that are not part of the vmctl binary.
//!
//! `cargo xtask nested-lab [--lab FILE] [--keep] [--timeout SECS]`: boot real
//! Debian guests under vmctl's own VMM on a real KVM one level down (see
//! docs/nested-lab.md).

mod nested;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str =
    "usage: cargo xtask nested-lab [--lab FILE] [--timeout SECS] [--debug] [--verbose] [--vmm-only]

  --lab FILE      lab of debian-12 VMs to run (default: xtask/labs/two-debian.kdl)
  --timeout SECS  give up on L1 after this long (default 540)
  --debug         put a debug build of vmctl into L1 (default: release)
  --verbose       echo L1's whole serial console, not just the markers
  --vmm-only      smoke run: start each VM with `vmctl __vmm` directly (no apply/status)";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(task) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match task.as_str() {
        "nested-lab" => {
            let mut opts = nested::Options::default();
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--lab" => match args.next() {
                        Some(f) => opts.lab = Some(PathBuf::from(f)),
                        None => return usage_error("--lab needs a file"),
                    },
                    "--timeout" => match args.next().and_then(|s| s.parse().ok()) {
                        Some(t) => opts.timeout_secs = t,
                        None => return usage_error("--timeout needs a number of seconds"),
                    },
                    "--debug" => opts.release = false,
                    "--vmm-only" => opts.vmm_only = true,
                    "--verbose" | "-v" => opts.verbose = true,
                    "-h" | "--help" => {
                        println!("{USAGE}");
                        return ExitCode::SUCCESS;
                    }
                    other => return usage_error(&format!("unknown argument {other:?}")),
                }
            }
            match nested::run(&opts) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("nested-lab: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "-h" | "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => usage_error(&format!("unknown task {other:?}")),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("{msg}\n{USAGE}");
    ExitCode::from(2)
}
