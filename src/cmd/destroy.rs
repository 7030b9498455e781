//! `vmctl destroy [NAME...]`: stop and remove VMs — the named ones, or every VM
//! in the state directory — in the reverse of their dependency order, through
//! the same engine and journal as apply.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmctl_planner::{ActionKind, Backend, Event, Plan, engine, render};
use vmctl_spec::DesiredState;

use crate::backend;
use crate::cli::FileArg;
use crate::cmd::Global;
use crate::report::{Mode, Reporter};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// VMs to destroy (default: every VM in the state directory).
    pub names: Vec<String>,
    #[arg(long)]
    pub auto_approve: bool,
    /// Also delete disks placed outside the state directory with `path=`.
    #[arg(long)]
    pub delete_external_disks: bool,
    /// Give up waiting for the state lock after this many seconds.
    #[arg(long)]
    pub lock_timeout: Option<u64>,
    /// How many VMs may be destroyed at once.
    #[arg(long, default_value_t = 4)]
    pub parallelism: usize,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    if args.file.file.exists()
        && let Ok(loaded) = crate::cmd::load_quiet(g, &args.file.file)
        && !loaded.state.hosts.is_empty()
    {
        return run_on_hosts(&loaded.state, &args);
    }
    let state_dir = g.state_dir_for(&args.file.file);
    let net = vmctl_hostnet::HostNet::new(&state_dir);
    if !state_dir.join("vms").is_dir() && !net.has_records() {
        println!("Nothing to destroy: no VMs in {}.", state_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let _lock = crate::lock::acquire(&state_dir, args.lock_timeout.map(Duration::from_secs))?;
    let backend = backend::open(&state_dir).map_err(|e| miette::miette!("{e}"))?;
    let observed = backend
        .observe()
        .map_err(|e| miette::miette!("cannot observe the VMs in {}: {e}", state_dir.display()))?;
    for n in &args.names {
        if observed.get(n).is_none() {
            return Err(miette::miette!(
                help = "`vmctl status` lists the VMs in this state directory",
                "no VM named {n:?} in {}",
                state_dir.display()
            ));
        }
    }
    let doomed = |n: &str| args.names.is_empty() || args.names.iter().any(|x| x == n);
    // The desired state is everything that survives; the plan's destroy
    // actions (and only those) are what we run. Destroying everything takes
    // the networks too; destroying some VMs keeps them.
    let keep: Vec<_> = observed
        .vms
        .values()
        .filter(|v| !doomed(v.name()))
        .map(|v| v.record.spec.clone())
        .collect();
    let everything = args.names.is_empty();
    let desired = DesiredState {
        format_version: vmctl_spec::FORMAT_VERSION.to_string(),
        vms: keep,
        images: Vec::new(),
        networks: if everything {
            Vec::new()
        } else {
            observed.networks.values().map(|n| n.spec.clone()).collect()
        },
        cluster: None,
        hosts: Vec::new(),
    };
    let plan = destroy_plan(&desired, &observed, &backend.capabilities(), |_| None)?;
    if plan.actions.is_empty() {
        if everything {
            sweep(&net)?;
        }
        println!("Nothing to destroy.");
        return Ok(ExitCode::SUCCESS);
    }
    if crate::reconcile::touches_host_network(&plan) && !vmctl_hostnet::has_net_admin() {
        return Err(crate::reconcile::PassError::NoNetAdmin.into());
    }
    let Some(opts) = confirm(&plan, &args)? else {
        return Ok(ExitCode::from(1));
    };
    let journal = vmctl_planner::Journal::open(&state_dir)
        .map_err(|e| miette::miette!("cannot open the journal: {e}"))?;
    let reporter = Reporter::new(Mode::detect(false));
    let start = Instant::now();
    let on_event = |e: &Event<'_>| reporter.event(e);
    let outcome = engine::apply(&backend, &plan, &desired, Some(&journal), &opts, &on_event);
    if outcome.ok() && everything {
        // Whatever a crashed apply left behind with this lab's names goes too.
        sweep(&net)?;
    }
    if outcome.ok() {
        println!(
            "\nDestroy complete: {} VM(s) in {:.1}s.",
            outcome.finished.len(),
            start.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for (id, e) in &outcome.failed {
            println!("  {id}: {e}");
        }
        Err(miette::miette!(
            "destroy failed for {} VM(s)",
            outcome.failed.len()
        ))
    }
}

/// The destroy actions (only those) of planning `keep` against what is
/// there: what goes, in reverse dependency order, each on `host_of` its VM.
/// Show the destroy plan and ask (unless `--auto-approve`); the apply
/// options when the user said yes, None when they cancelled. One place for
/// the local and the over-hosts destroy.
fn confirm(
    plan: &vmctl_planner::Plan,
    args: &Args,
) -> miette::Result<Option<vmctl_planner::Options>> {
    print!("{}", render::text(plan));
    if !args.auto_approve && !crate::cmd::apply::confirm("destroy these VMs")? {
        println!("Destroy cancelled.");
        return Ok(None);
    }
    Ok(Some(vmctl_planner::Options {
        parallelism: args.parallelism.max(1),
        delete_external_disks: args.delete_external_disks,
        apply_id: vmctl_planner::journal::new_apply_id(),
    }))
}

fn destroy_plan(
    keep: &DesiredState,
    observed: &vmctl_planner::ObservedState,
    caps: &vmctl_planner::Capabilities,
    host_of: impl Fn(&str) -> Option<String>,
) -> miette::Result<Plan> {
    let full = vmctl_planner::plan(keep, observed, caps)
        .map_err(|e| miette::miette!("cannot plan: {e}"))?;
    let mut actions: Vec<_> = full
        .actions
        .into_iter()
        .filter(|a| a.kind == ActionKind::Destroy)
        .collect();
    let ids: Vec<String> = actions.iter().map(|a| a.id.clone()).collect();
    for a in &mut actions {
        a.depends_on.retain(|d| ids.contains(d));
        a.host = host_of(&a.vm);
        a.reason = Some("vmctl destroy: stop the VM and delete its directory and disks".into());
    }
    Ok(Plan { actions })
}

/// `destroy` of a lab over hosts: under the cluster lock, the named VMs (or
/// every VM on every reachable host) are destroyed on their hosts, and
/// their records leave the shared state.
fn run_on_hosts(file: &DesiredState, args: &Args) -> miette::Result<ExitCode> {
    let (session, observed) =
        crate::cluster::session::open(file, "destroy", args.lock_timeout.map(Duration::from_secs))?;
    for n in &args.names {
        if observed.get(n).is_none() {
            return Err(miette::miette!(
                help = "`vmctl status` lists the VMs on every host",
                "no VM named {n:?} on any reachable host"
            ));
        }
    }
    let doomed = |n: &str| args.names.is_empty() || args.names.iter().any(|x| x == n);
    let keep = DesiredState {
        vms: observed
            .vms
            .values()
            .filter(|v| !doomed(v.name()))
            .map(|v| v.record.spec.clone())
            .collect(),
        networks: observed.networks.values().map(|n| n.spec.clone()).collect(),
        images: Vec::new(),
        ..file.clone()
    };
    let plan = destroy_plan(&keep, &observed, &session.backend.capabilities(), |vm| {
        session.backend.host_of(vm)
    })?;
    if plan.actions.is_empty() {
        println!("Nothing to destroy.");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(opts) = confirm(&plan, args)? else {
        return Ok(ExitCode::from(1));
    };
    let reporter = Reporter::new(Mode::detect(false));
    let start = Instant::now();
    let on_event = |e: &Event<'_>| {
        reporter.event(e);
        match e {
            Event::Finished { action, .. } => {
                session.journal("destroy", &action.vm, action.host.as_deref(), true, None)
            }
            Event::Failed { action, error, .. } => session.journal(
                "destroy",
                &action.vm,
                action.host.as_deref(),
                false,
                Some(&error.to_string()),
            ),
            _ => {}
        }
    };
    let outcome = engine::apply(&session.backend, &plan, &keep, None, &opts, &on_event);
    if let Err(e) = session.backend.observe() {
        println!("  observing the hosts after the destroy: {e}");
    }
    session.write_records(&keep);
    let refused = session.write_errors();
    if outcome.ok() && refused.is_empty() {
        println!(
            "\nDestroy complete: {} VM(s) in {:.1}s.",
            outcome.finished.len(),
            start.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (id, e) in &outcome.failed {
        println!("  {id}: {e}");
    }
    for e in &refused {
        println!("  {e}");
    }
    Err(miette::miette!(
        "destroy failed for {} VM(s){}",
        outcome.failed.len(),
        if refused.is_empty() {
            String::new()
        } else {
            format!("; {} shared-state write(s) refused", refused.len())
        }
    ))
}

/// Remove every bridge and tap with this lab's names (recorded or left by a
/// crash) and the network records.
fn sweep(net: &vmctl_hostnet::HostNet) -> miette::Result<()> {
    if !net.has_records() {
        return Ok(());
    }
    let removed = net
        .sweep()
        .map_err(|e| miette::miette!("cannot remove the lab's network interfaces: {e}"))?;
    for name in removed {
        tracing::info!("removed leftover interface {name}");
    }
    Ok(())
}
