//! `vmctl watch`: reconcile whenever the file changes (see src/watch/ and
//! docs/watch.md).

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::FileArg;
use crate::cmd::Global;
use crate::watch::backoff::BackoffPolicy;
use crate::watch::guard::Safety;
use crate::watch::session::Config;
use crate::watch::{self, WatchOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// Destroy VMs removed from the file.
    #[arg(long)]
    pub prune: bool,
    /// Let a file with no VMs destroy everything (with --prune).
    #[arg(long)]
    pub allow_empty: bool,
    /// Seconds between drift checks (0: no drift checks).
    #[arg(long, default_value_t = 5)]
    pub drift_interval: u64,
    /// Quiet time after the last file event before a change is applied.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Restarts of a crashing VM before watch gives up on it (until the file changes).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=30))]
    pub max_restarts: u32,
    /// How many actions may run at once.
    #[arg(long, default_value_t = 4)]
    pub parallelism: usize,
    /// Print `timing ...` lines (CLOCK_MONOTONIC ns) for latency measurements.
    #[arg(long)]
    pub print_timings: bool,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let file = args.file.file;
    let config = Config {
        file_label: file.display().to_string(),
        safety: Safety {
            prune: args.prune,
            allow_empty: args.allow_empty,
        },
        drift_interval: (args.drift_interval > 0).then(|| Duration::from_secs(args.drift_interval)),
        backoff: BackoffPolicy {
            max_tries: args.max_restarts,
            ..BackoffPolicy::default()
        },
        print_timings: args.print_timings,
    };
    watch::run(
        g,
        WatchOptions {
            file,
            parallelism: args.parallelism,
            debounce: Duration::from_millis(args.debounce_ms),
            config,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
