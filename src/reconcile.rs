//! One reconcile pass: load the file, lock, observe, plan, (approve,) apply.
//! Shared by `apply` (once) and `watch` (on every settled change and drift
//! tick), so both take the same lock, journal and safety checks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use miette::Diagnostic;
use vmctl_planner::{Backend, Event, ObservedState, Plan, engine, render};
use vmctl_spec::DesiredState;

use crate::backend;
use crate::cmd::Global;
use crate::report::{Mode, Reporter};

/// What a caller may ask of one pass.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// The KDL file.
    pub file: PathBuf,
    /// How many actions may run at once.
    pub parallelism: usize,
    /// Destroy VMs that are in the state directory but not in the file.
    pub prune: bool,
    /// Let an empty desired state destroy everything (only with `prune`).
    pub allow_empty: bool,
    /// Wait at most this long for the state lock (None: wait forever).
    pub lock_timeout: Option<Duration>,
    /// Print progress as plain lines (false: stay quiet, the caller renders).
    pub print: bool,
    /// A desired state the caller already loaded and validated (watch): it is
    /// planned as it is, so a save landing between validation and planning
    /// cannot slip in unseen. `None`: load `file`.
    pub desired: Option<DesiredState>,
}

/// One action that ran in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub vm: String,
    /// `create`, `start`, `restart`, … (the plan's kind label).
    pub kind: String,
    pub ok: bool,
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOutcome {
    /// The rendered text plan (empty when nothing changed).
    pub plan_text: String,
    /// Actions that ran and succeeded / failed.
    pub succeeded: usize,
    pub failed: usize,
    /// VMs in the state directory that the file no longer declares and that
    /// were left alone (no `prune`, or the empty-file guard).
    pub unmanaged: Vec<String>,
    /// True when the plan had no actions.
    pub no_changes: bool,
    /// Every action that ran, in completion order.
    pub ran: Vec<Ran>,
    /// Failure messages, `action id: error`.
    pub errors: Vec<String>,
    /// Wall time of the apply phase.
    pub apply_time: Duration,
}

/// Why a pass did not run.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum PassError {
    #[error("cannot observe the VMs in {dir}: {message}")]
    Observe { dir: String, message: String },
    #[error("cannot plan: {0}")]
    Plan(String),
    #[error("the file declares no VMs; refusing to destroy the {count} VM(s) in {dir}")]
    #[diagnostic(help(
        "an empty file is more often a truncated save than an intent; use `vmctl destroy` to remove every VM (or `watch --prune --allow-empty`)"
    ))]
    EmptyDesired { count: usize, dir: String },
    #[error("cannot open the journal: {0}")]
    Journal(String),
    #[error("cannot bring the shared state up to date: {0}")]
    SharedState(String),
    #[error(
        "this plan changes the host's network (bridges and taps), which needs CAP_NET_ADMIN; vmctl has not got it, so nothing was changed"
    )]
    #[diagnostic(help(
        "run it as root (sudo vmctl apply ...), or give the binary the capability once: sudo setcap cap_net_admin+ep \"$(command -v vmctl)\" (docs/networking-hosts.md)"
    ))]
    NoNetAdmin,
    #[error("cannot provide the image {message}")]
    #[diagnostic(help(
        "vmctl builds its built-in OS images on this host from Debian packages (apt-get, mmdebstrap, mke2fs; docs/images.md); an `image` node boots your own kernel and initrd instead"
    ))]
    Image { message: String },
}

/// What a pass acts through, and the lock it holds.
pub enum Target {
    /// This host's state directory, under its flock.
    Local {
        backend: Box<backend::RuntimeBackend>,
        _lock: crate::lock::StateLock,
    },
    /// A lab over `host` nodes: the etcd lock and every host over SSH.
    Cluster(Box<crate::cluster::session::Session>),
}

impl Target {
    pub fn backend(&self) -> &dyn Backend {
        match self {
            Target::Local { backend, .. } => backend.as_ref(),
            Target::Cluster(s) => &s.backend,
        }
    }

    pub fn cluster(&self) -> Option<&crate::cluster::session::Session> {
        match self {
            Target::Local { .. } => None,
            Target::Cluster(s) => Some(s),
        }
    }
}

/// A loaded, locked and planned pass, ready to apply.
pub struct Prepared {
    pub desired: DesiredState,
    /// What the plan was computed from (a saved plan's basis is checked
    /// against it).
    pub observed: ObservedState,
    pub plan: Plan,
    pub unmanaged: Vec<String>,
    pub target: Target,
    pub state_dir: PathBuf,
    /// The KDL file (its folder holds `vmctl.lock`, the image pins).
    pub file: PathBuf,
}

/// Load, lock, observe and plan. `prune=false` leaves VMs the file no longer
/// declares alone (they are reported as unmanaged); with `prune`, an empty file
/// destroys nothing unless `allow_empty`.
pub fn prepare(g: &Global, opts: &ReconcileOptions) -> miette::Result<Prepared> {
    let desired = match &opts.desired {
        Some(d) => d.clone(),
        None => crate::cmd::load(g, &opts.file)?.state,
    };
    let state_dir = g.state_dir_for(&opts.file);
    if !desired.hosts.is_empty() {
        return prepare_cluster(desired, opts, state_dir);
    }
    let lock = crate::lock::acquire(&state_dir, opts.lock_timeout)?;
    let backend = backend::open(&state_dir).map_err(|e| PassError::Observe {
        dir: state_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut observed = backend.observe().map_err(|e| PassError::Observe {
        dir: state_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let unmanaged = split_unmanaged(&desired, &mut observed, opts, &state_dir)?;
    let plan = vmctl_planner::plan(&desired, &observed, &backend.capabilities())
        .map_err(|e| PassError::Plan(e.to_string()))?;
    // Before anything is touched: an apply that would stop half-way through
    // the network wiring is refused whole.
    if touches_host_network(&plan) && !vmctl_hostnet::has_net_admin() {
        return Err(PassError::NoNetAdmin.into());
    }
    Ok(Prepared {
        desired,
        observed,
        plan,
        unmanaged,
        target: Target::Local {
            backend: Box::new(backend),
            _lock: lock,
        },
        state_dir,
        file: opts.file.clone(),
    })
}

/// [`prepare`] for a lab over hosts: the cluster lock instead of the state
/// directory's, every host observed over SSH, and a plan whose actions
/// carry their host.
fn prepare_cluster(
    desired: DesiredState,
    opts: &ReconcileOptions,
    state_dir: PathBuf,
) -> miette::Result<Prepared> {
    let (session, mut observed) =
        crate::cluster::session::open(&desired, "apply", opts.lock_timeout)?;
    let unmanaged = split_unmanaged(&desired, &mut observed, opts, &state_dir)?;
    let plan = vmctl_planner::plan_on_hosts(
        &desired,
        &observed,
        &session.backend.capabilities(),
        &session.placement,
    )
    .map_err(|e| PassError::Plan(e.to_string()))?;
    Ok(Prepared {
        desired,
        observed,
        plan,
        unmanaged,
        target: Target::Cluster(Box::new(session)),
        state_dir,
        file: opts.file.clone(),
    })
}

/// Whether carrying out `plan` creates, changes or removes bridges or taps:
/// a network action, or an action that makes or removes a VM's taps
/// (create, copy, start, restart, replace, destroy) on a VM with NICs before
/// or after. Live changes and stops leave the taps alone.
pub fn touches_host_network(plan: &Plan) -> bool {
    use vmctl_planner::ActionKind as K;
    plan.executable().any(|a| {
        a.is_network()
            || (matches!(
                a.kind,
                K::Create | K::Copy | K::Start | K::Restart | K::Replace | K::Destroy
            ) && (a.new.as_ref().is_some_and(|s| !s.nics.is_empty())
                || a.old.as_ref().is_some_and(|s| !s.nics.is_empty())))
    })
}

/// Remove from `observed` the VMs that are not to be touched (and the
/// networks they are on); return their names.
fn split_unmanaged(
    desired: &DesiredState,
    observed: &mut ObservedState,
    opts: &ReconcileOptions,
    state_dir: &std::path::Path,
) -> Result<Vec<String>, PassError> {
    let gone: Vec<String> = observed
        .vms
        .keys()
        .filter(|n| desired.vm(n).is_none())
        .cloned()
        .collect();
    if gone.is_empty() {
        return Ok(gone);
    }
    if opts.prune && desired.vms.is_empty() && !opts.allow_empty {
        return Err(PassError::EmptyDesired {
            count: gone.len(),
            dir: state_dir.display().to_string(),
        });
    }
    if opts.prune {
        return Ok(Vec::new());
    }
    for n in &gone {
        if let Some(vm) = observed.vms.remove(n) {
            for nic in &vm.record.spec.nics {
                observed.networks.remove(&nic.network);
            }
        }
    }
    Ok(gone)
}

/// For a plan with nothing to do: report the actions a killed apply left
/// open as already done and close them in the journal
/// ([`engine::settle_interrupted`]). Opens the journal only when it has
/// something to close, so a no-op apply on a fresh state directory writes
/// nothing.
pub fn settle(p: &Prepared, reporter: &Reporter) -> miette::Result<usize> {
    if let Some(s) = p.target.cluster() {
        // A lab over hosts journals in etcd, per action, as it goes. Its
        // records are brought up to date even when nothing is to be done:
        // an apply that lost its lease (or was killed) after its actions
        // ran left the VMs right and the records stale, and a re-apply
        // that plans nothing is how that heals (found by `cargo xtask
        // chaos`, kill-etcd-leader).
        s.write_records(&p.desired);
        let refused = s.write_errors();
        if !refused.is_empty() {
            return Err(PassError::SharedState(refused.join("; ")).into());
        }
        return Ok(0);
    }
    let open = vmctl_planner::Journal::interrupted(&p.state_dir)
        .map_err(|e| PassError::Journal(e.to_string()))?;
    if open.is_empty() {
        return Ok(0);
    }
    let journal = vmctl_planner::Journal::open(&p.state_dir)
        .map_err(|e| PassError::Journal(e.to_string()))?;
    let apply_id = vmctl_planner::journal::new_apply_id();
    let n = engine::settle_interrupted(&journal, &apply_id, &mut |e| reporter.settled(e))
        .map_err(|e| PassError::Journal(e.to_string()))?;
    Ok(n)
}

/// Apply a prepared plan, reporting through `reporter`.
pub fn execute(
    p: &Prepared,
    parallelism: usize,
    reporter: &Reporter,
) -> miette::Result<ReconcileOutcome> {
    let mut out = ReconcileOutcome {
        plan_text: render::text(&p.plan),
        unmanaged: p.unmanaged.clone(),
        ..Default::default()
    };
    if !p.plan.summary().has_actions() {
        out.no_changes = true;
        settle(p, reporter)?;
        return Ok(out);
    }
    let cluster = p.target.cluster();
    let journal = match cluster {
        // Images are built on the host that boots them; the journal is the
        // cluster's (etcd), written as each action ends.
        Some(_) => None,
        None => {
            ensure_images(p, reporter)?;
            Some(
                vmctl_planner::Journal::open(&p.state_dir)
                    .map_err(|e| PassError::Journal(e.to_string()))?,
            )
        }
    };
    let ran = std::sync::Mutex::new(Vec::new());
    let on_event = |e: &Event<'_>| {
        reporter.event(e);
        let r = match e {
            Event::Finished { action, .. } => Some((action, true)),
            Event::Failed { action, .. } => Some((action, false)),
            _ => None,
        };
        if let (Some(s), Some((a, ok))) = (cluster, r) {
            let error = match e {
                Event::Failed { error, .. } => Some(error.to_string()),
                _ => None,
            };
            s.journal(
                a.kind.label(),
                &a.vm,
                a.host.as_deref(),
                ok,
                error.as_deref(),
            );
        }
        // `ran` is per VM (watch tracks crash loops by VM name); network
        // actions count in `succeeded`/`failed` only.
        let r = r.filter(|(a, _)| !a.is_network());
        if let (Some((a, ok)), Ok(mut v)) = (r, ran.lock()) {
            v.push(Ran {
                vm: a.vm.clone(),
                kind: a.kind.label().to_string(),
                ok,
            });
        }
    };
    let opts = vmctl_planner::Options {
        parallelism: parallelism.max(1),
        delete_external_disks: false,
        apply_id: vmctl_planner::journal::new_apply_id(),
    };
    let start = Instant::now();
    let outcome = engine::apply(
        p.target.backend(),
        &p.plan,
        &p.desired,
        journal.as_ref(),
        &opts,
        &on_event,
    );
    out.apply_time = start.elapsed();
    out.succeeded = outcome.finished.len();
    out.failed = outcome.failed.len();
    out.errors = outcome
        .failed
        .iter()
        .map(|(id, e)| format!("{id}: {e}"))
        .collect();
    out.ran = ran.into_inner().unwrap_or_default();
    if let Some(s) = cluster {
        // Where each VM ended up, from what the hosts say now. A host that
        // stopped answering during the apply means the records cannot be
        // brought up to date: that is a failure (exit 1, named), not a
        // note nobody sees; the next apply records what it finds.
        if let Err(e) = s.backend.observe() {
            out.failed += 1;
            out.errors
                .push(format!("observing the hosts after the apply: {e}"));
        }
        s.write_records(&p.desired);
        let refused = s.write_errors();
        if !refused.is_empty() {
            out.failed += refused.len();
            out.errors.extend(refused);
        }
    }
    Ok(out)
}

/// Build (or find in the cache) the image of every built-in Linux OS variant
/// (OS + packages) an action is about to boot, pinned by `vmctl.lock` beside
/// the KDL file — so a first build happens here, in the open, not inside a
/// VMM's start-up window.
fn ensure_images(p: &Prepared, reporter: &Reporter) -> miette::Result<()> {
    let mut variants = std::collections::BTreeSet::new();
    for a in p.plan.executable() {
        if a.kind == vmctl_planner::ActionKind::Destroy || a.kind == vmctl_planner::ActionKind::Stop
        {
            continue;
        }
        if let Some(s) = p.desired.vm(&a.vm)
            && s.image.is_none()
            && vmctl_image::Recipe::of(&s.os).is_some()
        {
            variants.insert(vmctl_image::Variant::new(&s.os, &s.packages));
        }
    }
    let lock = crate::cmd::image::lock_path_for(&p.file);
    for variant in variants {
        let started = Instant::now();
        let img =
            vmctl_image::ensure(&p.state_dir, &lock, &variant).map_err(|e| PassError::Image {
                message: format!("{}: {e}", variant.key()),
            })?;
        if started.elapsed() > Duration::from_secs(1) {
            reporter.line(&format!(
                "the {} image {} (kernel {}) is ready after {:.1}s",
                variant.key(),
                &img.id[..12.min(img.id.len())],
                img.kernel_version,
                started.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(())
}

/// Load `opts.file`, observe, plan and apply without asking. A file that does
/// not load returns its diagnostics as the error and changes nothing.
pub fn reconcile(g: &Global, opts: &ReconcileOptions) -> miette::Result<ReconcileOutcome> {
    let prepared = prepare(g, opts)?;
    let reporter = Reporter::new(if opts.print { Mode::Plain } else { Mode::Quiet });
    if opts.print && prepared.plan.summary().has_actions() {
        reporter.line(&render::text(&prepared.plan));
    }
    execute(&prepared, opts.parallelism, &reporter)
}
