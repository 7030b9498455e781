//! KDL parse + resolve (`vmctl_spec::parse_str`, what `vmctl validate` and
//! every other command run on the user's file). Properties: a file that
//! resolves renders back to KDL (`vmctl_spec::to_kdl`) that resolves to the
//! same state; a file that does not resolve yields diagnostics that render
//! (spans inside the text) without a panic.
//!
//! Input: the file's bytes (non-UTF-8 inputs are skipped: the CLI reads the
//! file with `read_to_string` and reports an unreadable file).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use miette::{GraphicalReportHandler, GraphicalTheme};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/fuzz/base");
    match vmctl_spec::parse_str("fuzz.kdl", text, base, 4) {
        Ok(loaded) => {
            let rendered = vmctl_spec::to_kdl(&loaded.state);
            match vmctl_spec::parse_str("rendered.kdl", &rendered, base, 4) {
                Ok(again) => assert_eq!(
                    again.state, loaded.state,
                    "render → parse changed the state; rendered:\n{rendered}"
                ),
                Err(e) => panic!(
                    "the rendered state does not resolve: {:?}\n{rendered}",
                    e.codes()
                ),
            }
        }
        Err(e) => {
            let mut out = String::new();
            GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
                .render_report(&mut out, &e)
                .expect("rendering into a String");
        }
    }
});
