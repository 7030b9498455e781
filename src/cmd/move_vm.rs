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
    /// The VM to move.
    pub vm: String,
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
    let vm = observed
        .get(&a.vm)
        .ok_or_else(|| miette!("no VM {:?} on any reachable host", a.vm))?;
    let to_name = match &a.to {
        Some(t) => t.clone(),
        None => match s.placement.moves.iter().find(|m| m.vm == a.vm) {
            Some(m) => m.to.clone().ok_or_else(|| miette!("{}", m.describe()))?,
            None => {
                // Idempotent: a move that is done (or a VM that never had
                // to) is success, as a re-run after a kill expects.
                let here = s.backend.host_of(&a.vm).unwrap_or_default();
                println!("{} is on {here} already (where placement wants it).", a.vm);
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    let to = desired
        .hosts
        .iter()
        .find(|h| h.name == to_name)
        .ok_or_else(|| miette!("no host {to_name:?} in {}", a.file.file.display()))?;
    let spec = vm.record.spec.clone();
    let from_name = s
        .backend
        .host_of(&a.vm)
        .ok_or_else(|| miette!("where {} is is not known", a.vm))?;
    if from_name == to.name {
        println!("{} is on {} already.", a.vm, to.name);
        return Ok(ExitCode::SUCCESS);
    }
    let from = desired
        .hosts
        .iter()
        .find(|h| h.name == from_name)
        .ok_or_else(|| {
            miette!(
                "{} is on {from_name}, which the file no longer declares",
                a.vm
            )
        })?;
    let token = u64::try_from(s.guard.token()).map_err(|_| miette!("bad fencing token"))?;
    let was_running = vm.live.state.has_vmm();
    let src = s.backend.on_host(&from.name).map_err(|e| miette!("{e}"))?;
    let dst = s.backend.on_host(&to.name).map_err(|e| miette!("{e}"))?;

    // 1. Stop.
    if was_running {
        println!("{}: stopping on {}", a.vm, from.name);
        src.stop(&a.vm)
            .map_err(|e| miette!("stopping {} on {}: {e}", a.vm, from.name))?;
    }
    // 2. Copy.
    println!("{}: copying its disks {} → {}", a.vm, from.name, to.name);
    let started = std::time::Instant::now();
    let send_argv = ssh_target(from).argv_running(&[
        "--state-dir",
        from.state_dir.as_str(),
        "__send-vm",
        a.vm.as_str(),
    ]);
    let token_s = token.to_string();
    let recv_argv = ssh_target(to).argv_running(&[
        "--state-dir",
        to.state_dir.as_str(),
        "__receive-vm",
        a.vm.as_str(),
        "--token",
        token_s.as_str(),
    ]);
    pipe(&send_argv, &recv_argv).map_err(|e| {
        s.journal("move-copy", &a.vm, Some(&to.name), false, Some(&e));
        miette!(
            help = "nothing was committed: the VM is still on its old host (`vmctl apply` starts it again)",
            "copying {} from {} to {}: {e}",
            a.vm,
            from.name,
            to.name
        )
    })?;
    let copied = started.elapsed();
    // 3. Commit.
    let record = json!({"format_version": "1", "spec": spec, "host": to.name});
    s.guard
        .put_vm(&a.vm, &record)
        .map_err(|e| miette!("committing the move of {} in the shared state: {e}", a.vm))?;
    s.journal("move", &a.vm, Some(&to.name), true, None);
    // 4. Start there.
    if was_running || spec.autostart {
        println!("{}: starting on {}", a.vm, to.name);
        dst.start(&a.vm).map_err(|e| {
            miette!(
                "starting {} on {} (the move is committed; `vmctl apply` retries): {e}",
                a.vm,
                to.name
            )
        })?;
    }
    // 5. The old copy, last.
    src.destroy(&a.vm, false).map_err(|e| {
        miette!(
            "removing the old copy of {} on {} (the move is committed; the next apply removes it): {e}",
            a.vm,
            from.name
        )
    })?;
    println!(
        "\nMoved {} from {} to {} (disks copied in {:.1}s).",
        a.vm,
        from.name,
        to.name,
        copied.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
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
