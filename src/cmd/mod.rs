//! One module per subcommand; `run` dispatches. Each module owns its clap
//! `Args` struct and a `run(&Global, Args) -> miette::Result<ExitCode>`.

pub mod apply;
pub mod completions;
pub mod console;
pub mod destroy;
pub mod explain;
pub mod export;
pub mod fmt;
pub mod host_rpc;
pub mod image;
pub mod import;
pub mod kvm_cpuid;
pub mod lock;
pub mod logs;
pub mod move_vm;
pub mod plan;
pub mod restore;
pub mod show;
pub mod ssh;
pub mod status;
pub mod validate;
pub mod vmm;
pub mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::Result;

use crate::cli::{Cli, Command};

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub state_dir: Option<PathBuf>,
}

impl Global {
    /// The state directory: `--state-dir`/`VMCTL_STATE_DIR`, else `.vmctl/`
    /// beside the KDL file.
    pub fn state_dir_for(&self, kdl_file: &Path) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let parent = kdl_file.parent().filter(|p| !p.as_os_str().is_empty());
        parent.unwrap_or_else(|| Path::new(".")).join(".vmctl")
    }
}

/// Load and validate a KDL file, printing its warnings to stderr; errors come
/// back as the file's diagnostics.
pub fn load(g: &Global, file: &Path) -> miette::Result<vmctl_spec::Loaded> {
    let loaded = load_quiet(g, file)?;
    for w in &loaded.warnings {
        eprintln!("{w:?}");
    }
    Ok(loaded)
}

/// Load a KDL file for its lab: networks resolve against the lab's identity
/// (its state directory), the host's routes and the subnets recorded there
/// (docs/networking-hosts.md). Reads only.
pub fn load_quiet(g: &Global, file: &Path) -> Result<vmctl_spec::Loaded, vmctl_spec::SpecError> {
    let hn = vmctl_hostnet::HostNet::new(&g.state_dir_for(file));
    let env = hn.net_env().unwrap_or_else(|e| {
        tracing::warn!("cannot read the lab's network records: {e}");
        vmctl_spec::net::NetEnv {
            lab: vmctl_hostnet::lab_identity(&g.state_dir_for(file)),
            ..Default::default()
        }
    });
    vmctl_spec::load_file_in(file, &env)
}

/// Write `text` to stdout. A closed pipe (`vmctl plan | head`) is not an
/// error.
pub fn print_stdout(text: &str) -> miette::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(miette::miette!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

pub fn init_tracing(cli: &Cli) {
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let g = Global {
        state_dir: cli.state_dir,
    };
    match cli.command {
        Command::Validate(a) => validate::run(&g, a),
        Command::Plan(a) => plan::run(&g, a),
        Command::Apply(a) => apply::run(&g, a),
        Command::Show(a) => show::run(&g, a),
        Command::Fmt(a) => fmt::run(&g, a),
        Command::Completions(a) => completions::run(&g, a),
        Command::Man(a) => completions::man(&g, a),
        Command::CompleteVms(a) => completions::vms(&g, a),
        Command::Destroy(a) => destroy::run(&g, a),
        Command::Status(a) => status::run(&g, a),
        Command::Console(a) => console::run(&g, a),
        Command::Logs(a) => logs::run(&g, a),
        Command::Ssh(a) => ssh::run(&g, a),
        Command::Watch(a) => watch::run(&g, a),
        Command::Explain(a) => explain::run(&g, a),
        Command::Image(a) => image::run(&g, a),
        Command::Export(a) => export::run(&g, a),
        Command::Backup(a) => export::backup(&g, a),
        Command::Import(a) => import::run(&g, a),
        Command::Restore(a) => restore::run(&g, a),
        Command::Lock(a) => lock::run(&g, a),
        Command::HostRpc(a) => host_rpc::run(&g, a),
        Command::Move(a) => move_vm::run(&g, a),
        Command::SendVm(a) => move_vm::send(&g, a),
        Command::ReceiveVm(a) => move_vm::receive(&g, a),
        Command::Vmm(a) => vmm::run(&g, a),
        Command::KvmCpuid => kvm_cpuid::run(),
    }
}
