//! The one diagnostic type every spec problem is reported as.
//!
//! Each problem carries its own copy of the named source so that a
//! `miette::Report` of it renders on its own with `file:line:col`, and a stable
//! `code` (`vmctl::spec::...`) that docs/kdl.md lists and tests assert on.

use std::fmt;
use std::sync::Arc;

use miette::{LabeledSpan, NamedSource, Severity, SourceSpan};

/// One problem (error or warning) in a KDL file.
#[derive(Debug, Clone)]
pub struct SpecDiagnostic {
    pub message: String,
    /// Stable code, e.g. `vmctl::spec::unknown-property`.
    pub code: &'static str,
    pub severity: Severity,
    pub labels: Vec<LabeledSpan>,
    pub help: Option<String>,
    pub src: NamedSource<Arc<String>>,
}

impl SpecDiagnostic {
    /// The byte offset where the first label starts (used to order problems).
    pub fn offset(&self) -> usize {
        self.labels.first().map(|l| l.offset()).unwrap_or(0)
    }
}

impl fmt::Display for SpecDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpecDiagnostic {}

impl miette::Diagnostic for SpecDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }
    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h.as_str()) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

/// Collects problems while a file is parsed and resolved.
pub(crate) struct Sink {
    src: NamedSource<Arc<String>>,
    pub(crate) errors: Vec<SpecDiagnostic>,
    pub(crate) warnings: Vec<SpecDiagnostic>,
}

/// A builder for one diagnostic, finished by [`Sink::push`].
pub(crate) struct Diag {
    message: String,
    code: &'static str,
    severity: Severity,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
}

impl Diag {
    pub(crate) fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diag {
            message: message.into(),
            code,
            severity: Severity::Error,
            labels: Vec::new(),
            help: None,
        }
    }
    pub(crate) fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Diag {
            severity: Severity::Warning,
            ..Diag::error(code, message)
        }
    }
    /// The main span; the first label added is primary.
    pub(crate) fn label(mut self, span: SourceSpan, text: impl Into<String>) -> Self {
        let l = if self.labels.is_empty() {
            LabeledSpan::new_primary_with_span(Some(text.into()), span)
        } else {
            LabeledSpan::new_with_span(Some(text.into()), span)
        };
        self.labels.push(l);
        self
    }
    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub(crate) fn help_opt(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

impl Sink {
    pub(crate) fn new(name: &str, text: Arc<String>) -> Self {
        Sink {
            src: NamedSource::new(name, text),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
    pub(crate) fn push(&mut self, d: Diag) {
        let diag = SpecDiagnostic {
            message: d.message,
            code: d.code,
            severity: d.severity,
            labels: d.labels,
            help: d.help,
            src: self.src.clone(),
        };
        if diag.severity == Severity::Warning {
            self.warnings.push(diag);
        } else {
            self.errors.push(diag);
        }
    }
    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// Every diagnostic code, with a one-line meaning (docs and tests use it).
pub const CODES: &[(&str, &str)] = &[
    ("vmctl::spec::syntax", "the file is not valid KDL"),
    (
        "vmctl::spec::unknown-node",
        "a node name vmctl does not know",
    ),
    (
        "vmctl::spec::unknown-property",
        "a property vmctl does not know",
    ),
    ("vmctl::spec::wrong-type", "a value of the wrong type"),
    (
        "vmctl::spec::argument-count",
        "too few or too many arguments",
    ),
    (
        "vmctl::spec::missing-value",
        "a required argument, property or node is missing",
    ),
    (
        "vmctl::spec::unexpected-children",
        "a `{ ... }` block where none is allowed",
    ),
    (
        "vmctl::spec::duplicate-field",
        "the same setting given twice",
    ),
    ("vmctl::spec::bad-size", "a size that cannot be read"),
    (
        "vmctl::spec::size-without-unit",
        "a size written as a bare number",
    ),
    (
        "vmctl::spec::bad-vm-name",
        "a VM name that is not a DNS label (1-63 of a-z, 0-9, `-`)",
    ),
    ("vmctl::spec::duplicate-vm", "two VMs with the same name"),
    (
        "vmctl::spec::duplicate-image",
        "two images with the same name",
    ),
    (
        "vmctl::spec::image-shadows-os",
        "an image named like a built-in OS",
    ),
    (
        "vmctl::spec::unknown-os",
        "an OS that is neither built in nor an image",
    ),
    (
        "vmctl::spec::unknown-vm",
        "a `depends-on` or `copy-from` target that does not exist",
    ),
    (
        "vmctl::spec::cycle",
        "VMs that depend on each other in a circle",
    ),
    (
        "vmctl::spec::max-below-boot",
        "`max` smaller than the boot value",
    ),
    (
        "vmctl::spec::memory-alignment",
        "memory not a multiple of 2 MiB",
    ),
    ("vmctl::spec::zero-cpus", "zero vCPUs"),
    ("vmctl::spec::zero-memory", "zero memory"),
    (
        "vmctl::spec::cpu-weight-range",
        "`cpu-weight` outside 1..=10000",
    ),
    (
        "vmctl::spec::host-cpus",
        "more boot vCPUs than the host has (warning)",
    ),
    (
        "vmctl::spec::hot-add-steps",
        "memory `max` whose headroom is not whole 128 MiB blocks (warning)",
    ),
    (
        "vmctl::spec::duplicate-disk",
        "two disks with the same name in one VM",
    ),
    ("vmctl::spec::zero-disk", "a disk of size 0"),
    (
        "vmctl::spec::shared-disk-path",
        "two disks (of one VM or two) with the same `path`",
    ),
    (
        "vmctl::spec::disk-path-not-file",
        "a disk `path` that exists and is not a regular file (a directory, device, FIFO...)",
    ),
    ("vmctl::spec::bad-format", "a disk format other than `raw`"),
    (
        "vmctl::spec::bad-source-format",
        "a `source-format` that is not an importable image format",
    ),
    ("vmctl::spec::unreadable", "the file cannot be read"),
    (
        "vmctl::spec::guest-config-os",
        "`hostname`, `user`, `packages` or `file` on an OS that takes no guest configuration",
    ),
    (
        "vmctl::spec::bad-hostname",
        "a hostname that is not RFC 1123",
    ),
    (
        "vmctl::spec::bad-user-name",
        "a user name that is not `[a-z_][a-z0-9_-]{0,31}`",
    ),
    (
        "vmctl::spec::reserved-user",
        "a user named like a system account of the image",
    ),
    (
        "vmctl::spec::duplicate-user",
        "two users with the same name in one VM",
    ),
    (
        "vmctl::spec::bad-ssh-key",
        "an `ssh-key` that is not a well-formed OpenSSH public key line",
    ),
    (
        "vmctl::spec::bad-file-path",
        "a `file` path that is not absolute and normalised",
    ),
    (
        "vmctl::spec::reserved-path",
        "a `file` under /proc, /sys, /dev, /run or /etc/vmctl",
    ),
    (
        "vmctl::spec::duplicate-file",
        "two `file`s with the same path in one VM",
    ),
    (
        "vmctl::spec::bad-file-mode",
        "a `mode` that is not octal up to 07777",
    ),
    (
        "vmctl::spec::bad-package-name",
        "a package name that is not Debian package-name syntax",
    ),
    (
        "vmctl::spec::duplicate-package",
        "a package listed twice (warning)",
    ),
    (
        "vmctl::spec::copy-packages",
        "a `copy-from` VM declaring packages other than its source's",
    ),
    (
        "vmctl::spec::bad-cluster-name",
        "a `cluster` name that is not a DNS label",
    ),
    (
        "vmctl::spec::unknown-state-backend",
        "a `cluster` whose `state` is not \"etcd\"",
    ),
    (
        "vmctl::spec::bad-endpoint",
        "an etcd endpoint that is not an http(s) URL",
    ),
    (
        "vmctl::spec::bad-lock-ttl",
        "a `lock-ttl` that is not a duration from 2s to 3600s",
    ),
    (
        "vmctl::spec::bad-cluster-tls",
        "a TLS `cert` without its `key` or the other way round",
    ),
    (
        "vmctl::spec::bad-cluster-auth",
        "`user` without `password-env` (or the other way round), or a bad variable name",
    ),
    (
        "vmctl::spec::bad-host-name",
        "a `host` name that is not a DNS label",
    ),
    (
        "vmctl::spec::duplicate-host",
        "two hosts with the same name",
    ),
    (
        "vmctl::spec::hosts-without-cluster",
        "`host` nodes without a `cluster` to share their state",
    ),
    (
        "vmctl::spec::bad-ssh-target",
        "an `ssh` destination that is empty, has whitespace or starts with `-`",
    ),
    (
        "vmctl::spec::bad-host-path",
        "a host's `state-dir` that is not absolute, or a `vmctl` that is neither absolute nor a bare command",
    ),
    (
        "vmctl::spec::no-hosts",
        "`host` or `placement` in a VM of a file without `host` nodes",
    ),
    (
        "vmctl::spec::unknown-host",
        "a VM pinned to a host the file does not declare",
    ),
    (
        "vmctl::spec::host-and-placement",
        "a VM with both `host` and `placement`",
    ),
    (
        "vmctl::spec::unknown-spread-label",
        "`spread` over a label no host has",
    ),
    (
        "vmctl::spec::no-matching-host",
        "`placement` labels that no host carries all of",
    ),
];
