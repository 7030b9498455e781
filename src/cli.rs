//! The clap definition of every vmctl command: the CLI contract of design.md.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "vmctl", version, about = "Declarative VM provisioner with its own KVM VMM")]
pub struct Cli {
    /// State directory (default: .vmctl/ beside the KDL file).
    #[arg(long, global = true, env = "VMCTL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The KDL file to read.
#[derive(Debug, Clone, Args)]
pub struct FileArg {
    /// KDL file describing the desired VMs.
    #[arg(short = 'f', long = "file", default_value = "vmctl.kdl")]
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate a KDL file; print the resolved desired state.
    Validate {
        #[command(flatten)]
        file: FileArg,
        /// Print the resolved desired state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what apply would change, and why.
    Plan {
        #[command(flatten)]
        file: FileArg,
        #[arg(long)]
        json: bool,
        /// Exit 0 when there are no changes, 2 when there are, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Make the running VMs match the file.
    Apply {
        #[command(flatten)]
        file: FileArg,
        /// Do not ask for confirmation.
        #[arg(long)]
        auto_approve: bool,
        /// How many actions may run at once.
        #[arg(long, default_value_t = 4)]
        parallelism: usize,
        /// One JSON event per action.
        #[arg(long)]
        json: bool,
        /// Give up waiting for the state lock after this many seconds.
        #[arg(long)]
        lock_timeout: Option<u64>,
    },
    /// Stop and remove VMs (all in the file, or the named ones).
    Destroy {
        #[command(flatten)]
        file: FileArg,
        /// VMs to destroy (default: every VM in the state directory).
        names: Vec<String>,
        #[arg(long)]
        auto_approve: bool,
        /// Also delete disks placed outside the state directory with `path=`.
        #[arg(long)]
        delete_external_disks: bool,
        #[arg(long)]
        lock_timeout: Option<u64>,
    },
    /// Show what is really running.
    Status {
        #[command(flatten)]
        file: FileArg,
        #[arg(long)]
        json: bool,
    },
    /// Attach to a VM's serial console (detach with Ctrl-]).
    Console {
        #[command(flatten)]
        file: FileArg,
        name: String,
    },
    /// Print a VM's console log.
    Logs {
        #[command(flatten)]
        file: FileArg,
        name: String,
        /// Keep printing as the log grows.
        #[arg(long)]
        follow: bool,
    },
    /// Reconcile whenever the file changes.
    Watch {
        #[command(flatten)]
        file: FileArg,
        /// Destroy VMs removed from the file.
        #[arg(long)]
        prune: bool,
        /// Allow a file with no VMs to destroy everything (with --prune).
        #[arg(long)]
        allow_empty: bool,
        /// Seconds between drift checks.
        #[arg(long, default_value_t = 5)]
        drift_interval: u64,
    },
    /// Run one VMM (internal: started by vmctl itself).
    #[command(name = "__vmm", hide = true)]
    Vmm {
        /// The VM's directory inside the state directory.
        #[arg(long)]
        vm_dir: PathBuf,
    },
}
