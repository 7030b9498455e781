//! The clap definition of every vmctl command: the CLI contract of design.md.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vmctl",
    version,
    about = "Declarative VM provisioner with its own KVM VMM"
)]
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
    Validate(crate::cmd::validate::Args),
    /// Show what apply would change, and why.
    Plan(crate::cmd::plan::Args),
    /// Make the running VMs match the file.
    Apply(crate::cmd::apply::Args),
    /// Stop and remove VMs (all in the state directory, or the named ones).
    Destroy(crate::cmd::destroy::Args),
    /// Show what is really running.
    Status(crate::cmd::status::Args),
    /// Attach to a VM's serial console (detach with Ctrl-]).
    Console(crate::cmd::console::Args),
    /// Print a VM's console log.
    Logs(crate::cmd::logs::Args),
    /// Reconcile whenever the file changes.
    Watch(crate::cmd::watch::Args),
    /// Show which changes are live, which restart a VM, and why.
    Explain(crate::cmd::explain::Args),
    /// Build, list and remove the built-in OS images (debian-12, debian-12-minimal).
    Image(crate::cmd::image::Args),
    /// Write a VM as a bundle (KDL block, disks in a chosen format, manifest) without stopping it.
    Export(crate::cmd::export::Args),
    /// Back a VM's disks up (raw bundle) without stopping it.
    Backup(crate::cmd::export::BackupArgs),
    /// Verify a bundle and add its VM to the KDL file (the next apply creates it).
    Import(crate::cmd::import::Args),
    /// Put a backup's disk contents back into a VM (a replace of its disks).
    Restore(crate::cmd::restore::Args),
    /// Run one VMM (internal: started by vmctl itself).
    #[command(name = "__vmm", hide = true)]
    Vmm(crate::cmd::vmm::Args),
    /// Print KVM's supported CPUID as JSON lines (internal: test fixtures).
    #[command(name = "__kvm-cpuid", hide = true)]
    KvmCpuid,
}
