//! Helpers shared by the spec crate's integration tests.
#![allow(dead_code)]

pub mod states;

/// Run insta assertions with this crate's snapshot settings: files in
/// `snapshots/spec`, no module prefix, no expression.
#[allow(unused_macros)]
macro_rules! in_spec_snapshots {
    ($assert:block) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/spec"),
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, $assert)
    };
}

/// An insta text snapshot in `snapshots/spec`, named `$name`
/// (`#[macro_use] mod common;` brings it into a test file).
#[allow(unused_macros)]
macro_rules! snap {
    ($name:expr, $value:expr) => {
        in_spec_snapshots!({ insta::assert_snapshot!($name, $value) })
    };
}

/// The same for a value serialised as JSON.
#[allow(unused_macros)]
macro_rules! snap_json {
    ($name:expr, $value:expr) => {
        in_spec_snapshots!({ insta::assert_json_snapshot!($name, $value) })
    };
}

use std::path::Path;

use vmctl_spec::{Loaded, SpecError};

pub const HOST_CPUS: u32 = 8;

/// Parse `text` as if it were `/lab/<name>` on an 8-CPU host.
pub fn parse(name: &str, text: &str) -> Result<Loaded, SpecError> {
    vmctl_spec::parse_str(name, text, Path::new("/lab"), HOST_CPUS)
}

/// Render one report exactly as a user sees it, without colour.
pub fn render(report: &miette::Report) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, report.as_ref())
        .unwrap();
    out
}

/// Every problem of a failed parse, rendered one after another.
pub fn render_all(err: &SpecError) -> String {
    err.problems
        .iter()
        .map(render)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parse text that must fail; return its rendered problems.
pub fn errors_of(name: &str, text: &str) -> (Vec<&'static str>, String) {
    match parse(name, text) {
        Ok(l) => panic!("{name} should not validate, got {:#?}", l.state),
        Err(e) => (e.codes(), render_all(&e)),
    }
}
