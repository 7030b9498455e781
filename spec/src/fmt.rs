//! `vmctl fmt`: the canonical layout of a vmctl KDL file.
//!
//! Why it exists: files under review should differ only where their meaning
//! does. The rules (each has a snapshot in `snapshots/spec/fmt_*.snap`):
//!
//! 1. **Indentation**: four spaces per level; one node per line (`;`
//!    separators become line breaks); `{` on the node's line.
//! 2. **Spacing**: one space between a node name and each entry, none
//!    around `=`; no trailing whitespace; the file ends in one newline.
//!    `//` comments ending consecutive lines of a block start in one
//!    column, one space after the longest of those lines.
//! 3. **Blank lines**: a run of blank lines between two nodes becomes one;
//!    none at the start of a file or of a block.
//! 4. **Quoting**: every string is a `"…"` string (bare identifiers such as
//!    `os diag` are quoted), escaping only what must be escaped; raw
//!    (`#"…"#`) and multi-line (`"""`) strings are kept as written.
//! 5. **Sizes**: a size vmctl reads (`memory` and its `max`, `disk size=`,
//!    a host's `reserve memory=`)
//!    is written in its shortest exact spelling in its own family —
//!    binary (`1024MiB`, `1G`, `1_024 MiB` → `1GiB`) or decimal (`1000MB` →
//!    `1GB`). Same number of bytes, so the same meaning; a size vmctl cannot
//!    read is left alone for `validate` to report.
//! 6. **Kept**: node order, entry order, comments (`//`, `/* */`, `/-`) and
//!    numbers, booleans and `#null` as KDL writes them.
//!
//! The formatter works on the `kdl` crate's document (which keeps comments
//! and whitespace as text around each node and entry) and only rewrites
//! that text, so it cannot reorder anything. The one comment the crate
//! drops while parsing — after a block's closing `}` — makes `format`
//! refuse the file (naming the comment) instead of losing it: every
//! comment of the input is checked to be in the output.

use kdl::{KdlDocument, KdlEntry, KdlEntryFormat, KdlValue};

use crate::units::{format_size, parse_size};

/// Why a file cannot be formatted: it is not valid KDL v2.
#[derive(Debug, thiserror::Error)]
#[error("not valid KDL: {0}")]
pub struct FmtError(pub String);

/// The canonical text of a KDL document.
pub fn format(text: &str) -> Result<String, FmtError> {
    let orig = KdlDocument::parse_v2(text).map_err(|e| {
        let first = e
            .diagnostics
            .first()
            .and_then(|d| d.message.clone())
            .unwrap_or_else(|| "syntax error".to_string());
        FmtError(first)
    })?;
    // kdl's autoformat gives the layout (indentation, one node per line,
    // `{` placement) but drops entry comments and flattens comment blocks;
    // the pass after it puts the original text around nodes and entries
    // back, re-indented.
    let mut doc = orig.clone();
    doc.autoformat();
    let mut trailing = Vec::new();
    restore(&mut doc, &orig, 0, &mut trailing);
    if let (Some(f), Some(o)) = (doc.format_mut(), orig.format()) {
        f.leading = reindent(&o.leading, 0, true);
        f.trailing = reindent(&o.trailing, 0, false);
    }
    let mut out = doc.to_string();
    // No trailing whitespace; exactly one newline at the end.
    let mut lines: Vec<String> = out.lines().map(|l| l.trim_end().to_string()).collect();
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    align_comments(&mut lines, &trailing);
    out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    // The kdl crate drops a comment after a block's `}` when it parses; a
    // formatter must never lose one, so a file that would is refused.
    let (before, after) = (comments(text), comments(&out));
    if before != after {
        let lost = before
            .iter()
            .find(|c| !after.contains(c))
            .cloned()
            .unwrap_or_default();
        return Err(FmtError(format!(
            "formatting would lose the comment `{lost}` (a comment after a block's closing `}}` is not kept); move it to its own line"
        )));
    }
    Ok(out)
}

/// Every comment of a KDL text, in order, whitespace collapsed: `// …`,
/// `/* … */` (nested) and `/-` markers; strings (quoted, raw, multi-line)
/// are skipped. Used to prove formatting kept them all.
fn comments(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let collapse = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let find = |from: usize, pat: &[u8]| -> usize {
        b[from.min(b.len())..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map_or(b.len(), |p| from + p + pat.len())
    };
    while i < b.len() {
        match b[i] {
            b'"' if b[i..].starts_with(b"\"\"\"") => i = find(i + 3, b"\"\"\""),
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'#' => {
                let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
                let at = i + hashes;
                if b.get(at) == Some(&b'"') {
                    let quotes = if b[at..].starts_with(b"\"\"\"") { 3 } else { 1 };
                    let mut close = vec![b'"'; quotes];
                    close.extend(std::iter::repeat_n(b'#', hashes));
                    i = find(at + quotes, &close);
                } else {
                    i = at;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                out.push(collapse(&String::from_utf8_lossy(&b[i..end])));
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (start, mut depth) = (i, 0usize);
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(collapse(&String::from_utf8_lossy(
                    &b[start..i.min(b.len())],
                )));
            }
            b'/' if b.get(i + 1) == Some(&b'-') => {
                out.push("/-".to_string());
                i += 2;
            }
            _ => i += 1,
        }
    }
    out
}

fn indent(depth: usize) -> String {
    "    ".repeat(depth)
}

/// Comment text (the whitespace and comments before a node, or at the end
/// of a block) re-indented to `depth`: each comment line keeps its
/// indentation relative to the least indented one, a run of blank lines
/// becomes one, and `first` (nothing above it in its block) drops blank
/// lines at the start. Every line ends in a newline; the node's own
/// indentation (the last, unterminated segment) is left to the caller.
fn reindent(text: &str, depth: usize, first: bool) -> String {
    let mut segs: Vec<&str> = text.split('\n').collect();
    let tail = segs.pop().unwrap_or("");
    // A comment on the last segment (no newline after it) is a line too.
    if !tail.trim().is_empty() {
        segs.push(tail);
    }
    let min = segs
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    let mut blank = false;
    let mut any = false;
    for l in segs {
        if l.trim().is_empty() {
            blank = true;
            continue;
        }
        if blank && (any || !first) {
            out.push('\n');
        }
        blank = false;
        any = true;
        // Tabs count as one column: only the common prefix is removed.
        let cut = l.char_indices().nth(min).map_or(l.len(), |(i, _)| i);
        let (head, rest) = l.split_at(cut);
        let rest = if head.trim().is_empty() {
            rest
        } else {
            l.trim_start()
        };
        out.push_str(&indent(depth));
        out.push_str(rest.trim_end());
        out.push('\n');
    }
    if blank && (any || !first) {
        out.push('\n');
    }
    out
}

/// Put the original comments back around each node and entry of the
/// autoformatted `doc` (same shape as `orig`), and give every entry its
/// canonical text.
fn restore(doc: &mut KdlDocument, orig: &KdlDocument, depth: usize, trailing: &mut Vec<String>) {
    for (n, (node, onode)) in doc.nodes_mut().iter_mut().zip(orig.nodes()).enumerate() {
        if let (Some(f), Some(o)) = (node.format_mut(), onode.format()) {
            let lead = match o.leading.split_once('\n') {
                // `{ // why` before the first child: kept on the `{` line
                // (see below).
                Some((inline, rest)) if n == 0 && depth > 0 && !inline.trim().is_empty() => rest,
                _ => &o.leading,
            };
            f.leading = reindent(lead, depth, n == 0) + &indent(depth);
            // A comment after the node (`cpus 2 // why`, `os "diag" /* x */`)
            // is kept on its line.
            let inline = o.before_terminator.trim();
            f.before_terminator = if inline.is_empty() {
                String::new()
            } else {
                format!(" {inline}")
            };
            // A comment (or a `/-` commented-out block) before `{` is kept.
            let before = o.before_children.trim();
            if !before.is_empty() {
                f.before_children = format!(" {before} ");
            }
            let comment = o.terminator.trim_start_matches(';').trim();
            if !comment.is_empty() {
                trailing.push(comment.to_string());
                f.before_terminator = " ".into();
                f.terminator = format!("{comment}\n");
            }
        }
        let name = node.name().value().to_string();
        for (pos, (entry, oentry)) in node
            .entries_mut()
            .iter_mut()
            .zip(onode.entries())
            .enumerate()
        {
            let size = depth == 1 && is_size(&name, oentry, pos);
            rewrite_entry(entry, oentry, size);
        }
        if let (Some(children), Some(ochildren)) = (node.children_mut().as_mut(), onode.children())
        {
            restore(children, ochildren, depth + 1, trailing);
            if let (Some(f), Some(o)) = (children.format_mut(), ochildren.format()) {
                // A comment right after `{` stays there; comment lines
                // below it are re-indented.
                let (first, rest) = o.leading.split_once('\n').unwrap_or((&o.leading, ""));
                let child = ochildren
                    .nodes()
                    .first()
                    .and_then(|c| c.format())
                    .and_then(|f| f.leading.split_once('\n'))
                    .map_or("", |(inline, _)| inline);
                let inline: String = [first.trim(), child.trim()]
                    .iter()
                    .filter(|c| !c.is_empty())
                    .map(|c| format!(" {c}"))
                    .collect();
                if inline.trim_start().starts_with("//") {
                    trailing.push(inline.trim_start().to_string());
                }
                f.leading = format!("{inline}\n{}", reindent(rest, depth + 1, true));
                f.trailing = reindent(&o.trailing, depth + 1, false) + &indent(depth);
            }
        }
    }
}

/// Line comments at the end of consecutive lines of one block (same
/// indentation) start in one column: one space after the longest line.
/// `trailing` holds the comments placed at line ends, so a `//` inside a
/// string is never taken for one.
fn align_comments(lines: &mut [String], trailing: &[String]) {
    let split = |l: &str| -> Option<(usize, usize)> {
        trailing
            .iter()
            .filter(|c| l.len() > c.len() && l.ends_with(c.as_str()))
            .map(|c| l.len() - c.len())
            .find(|&at| l[..at].ends_with(' ') && !l[..at].trim().is_empty())
            .map(|at| (l[..at].trim_end().chars().count(), at))
    };
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let mut i = 0;
    while i < lines.len() {
        let Some(_) = split(&lines[i]) else {
            i += 1;
            continue;
        };
        let ind = indent_of(&lines[i]);
        let mut j = i;
        while j < lines.len() && indent_of(&lines[j]) == ind && split(&lines[j]).is_some() {
            j += 1;
        }
        let width = lines[i..j]
            .iter()
            .filter_map(|l| split(l).map(|(w, _)| w))
            .max()
            .unwrap_or(0);
        for l in &mut lines[i..j] {
            if let Some((w, at)) = split(l) {
                let code = l[..at].trim_end().to_string();
                let comment = l[at..].to_string();
                *l = format!("{code}{} {comment}", " ".repeat(width - w));
            }
        }
        i = j;
    }
}

/// `memory "S" max="S"` and `disk … size="S"` (inside `vm`/`defaults`),
/// `reserve memory="S"` (inside `host`).
fn is_size(node: &str, entry: &KdlEntry, pos: usize) -> bool {
    match (node, entry.name().map(|n| n.value())) {
        ("memory", None) => pos == 0,
        ("memory", Some("max")) => true,
        ("disk", Some("size")) => true,
        ("reserve", Some("memory")) => true,
        _ => false,
    }
}

fn rewrite_entry(entry: &mut KdlEntry, orig: &KdlEntry, size: bool) {
    let old = orig.format().cloned().unwrap_or_default();
    let raw_string = matches!(orig.value(), KdlValue::String(_))
        && (old.value_repr.starts_with('#') || old.value_repr.starts_with("\"\"\""));
    let repr = match orig.value() {
        _ if raw_string => old.value_repr.clone(),
        KdlValue::String(s) => {
            let s = if size { normalise_size(s) } else { s.clone() };
            quote(&s)
        }
        KdlValue::Integer(_) | KdlValue::Float(_) if !old.value_repr.is_empty() => {
            old.value_repr.clone()
        }
        v => v.to_string(),
    };
    // Whitespace becomes canonical; anything else there is a comment: kept.
    let keep = |s: &str, canonical: &str| {
        if s.trim().is_empty() {
            canonical.to_string()
        } else {
            s.to_string()
        }
    };
    entry.set_format(KdlEntryFormat {
        value_repr: repr,
        leading: keep(&old.leading, " "),
        trailing: keep(&old.trailing, ""),
        after_ty: old.after_ty,
        before_ty_name: old.before_ty_name,
        after_ty_name: old.after_ty_name,
        after_key: keep(&old.after_key, ""),
        after_eq: keep(&old.after_eq, ""),
        autoformat_keep: true,
    });
}

/// The shortest exact spelling of a size in its own unit family; anything
/// vmctl cannot read comes back unchanged.
pub fn normalise_size(text: &str) -> String {
    let Ok(bytes) = parse_size(text) else {
        return text.to_string();
    };
    if bytes == 0 {
        return text.trim().replace(['_', ' '], "");
    }
    let unit: String = text
        .trim()
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '_')
        .trim()
        .to_string();
    let decimal = ["KB", "MB", "GB", "TB"].contains(&unit.as_str());
    if !decimal {
        return format_size(bytes);
    }
    for (u, m) in [
        ("TB", 1_000_000_000_000u64),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ] {
        if bytes != 0 && bytes.is_multiple_of(m) {
            return format!("{}{u}", bytes / m);
        }
    }
    format!("{bytes}B")
}

/// A KDL v2 quoted string, escaping only what must be: `"`, `\`, control
/// characters, and the code points KDL forbids in a document.
pub fn quote(s: &str) -> String {
    crate::render::quote_with(s, forbidden)
}

/// Code points KDL v2 does not allow literally (bidi controls, BOM, and
/// newline-like characters beyond `\n`).
fn forbidden(c: char) -> bool {
    matches!(c,
        '\u{200E}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}'
        | '\u{0085}'
        | '\u{2028}'
        | '\u{2029}'
        | '\u{000B}'
        | '\u{000C}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_keep_their_family_and_their_bytes() {
        assert_eq!(normalise_size("1024MiB"), "1GiB");
        assert_eq!(normalise_size("1G"), "1GiB");
        assert_eq!(normalise_size(" 1_024 MiB "), "1GiB");
        assert_eq!(normalise_size("1536MiB"), "1536MiB");
        assert_eq!(normalise_size("1000MB"), "1GB");
        assert_eq!(normalise_size("1500MB"), "1500MB");
        assert_eq!(normalise_size("4096B"), "4KiB");
        assert_eq!(normalise_size("512"), "512");
        assert_eq!(normalise_size("1.5GiB"), "1.5GiB");
        for s in ["1024MiB", "1G", "1000MB", "7KB", "3T", "0B"] {
            assert_eq!(parse_size(&normalise_size(s)), parse_size(s), "{s}");
        }
    }

    #[test]
    fn comments_are_found_outside_strings_only() {
        let t = "a \"// no\" #\"/* no */\"# /* yes /* nested */ */ b // yes too\n/- c\n\"\"\"\n// no\n\"\"\"";
        assert_eq!(comments(t), ["/* yes /* nested */ */", "// yes too", "/-"]);
    }

    #[test]
    fn a_comment_kdl_would_drop_is_refused_not_lost() {
        let e = format("vm \"a\" {\n    os \"diag\"\n} // end of a\n").unwrap_err();
        assert!(e.to_string().contains("`// end of a`"), "{e}");
    }

    #[test]
    fn quoting_escapes_only_what_it_must() {
        assert_eq!(quote("a\"b\\c\n→"), "\"a\\\"b\\\\c\\n→\"");
        assert_eq!(quote("\u{202E}"), "\"\\u{202e}\"");
    }
}
