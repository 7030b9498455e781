//! `vmctl fmt`'s rules, one snapshot each (input and output side by side in
//! `snapshots/spec/fmt_*.snap`), and the properties every formatting must
//! have: idempotent, and the resolved state of the formatted file is the
//! resolved state of the original.

use std::path::Path;

mod common;

use proptest::prelude::*;
use vmctl_spec::fmt::format;

/// Snapshot one rule; every case must also be a fixed point and mean the same.
fn rule(name: &str, input: &str) {
    let out = format(input).expect("formats");
    assert_eq!(format(&out).expect("formats again"), out, "not idempotent");
    let resolve = |t: &str| {
        vmctl_spec::parse_str("t.kdl", t, Path::new("/base"), u32::MAX)
            .map(|l| l.state)
            .map_err(|e| format!("{e:?}"))
    };
    assert_eq!(resolve(&out), resolve(input), "meaning changed:\n{out}");
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/spec"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(format!("fmt_{name}"), format!("--- input\n{input}--- formatted\n{out}"));
    });
}

#[test]
fn indentation_and_one_node_per_line() {
    rule(
        "indentation",
        "vm \"a\"{\n  os \"diag\"\n\t\tcpus 1; memory \"128MiB\"\n        disk \"d\" size=\"1GiB\"\n}\nvm \"b\" { os \"diag\"; }\n",
    );
}

#[test]
fn spacing_around_entries() {
    rule(
        "spacing",
        "vm   \"a\"   {\n  os   \"diag\"\n    memory    \"128MiB\"   max=\"256MiB\"   \n    cpus 1    max=2\n}   \n\n\n",
    );
}

#[test]
fn blank_lines_collapse() {
    rule(
        "blank_lines",
        "\n\n// a lab\n\n\n\nvm \"a\" {\n\n    os \"diag\"\n\n\n    memory \"128MiB\"\n}\n\n\n\nvm \"b\" {\n    os \"diag\"\n}\n",
    );
}

#[test]
fn strings_are_quoted_raw_and_multiline_strings_kept() {
    rule(
        "quoting",
        concat!(
            "vm a {\n    os diag\n    memory \"128MiB\"\n    depends-on b\n}\n",
            "vm b {\n    os debian-12\n    file \"/etc/motd\" content=#\"raw \\n stays\"#\n",
            "    file \"/etc/issue\" content=\"\"\"\n        two\n        lines\n        \"\"\"\n",
            "    file \"/etc/x\" content=\"tab\\there → unicode stays\"\n}\n",
        ),
    );
}

#[test]
fn sizes_normalised_within_their_family() {
    rule(
        "sizes",
        concat!(
            "defaults {\n    memory \"256M\"\n}\n",
            "vm \"a\" {\n    os \"diag\"\n    memory \"1024MiB\" max=\"2G\"\n",
            "    disk \"d\" size=\"1_024 MiB\"\n    disk \"e\" size=\"1000MB\"\n    disk \"f\" size=\"1536MiB\"\n}\n",
        ),
    );
}

#[test]
fn comments_and_order_are_kept() {
    rule(
        "comments",
        concat!(
            "// header\n// two lines\nvm \"z\" { // why z\n",
            "  os \"diag\" /* inline */\n  /- cpus 4\n  cpus 2 // two\n",
            "      /* a block\n         comment */\n  memory \"128MiB\" // boot memory\n  cpu-weight 200 // a share\n  // last in block\n}\n",
            "/- vm \"old\" {\n    os \"diag\"\n}\nvm \"b\" /- {\n    os \"x\"\n} /* why */ {\n    os \"diag\"\n}\nvm \"a\" {    // aligned\n    os \"diag\"         // comments\n}\n// the end\n",
        ),
    );
}

/// Layout noise for a well-formed file: indentation, spacing, blank lines,
/// `;` separators, comments between nodes.
fn messy(text: &str, seed: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let r = seed.get(i % seed.len().max(1)).copied().unwrap_or(0);
        let body = line.trim_start();
        let pad = match r % 4 {
            0 => "",
            1 => "  ",
            2 => "\t",
            _ => "        ",
        };
        if r % 5 == 0 {
            out.push_str("// a comment\n");
        }
        if r % 7 == 0 {
            out.push('\n');
        }
        out.push_str(pad);
        out.push_str(&body.replace(' ', if r % 3 == 0 { "   " } else { " " }));
        // vmctl writes no multi-line strings: a comment can end any line
        // but a closing `}` (where `fmt` refuses rather than lose it).
        match if body.starts_with('}') { 0 } else { r % 6 } {
            1 => out.push_str(&format!(" // tail{i}")),
            4 => out.push_str(&format!(" /* block{i} */")),
            _ => {}
        }
        out.push('\n');
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// fmt(fmt(x)) = fmt(x) and resolved(fmt(x)) = resolved(x) for files
    /// vmctl writes itself (every field, every node type), made messy.
    #[test]
    fn fmt_is_idempotent_and_keeps_the_meaning(s in common::states::state(), seed in proptest::collection::vec(any::<u8>(), 1..16)) {
        let text = messy(&vmctl_spec::to_kdl(&s), &seed);
        let once = format(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let twice = format(&once).map_err(|e| TestCaseError::fail(format!("{e}\n{once}")))?;
        prop_assert_eq!(&twice, &once);
        // Every comment survives, in order.
        let marks = |t: &str| -> Vec<String> {
            t.split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| w.starts_with("tail") || w.starts_with("block") || *w == "comment")
                .map(str::to_string)
                .collect()
        };
        prop_assert_eq!(marks(&once), marks(&text), "{}", once);
        let resolve = |t: &str| vmctl_spec::parse_str("t.kdl", t, Path::new("/base"), u32::MAX).map(|l| l.state);
        let before = resolve(&text).map_err(|e| TestCaseError::fail(format!("{e:?}\n{text}")))?;
        let after = resolve(&once).map_err(|e| TestCaseError::fail(format!("{e:?}\n{once}")))?;
        prop_assert_eq!(after, before, "{}", once);
    }

    /// Arbitrary text never panics; whatever formats is a fixed point.
    #[test]
    fn any_text_formats_or_fails_cleanly(t in "[ a-z0-9\"={};/*\\n\\t#-]{0,80}") {
        if let Ok(once) = format(&t) {
            prop_assert_eq!(format(&once).ok(), Some(once.clone()), "{:?}", t);
        }
    }
}
