//! `vmctl-spec`: the KDL schema of vmctl.
//!
//! Turns a KDL file into a resolved, validated [`DesiredState`], reporting every
//! problem in the file at once as miette diagnostics with spans and help.
//!
//! Layers: [`syntax`] reads nodes and checks each value on its own, `resolve`
//! applies cross-VM rules and defaults, [`units`] reads sizes, [`profiles`]
//! holds OS defaults, [`guest`] holds the rules for guest-configuration values
//! (hostname, users, SSH keys, files, packages), [`net`] holds network values
//! and the deterministic choices of subnets, addresses and MACs, `cluster`
//! and `host` nodes (and a VM's `host`/`placement`) are checked in
//! `resolve_hosts`, [`render`] writes a resolved state back as KDL.

pub mod diagnostic;
pub mod fmt;
pub mod guest;
pub mod model;
pub mod names;
pub mod net;
pub mod profiles;
pub mod render;
mod resolve;
mod resolve_hosts;
mod resolve_net;
pub mod state;
pub mod suggest;
mod syntax;
pub mod units;

use std::path::Path;
use std::sync::Arc;

pub use diagnostic::SpecDiagnostic;
pub use model::*;
pub use render::to_kdl;

use diagnostic::{Diag, Sink};

/// A successfully resolved file, plus warnings (e.g. more vCPUs than the host has).
#[derive(Debug)]
pub struct Loaded {
    pub state: DesiredState,
    /// Each warning is a full miette diagnostic with its span.
    pub warnings: Vec<miette::Report>,
}

/// Every problem found in a file (all of them, not just the first).
/// `Diagnostic::related()` yields each problem with its own span and help.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{} problem(s) in {file}", problems.len())]
pub struct SpecError {
    pub file: String,
    #[related]
    pub problems: Vec<miette::Report>,
}

impl SpecError {
    /// The stable codes of the problems, in report order (for tests and tools).
    pub fn codes(&self) -> Vec<&'static str> {
        self.problems
            .iter()
            .filter_map(|r| r.downcast_ref::<SpecDiagnostic>().map(|d| d.code))
            .collect()
    }
}

/// Number of CPUs this host can run vCPUs on (for the host-CPU warning).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// Read and resolve a KDL file. Relative paths in it resolve against its folder.
pub fn load_file(path: &Path) -> Result<Loaded, SpecError> {
    load_file_in(path, &net::NetEnv::default())
}

/// [`load_file`] for a lab: `env` gives the lab's identity, the host's
/// routes and the recorded subnets that networks are resolved against.
pub fn load_file_in(path: &Path, env: &net::NetEnv) -> Result<Loaded, SpecError> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let mut sink = Sink::new(&name, Arc::new(String::new()));
            sink.push(
                Diag::error(
                    "vmctl::spec::unreadable",
                    format!("cannot read {name}: {e}"),
                )
                .help("pass the KDL file with -f FILE (default: ./vmctl.kdl)"),
            );
            return Err(into_error(&name, sink));
        }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parse_str_in(&name, &text, dir, host_cpus(), env)
}

/// Resolve KDL text. `source_name` names it in diagnostics; `base_dir` anchors
/// relative paths; `host_cpus` is what the "more vCPUs than the host" warning
/// compares against.
pub fn parse_str(
    source_name: &str,
    text: &str,
    base_dir: &Path,
    host_cpus: u32,
) -> Result<Loaded, SpecError> {
    parse_str_in(
        source_name,
        text,
        base_dir,
        host_cpus,
        &net::NetEnv::default(),
    )
}

/// [`parse_str`] against a lab's network environment (see [`load_file_in`]).
pub fn parse_str_in(
    source_name: &str,
    text: &str,
    base_dir: &Path,
    host_cpus: u32,
    env: &net::NetEnv,
) -> Result<Loaded, SpecError> {
    let shared = Arc::new(text.to_string());
    let mut sink = Sink::new(source_name, shared);
    let base = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    let base = resolve::absolute(&base, ".");

    let doc = match kdl::KdlDocument::parse_v2(text) {
        Ok(doc) => doc,
        Err(err) => {
            for d in err.diagnostics {
                let message = d.message.unwrap_or_else(|| "invalid KDL".to_string());
                let mut diag = Diag::error("vmctl::spec::syntax", format!("KDL syntax: {message}"))
                    .label(d.span, d.label.unwrap_or_else(|| "here".to_string()));
                diag =
                    diag.help_opt(d.help.or_else(|| {
                        Some("see docs/kdl.md for the file format (KDL v2)".to_string())
                    }));
                sink.push(diag);
            }
            if !sink.has_errors() {
                sink.push(Diag::error(
                    "vmctl::spec::syntax",
                    "the file is not valid KDL",
                ));
            }
            return Err(into_error(source_name, sink));
        }
    };

    let raw = syntax::Reader {
        text,
        sink: &mut sink,
        host_cpus,
    }
    .read_file(&doc);
    let state = resolve::resolve(raw, &base, env, &mut sink);
    if sink.has_errors() {
        return Err(into_error(source_name, sink));
    }
    let mut warnings = sink.warnings;
    warnings.sort_by_key(SpecDiagnostic::offset);
    Ok(Loaded {
        state,
        warnings: warnings.into_iter().map(miette::Report::new).collect(),
    })
}

fn into_error(name: &str, sink: Sink) -> SpecError {
    let mut errors = sink.errors;
    errors.sort_by_key(SpecDiagnostic::offset);
    SpecError {
        file: name.to_string(),
        problems: errors.into_iter().map(miette::Report::new).collect(),
    }
}
