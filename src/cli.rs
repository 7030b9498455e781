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

/// How `plan` and `show` print a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Terraform-style text.
    Text,
    /// The `plan --json` document (`show --json`: the whole saved plan).
    Json,
    /// A compact summary for a pull-request comment.
    Markdown,
}

impl OutputFormat {
    /// `--format`, with `--json` as the older spelling of `--format json`.
    pub fn pick(format: Option<OutputFormat>, json: bool) -> OutputFormat {
        match (format, json) {
            (Some(f), _) => f,
            (None, true) => OutputFormat::Json,
            (None, false) => OutputFormat::Text,
        }
    }
}

/// Terraform spells it `plan -out FILE`; clap's long options take two
/// dashes. `-out`/`-out=FILE` are rewritten to `--out` before parsing.
pub fn normalise_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|a| match a.to_str() {
            Some("-out") => "--out".into(),
            Some(s) if s.starts_with("-out=") => format!("-{s}").into(),
            _ => a,
        })
        .collect()
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate a KDL file; print the resolved desired state.
    Validate(crate::cmd::validate::Args),
    /// Show what apply would change, and why.
    Plan(crate::cmd::plan::Args),
    /// Make the running VMs match the file, or apply a saved plan exactly.
    Apply(crate::cmd::apply::Args),
    /// Render a saved plan (`vmctl plan --out FILE`).
    Show(crate::cmd::show::Args),
    /// Stop and remove VMs (all in the state directory, or the named ones).
    Destroy(crate::cmd::destroy::Args),
    /// Show what is really running.
    Status(crate::cmd::status::Args),
    /// Attach to a VM's serial console (detach with Ctrl-]).
    Console(crate::cmd::console::Args),
    /// Print a VM's console log.
    Logs(crate::cmd::logs::Args),
    /// ssh to a VM's first NIC as its declared user, its host key checked against the one its guest reported.
    Ssh(crate::cmd::ssh::Args),
    /// Reconcile whenever the file changes.
    Watch(crate::cmd::watch::Args),
    /// Show which changes are live, which restart a VM, and why.
    Explain(crate::cmd::explain::Args),
    /// Build, list and remove the built-in OS images (debian-12, debian-12-minimal).
    Image(crate::cmd::image::Args),
    /// Rewrite KDL files in the canonical layout (`--check`: only list them).
    Fmt(crate::cmd::fmt::Args),
    /// Print a shell completion script (bash, zsh or fish).
    Completions(crate::cmd::completions::Args),
    /// Print the man page (or write one per command with --out-dir).
    Man(crate::cmd::completions::ManArgs),
    /// Print the VM names a file declares (internal: shell completion).
    #[command(name = "__complete-vms", hide = true)]
    CompleteVms(crate::cmd::completions::VmsArgs),
    /// Write a VM as a bundle (KDL block, disks in a chosen format, manifest) without stopping it.
    Export(crate::cmd::export::Args),
    /// Back a VM's disks up (raw bundle) without stopping it.
    Backup(crate::cmd::export::BackupArgs),
    /// Verify a bundle and add its VM to the KDL file (the next apply creates it).
    Import(crate::cmd::import::Args),
    /// Put a backup's disk contents back into a VM (a replace of its disks).
    Restore(crate::cmd::restore::Args),
    /// Show or break the shared cluster lock on etcd.
    Lock(crate::cmd::lock::Args),
    /// Serve this host's state directory to a coordinator over stdin/stdout (`ssh HOST vmctl host-rpc --state-dir DIR`).
    HostRpc(crate::cmd::host_rpc::Args),
    /// Move a VM of a lab over hosts to another host (stop, copy its disks, commit, start there, remove the old copy).
    Move(crate::cmd::move_vm::Args),
    /// Write a stopped VM's record and disks to stdout (internal: `vmctl move`, on the old host).
    #[command(name = "__send-vm", hide = true)]
    SendVm(crate::cmd::move_vm::SendArgs),
    /// Read a VM from stdin into this host (internal: `vmctl move`, on the new host).
    #[command(name = "__receive-vm", hide = true)]
    ReceiveVm(crate::cmd::move_vm::ReceiveArgs),
    /// Run one VMM (internal: started by vmctl itself).
    #[command(name = "__vmm", hide = true)]
    Vmm(crate::cmd::vmm::Args),
    /// Print KVM's supported CPUID as JSON lines (internal: test fixtures).
    #[command(name = "__kvm-cpuid", hide = true)]
    KvmCpuid,
}
