//! `vmctl move VM --to HOST`: a VM of a lab over hosts goes to another host
//! (docs/scale-out.md, "Moving a VM"). Under the cluster lock:
//!
//! 1. stop it on its host (if it runs);
//! 2. stream its record and disks sparsely from the old host to the new one
//!    (`ssh FROM vmctl __send-vm | ssh TO vmctl __receive-vm`, each disk's
//!    block digest checked; the VM appears on the new host only whole);
//! 3. commit: the shared state's record names the new host (the point of no
//!    return);
//! 4. start it there (if it ran, or its spec says autostart);
//! 5. remove the old copy, last.
//!
//! Killed anywhere, the next `apply` (or `move`) finishes or undoes it: a
//! VM found on two hosts is the one the record names, and the other copy,
//! always stopped, is removed (cluster::session). Never two running
//! copies: the old one is stopped before the copy and never started again;
//! never zero copies: the old one goes only after the commit.
//!
//! `__send-vm` and `__receive-vm` are the two ends, run on the hosts.

use std::io::{BufReader, BufWriter};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use miette::miette;
use serde_json::json;
use vmctl_planner::Backend;

use crate::cli::FileArg;
use crate::cluster::session::{self, ssh_target};
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// The VM to move (none: every VM placement wants elsewhere — the VMs
    /// of a draining host, the re-pinned ones).
    pub vm: Option<String>,
    /// The host it goes to (a `host` node of the file). Without it: where
    /// placement says it belongs (its pin, or away from a draining host).
    #[arg(long)]
    pub to: Option<String>,
    /// Give up waiting for the cluster lock after this many seconds.
    #[arg(long)]
    pub lock_timeout: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    pub vm: String,
}

#[derive(Debug, clap::Args)]
pub struct ReceiveArgs {
    pub vm: String,
    /// The coordinator's fencing token (checked against this host's fence).
    #[arg(long)]
    pub token: u64,
}

fn state_dir(g: &Global) -> miette::Result<std::path::PathBuf> {
    g.state_dir
        .clone()
        .ok_or_else(|| miette!("this command needs --state-dir DIR (the host's state directory)"))
}

/// `__send-vm`: this host's stopped VM to stdout.
pub fn send(g: &Global, a: SendArgs) -> miette::Result<ExitCode> {
    let dir = state_dir(g)?;
    let rt = crate::backend::open(&dir).map_err(|e| miette!("{e}"))?;
    if let Some(vm) =
        crate::backend::RuntimeBackend::observe_vm(&rt, &a.vm).map_err(|e| miette!("{e}"))?
        && vm.live.state.has_vmm()
    {
        return Err(miette!(
            "{} runs on this host: stop it before sending it",
            a.vm
        ));
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    crate::cluster::transfer::send(&dir, &a.vm, &mut out).map_err(|e| miette!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `__receive-vm`: a VM from stdin into this host's state directory.
pub fn receive(g: &Global, a: ReceiveArgs) -> miette::Result<ExitCode> {
    let dir = state_dir(g)?;
    let _fence = vmctl_hostrpc::FenceStore::new(&dir)
        .admit(a.token)
        .map_err(|e| miette!("{e}"))?;
    let input = BufReader::new(std::io::stdin().lock());
    crate::cluster::transfer::receive(&dir, &a.vm, input).map_err(|e| miette!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(g: &Global, a: Args) -> miette::Result<ExitCode> {
    let loaded = crate::cmd::load(g, &a.file.file)?;
    let desired = loaded.state;
    if desired.hosts.is_empty() {
        return Err(miette!(
            help = "a VM moves between the `host` nodes of a lab over several hosts (docs/scale-out.md)",
            "{} declares no hosts",
            a.file.file.display()
        ));
    }
    let (s, observed) = session::open(&desired, "move", a.lock_timeout.map(Duration::from_secs))?;
    let Some(name) = &a.vm else {
        // Every VM placement wants elsewhere: a drained host emptied, or
        // every re-pinned VM moved, in one command.
        if a.to.is_some() {
            return Err(miette!("--to needs a VM to move"));
        }
        let moves: Vec<_> = s.placement.moves.clone();
        if moves.is_empty() {
            println!("Nothing to move: every VM is where placement wants it.");
            return Ok(ExitCode::SUCCESS);
        }
        let mut failed = 0;
        for m in &moves {
            let r = match &m.to {
                Some(to) => move_one(&s, &observed, &desired, &m.vm, to),
                None => Err(miette!("{}", m.describe())),
            };
            if let Err(e) = r {
                eprintln!("{:?}", e);
                failed += 1;
            }
        }
        return Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    };
    let to_name = match &a.to {
        Some(t) => t.clone(),
        None => match s.placement.moves.iter().find(|m| &m.vm == name) {
            Some(m) => m.to.clone().ok_or_else(|| miette!("{}", m.describe()))?,
            None => {
                if observed.get(name).is_none() {
                    return Err(miette!("no VM {name:?} on any reachable host"));
                }
                // Idempotent: a move that is done (or a VM that never had
                // to) is success, as a re-run after a kill expects.
                let here = s.backend.host_of(name).unwrap_or_default();
                println!("{name} is on {here} already (where placement wants it).");
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    move_one(&s, &observed, &desired, name, &to_name)?;
    Ok(ExitCode::SUCCESS)
}

/// Move one VM to host `to_name` (module comment: stop, copy, commit,
/// start, remove the old copy).
fn move_one(
    s: &session::Session,
    observed: &vmctl_planner::ObservedState,
    desired: &vmctl_spec::DesiredState,
    name: &str,
    to_name: &str,
) -> miette::Result<()> {
    let vm = observed
        .get(name)
        .ok_or_else(|| miette!("no VM {name:?} on any reachable host"))?;
    let host = |h: &str| desired.hosts.iter().find(|x| x.name == h);
    let to = host(to_name).ok_or_else(|| miette!("no host {to_name:?} in the file"))?;
    let spec = vm.record.spec.clone();
    let from_name = s
        .backend
        .host_of(name)
        .ok_or_else(|| miette!("where {name} is is not known"))?;
    if from_name == to.name {
        println!("{name} is on {} already.", to.name);
        return Ok(());
    }
    let from = host(&from_name)
        .ok_or_else(|| miette!("{name} is on {from_name}, which the file no longer declares"))?;
    let token = u64::try_from(s.guard.token()).map_err(|_| miette!("bad fencing token"))?;
    let was_running = vm.live.state.has_vmm();
    let src = s.backend.on_host(&from.name).map_err(|e| miette!("{e}"))?;
    let dst = s.backend.on_host(&to.name).map_err(|e| miette!("{e}"))?;

    // 1. Stop.
    if was_running {
        println!("{name}: stopping on {}", from.name);
        src.stop(name)
            .map_err(|e| miette!("stopping {name} on {}: {e}", from.name))?;
    }
    // 2. Copy.
    println!("{name}: copying its disks {} → {}", from.name, to.name);
    let started = std::time::Instant::now();
    let send_argv =
        ssh_target(from).argv_running(&["--state-dir", from.state_dir.as_str(), "__send-vm", name]);
    let token_s = token.to_string();
    let recv_argv = ssh_target(to).argv_running(&[
        "--state-dir",
        to.state_dir.as_str(),
        "__receive-vm",
        name,
        "--token",
        token_s.as_str(),
    ]);
    pipe(&send_argv, &recv_argv).map_err(|e| {
        s.journal("move-copy", name, Some(&to.name), false, Some(&e));
        miette!(
            help = "nothing was committed: the VM is still on its old host (`vmctl apply` starts it again)",
            "copying {name} from {} to {}: {e}",
            from.name,
            to.name
        )
    })?;
    let copied = started.elapsed();
    // 3. Commit.
    let record = json!({"format_version": "1", "spec": spec, "host": to.name});
    s.guard
        .put_vm(name, &record)
        .map_err(|e| miette!("committing the move of {name} in the shared state: {e}"))?;
    s.journal("move", name, Some(&to.name), true, None);
    // 4. Start there.
    if was_running || spec.autostart {
        println!("{name}: starting on {}", to.name);
        dst.start(name).map_err(|e| {
            miette!(
                "starting {name} on {} (the move is committed; `vmctl apply` retries): {e}",
                to.name
            )
        })?;
    }
    // 5. The old copy, last.
    src.destroy(name, false).map_err(|e| {
        miette!(
            "removing the old copy of {name} on {} (the move is committed; the next apply removes it): {e}",
            from.name
        )
    })?;
    println!(
        "\nMoved {name} from {} to {} (disks copied in {:.1}s).",
        from.name,
        to.name,
        copied.as_secs_f64()
    );
    Ok(())
}

/// Run `send | receive`; both must succeed. The error has both sides'
/// stderr.
fn pipe(send: &[std::ffi::OsString], receive: &[std::ffi::OsString]) -> Result<(), String> {
    let spawn = |argv: &[std::ffi::OsString], stdin: Stdio, stdout: Stdio| {
        let (prog, rest) = argv.split_first().ok_or("empty command line")?;
        Command::new(prog)
            .args(rest)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", prog.to_string_lossy()))
    };
    let mut sender = spawn(send, Stdio::null(), Stdio::piped())?;
    let out = sender.stdout.take().ok_or("no stdout of the sender")?;
    let receiver = spawn(receive, Stdio::from(out), Stdio::null());
    let receiver = match receiver {
        Ok(r) => r,
        Err(e) => {
            let _ = sender.kill();
            let _ = sender.wait();
            return Err(e);
        }
    };
    let r = receiver.wait_with_output().map_err(|e| e.to_string())?;
    let s = sender.wait_with_output().map_err(|e| e.to_string())?;
    let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).trim().to_string();
    match (s.status.success(), r.status.success()) {
        (true, true) => Ok(()),
        (false, _) => Err(format!("the sender failed ({}): {}", s.status, said(&s))),
        (true, false) => Err(format!("the receiver failed ({}): {}", r.status, said(&r))),
    }
}
