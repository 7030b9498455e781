//! `vmctl-planner`: from desired and observed state to an ordered action graph.
//!
//! Needs no KVM: the runtime is reached only through a trait, so tests can feed
//! any observed state.
