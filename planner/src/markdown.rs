//! The plan as a pull-request comment (`plan --format markdown`,
//! `show FILE --format markdown`).
//!
//! Why a third rendering: a reviewer on a PR wants the disruptive part first
//! and the detail folded away. So: the summary counts, a callout naming every
//! VM that is restarted, replaced or destroyed, one table row per action
//! (most disruptive first, then plan order) with its disruption and reason,
//! and a collapsed `<details>` per VM with its before → after values.
//! Every cell is escaped: reasons and paths come from user files.

use std::fmt::Write as _;

use crate::capabilities::{ActionKind, Disruption};
use crate::plan::{Action, Plan};
use crate::render::{spec_fields, summary_line, symbol};

/// How disruptive an action is, for ordering: lower comes first. `fresh`:
/// the VMs this plan creates (stopping one for a copy disrupts nothing yet).
fn rank(a: &Action, fresh: &[&str]) -> u8 {
    if a.is_refused() {
        return 2;
    }
    if fresh.contains(&a.vm.as_str()) {
        return 3;
    }
    match a.disruption {
        Disruption::Replace => 0,
        Disruption::Restart => 1,
        _ => 3,
    }
}

/// Text safe inside a markdown table cell or an HTML summary.
fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '`' => out.push_str("&#96;"),
            '*' | '_' | '[' | ']' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn disruption_label(a: &Action) -> &'static str {
    if a.is_refused() {
        return "**refused**";
    }
    match a.disruption {
        Disruption::Replace if a.kind == ActionKind::Destroy => "**destroy**",
        Disruption::Replace => "**replace**",
        Disruption::Restart => "**restart**",
        Disruption::Live => "live",
        Disruption::None => "none",
        Disruption::Refused => "**refused**",
    }
}

/// The before → after rows of one action.
fn rows(a: &Action) -> Vec<(String, String, String)> {
    let none = "—".to_string();
    match a.kind {
        ActionKind::Create | ActionKind::Copy if !a.is_refused() => a
            .new
            .as_ref()
            .map(spec_fields)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, none.clone(), v))
            .collect(),
        ActionKind::Destroy => a
            .old
            .as_ref()
            .map(spec_fields)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v, none.clone()))
            .collect(),
        _ => a
            .changes
            .iter()
            .map(|c| {
                let label = match &c.disk {
                    Some(d) => format!("disk {d}"),
                    None => c.attribute.label().to_string(),
                };
                (label, c.before_text.clone(), c.after_text.clone())
            })
            .collect(),
    }
}

/// What an action is on: `web`, or network `lab`.
fn label(a: &Action) -> String {
    match a.resource {
        crate::plan::Resource::Vm => format!("`{}`", a.vm),
        crate::plan::Resource::Network => format!("network `{}`", a.vm),
    }
}

/// The markdown plan.
pub fn markdown(plan: &Plan) -> String {
    let summary = plan.summary();
    let mut out = String::from("### vmctl plan\n\n");
    let _ = writeln!(out, "**{}**\n", summary_line(&summary));
    if !summary.has_changes() {
        return out;
    }

    let fresh: Vec<&str> = plan
        .executable()
        .filter(|a| matches!(a.kind, ActionKind::Create | ActionKind::Copy))
        .map(|a| a.vm.as_str())
        .collect();
    let rank = |a: &Action| rank(a, &fresh);
    let mut ordered: Vec<&Action> = plan.actions.iter().collect();
    ordered.sort_by_key(|a| rank(a)); // stable: plan order within a rank
    let named = |r: u8| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for a in ordered.iter().filter(|a| rank(a) == r) {
            let name = label(a);
            if !v.contains(&name) {
                v.push(name);
            }
        }
        v
    };
    let (gone, down, refused) = (named(0), named(1), named(2));
    if !gone.is_empty() || !down.is_empty() || !refused.is_empty() {
        out.push_str("> [!WARNING]\n");
        if !gone.is_empty() {
            let _ = writeln!(
                out,
                "> **Replaced or destroyed (disks deleted):** {}  ",
                gone.join(", ")
            );
        }
        if !down.is_empty() {
            let _ = writeln!(out, "> **Restarted (downtime):** {}  ", down.join(", "));
        }
        if !refused.is_empty() {
            let _ = writeln!(
                out,
                "> **Refused (apply exits 1):** {}  ",
                refused.join(", ")
            );
        }
        out.push('\n');
    }

    out.push_str("| | resource | action | disruption | reason |\n|---|---|---|---|---|\n");
    for a in &ordered {
        let mut action = a.kind.label().to_string();
        if let Some(src) = &a.source {
            let _ = write!(action, " from {src}");
        }
        if let Some(h) = &a.host {
            let _ = write!(action, " on {}", cell(h));
        }
        let what = label(a);
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            symbol(a),
            what,
            cell(&action),
            disruption_label(a),
            cell(a.reason.as_deref().unwrap_or(""))
        );
    }
    out.push('\n');

    // One <details> per VM, in the order the VMs first appear above.
    let mut vms: Vec<&str> = Vec::new();
    for a in &ordered {
        if !vms.contains(&a.vm.as_str()) {
            vms.push(&a.vm);
        }
    }
    for vm in vms {
        let acts: Vec<&&Action> = ordered.iter().filter(|a| a.vm == vm).collect();
        let rows: Vec<_> = acts.iter().flat_map(|a| rows(a)).collect();
        if rows.is_empty() {
            continue; // a refused copy: nothing before, nothing after
        }
        let kinds: Vec<&str> = acts.iter().map(|a| a.kind.label()).collect();
        let _ = writeln!(
            out,
            "<details><summary><code>{vm}</code>: {}</summary>\n",
            cell(&kinds.join(", "))
        );
        out.push_str("| | before | after |\n|---|---|---|\n");
        for (k, before, after) in rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                cell(&k),
                cell(&before),
                cell(&after)
            );
        }
        out.push_str("\n</details>\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_break_the_table_or_inject_html() {
        assert_eq!(
            cell("a|b<script>`x`\n*y*"),
            "a\\|b&lt;script&gt;&#96;x&#96; \\*y\\*"
        );
    }
}
