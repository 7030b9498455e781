//! SSH "hosts" for the end-to-end tests: the harness lives in
//! `vmctl_hostrpc::testkit` (shared with `cargo xtask chaos`); this only
//! points its hosts at this test build's vmctl binary.

pub use vmctl_hostrpc::testkit::Hosts;

/// `n` hosts running this build's vmctl; `None` when this machine cannot
/// run them (printed as a skip).
pub fn start(n: usize) -> Option<Hosts> {
    Hosts::start(n, std::path::Path::new(env!("CARGO_BIN_EXE_vmctl")))
}
