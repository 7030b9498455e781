//! The plan as people read it (Terraform-style text) and as scripts read it
//! (the `plan --json` contract, `format_version` "1").

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;
use vmctl_spec::{NetworkSpec, VmSpec};

use crate::capabilities::{ActionKind, Disruption};
use crate::plan::{Action, Plan, Resource, Summary};
use crate::size::{human_bytes, human_mib};

/// The symbol in front of an action.
pub fn symbol(a: &Action) -> &'static str {
    if a.is_refused() {
        return "!";
    }
    match a.kind {
        ActionKind::Create => "+",
        ActionKind::Copy => "=>",
        ActionKind::Destroy => "-",
        ActionKind::Replace => "-/+",
        ActionKind::Restart | ActionKind::Stop if a.disruption == Disruption::Restart => "~!",
        _ => "~",
    }
}

/// A VM's configuration as `(label, value)` lines, as the text plan shows
/// a create (and the markdown plan a create's or destroy's details).
pub fn spec_fields(s: &VmSpec) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: String| out.push((k.to_string(), v));
    push("os", s.os.clone());
    if s.max_cpus != s.cpus {
        push("cpus", format!("{} (max {})", s.cpus, s.max_cpus));
    } else {
        push("cpus", s.cpus.to_string());
    }
    if s.max_memory_mib != s.memory_mib {
        push(
            "memory",
            format!(
                "{} (max {})",
                human_mib(s.memory_mib),
                human_mib(s.max_memory_mib)
            ),
        );
    } else {
        push("memory", human_mib(s.memory_mib));
    }
    for d in &s.disks {
        let mut v = human_bytes(d.size_bytes);
        if let Some(p) = &d.path {
            let _ = write!(v, " at {}", p.display());
        }
        push(&format!("disk {}", d.name), v);
    }
    if s.cpu_weight != 100 {
        push("cpu-weight", s.cpu_weight.to_string());
    }
    if !s.depends_on.is_empty() {
        push("depends-on", s.depends_on.join(", "));
    }
    if !s.autostart {
        push("autostart", "false".into());
    }
    if !s.packages.is_empty() {
        push("packages", s.packages.join(", "));
    }
    let c = &s.config;
    if let Some(h) = &c.hostname {
        push("hostname", h.clone());
    }
    if !c.users.is_empty() {
        let names: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
        push("users", names.join(", "));
    }
    if !c.files.is_empty() {
        let paths: Vec<&str> = c.files.iter().map(|f| f.path.as_str()).collect();
        push("files", paths.join(", "));
    }
    out
}

fn spec_lines(out: &mut String, s: &VmSpec) {
    for (k, v) in spec_fields(s) {
        let _ = writeln!(out, "      {k}: {v}");
    }
    for n in &s.nics {
        let _ = writeln!(out, "      nic {}: {} mac {}", n.network, n.ip, n.mac);
    }
}

fn network_lines(out: &mut String, n: &NetworkSpec) {
    let _ = writeln!(out, "      subnet: {} (host {})", n.subnet, n.host_ip);
    if n.nat {
        let _ = writeln!(
            out,
            "      nat: on (masquerade to the host's other interfaces)"
        );
    }
}

/// The summary sentence.
pub fn summary_line(s: &Summary) -> String {
    if !s.has_changes() {
        return "No changes. Infrastructure matches the configuration.".to_string();
    }
    let mut line = format!(
        "Plan: {} to create, {} to update live, {} to restart, {} to replace, {} to destroy",
        s.create, s.update_live, s.restart, s.replace, s.destroy
    );
    for (n, what) in [
        (s.copy, "to copy"),
        (s.start, "to start"),
        (s.stop, "to stop"),
        (s.refused, "refused"),
    ] {
        if n > 0 {
            let _ = write!(line, ", {n} {what}");
        }
    }
    line.push('.');
    line
}

/// The text plan.
pub fn text(plan: &Plan) -> String {
    let summary = plan.summary();
    let hosts: HashMap<&str, &str> = plan
        .actions
        .iter()
        .filter_map(|a| a.host.as_deref().map(|h| (a.id.as_str(), h)))
        .collect();
    let mut out = String::new();
    if summary.has_changes() {
        out.push_str("vmctl will perform the following actions:\n\n");
    }
    for a in &plan.actions {
        let resource = if a.is_network() { "network " } else { "" };
        let _ = write!(out, "  {} {resource}{} {}", symbol(a), a.vm, a.kind.label());
        if let Some(h) = &a.host {
            let _ = write!(out, " on {h}");
        }
        if a.is_refused() {
            out.push_str(" (refused)");
        } else if a.id.ends_with(":stop-for-copy") {
            out.push_str(" (for copy)");
        } else if a.id.ends_with(":start-after-copy") {
            out.push_str(" (after copy)");
        }
        if let Some(src) = &a.source {
            let _ = write!(out, " from {src}");
        }
        out.push('\n');
        let live_or_plain = matches!(a.disruption, Disruption::Live | Disruption::None)
            && !matches!(a.kind, ActionKind::Start | ActionKind::Stop);
        if let Some(r) = &a.reason
            && !(live_or_plain && matches!(a.kind, ActionKind::Create) && !a.is_network())
        {
            for part in r.split("; ") {
                let _ = writeln!(out, "      # {part}");
            }
        }
        match a.kind {
            _ if a.is_network() => {
                if let (Some(old), Some(new)) = (&a.network_old, &a.network) {
                    let _ = writeln!(out, "      subnet: {} → {}", old.subnet, new.subnet);
                    if old.nat != new.nat {
                        let _ = writeln!(out, "      nat: {} → {}", old.nat, new.nat);
                    }
                } else if let Some(n) = a.network.as_ref().or(a.network_old.as_ref()) {
                    network_lines(&mut out, n);
                }
            }
            ActionKind::Create | ActionKind::Copy if !a.is_refused() => {
                if let Some(s) = &a.new {
                    spec_lines(&mut out, s);
                }
            }
            _ => {
                for c in &a.changes {
                    let label = match &c.disk {
                        Some(d) => format!("disk {d}"),
                        None => c.attribute.label().to_string(),
                    };
                    let _ = writeln!(out, "      {label}: {} → {}", c.before_text, c.after_text);
                }
            }
        }
        if !a.depends_on.is_empty() {
            let _ = writeln!(out, "      after: {}", after(a, &hosts));
        }
        out.push('\n');
    }
    out.push_str(&summary_line(&summary));
    out.push('\n');
    out
}

/// The `after:` line: dependency ids, each on another host than the
/// action's marked with it (`db:create (on h1)`): a dependency across hosts.
fn after(a: &Action, hosts: &HashMap<&str, &str>) -> String {
    a.depends_on
        .iter()
        .map(|d| match (hosts.get(d.as_str()), a.host.as_deref()) {
            (Some(h), Some(mine)) if *h != mine => format!("{d} (on {h})"),
            _ => d.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Serialize)]
struct JsonAction<'a> {
    id: &'a str,
    /// `vm` or `network`.
    resource: Resource,
    /// The VM's name, or the network's for a network action.
    vm: &'a str,
    kind: ActionKind,
    disruption: Disruption,
    refused: bool,
    reason: Option<&'a str>,
    before: Value,
    after: Value,
    depends_on: &'a [String],
    /// Only in a lab over several hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonSummary {
    #[serde(flatten)]
    counts: Summary,
    changes: bool,
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    format_version: &'static str,
    actions: Vec<JsonAction<'a>>,
    summary: JsonSummary,
}

/// The `plan --json` document. A refused entry has `"refused": true`,
/// `"disruption": "none"` and the kind of the change it refuses.
pub fn json(plan: &Plan) -> Value {
    let actions = plan
        .actions
        .iter()
        .map(|a| {
            let (before, after) = a.before_after();
            JsonAction {
                id: &a.id,
                resource: a.resource,
                vm: &a.vm,
                kind: a.kind,
                disruption: if a.is_refused() {
                    Disruption::None
                } else {
                    a.disruption
                },
                refused: a.is_refused(),
                reason: a.reason.as_deref(),
                before,
                after,
                depends_on: &a.depends_on,
                host: a.host.as_deref(),
            }
        })
        .collect();
    let counts = plan.summary();
    let doc = JsonPlan {
        format_version: vmctl_spec::FORMAT_VERSION,
        actions,
        summary: JsonSummary {
            counts,
            changes: counts.has_changes(),
        },
    };
    serde_json::to_value(doc).unwrap_or(Value::Null)
}
