//! Attribute-by-attribute comparison of one declared VM with what is observed,
//! each difference classified by a row of the capability table.

use serde_json::{Value, json};
use vmctl_spec::{DiskSpec, FileSpec, NicSpec, UserSpec, VmSpec};

use crate::capabilities::{self, ActionKind, Attribute, Condition, Disruption};
use crate::observed::Capabilities;
use crate::size::{human_bytes, human_mib};

/// One difference between what is and what should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub attribute: Attribute,
    pub condition: Condition,
    /// The disk this change is about, if any.
    pub disk: Option<String>,
    /// Flat JSON key for the plan's `before`/`after` objects
    /// (`cpus`, `memory_mib`, `disks.root.size_bytes`, ...).
    pub key: String,
    pub before: Value,
    pub after: Value,
    /// Human form (`1 GiB`), for the text plan.
    pub before_text: String,
    pub after_text: String,
    pub disruption: Disruption,
    pub kind: ActionKind,
    pub reason: String,
}

struct Ctx<'a> {
    caps: &'a Capabilities,
    vm: &'a str,
    out: Vec<Change>,
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        attribute: Attribute,
        condition: Condition,
        disk: Option<&str>,
        key: String,
        (before, after): (Value, Value),
        (before_text, after_text): (String, String),
        vars: &[(&str, &str)],
    ) {
        let Some(row) = capabilities::row(attribute, condition) else {
            // Every (attribute, condition) the diff produces has a row; the
            // table tests enforce it.
            tracing::error!(?attribute, ?condition, "capability table has no row");
            return;
        };
        let d = row.decide(self.caps);
        let mut all = vec![
            ("vm", self.vm),
            ("disk", disk.unwrap_or("")),
            ("before", before_text.as_str()),
            ("after", after_text.as_str()),
        ];
        all.extend_from_slice(vars);
        let reason = capabilities::fill(d.reason, &all);
        self.out.push(Change {
            attribute,
            condition,
            disk: disk.map(str::to_string),
            key,
            before,
            after,
            before_text,
            after_text,
            disruption: d.disruption,
            kind: d.kind,
            reason,
        });
    }
}

fn up_down<T: Ord>(before: T, after: T, max_before: T) -> Condition {
    if after < before {
        Condition::Down
    } else if after <= max_before {
        Condition::UpWithinMax
    } else {
        Condition::UpBeyondMax
    }
}

fn disk_text(d: &DiskSpec) -> String {
    match &d.path {
        Some(p) => format!("{} at {}", human_bytes(d.size_bytes), p.display()),
        None => human_bytes(d.size_bytes),
    }
}

/// Where a disk's file is, as the plan says it: its `path`, or its place
/// in the state directory (the planner does not know the directory).
fn file_text(vm: &str, d: &DiskSpec) -> String {
    match &d.path {
        Some(p) => p.display().to_string(),
        None => format!("<state-dir>/vms/{vm}/disks/{}.raw", d.name),
    }
}

/// Every configuration difference from `current` (observed) to `desired`,
/// in a fixed order. Run state is handled by the planner, not here.
pub fn diff_vm(current: &VmSpec, desired: &VmSpec, caps: &Capabilities) -> Vec<Change> {
    let mut cx = Ctx {
        caps,
        vm: &desired.name,
        out: Vec::new(),
    };

    if current.os != desired.os {
        cx.push(
            Attribute::Os,
            Condition::Changed,
            None,
            "os".into(),
            (json!(current.os), json!(desired.os)),
            (current.os.clone(), desired.os.clone()),
            &[],
        );
    } else if current.image != desired.image {
        cx.push(
            Attribute::Image,
            Condition::Changed,
            None,
            "image".into(),
            (json!(current.image), json!(desired.image)),
            (current.os.clone(), desired.os.clone()),
            &[],
        );
    }
    if current.packages != desired.packages {
        let delta = package_delta(&current.packages, &desired.packages);
        cx.push(
            Attribute::Packages,
            Condition::Changed,
            None,
            "packages".into(),
            (json!(current.packages), json!(desired.packages)),
            (
                list_text(current.packages.iter().map(String::as_str)),
                list_text(desired.packages.iter().map(String::as_str)),
            ),
            &[("delta", &delta)],
        );
    }

    // Max first: a changed max forces a restart anyway, and the cpus/memory
    // rows below compare against the *running* VM's max.
    if current.max_cpus != desired.max_cpus {
        cx.push(
            Attribute::MaxCpus,
            Condition::Changed,
            None,
            "max_cpus".into(),
            (json!(current.max_cpus), json!(desired.max_cpus)),
            (current.max_cpus.to_string(), desired.max_cpus.to_string()),
            &[],
        );
    }
    if current.cpus != desired.cpus {
        let cond = up_down(current.cpus, desired.cpus, current.max_cpus);
        cx.push(
            Attribute::Cpus,
            cond,
            None,
            "cpus".into(),
            (json!(current.cpus), json!(desired.cpus)),
            (current.cpus.to_string(), desired.cpus.to_string()),
            &[("max", &current.max_cpus.to_string())],
        );
    }
    if current.max_memory_mib != desired.max_memory_mib {
        cx.push(
            Attribute::MaxMemory,
            Condition::Changed,
            None,
            "max_memory_mib".into(),
            (json!(current.max_memory_mib), json!(desired.max_memory_mib)),
            (
                human_mib(current.max_memory_mib),
                human_mib(desired.max_memory_mib),
            ),
            &[],
        );
    }
    if current.memory_mib != desired.memory_mib {
        let cond = match up_down(
            current.memory_mib,
            desired.memory_mib,
            current.max_memory_mib,
        ) {
            Condition::UpWithinMax
                if !(desired.memory_mib - current.memory_mib)
                    .is_multiple_of(vmctl_spec::units::HOT_ADD_BLOCK_MIB) =>
            {
                Condition::UpNotInSteps
            }
            c => c,
        };
        cx.push(
            Attribute::Memory,
            cond,
            None,
            "memory_mib".into(),
            (json!(current.memory_mib), json!(desired.memory_mib)),
            (human_mib(current.memory_mib), human_mib(desired.memory_mib)),
            &[("max", &human_mib(current.max_memory_mib))],
        );
    }

    for want in &desired.disks {
        match current.disks.iter().find(|d| d.name == want.name) {
            None => cx.push(
                Attribute::Disk,
                Condition::Added,
                Some(&want.name),
                format!("disks.{}", want.name),
                (Value::Null, json!(want)),
                ("(none)".into(), disk_text(want)),
                &[],
            ),
            Some(have) => {
                if have.path != want.path {
                    cx.push(
                        Attribute::Disk,
                        Condition::Moved,
                        Some(&want.name),
                        format!("disks.{}.path", want.name),
                        (json!(have.path), json!(want.path)),
                        (
                            file_text(&desired.name, have),
                            file_text(&desired.name, want),
                        ),
                        &[],
                    );
                    disk_size_change(&mut cx, have, want);
                } else if have.format != want.format {
                    cx.push(
                        Attribute::Disk,
                        Condition::Changed,
                        Some(&want.name),
                        format!("disks.{}", want.name),
                        (json!(have), json!(want)),
                        (disk_text(have), disk_text(want)),
                        &[],
                    );
                } else {
                    disk_size_change(&mut cx, have, want);
                }
            }
        }
    }
    for have in &current.disks {
        if !desired.disks.iter().any(|d| d.name == have.name) {
            let cond = if have.path.is_some() {
                Condition::RemovedExternal
            } else {
                Condition::Removed
            };
            cx.push(
                Attribute::Disk,
                cond,
                Some(&have.name),
                format!("disks.{}", have.name),
                (json!(have), Value::Null),
                (file_text(&desired.name, have), "(none)".into()),
                &[],
            );
        }
    }

    if current.cpu_weight != desired.cpu_weight {
        cx.push(
            Attribute::CpuWeight,
            Condition::Changed,
            None,
            "cpu_weight".into(),
            (json!(current.cpu_weight), json!(desired.cpu_weight)),
            (
                current.cpu_weight.to_string(),
                desired.cpu_weight.to_string(),
            ),
            &[],
        );
    }
    guest_config(&mut cx, current, desired);
    if current.nics != desired.nics {
        cx.push(
            Attribute::Nics,
            Condition::Changed,
            None,
            "nics".into(),
            (json!(current.nics), json!(desired.nics)),
            (nics_text(&current.nics), nics_text(&desired.nics)),
            &[],
        );
    }
    cx.out
}

/// `lab 10.20.0.10 (02:…), lab 10.20.0.11 (…)`, or `(none)`.
pub fn nics_text(nics: &[NicSpec]) -> String {
    if nics.is_empty() {
        return "(none)".into();
    }
    nics.iter()
        .map(|n| format!("{} {} ({})", n.network, n.ip, n.mac))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `+ nginx − curl`: what a package change adds and removes.
fn package_delta(before: &[String], after: &[String]) -> String {
    let added = after
        .iter()
        .filter(|p| !before.contains(p))
        .map(|p| format!("+ {p}"));
    let removed = before
        .iter()
        .filter(|p| !after.contains(p))
        .map(|p| format!("− {p}"));
    added.chain(removed).collect::<Vec<_>>().join(" ")
}

fn list_text<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

/// Names (of users, paths of files) as the plan shows them: the desired
/// ones get ` (changed)` when an entry of that name differs.
fn named_text<T: PartialEq>(items: &[T], other: &[T], name: fn(&T) -> &str, mark: bool) -> String {
    let v: Vec<String> = items
        .iter()
        .map(|i| {
            let changed = other.iter().any(|o| name(o) == name(i) && o != i);
            if mark && changed {
                format!("{} (changed)", name(i))
            } else {
                name(i).to_string()
            }
        })
        .collect();
    list_text(v.iter().map(String::as_str))
}

/// Hostname, users and files: written into the root disk and applied by the
/// guest at boot, so each difference is one restart row.
/// A disk's size change (grow or shrink), if its size changed.
fn disk_size_change(cx: &mut Ctx<'_>, have: &DiskSpec, want: &DiskSpec) {
    if have.size_bytes == want.size_bytes {
        return;
    }
    let cond = if want.size_bytes > have.size_bytes {
        Condition::Grow
    } else {
        Condition::Shrink
    };
    cx.push(
        Attribute::DiskSize,
        cond,
        Some(&want.name),
        format!("disks.{}.size_bytes", want.name),
        (json!(have.size_bytes), json!(want.size_bytes)),
        (human_bytes(have.size_bytes), human_bytes(want.size_bytes)),
        &[],
    );
}

fn guest_config(cx: &mut Ctx<'_>, current: &VmSpec, desired: &VmSpec) {
    let (have, want) = (&current.config, &desired.config);
    if have.hostname != want.hostname {
        let text = |h: &Option<String>| h.clone().unwrap_or_else(|| "(VM name)".into());
        cx.push(
            Attribute::Hostname,
            Condition::Changed,
            None,
            "config.hostname".into(),
            (json!(have.hostname), json!(want.hostname)),
            (text(&have.hostname), text(&want.hostname)),
            &[],
        );
    }
    fn name(u: &UserSpec) -> &str {
        &u.name
    }
    fn path(f: &FileSpec) -> &str {
        &f.path
    }
    named_list(
        cx,
        Attribute::Users,
        "config.users",
        &have.users,
        &want.users,
        name,
    );
    named_list(
        cx,
        Attribute::Files,
        "config.files",
        &have.files,
        &want.files,
        path,
    );
}

/// One restart row for a list of named entries (users, files) that
/// differs: the plan names them, marking the changed ones.
fn named_list<T: PartialEq + serde::Serialize>(
    cx: &mut Ctx<'_>,
    attribute: Attribute,
    key: &str,
    have: &[T],
    want: &[T],
    name: fn(&T) -> &str,
) {
    if have == want {
        return;
    }
    cx.push(
        attribute,
        Condition::Changed,
        None,
        key.into(),
        (json!(have), json!(want)),
        (
            named_text(have, want, name, false),
            named_text(want, have, name, true),
        ),
        &[],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_delta_names_added_then_removed() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            package_delta(&s(&["curl", "vim"]), &s(&["nginx", "vim"])),
            "+ nginx − curl"
        );
        assert_eq!(package_delta(&[], &s(&["a", "b"])), "+ a + b");
    }

    #[test]
    fn named_text_marks_changed_entries() {
        let u = |n: &str, sudo| UserSpec {
            name: n.into(),
            ssh_keys: vec![],
            sudo,
        };
        let before = [u("alice", false), u("carol", false)];
        let after = [u("alice", true), u("bob", false)];
        fn name(x: &UserSpec) -> &str {
            &x.name
        }
        assert_eq!(named_text(&before, &after, name, false), "alice, carol");
        assert_eq!(
            named_text(&after, &before, name, true),
            "alice (changed), bob"
        );
        assert_eq!(named_text(&[], &after, name, true), "(none)");
    }
}
