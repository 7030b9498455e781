//! `vmctl-planner`: from desired and observed state to an ordered action graph,
//! and the engine that carries it out.
//!
//! Needs no KVM: the runtime is reached only through the [`Backend`] trait, so
//! tests can feed any observed state. The whole API a caller needs:
//!
//! ```text
//! let observed = backend.observe()?;                                   // ObservedState
//! let plan = vmctl_planner::plan(&desired, &observed, &backend.capabilities())?;
//! print!("{}", vmctl_planner::render::text(&plan));                    // or render::json(&plan)
//!
//! let journal = vmctl_planner::Journal::open(&state_dir)?;             // <state>/journal.jsonl
//! let outcome = vmctl_planner::engine::apply(
//!     &backend, &plan, &desired, Some(&journal),
//!     &vmctl_planner::Options { parallelism: 4, ..Default::default() },
//!     &|event| { /* Event::{Interrupted, Started, Finished, Failed, Skipped} */ },
//! );
//! if !outcome.ok() { /* outcome.failed: (action id, error) */ }
//! ```
//!
//! * [`observed`] — what was last applied (`vm.json`, `networks/<name>.json`)
//!   and what is live.
//! * [`backend`] — the trait the runtime implements (observe, capabilities,
//!   idempotent actions).
//! * [`capabilities`] — the single table deciding live / restart / replace /
//!   refused per change; [`capabilities::markdown`] documents it.
//! * [`diff`] — attribute differences, classified by the table.
//! * [`placement`] — which host each VM of a lab over several hosts runs
//!   on (pure and deterministic; sticky, pins, labels, spread, best fit).
//! * [`plan`](mod@plan) — the action DAG (petgraph), in execution order.
//! * [`render`] — text and JSON output; [`markdown`] — the PR-comment form.
//! * [`saved`] — saved plans: the basis a plan was computed from, and
//!   what changed since (`plan -out`, `apply FILE`, `show`).
//! * [`engine`] — walks the DAG with bounded parallelism; [`journal`] — the
//!   fsync'd intent log that makes a killed apply recoverable.
//! * [`synthetic`] — generated labs of N VMs for the benchmarks.
//!
//! docs/planning.md describes the decisions (and embeds the table).

pub mod backend;
pub mod capabilities;
pub mod diff;
pub mod engine;
pub mod journal;
pub mod markdown;
pub mod observed;
pub mod placement;
pub mod plan;
pub mod render;
pub mod saved;
pub mod size;
pub mod synthetic;

pub use backend::{Backend, BackendError, CopyReport};
pub use capabilities::{ActionKind, Disruption};
pub use engine::{Event, Options, Outcome, SkipReason};
pub use journal::{Journal, JournalEntry, JournalEvent};
pub use observed::{
    Capabilities, Desired, HostCapacity, Live, LiveDisk, LiveNic, ObservedNetwork, ObservedState,
    ObservedVm, Record, RunState,
};
pub use placement::{HostState, Move, MoveReason, Placement, Unplaceable, place};
pub use plan::{Action, Plan, PlanError, Resource, Summary, plan, plan_on_hosts};
