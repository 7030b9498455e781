//! Resolved state → KDL text: the inverse of parsing.
//!
//! Every field is written out explicitly, so parsing the text back yields the
//! same [`DesiredState`] (the property test relies on this) — handy for
//! "show me the file with all defaults filled in".

use std::fmt::Write as _;
use std::path::Path;

use std::collections::BTreeMap;

use crate::model::{ClusterSpec, DesiredState, DiskFormat, HostSpec, VmSpec};
use crate::units::{format_mib, format_size};

/// A KDL v2 quoted string. Control, bidi-override, newline-like and other
/// non-ASCII non-alphanumeric characters are escaped: KDL forbids some of
/// them literally and they are invisible anyway.
pub fn quote(s: &str) -> String {
    quote_with(s, |c| !c.is_ascii() && !c.is_alphanumeric())
}

/// A KDL v2 quoted string: `"`, `\`, `\n`, `\r`, `\t` and control
/// characters always escaped, and any character `escape` picks as
/// `\u{…}` (the renderer escapes more than `vmctl fmt`, which keeps the
/// user's text wherever KDL allows it).
pub fn quote_with(s: &str, escape: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// Render a resolved state as a KDL document with every field explicit.
pub fn to_kdl(state: &DesiredState) -> String {
    let mut out = String::new();
    if let Some(c) = &state.cluster {
        render_cluster(&mut out, c);
    }
    for h in &state.hosts {
        render_host(&mut out, h);
    }
    for img in &state.images {
        let _ = writeln!(out, "image {} {{", quote(&img.name));
        let _ = writeln!(out, "    kernel {}", path(&img.kernel));
        if let Some(i) = &img.initrd {
            let _ = writeln!(out, "    initrd {}", path(i));
        }
        let _ = writeln!(out, "    cmdline {}", quote(&img.cmdline));
        out.push_str("}\n");
    }
    for n in &state.networks {
        let _ = writeln!(out, "network {} {{", quote(&n.name));
        let _ = writeln!(out, "    subnet {}", quote(&n.subnet.to_string()));
        let _ = writeln!(out, "    nat {}", if n.nat { "#true" } else { "#false" });
        out.push_str("}\n");
    }
    for vm in &state.vms {
        render_vm(&mut out, vm);
    }
    out
}

fn render_vm(out: &mut String, vm: &VmSpec) {
    let _ = writeln!(out, "vm {} {{", quote(&vm.name));
    let _ = writeln!(out, "    os {}", quote(&vm.os));
    let _ = writeln!(out, "    cpus {} max={}", vm.cpus, vm.max_cpus);
    let _ = writeln!(
        out,
        "    memory {} max={}",
        quote(&format_mib(vm.memory_mib)),
        quote(&format_mib(vm.max_memory_mib))
    );
    for d in &vm.disks {
        let format = match d.format {
            DiskFormat::Raw => "raw",
        };
        let _ = write!(
            out,
            "    disk {} size={} format={}",
            quote(&d.name),
            quote(&format_size(d.size_bytes)),
            quote(format)
        );
        if let Some(p) = &d.path {
            let _ = write!(out, " path={}", path(p));
        }
        if let Some(s) = &d.source {
            let _ = write!(out, " source={}", path(s));
        }
        if let Some(f) = d.source_format {
            let _ = write!(out, " source-format={}", quote(f.name()));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "    cpu-weight {}", vm.cpu_weight);
    if !vm.depends_on.is_empty() {
        let deps: Vec<String> = vm.depends_on.iter().map(|d| quote(d)).collect();
        let _ = writeln!(out, "    depends-on {}", deps.join(" "));
    }
    if let Some(c) = &vm.copy_from {
        let _ = writeln!(out, "    copy-from {}", quote(c));
    }
    let _ = writeln!(
        out,
        "    autostart {}",
        if vm.autostart { "#true" } else { "#false" }
    );
    render_guest(out, vm);
    for n in &vm.nics {
        let _ = writeln!(
            out,
            "    nic {} ip={} mac={}",
            quote(&n.network),
            quote(&n.ip.to_string()),
            quote(&n.mac.to_string())
        );
    }
    if let Some(h) = &vm.host {
        let _ = writeln!(out, "    host {}", quote(h));
    }
    if let Some(p) = &vm.placement {
        out.push_str("    placement {\n");
        if let Some(s) = &p.spread {
            let _ = writeln!(out, "        spread {}", quote(s));
        }
        if !p.labels.is_empty() {
            let _ = writeln!(out, "        labels {}", labels(&p.labels));
        }
        out.push_str("    }\n");
    }
    out.push_str("}\n");
}

fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{}={}", key(k), quote(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A property key: bare when KDL allows it, else quoted.
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !k.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-')
        && !matches!(k, "true" | "false" | "null" | "inf" | "nan");
    if bare { k.to_string() } else { quote(k) }
}

fn render_cluster(out: &mut String, c: &ClusterSpec) {
    let _ = writeln!(out, "cluster {} {{", quote(&c.name));
    let _ = write!(
        out,
        "    state {} endpoints={} lock-ttl=\"{}s\"",
        quote(c.state.name()),
        quote(&c.endpoints.join(",")),
        c.lock_ttl_secs
    );
    for (k, v) in [("ca", &c.ca), ("cert", &c.cert), ("key", &c.key)] {
        if let Some(p) = v {
            let _ = write!(out, " {k}={}", path(p));
        }
    }
    for (k, v) in [("user", &c.user), ("password-env", &c.password_env)] {
        if let Some(s) = v {
            let _ = write!(out, " {k}={}", quote(s));
        }
    }
    out.push_str("\n}\n");
}

fn render_host(out: &mut String, h: &HostSpec) {
    let _ = writeln!(out, "host {} {{", quote(&h.name));
    let _ = writeln!(out, "    ssh {}", quote(&h.ssh));
    if !h.labels.is_empty() {
        let _ = writeln!(out, "    labels {}", labels(&h.labels));
    }
    let _ = writeln!(
        out,
        "    reserve memory={} cpus={}",
        quote(&format_mib(h.reserve.memory_mib)),
        h.reserve.cpus
    );
    let _ = writeln!(
        out,
        "    drain {}",
        if h.drain { "#true" } else { "#false" }
    );
    let _ = writeln!(out, "    vmctl {}", quote(&h.vmctl));
    let _ = writeln!(out, "    state-dir {}", quote(&h.state_dir));
    out.push_str("}\n");
}

/// `packages`, `hostname`, `user` and `file` (only what is set: their
/// defaults are "none").
fn render_guest(out: &mut String, vm: &VmSpec) {
    if !vm.packages.is_empty() {
        let p: Vec<String> = vm.packages.iter().map(|p| quote(p)).collect();
        let _ = writeln!(out, "    packages {}", p.join(" "));
    }
    let c = &vm.config;
    if let Some(h) = &c.hostname {
        let _ = writeln!(out, "    hostname {}", quote(h));
    }
    for u in &c.users {
        let _ = writeln!(out, "    user {} {{", quote(&u.name));
        for k in &u.ssh_keys {
            let _ = writeln!(out, "        ssh-key {}", quote(k));
        }
        let _ = writeln!(
            out,
            "        sudo {}",
            if u.sudo { "#true" } else { "#false" }
        );
        out.push_str("    }\n");
    }
    for f in &c.files {
        let _ = writeln!(
            out,
            "    file {} content={} mode=\"{:04o}\"",
            quote(&f.path),
            quote(&f.content),
            f.mode
        );
    }
}
