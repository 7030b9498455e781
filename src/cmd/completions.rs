//! `vmctl completions bash|zsh|fish` and `vmctl man`: shell completion
//! scripts and the man page, generated from the clap definition so they
//! cannot drift from the CLI. VM names after `console`, `logs`, `ssh` and
//! `destroy` complete from the KDL file the command line names (`-f`, else
//! `./vmctl.kdl`): each script asks the hidden `vmctl __complete-vms`, which
//! prints the names the file declares (nothing if it does not load).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, FileArg};
use crate::cmd::Global;

/// The shells vmctl writes completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    pub shell: Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write vmctl.1 and one vmctl-COMMAND.1 per command into this directory
    /// instead of printing vmctl.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct VmsArgs {
    #[command(flatten)]
    pub file: FileArg,
}

pub fn run(_g: &Global, args: Args) -> miette::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let (shell, extra) = match args.shell {
        Shell::Bash => (clap_complete::Shell::Bash, BASH),
        Shell::Zsh => (clap_complete::Shell::Zsh, ZSH),
        Shell::Fish => (clap_complete::Shell::Fish, FISH),
    };
    clap_complete::generate(shell, &mut cmd, "vmctl", &mut out);
    let mut script = String::from_utf8_lossy(&out).into_owned();
    if args.shell == Shell::Zsh {
        script = zsh_vm_names(&script);
    }
    // zsh runs the file as the `_vmctl` function itself: its helpers must be
    // defined before the closing block that calls `_vmctl`.
    match script.rfind("\nif [ \"$funcstack[1]\" = \"_vmctl\" ]") {
        Some(at) if args.shell == Shell::Zsh => script.insert_str(at + 1, extra),
        _ => script.push_str(extra),
    }
    crate::cmd::print_stdout(&script)?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(_g: &Global, args: ManArgs) -> miette::Result<ExitCode> {
    let cmd = Cli::command();
    let render = |c: clap::Command| -> miette::Result<Vec<u8>> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c)
            .render(&mut buf)
            .map_err(|e| miette::miette!("cannot render the man page: {e}"))?;
        Ok(buf)
    };
    let Some(dir) = args.out_dir else {
        let page = render(cmd)?;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&page);
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| miette::miette!("cannot create {}: {e}", dir.display()))?;
    let write = |name: String, page: Vec<u8>| -> miette::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, page)
            .map_err(|e| miette::miette!("cannot write {}: {e}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("vmctl-{}", sub.get_name());
        let sub = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("vmctl {}", sub.get_name()));
        write(format!("{name}.1"), render(sub)?)?;
    }
    write("vmctl.1".into(), render(cmd)?)?;
    Ok(ExitCode::SUCCESS)
}

/// `vmctl __complete-vms [-f FILE]`: the VM names the file declares, one a
/// line. Quiet on any problem: a completion must never print an error.
pub fn vms(_g: &Global, args: VmsArgs) -> miette::Result<ExitCode> {
    if let Ok(loaded) = vmctl_spec::load_file(&args.file.file) {
        let names: String = loaded
            .state
            .vms
            .iter()
            .map(|v| format!("{}\n", v.name))
            .collect();
        crate::cmd::print_stdout(&names)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// zsh: the VM-name argument of each VM-name command completes with
/// `_vmctl_vms` instead of files.
fn zsh_vm_names(script: &str) -> String {
    script
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if (t.starts_with("':name -- ") || t.starts_with("'*::names -- "))
                && l.ends_with(":_default' \\")
            {
                l.replace(":_default' \\", ":_vmctl_vms' \\")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// bash: wrap clap's `_vmctl`; complete a VM name where one belongs.
const BASH: &str = r#"
# VM names from the KDL file (vmctl __complete-vms), for console/logs/ssh/destroy.
_vmctl_with_vms() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local i sub="" file=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -f|--file) file=(-f "${COMP_WORDS[i+1]}"); ((i++)) ;;
            --file=*) file=(-f "${COMP_WORDS[i]#--file=}") ;;
            --state-dir) ((i++)) ;;
            -*) ;;
            *) [[ -z "$sub" ]] && sub="${COMP_WORDS[i]}" ;;
        esac
    done
    case "$sub" in
        console|logs|ssh|destroy)
            if [[ "$cur" != -* && "$prev" != -f && "$prev" != --file && "$prev" != --state-dir && "$prev" != --lock-timeout && "$prev" != --parallelism ]]; then
                local IFS=$'\n'
                COMPREPLY=($(compgen -W "$(vmctl __complete-vms "${file[@]}" 2>/dev/null)" -- "$cur"))
                return 0
            fi ;;
    esac
    _vmctl "$@"
}
complete -F _vmctl_with_vms -o bashdefault -o default vmctl
"#;

/// zsh: the function the rewritten `_arguments` specs call.
const ZSH: &str = r#"
# VM names from the KDL file (vmctl __complete-vms), for console/logs/ssh/destroy.
_vmctl_vms() {
    local -a file vms
    local i
    for ((i = 1; i < CURRENT; i++)); do
        case "${words[i]}" in
            -f|--file) file=(-f "${words[i+1]}") ;;
            --file=*) file=(-f "${words[i]#--file=}") ;;
        esac
    done
    vms=(${(f)"$(vmctl __complete-vms "${file[@]}" 2>/dev/null)"})
    compadd -a vms
}
"#;

/// fish: complete VM names (from `-f` when given) after the VM-name commands.
const FISH: &str = r#"
# VM names from the KDL file (vmctl __complete-vms), for console/logs/ssh/destroy.
function __vmctl_vms
    set -l tokens (commandline -opc)
    set -l file
    for i in (seq (count $tokens))
        switch $tokens[$i]
            case -f --file
                set file -f $tokens[(math $i + 1)]
            case '--file=*'
                set file -f (string replace -- '--file=' '' $tokens[$i])
        end
    end
    vmctl __complete-vms $file 2>/dev/null
end
complete -c vmctl -n "__fish_seen_subcommand_from console logs ssh destroy" -f -a "(__vmctl_vms)"
"#;
