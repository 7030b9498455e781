//! `vmctl ssh NAME [-- CMD…]`: OpenSSH to a VM's first NIC address as its
//! first declared user, with the private key whose public half the file
//! declares for that user (or `-i`), checking the host key against the one
//! the guest reported over its agent channel at first boot (pinned by
//! `vmctl_runtime::host_key`) — never a trust-on-first-use prompt. vmctl
//! builds the command and replaces itself with `ssh`, so the terminal,
//! signals and the exit status are ssh's own.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vmctl_runtime::state::VmDir;
use vmctl_spec::model::VmSpec;

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// The VM to log in to.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Log in as this user (default: the VM's first declared `user`).
    #[arg(short = 'l', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// The private key to use (default: the key in ~/.ssh whose public half
    /// the file declares for the user).
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Print the ssh command instead of running it.
    #[arg(long)]
    pub print: bool,
    /// The command to run in the VM (after `--`); none: a login shell.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Everything the ssh command line is built from.
#[derive(Debug)]
struct Target {
    ip: String,
    user: String,
    known_hosts: PathBuf,
    identity: Option<PathBuf>,
    batch: bool,
}

/// ssh's arguments for `t` running `command`.
fn ssh_args(t: &Target, command: &[String]) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut opt = |o: String| {
        a.push("-o".into());
        a.push(o.into());
    };
    opt(format!("UserKnownHostsFile={}", t.known_hosts.display()));
    opt("GlobalKnownHostsFile=/dev/null".into());
    opt("StrictHostKeyChecking=yes".into());
    opt("HostKeyAlgorithms=ssh-ed25519".into());
    opt("ConnectTimeout=10".into());
    if t.batch {
        // No terminal to answer a password prompt: fail instead of hanging.
        opt("BatchMode=yes".into());
    }
    if let Some(id) = &t.identity {
        opt("IdentitiesOnly=yes".into());
        a.push("-i".into());
        a.push(id.into());
    }
    a.push("-l".into());
    a.push(t.user.clone().into());
    a.push("--".into());
    a.push(t.ip.clone().into());
    a.extend(command.iter().map(OsString::from));
    a
}

/// `type base64` of an OpenSSH public key line (options and comment off).
fn key_body(line: &str) -> Option<(&str, &str)> {
    let mut it = line.split_whitespace();
    let ty = it.next()?;
    let b64 = it.next()?;
    Some((ty, b64))
}

/// The private key in `ssh_dir` whose `.pub` is one of `declared`.
fn matching_identity(ssh_dir: &Path, declared: &[String]) -> Option<PathBuf> {
    let wanted: Vec<(&str, &str)> = declared.iter().filter_map(|k| key_body(k)).collect();
    let mut names: Vec<PathBuf> = std::fs::read_dir(ssh_dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        .collect();
    names.sort();
    names.into_iter().find_map(|public| {
        let text = std::fs::read_to_string(&public).ok()?;
        let body = key_body(text.lines().next()?)?;
        let private = public.with_extension("");
        (wanted.contains(&body) && private.is_file()).then_some(private)
    })
}

fn target(g: &Global, args: &Args, spec: &VmSpec, dir: &VmDir) -> miette::Result<Target> {
    let name = &args.name;
    let nic = spec.nics.first().ok_or_else(|| {
        miette::miette!(
            help = "declare a `network` and give the VM a `nic \"NETWORK\"` (docs/networking-hosts.md)",
            "VM {name:?} has no NIC to reach it on"
        )
    })?;
    let declared_user = spec.config.users.first();
    let user = match (&args.user, declared_user) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => u.name.clone(),
        (None, None) => {
            return Err(miette::miette!(
                help = "declare `user \"NAME\" {{ ssh-key \"…\" }}` in the VM, or pass -l USER",
                "VM {name:?} declares no user to log in as"
            ));
        }
    };
    let key = match vmctl_runtime::host_key::pinned(dir) {
        Some(k) => k,
        None => {
            // Not seen yet: ask the VMM for the guest's latest report
            // (observing pins a reported key).
            if let Ok(rt) = vmctl_runtime::Runtime::open(g.state_dir_for(&args.file.file)) {
                let _ = rt.observe(name);
            }
            vmctl_runtime::host_key::pinned(dir).ok_or_else(|| {
                miette::miette!(
                    help = "a debian-12 guest makes its host key at first boot and its agent reports it; \
                            wait until `vmctl status` shows the guest's report, then try again",
                    "the guest of {name:?} has not reported its SSH host key yet"
                )
            })?
        }
    };
    let known_hosts = dir.path.join("known_hosts");
    let ip = nic.ip.to_string();
    vmctl_runtime::state::write_atomic(
        &known_hosts,
        vmctl_runtime::host_key::known_hosts_line(&ip, &key).as_bytes(),
    )
    .map_err(|e| miette::miette!("cannot write {}: {e}", known_hosts.display()))?;
    let identity = match &args.identity {
        Some(p) => Some(p.clone()),
        None => {
            let keys: Vec<String> = spec
                .config
                .users
                .iter()
                .filter(|u| u.name == user)
                .flat_map(|u| u.ssh_keys.iter().cloned())
                .collect();
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".ssh"))
                .and_then(|d| matching_identity(&d, &keys))
        }
    };
    use std::io::IsTerminal;
    Ok(Target {
        ip,
        user,
        known_hosts,
        identity,
        batch: !std::io::stdin().is_terminal(),
    })
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let dir = VmDir::new(
        g.state_dir_for(&args.file.file)
            .join("vms")
            .join(&args.name),
    );
    let record = dir
        .read_record_if_exists()
        .map_err(|e| miette::miette!("{e}"))?
        .ok_or_else(|| {
            miette::miette!(
                help = "`vmctl status` lists the VMs in this state directory",
                "no VM named {:?} in {}",
                args.name,
                dir.path.display()
            )
        })?;
    let t = target(g, &args, &record.spec, &dir)?;
    let argv = ssh_args(&t, &args.command);
    if args.print {
        let words: Vec<String> = std::iter::once("ssh".to_string())
            .chain(argv.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        println!("{}", words.join(" "));
        return Ok(ExitCode::SUCCESS);
    }
    let err = std::process::Command::new("ssh").args(&argv).exec();
    Err(miette::miette!(
        help = "install the OpenSSH client (Debian: apt-get install openssh-client)",
        "cannot run ssh: {err}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(identity: Option<&str>, batch: bool) -> Target {
        Target {
            ip: "10.20.0.10".into(),
            user: "alice".into(),
            known_hosts: "/s/vms/web/known_hosts".into(),
            identity: identity.map(PathBuf::from),
            batch,
        }
    }

    fn words(a: &[OsString]) -> String {
        a.iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_host_key_is_checked_against_the_pin_only() {
        let cmd = vec!["systemctl".to_string(), "is-system-running".to_string()];
        assert_eq!(
            words(&ssh_args(&t(Some("/h/.ssh/id_ed25519"), true), &cmd)),
            "-o UserKnownHostsFile=/s/vms/web/known_hosts -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o HostKeyAlgorithms=ssh-ed25519 -o ConnectTimeout=10 \
             -o BatchMode=yes -o IdentitiesOnly=yes -i /h/.ssh/id_ed25519 -l alice -- 10.20.0.10 \
             systemctl is-system-running"
        );
        // Interactive, no key found: ssh's own defaults (agent, ~/.ssh/id_*).
        assert_eq!(
            words(&ssh_args(&t(None, false), &[])),
            "-o UserKnownHostsFile=/s/vms/web/known_hosts -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o HostKeyAlgorithms=ssh-ed25519 -o ConnectTimeout=10 \
             -l alice -- 10.20.0.10"
        );
    }

    #[test]
    fn the_identity_is_the_private_key_whose_public_half_is_declared() {
        let d = tempfile::tempdir().unwrap();
        let a = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJq8 alice@laptop";
        let b = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIXXXX bob@laptop";
        std::fs::write(d.path().join("id_ed25519.pub"), format!("{b}\n")).unwrap();
        std::fs::write(d.path().join("id_ed25519"), "private").unwrap();
        std::fs::write(d.path().join("work.pub"), format!("{a}\n")).unwrap();
        std::fs::write(d.path().join("work"), "private").unwrap();
        // A public key without its private half is no identity.
        std::fs::write(d.path().join("lonely.pub"), format!("{a}\n")).unwrap();
        // The declared key matches by type and base64; comments differ.
        let declared = vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJq8 alice@lab".to_string()];
        assert_eq!(
            matching_identity(d.path(), &declared),
            Some(d.path().join("work"))
        );
        assert_eq!(matching_identity(d.path(), &[]), None);
        assert_eq!(
            matching_identity(&d.path().join("missing"), &declared),
            None
        );
    }
}
