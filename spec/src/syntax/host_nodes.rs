//! Reading the nodes of a lab spread over several machines: `cluster` and
//! `host` at the top level, `host` and `placement` inside a `vm`.
//!
//! Kept apart from the machine nodes in `syntax.rs` because they describe
//! *where* VMs run, not what they are. Each value is checked on its own here
//! (durations, endpoints, SSH destinations, paths); which hosts exist, what
//! a `vm`'s `host` names and whether a `cluster` is needed are cross-node
//! rules, decided in `resolve_hosts`.

use std::collections::BTreeMap;

use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use super::{Reader, Spanned, example};
use crate::diagnostic::Diag;
use crate::units::MIB;

pub(crate) const CLUSTER_NODES: &[&str] = &["state"];
pub(crate) const STATE_PROPS: &[&str] = &[
    "endpoints",
    "lock-ttl",
    "ca",
    "cert",
    "key",
    "user",
    "password-env",
];
pub(crate) const HOST_NODES: &[&str] = &["ssh", "labels", "reserve", "drain", "vmctl", "state-dir"];
pub(crate) const PLACEMENT_NODES: &[&str] = &["spread", "labels"];

/// Shortest and longest `lock-ttl` in seconds: below 2 s a lease can lapse
/// between two renewals under load; above an hour a dead holder blocks the
/// lab for too long.
pub(crate) const LOCK_TTL_SECS: std::ops::RangeInclusive<u64> = 2..=3600;

#[derive(Debug)]
pub(crate) struct RawCluster {
    pub name: Spanned<String>,
    /// The `state` node's name (for "no state" and backend messages).
    pub state: Option<Spanned<String>>,
    pub state_written: bool,
    pub endpoints: Vec<String>,
    pub endpoints_span: Option<SourceSpan>,
    pub lock_ttl_secs: Option<u64>,
    pub ca: Option<String>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    /// A `password-env` was refused: no "user without password-env" too.
    pub auth_reported: bool,
}

#[derive(Debug)]
pub(crate) struct RawHost {
    pub name: Spanned<String>,
    pub ssh: Option<Spanned<String>>,
    /// `ssh` was written (even if refused): no "missing ssh" error.
    pub ssh_written: bool,
    /// Each label with the span of its key.
    pub labels: BTreeMap<String, (String, SourceSpan)>,
    pub reserve_memory_mib: u64,
    pub reserve_cpus: u32,
    pub drain: bool,
    pub vmctl: Option<String>,
    pub state_dir: Option<String>,
}

#[derive(Debug)]
pub(crate) struct RawPlacement {
    /// The `placement` node's name.
    pub span: SourceSpan,
    pub spread: Option<Spanned<String>>,
    pub labels: BTreeMap<String, (String, SourceSpan)>,
}

impl Reader<'_> {
    pub(super) fn read_cluster(&mut self, node: &KdlNode) -> Option<RawCluster> {
        let (args, _) = self.split(node, &[]);
        let name = self.dns_name_arg(node, &args, "cluster", "vmctl::spec::bad-cluster-name");
        let mut c = RawCluster {
            name: Spanned {
                val: String::new(),
                span: node.name().span(),
            },
            state: None,
            state_written: false,
            endpoints: Vec::new(),
            endpoints_span: None,
            lock_ttl_secs: None,
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_env: None,
            auth_reported: false,
        };
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for child in node.iter_children() {
            if !self.accept_child(child, "`cluster`", CLUSTER_NODES, &[], &mut seen) {
                continue;
            }
            c.state_written = true;
            self.no_children(child);
            let (args, props) = self.split(child, STATE_PROPS);
            c.state = self
                .one_arg(child, &args)
                .and_then(|e| self.string(e, "state"));
            for (k, e) in props {
                match k {
                    "endpoints" => {
                        if let Some(s) = self.string(e, "endpoints=") {
                            c.endpoints_span = Some(s.span);
                            c.endpoints = self.endpoints(&s);
                        }
                    }
                    "lock-ttl" => c.lock_ttl_secs = self.lock_ttl(e),
                    "ca" => c.ca = self.string(e, "ca=").map(|s| s.val),
                    "cert" => c.cert = self.string(e, "cert="),
                    "key" => c.key = self.string(e, "key="),
                    "user" => c.user = self.string(e, "user="),
                    _ => {
                        c.password_env = self.env_var(e);
                        c.auth_reported = c.password_env.is_none();
                    }
                }
            }
        }
        c.name = name?;
        Some(c)
    }

    /// `endpoints="http://a:2379,https://b:2379"`: each one an http(s) URL.
    fn endpoints(&mut self, s: &Spanned<String>) -> Vec<String> {
        let mut out = Vec::new();
        for part in s.val.split(',').map(str::trim) {
            let rest = part
                .strip_prefix("http://")
                .or_else(|| part.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => {
                    out.push(part.to_string());
                }
                _ => {
                    self.sink.push(
                        Diag::error(
                            "vmctl::spec::bad-endpoint",
                            format!("`{part}` is not an etcd client URL"),
                        )
                        .label(s.span, "bad endpoint")
                        .help(
                            "endpoints is a comma-separated list of http:// or https:// URLs, \
                             e.g. endpoints=\"http://127.0.0.1:2379,http://127.0.0.1:22379\"",
                        ),
                    );
                    return Vec::new();
                }
            }
        }
        out
    }

    /// `lock-ttl="15s"` (also `"2m"`): whole seconds within [`LOCK_TTL_SECS`].
    fn lock_ttl(&mut self, e: &KdlEntry) -> Option<u64> {
        let span = self.value_span(e);
        let help = format!(
            "a duration in whole seconds or minutes from {}s to {}s, e.g. lock-ttl=\"15s\"",
            LOCK_TTL_SECS.start(),
            LOCK_TTL_SECS.end()
        );
        let s = self.string(e, "lock-ttl=")?;
        let parsed = parse_duration_secs(&s.val);
        match parsed {
            Some(v) if LOCK_TTL_SECS.contains(&v) => Some(v),
            Some(v) => {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::bad-lock-ttl",
                        format!("lock-ttl {v}s is out of range"),
                    )
                    .label(span, "out of range")
                    .help(help),
                );
                None
            }
            None => {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::bad-lock-ttl",
                        format!("`{}` is not a duration", s.val),
                    )
                    .label(span, "not a duration")
                    .help(help),
                );
                None
            }
        }
    }

    /// `password-env="VAR"`: the name of an environment variable.
    fn env_var(&mut self, e: &KdlEntry) -> Option<Spanned<String>> {
        let s = self.string(e, "password-env=")?;
        let ok = !s.val.is_empty()
            && !s.val.starts_with(|c: char| c.is_ascii_digit())
            && s.val.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::bad-cluster-auth",
                    format!("`{}` is not an environment variable name", s.val),
                )
                .label(s.span, "not a variable name")
                .help(
                    "password-env names the variable that holds the password, e.g. \
                     password-env=\"ETCD_PASSWORD\"; the password itself never goes in the file",
                ),
            );
            return None;
        }
        Some(s)
    }

    pub(super) fn read_host(&mut self, node: &KdlNode) -> Option<RawHost> {
        let (args, _) = self.split(node, &[]);
        let name = self.dns_name_arg(node, &args, "host", "vmctl::spec::bad-host-name");
        let mut h = RawHost {
            name: Spanned {
                val: String::new(),
                span: node.name().span(),
            },
            ssh: None,
            ssh_written: false,
            labels: BTreeMap::new(),
            reserve_memory_mib: 0,
            reserve_cpus: 0,
            drain: false,
            vmctl: None,
            state_dir: None,
        };
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for child in node.iter_children() {
            if !self.accept_child(child, "`host`", HOST_NODES, &[], &mut seen) {
                continue;
            }
            match child.name().value() {
                "ssh" => {
                    h.ssh_written = true;
                    h.ssh = self.string_node(child).and_then(|s| self.ssh_target(s));
                }
                "labels" => h.labels = self.labels(child),
                "reserve" => {
                    let (m, c) = self.reserve(child);
                    h.reserve_memory_mib = m;
                    h.reserve_cpus = c;
                }
                "drain" => {
                    self.no_children(child);
                    let (args, _) = self.split(child, &[]);
                    if let Some(e) = self.one_arg(child, &args) {
                        h.drain = self.boolean(e, "drain").unwrap_or(false);
                    }
                }
                "vmctl" => {
                    h.vmctl = self
                        .string_node(child)
                        .and_then(|s| self.remote_path(s, false));
                }
                _ => {
                    h.state_dir = self
                        .string_node(child)
                        .and_then(|s| self.remote_path(s, true));
                }
            }
        }
        let name = name?;
        if !h.ssh_written {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::missing-value",
                    format!("host `{}` has no `ssh`", name.val),
                )
                .label(name.span, "this host")
                .help(format!(
                    "add how to reach it inside its block: {}",
                    example("ssh")
                )),
            );
        }
        h.name = name;
        Some(h)
    }

    /// An SSH destination: one word that `ssh` cannot take for an option.
    fn ssh_target(&mut self, s: Spanned<String>) -> Option<Spanned<String>> {
        let bad = if s.val.is_empty() {
            Some("it is empty")
        } else if s.val.starts_with('-') {
            Some("it starts with `-`, which ssh would read as an option")
        } else if s.val.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("it contains whitespace")
        } else {
            None
        };
        let Some(why) = bad else { return Some(s) };
        self.sink.push(
            Diag::error(
                "vmctl::spec::bad-ssh-target",
                format!("{:?} is not an SSH destination: {why}", s.val),
            )
            .label(s.span, "bad destination")
            .help(
                "give `[user@]host` as ssh would take it, e.g. ssh \"root@10.0.0.11\"; \
                 ports and keys go in ~/.ssh/config under a Host alias",
            ),
        );
        None
    }

    /// A path on a host: `state-dir` must be absolute; `vmctl` is absolute
    /// or a bare command name looked up on the host's PATH.
    fn remote_path(&mut self, s: Spanned<String>, dir: bool) -> Option<String> {
        let ok = if dir {
            s.val.starts_with('/')
        } else {
            s.val.starts_with('/') || (!s.val.is_empty() && !s.val.contains('/'))
        } && !s.val.contains(|c: char| c.is_control());
        if ok {
            return Some(s.val);
        }
        let help = if dir {
            "the state directory on the host, as an absolute path: state-dir \"/var/lib/vmctl/lab\""
        } else {
            "an absolute path on the host (vmctl \"/usr/local/bin/vmctl\") or a command on its PATH (vmctl \"vmctl\")"
        };
        self.sink.push(
            Diag::error(
                "vmctl::spec::bad-host-path",
                format!("{:?} is not a usable path on the host", s.val),
            )
            .label(s.span, "not absolute")
            .help(help),
        );
        None
    }

    /// `labels key="value" ...`: properties with string values.
    fn labels(&mut self, node: &KdlNode) -> BTreeMap<String, (String, SourceSpan)> {
        self.no_children(node);
        let mut out = BTreeMap::new();
        for e in node.entries() {
            let Some(key) = e.name() else {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::argument-count",
                        "`labels` takes properties, not values",
                    )
                    .label(self.value_span(e), "a value without a key")
                    .help(format!(
                        "write each label as key=\"value\": {}",
                        example("labels")
                    )),
                );
                continue;
            };
            let k = key.value().to_string();
            if let Some((_, first)) = out.get(&k) {
                let first: SourceSpan = *first;
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::duplicate-field",
                        format!("label `{k}` is given twice"),
                    )
                    .label(key.span(), "second")
                    .label(first, "first")
                    .help("keep one of them"),
                );
                continue;
            }
            let ctx = format!("{k}=");
            if let Some(v) = self.string(e, &ctx) {
                out.insert(k, (v.val, key.span()));
            }
        }
        if node.entries().is_empty() {
            self.sink.push(
                Diag::error("vmctl::spec::missing-value", "`labels` needs a label")
                    .label(node.name().span(), "no labels")
                    .help(format!("for example: {}", example("labels"))),
            );
        }
        out
    }

    /// `reserve memory="2GiB" cpus=1` → (MiB, CPUs); a bad value counts as 0.
    fn reserve(&mut self, node: &KdlNode) -> (u64, u32) {
        self.no_children(node);
        let (args, props) = self.split(node, &["memory", "cpus"]);
        for e in args {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::argument-count",
                    "`reserve` takes properties, not values",
                )
                .label(self.value_span(e), "a value without a key")
                .help(format!("for example: {}", example("reserve"))),
            );
        }
        let (mut mib, mut cpus) = (0, 0);
        for (k, e) in props {
            if k == "memory" {
                mib = self
                    .size(e, "reserve memory=")
                    .map(|s| s.val.div_ceil(MIB))
                    .unwrap_or(0);
            } else {
                cpus = self
                    .integer(e, "reserve cpus=", 0, super::MAX_VCPUS)
                    .map(|s| s.val)
                    .unwrap_or(0);
            }
        }
        (mib, cpus)
    }

    /// `placement { spread "rack"; labels rack="a" }` in a `vm`.
    pub(super) fn read_placement(&mut self, node: &KdlNode) -> RawPlacement {
        self.no_entries(node);
        let mut p = RawPlacement {
            span: node.name().span(),
            spread: None,
            labels: BTreeMap::new(),
        };
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for child in node.iter_children() {
            if !self.accept_child(child, "`placement`", PLACEMENT_NODES, &[], &mut seen) {
                continue;
            }
            match child.name().value() {
                "spread" => p.spread = self.string_node(child),
                _ => p.labels = self.labels(child),
            }
        }
        p
    }
}

/// `"15s"`, `"2m"` or `"90"`-less forms: whole seconds, `None` when it is
/// not a duration vmctl reads.
pub(crate) fn parse_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix('s') {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60)
    } else {
        return None;
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::parse_duration_secs;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("15s"), Some(15));
        assert_eq!(parse_duration_secs("2m"), Some(120));
        assert_eq!(parse_duration_secs("15"), None);
        assert_eq!(parse_duration_secs("1.5s"), None);
        assert_eq!(parse_duration_secs("-3s"), None);
        assert_eq!(parse_duration_secs("99999999999999999999m"), None);
    }
}
