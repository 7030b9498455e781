//! `vmctl-spec`: the KDL schema of vmctl.
//!
//! Turns a KDL file into a resolved, validated [`DesiredState`], reporting every
//! problem in the file at once as miette diagnostics with spans and help.

pub mod model;

pub use model::*;
