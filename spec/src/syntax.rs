//! KDL document → raw, span-carrying declarations (`RawFile`).
//!
//! This layer knows the schema (which nodes and properties exist, their types)
//! and checks every value that can be checked on its own: sizes and units,
//! ranges, `max` against the boot value, 2 MiB memory alignment. Anything wrong
//! is reported to the [`Sink`] and left unset, so later layers see only good
//! values and one mistake never causes a second diagnostic.

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use crate::diagnostic::{Diag, Sink};
use crate::model::{DiskFormat, SourceFormat};
use crate::suggest::did_you_mean;
use crate::units::{self, HOT_ADD_BLOCK_MIB, MIB, SizeError};

mod guest_nodes;
mod host_nodes;
mod net_nodes;

pub(crate) use guest_nodes::RawGuest;
pub(crate) use host_nodes::{RawCluster, RawHost, RawPlacement};
pub(crate) use net_nodes::{RawNetwork, RawNic};

/// A value and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spanned<T> {
    pub val: T,
    pub span: SourceSpan,
}

/// `cpus N max=M` or `memory "S" max="S"` (memory kept in MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair<T> {
    pub boot: T,
    pub max: T,
    pub span: SourceSpan,
}

#[derive(Debug, Default)]
pub(crate) struct RawDefaults {
    pub memory: Option<Pair<u64>>,
    pub cpus: Option<Pair<u32>>,
    pub cpu_weight: Option<Spanned<u32>>,
}

#[derive(Debug)]
pub(crate) struct RawImage {
    pub name: Spanned<String>,
    pub kernel: Option<Spanned<String>>,
    pub initrd: Option<Spanned<String>>,
    pub cmdline: Option<Spanned<String>>,
}

#[derive(Debug)]
pub(crate) struct RawDisk {
    pub name: Spanned<String>,
    pub size: Option<Spanned<u64>>,
    /// A problem with this disk node was already reported: suppresses the
    /// "missing size" error so one mistake gives one diagnostic.
    pub reported: bool,
    pub format: Option<DiskFormat>,
    pub path: Option<String>,
    /// Where `path=` is written (for the path diagnostics).
    pub path_span: Option<SourceSpan>,
    pub source: Option<String>,
    pub source_format: Option<SourceFormat>,
}

#[derive(Debug)]
pub(crate) struct RawVm {
    pub name: Spanned<String>,
    pub os: Option<Spanned<String>>,
    pub cpus: Option<Pair<u32>>,
    pub memory: Option<Pair<u64>>,
    pub disks: Vec<RawDisk>,
    pub cpu_weight: Option<Spanned<u32>>,
    pub depends_on: Vec<Spanned<String>>,
    pub copy_from: Option<Spanned<String>>,
    /// `copy-from` was written (even if invalid).
    pub copy_from_written: bool,
    /// `os` was written (even if invalid).
    pub os_written: bool,
    pub autostart: Option<bool>,
    /// `hostname`, `user`, `packages`, `file`.
    pub guest: RawGuest,
    /// `nic "network" ...`, in the order written.
    pub nics: Vec<RawNic>,
    /// `host "h1"`: pinned to a host.
    pub host: Option<Spanned<String>>,
    /// `placement { ... }`.
    pub placement: Option<RawPlacement>,
}

#[derive(Debug, Default)]
pub(crate) struct RawFile {
    pub defaults: RawDefaults,
    pub images: Vec<RawImage>,
    pub vms: Vec<RawVm>,
    pub networks: Vec<RawNetwork>,
    /// Every `cluster` node (more than one is reported in `resolve_hosts`).
    pub clusters: Vec<RawCluster>,
    pub hosts: Vec<RawHost>,
}

pub(crate) const TOP_NODES: &[&str] = &["cluster", "defaults", "host", "image", "network", "vm"];
pub(crate) const VM_NODES: &[&str] = &[
    "os",
    "cpus",
    "memory",
    "disk",
    "cpu-weight",
    "depends-on",
    "copy-from",
    "autostart",
    "hostname",
    "user",
    "packages",
    "file",
    "nic",
    "host",
    "placement",
];
/// Children of a `vm` that may appear more than once.
const VM_REPEATABLE: &[&str] = &["disk", "depends-on", "user", "packages", "file", "nic"];
pub(crate) const DEFAULTS_NODES: &[&str] = &["memory", "cpus", "cpu-weight"];
pub(crate) const IMAGE_NODES: &[&str] = &["kernel", "initrd", "cmdline"];
pub(crate) const DISK_PROPS: &[&str] = &["size", "format", "path", "source", "source-format"];

/// Largest boot or max vCPU count accepted (x86 xAPIC IDs are 8 bits).
pub(crate) const MAX_VCPUS: u32 = 254;

/// Parser state: the text (for exact value spans) and the sink.
pub(crate) struct Reader<'a> {
    pub text: &'a str,
    pub sink: &'a mut Sink,
    pub host_cpus: u32,
}

fn kind(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a decimal number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

fn quote(s: &str) -> String {
    crate::render::quote(s)
}

impl Reader<'_> {
    /// The span of just the value of an entry (not its key or type annotation).
    pub(crate) fn value_span(&self, e: &KdlEntry) -> SourceSpan {
        let span = e.span();
        let (start, end) = (span.offset(), span.offset() + span.len());
        let Some(fmt) = e.format() else { return span };
        let repr = fmt.value_repr.as_str();
        let from = match e.name() {
            Some(n) => (n.span().offset() + n.span().len()).clamp(start, end),
            None => start,
        };
        if repr.is_empty() {
            return span;
        }
        // The value is the last thing in the entry; search from its end so a
        // type annotation or key that happens to contain the text is skipped.
        match self.text.get(from..end).and_then(|s| s.rfind(repr)) {
            Some(i) => SourceSpan::new((from + i).into(), repr.len()),
            None => span,
        }
    }

    /// The span of the key of a property entry (or the value of an argument).
    fn key_span(&self, e: &KdlEntry) -> SourceSpan {
        match e.name() {
            Some(n) => n.span(),
            None => self.value_span(e),
        }
    }

    /// The span of an entry as written: `key=value` or the value.
    fn entry_span(&self, e: &KdlEntry) -> SourceSpan {
        let v = self.value_span(e);
        match e.name() {
            Some(n) => {
                let s = n.span().offset();
                SourceSpan::new(s.into(), (v.offset() + v.len()).saturating_sub(s))
            }
            None => v,
        }
    }

    pub(crate) fn read_file(&mut self, doc: &KdlDocument) -> RawFile {
        let mut file = RawFile::default();
        let mut defaults_seen: Option<SourceSpan> = None;
        for node in doc.nodes() {
            let name = node.name().value();
            match name {
                "defaults" => {
                    if let Some(first) = defaults_seen {
                        self.sink.push(
                            Diag::error(
                                "vmctl::spec::duplicate-field",
                                "`defaults` is given twice",
                            )
                            .label(node.name().span(), "second `defaults`")
                            .label(first, "first `defaults`")
                            .help("merge both into one `defaults { ... }` block"),
                        );
                        continue;
                    }
                    defaults_seen = Some(node.name().span());
                    self.no_entries(node);
                    file.defaults = self.read_defaults(node);
                }
                "image" => {
                    if let Some(img) = self.read_image(node) {
                        file.images.push(img);
                    }
                }
                "vm" => {
                    if let Some(vm) = self.read_vm(node) {
                        file.vms.push(vm);
                    }
                }
                "network" => {
                    if let Some(net) = self.read_network(node) {
                        file.networks.push(net);
                    }
                }
                "cluster" => {
                    if let Some(c) = self.read_cluster(node) {
                        file.clusters.push(c);
                    }
                }
                "host" => {
                    if let Some(h) = self.read_host(node) {
                        file.hosts.push(h);
                    }
                }
                other => self.unknown_node(node, other, "the top level", TOP_NODES),
            }
        }
        file
    }

    fn unknown_node(&mut self, node: &KdlNode, name: &str, place: &str, known: &[&str]) {
        let help = match did_you_mean(name, known.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("{place} takes: {}", list(known)),
        };
        self.sink.push(
            Diag::error(
                "vmctl::spec::unknown-node",
                format!("unknown node `{name}` in {place}"),
            )
            .label(node.name().span(), "not a vmctl node")
            .help(help),
        );
    }

    /// Report any entries on a block node such as `defaults`.
    fn no_entries(&mut self, node: &KdlNode) {
        for e in node.entries() {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::argument-count",
                    format!("`{}` takes no arguments or properties", node.name().value()),
                )
                .label(self.entry_span(e), "unexpected")
                .help("remove it; settings go inside the `{ ... }` block"),
            );
        }
    }

    fn no_children(&mut self, node: &KdlNode) {
        if let Some(children) = node.children() {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::unexpected-children",
                    format!(
                        "`{}` does not take a `{{ ... }}` block",
                        node.name().value()
                    ),
                )
                .label(children.span(), "unexpected block")
                .help(format!(
                    "write its settings on one line, e.g. {}",
                    example(node.name().value())
                )),
            );
        }
    }

    /// Split entries into positional arguments and properties; report unknown
    /// and repeated properties.
    fn split<'n>(
        &mut self,
        node: &'n KdlNode,
        known_props: &[&str],
    ) -> (Vec<&'n KdlEntry>, Vec<(&'n str, &'n KdlEntry)>) {
        let mut args = Vec::new();
        let mut props: Vec<(&str, &KdlEntry)> = Vec::new();
        let node_name = node.name().value();
        for e in node.entries() {
            let Some(key) = e.name() else {
                args.push(e);
                continue;
            };
            let k = key.value();
            if !known_props.contains(&k) {
                let help = match did_you_mean(k, known_props.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if known_props.is_empty() => {
                        format!("`{node_name}` takes no properties")
                    }
                    None => format!("`{node_name}` takes: {}", list(known_props)),
                };
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::unknown-property",
                        format!("unknown property `{k}` on `{node_name}`"),
                    )
                    .label(key.span(), "unknown property")
                    .help(help),
                );
                continue;
            }
            if let Some((_, first)) = props.iter().find(|(p, _)| *p == k) {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::duplicate-field",
                        format!("property `{k}` is given twice"),
                    )
                    .label(key.span(), "second")
                    .label(self.key_span(first), "first")
                    .help("keep one of them"),
                );
                continue;
            }
            props.push((k, e));
        }
        (args, props)
    }

    /// Exactly one positional argument.
    fn one_arg<'n>(&mut self, node: &'n KdlNode, args: &[&'n KdlEntry]) -> Option<&'n KdlEntry> {
        let name = node.name().value();
        match args {
            [one] => Some(one),
            [] => {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::missing-value",
                        format!("`{name}` needs a value"),
                    )
                    .label(node.name().span(), "no value")
                    .help(format!("for example: {}", example(name))),
                );
                None
            }
            [first, rest @ ..] => {
                for e in rest {
                    self.sink.push(
                        Diag::error(
                            "vmctl::spec::argument-count",
                            format!("`{name}` takes one value"),
                        )
                        .label(self.value_span(e), "extra value")
                        .help(format!("for example: {}", example(name))),
                    );
                }
                Some(first)
            }
        }
    }

    fn wrong_type(&mut self, e: &KdlEntry, what: &str, help: String) {
        self.sink.push(
            Diag::error(
                "vmctl::spec::wrong-type",
                format!("expected {what}, found {}", kind(e.value())),
            )
            .label(self.value_span(e), format!("expected {what}"))
            .help(help),
        );
    }

    fn string(&mut self, e: &KdlEntry, ctx: &str) -> Option<Spanned<String>> {
        match e.value() {
            KdlValue::String(s) => Some(Spanned {
                val: s.clone(),
                span: self.value_span(e),
            }),
            other => {
                let shown = match other {
                    KdlValue::Integer(i) => i.to_string(),
                    KdlValue::Float(f) => f.to_string(),
                    _ => "...".to_string(),
                };
                self.wrong_type(
                    e,
                    "a string",
                    format!("put it in quotes: {ctx} {}", quote(&shown)),
                );
                None
            }
        }
    }

    /// A whole number in `lo..=hi`.
    fn integer(&mut self, e: &KdlEntry, ctx: &str, lo: u32, hi: u32) -> Option<Spanned<u32>> {
        let span = self.value_span(e);
        match e.value() {
            KdlValue::Integer(i) => match u32::try_from(*i) {
                Ok(v) => Some(Spanned { val: v, span }),
                Err(_) => {
                    self.sink.push(
                        Diag::error(
                            "vmctl::spec::wrong-type",
                            format!("`{ctx}` must be a whole number from {lo} to {hi}"),
                        )
                        .label(span, "out of range")
                        .help(format!("for example: {}", example(ctx))),
                    );
                    None
                }
            },
            KdlValue::String(s) if s.trim().parse::<u32>().is_ok() => {
                self.wrong_type(
                    e,
                    "a number",
                    format!("drop the quotes: {ctx} {}", s.trim()),
                );
                None
            }
            _ => {
                self.wrong_type(
                    e,
                    "a whole number",
                    format!("for example: {}", example(ctx)),
                );
                None
            }
        }
    }

    fn boolean(&mut self, e: &KdlEntry, ctx: &str) -> Option<bool> {
        match e.value() {
            KdlValue::Bool(b) => Some(*b),
            KdlValue::String(s) if s == "true" || s == "false" => {
                self.wrong_type(
                    e,
                    "a boolean",
                    format!("KDL booleans are written `{ctx} #{s}`"),
                );
                None
            }
            _ => {
                self.wrong_type(
                    e,
                    "a boolean",
                    format!("write `{ctx} #true` or `{ctx} #false`"),
                );
                None
            }
        }
    }

    /// A size in bytes. `ctx` is how the user writes it, e.g. `memory` or `disk "root" size=`.
    fn size(&mut self, e: &KdlEntry, ctx: &str) -> Option<Spanned<u64>> {
        let span = self.value_span(e);
        let text = match e.value() {
            KdlValue::String(s) => s.clone(),
            KdlValue::Integer(i) => {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::size-without-unit",
                        format!("size `{i}` has no unit"),
                    )
                    .label(span, "a bare number")
                    .help(format!(
                        "sizes are strings with a unit: {ctx}\"{i}MiB\" (units: {})",
                        unit_list()
                    )),
                );
                return None;
            }
            _ => {
                self.wrong_type(e, "a size string", format!("for example: {ctx}\"512MiB\""));
                return None;
            }
        };
        match units::parse_size(&text) {
            Ok(v) => Some(Spanned { val: v, span }),
            Err(SizeError::MissingUnit(n)) => {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::size-without-unit",
                        format!("size `{n}` has no unit"),
                    )
                    .label(span, "no unit")
                    .help(format!(
                        "add a unit: {ctx}\"{n}MiB\" (units: {})",
                        unit_list()
                    )),
                );
                None
            }
            Err(err @ SizeError::UnknownUnit { .. }) => {
                let SizeError::UnknownUnit { unit } = &err else {
                    return None;
                };
                let help = match did_you_mean(unit, units::UNITS.iter().map(|(u, _)| *u)) {
                    Some(s) => format!("did you mean `{s}`? (units: {})", unit_list()),
                    None => format!("units: {}", unit_list()),
                };
                self.sink.push(
                    Diag::error("vmctl::spec::bad-size", format!("bad size: {err}"))
                        .label(span, "unknown unit")
                        .help(help),
                );
                None
            }
            Err(err) => {
                self.sink.push(
                    Diag::error("vmctl::spec::bad-size", format!("bad size: {err}"))
                        .label(span, "not a size")
                        .help(format!(
                            "write a whole number and a unit, e.g. {ctx}\"1536MiB\" (units: {})",
                            unit_list()
                        )),
                );
                None
            }
        }
    }

    /// Memory in MiB: a size that is a non-zero multiple of 2 MiB.
    fn memory_mib(&mut self, e: &KdlEntry, ctx: &str) -> Option<Spanned<u64>> {
        let s = self.size(e, ctx)?;
        if s.val == 0 {
            self.sink.push(
                Diag::error("vmctl::spec::zero-memory", "memory cannot be 0")
                    .label(s.span, "zero")
                    .help(format!("give at least 2 MiB, e.g. {ctx}\"128MiB\"")),
            );
            return None;
        }
        if !s.val.is_multiple_of(2 * MIB) {
            let up = s.val.div_ceil(2 * MIB) * 2;
            self.sink.push(
                Diag::error(
                    "vmctl::spec::memory-alignment",
                    "memory must be a multiple of 2 MiB",
                )
                .label(s.span, format!("{} bytes", s.val))
                .help(format!(
                    "guest RAM is mapped in 2 MiB pages; round it, e.g. {ctx}\"{}\"",
                    units::format_mib(up)
                )),
            );
            return None;
        }
        Some(Spanned {
            val: s.val / MIB,
            span: s.span,
        })
    }

    fn cpus(&mut self, node: &KdlNode) -> Option<Pair<u32>> {
        self.no_children(node);
        let (args, props) = self.split(node, &["max"]);
        let boot_e = self.one_arg(node, &args)?;
        let boot = self.integer(boot_e, "cpus", 1, MAX_VCPUS);
        let max = props
            .first()
            .map(|(_, e)| self.integer(e, "cpus", 1, MAX_VCPUS));
        let boot = boot?;
        for v in [Some(&boot), max.as_ref().and_then(|m| m.as_ref())]
            .into_iter()
            .flatten()
        {
            if v.val == 0 {
                self.sink.push(
                    Diag::error("vmctl::spec::zero-cpus", "a VM needs at least one vCPU")
                        .label(v.span, "zero vCPUs")
                        .help("write `cpus 1` or more"),
                );
                return None;
            }
            if v.val > MAX_VCPUS {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::wrong-type",
                        format!("at most {MAX_VCPUS} vCPUs are supported"),
                    )
                    .label(v.span, "too many")
                    .help(format!("use a value from 1 to {MAX_VCPUS}")),
                );
                return None;
            }
        }
        let max = match max {
            None => boot.clone(),
            Some(None) => return None,
            Some(Some(m)) => m,
        };
        if max.val < boot.val {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::max-below-boot",
                    format!("`max` ({}) is below the boot vCPUs ({})", max.val, boot.val),
                )
                .label(max.span, "max")
                .label(boot.span, "boot vCPUs")
                .help(format!(
                    "max is the hot-add ceiling; raise it (cpus {b} max={b}) or drop it",
                    b = boot.val
                )),
            );
            return None;
        }
        if boot.val > self.host_cpus {
            self.sink.push(
                Diag::warning(
                    "vmctl::spec::host-cpus",
                    format!(
                        "{} boot vCPUs, but this host has {} CPU(s)",
                        boot.val, self.host_cpus
                    ),
                )
                .label(boot.span, "more than the host has")
                .help("the VM still boots, but its vCPUs will share host CPUs and run slower"),
            );
        }
        Some(Pair {
            boot: boot.val,
            max: max.val,
            span: boot.span,
        })
    }

    fn memory(&mut self, node: &KdlNode) -> Option<Pair<u64>> {
        self.no_children(node);
        let (args, props) = self.split(node, &["max"]);
        let boot_e = self.one_arg(node, &args)?;
        let boot = self.memory_mib(boot_e, "memory ");
        let max = props
            .first()
            .map(|(_, e)| self.memory_mib(e, "memory \"...\" max="));
        let boot = boot?;
        let max = match max {
            None => boot.clone(),
            Some(None) => return None,
            Some(Some(m)) => m,
        };
        if max.val < boot.val {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::max-below-boot",
                    format!(
                        "`max` ({}) is below the boot memory ({})",
                        units::format_mib(max.val),
                        units::format_mib(boot.val)
                    ),
                )
                .label(max.span, "max")
                .label(boot.span, "boot memory")
                .help(format!(
                    "max is the hot-add ceiling; raise it (max=\"{}\") or drop it",
                    units::format_mib(boot.val)
                )),
            );
            return None;
        }
        let headroom = max.val - boot.val;
        if !headroom.is_multiple_of(HOT_ADD_BLOCK_MIB) {
            let down = boot.val + headroom / HOT_ADD_BLOCK_MIB * HOT_ADD_BLOCK_MIB;
            let up = boot.val + headroom.div_ceil(HOT_ADD_BLOCK_MIB) * HOT_ADD_BLOCK_MIB;
            self.sink.push(
                Diag::warning(
                    "vmctl::spec::hot-add-steps",
                    format!(
                        "hot-add headroom {} is not a whole number of {HOT_ADD_BLOCK_MIB} MiB blocks",
                        units::format_mib(headroom)
                    ),
                )
                .label(max.span, "max")
                .label(boot.span, "boot memory")
                .help(format!(
                    "the guest onlines hot-added memory in {HOT_ADD_BLOCK_MIB} MiB blocks, so the last {} can never be hot-added; use max=\"{}\" or max=\"{}\"",
                    units::format_mib(headroom % HOT_ADD_BLOCK_MIB),
                    units::format_mib(down),
                    units::format_mib(up)
                )),
            );
        }
        Some(Pair {
            boot: boot.val,
            max: max.val,
            span: boot.span,
        })
    }

    fn cpu_weight(&mut self, node: &KdlNode) -> Option<Spanned<u32>> {
        self.no_children(node);
        let (args, _) = self.split(node, &[]);
        let e = self.one_arg(node, &args)?;
        let w = self.integer(e, "cpu-weight", 1, 10_000)?;
        if !(1..=10_000).contains(&w.val) {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::cpu-weight-range",
                    format!("cpu-weight {} is outside 1..=10000", w.val),
                )
                .label(w.span, "out of range")
                .help("cpu-weight is cgroup v2's cpu.weight: 1 to 10000, default 100"),
            );
            return None;
        }
        Some(w)
    }

    /// A node with exactly one string argument and nothing else.
    fn string_node(&mut self, node: &KdlNode) -> Option<Spanned<String>> {
        self.no_children(node);
        let (args, _) = self.split(node, &[]);
        let e = self.one_arg(node, &args)?;
        self.string(e, node.name().value())
    }

    /// The name argument of `vm "name"`, `image "name"`, `disk "name"`.
    fn name_arg(&mut self, node: &KdlNode, args: &[&KdlEntry]) -> Option<Spanned<String>> {
        let e = self.one_arg(node, args)?;
        let s = self.string(e, node.name().value())?;
        if s.val.trim().is_empty() || s.val.contains(['/', '\\', '\0']) || s.val.starts_with('.') {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::wrong-type",
                    format!("`{}` is not a usable name", s.val),
                )
                .label(s.span, "bad name")
                .help("names become file names: use letters, digits, `-` and `_`"),
            );
            return None;
        }
        Some(s)
    }

    /// Checks one child of a block: an unknown name, or a second copy of a
    /// node that may appear once (all but `repeatable`), is reported. True
    /// when the child is to be read.
    fn accept_child<'k>(
        &mut self,
        child: &'k KdlNode,
        place: &str,
        known: &[&str],
        repeatable: &[&str],
        seen: &mut Vec<(&'k str, SourceSpan)>,
    ) -> bool {
        let name = child.name().value();
        if !known.contains(&name) {
            self.unknown_node(child, name, place, known);
            return false;
        }
        if repeatable.contains(&name) {
            return true;
        }
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            self.duplicate_node(child, *first);
            return false;
        }
        seen.push((name, child.name().span()));
        true
    }

    fn duplicate_node(&mut self, node: &KdlNode, first: SourceSpan) {
        let n = node.name().value();
        self.sink.push(
            Diag::error(
                "vmctl::spec::duplicate-field",
                format!("`{n}` is given twice"),
            )
            .label(node.name().span(), "second")
            .label(first, "first")
            .help(format!("keep one `{n}`")),
        );
    }

    fn read_defaults(&mut self, node: &KdlNode) -> RawDefaults {
        let mut d = RawDefaults::default();
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for child in node.iter_children() {
            if !self.accept_child(child, "`defaults`", DEFAULTS_NODES, &[], &mut seen) {
                continue;
            }
            match child.name().value() {
                "memory" => d.memory = self.memory(child),
                "cpus" => d.cpus = self.cpus(child),
                _ => d.cpu_weight = self.cpu_weight(child),
            }
        }
        d
    }

    fn read_image(&mut self, node: &KdlNode) -> Option<RawImage> {
        let (args, _) = self.split(node, &[]);
        let name = self.name_arg(node, &args);
        let mut kernel = None;
        let mut initrd = None;
        let mut cmdline = None;
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for child in node.iter_children() {
            if !self.accept_child(child, "`image`", IMAGE_NODES, &[], &mut seen) {
                continue;
            }
            let v = self.string_node(child);
            match child.name().value() {
                "kernel" => kernel = v,
                "initrd" => initrd = v,
                _ => cmdline = v,
            }
        }
        let name = name?;
        if kernel.is_none() && !seen.iter().any(|(s, _)| *s == "kernel") {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::missing-value",
                    format!("image `{}` has no `kernel`", name.val),
                )
                .label(name.span, "this image")
                .help("add `kernel \"path/to/vmlinuz\"` inside its block"),
            );
        }
        Some(RawImage {
            name,
            kernel,
            initrd,
            cmdline,
        })
    }

    fn read_disk(&mut self, node: &KdlNode) -> Option<RawDisk> {
        let before = self.sink.errors.len();
        self.no_children(node);
        let (args, props) = self.split(node, DISK_PROPS);
        let name = self.name_arg(node, &args);
        let mut disk = RawDisk {
            name: name.clone().unwrap_or(Spanned {
                val: String::new(),
                span: node.name().span(),
            }),
            size: None,
            reported: false,
            format: None,
            path: None,
            path_span: None,
            source: None,
            source_format: None,
        };
        for (k, e) in props {
            match k {
                "size" => {
                    let ctx = format!(
                        "disk {} size=",
                        quote(name.as_ref().map(|n| n.val.as_str()).unwrap_or("..."))
                    );
                    if let Some(s) = self.size(e, &ctx) {
                        if s.val == 0 {
                            self.sink.push(
                                Diag::error("vmctl::spec::zero-disk", "a disk cannot be 0 bytes")
                                    .label(s.span, "zero")
                                    .help(format!("give it a size, e.g. {ctx}\"1GiB\"")),
                            );
                        } else {
                            disk.size = Some(s);
                        }
                    }
                }
                "format" => {
                    if let Some(f) = self.string(e, "format=") {
                        match f.val.as_str() {
                            "raw" => disk.format = Some(DiskFormat::Raw),
                            other => self.sink.push(
                                Diag::error(
                                    "vmctl::spec::bad-format",
                                    format!("unknown disk format `{other}`"),
                                )
                                .label(f.span, "unknown format")
                                .help(
                                    "the only disk format is \"raw\"; to import an image in \
                                     another format (qcow2, vdi, vmdk, vhd, vhdx, parallels), \
                                     give it as source=\"...\": it is converted to raw",
                                ),
                            ),
                        }
                    }
                }
                "source-format" => {
                    if let Some(f) = self.string(e, "source-format=") {
                        match SourceFormat::from_name(&f.val) {
                            Some(sf) => disk.source_format = Some(sf),
                            None => {
                                let names: Vec<&str> =
                                    SourceFormat::ALL.iter().map(|f| f.name()).collect();
                                // qemu's name for VHD is `vpc`, too far to be a typo.
                                let near = if f.val.eq_ignore_ascii_case("vpc") {
                                    Some("vhd")
                                } else {
                                    did_you_mean(&f.val, names.iter().copied())
                                };
                                let help = match near {
                                    Some(s) => format!("did you mean \"{s}\"? "),
                                    None => String::new(),
                                };
                                self.sink.push(
                                    Diag::error(
                                        "vmctl::spec::bad-source-format",
                                        format!("unknown source image format `{}`", f.val),
                                    )
                                    .label(f.span, "unknown format")
                                    .help(format!(
                                        "{help}source-format is one of {}; without it the \
                                         format is detected from the file",
                                        names.join(", ")
                                    )),
                                );
                            }
                        }
                    }
                }
                "path" => {
                    if let Some(s) = self.string(e, "path=") {
                        disk.path_span = Some(s.span);
                        disk.path = Some(s.val);
                    }
                }
                _ => disk.source = self.string(e, "source=").map(|s| s.val),
            }
        }
        disk.reported = self.sink.errors.len() > before;
        name.map(|_| disk)
    }

    /// The name of `vm "name"`: a DNS label (crate::names). A bad name is
    /// reported and still used, so references to it (`depends-on`) do not
    /// cause follow-up errors.
    fn vm_name_arg(&mut self, node: &KdlNode, args: &[&KdlEntry]) -> Option<Spanned<String>> {
        let e = self.one_arg(node, args)?;
        let s = self.string(e, node.name().value())?;
        if let Some(why) = crate::names::vm_name_problem(&s.val) {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::bad-vm-name",
                    format!("{:?} is not a valid VM name: {why}", s.val),
                )
                .label(s.span, "bad VM name")
                .help(format!(
                    "a VM name becomes a directory, cgroup and network interface name: \
                     1-63 of a-z, 0-9 and `-`, starting with a letter or digit, not ending \
                     with `-`; try `vm \"{}\"`",
                    crate::names::suggest_vm_name(&s.val)
                )),
            );
        }
        Some(s)
    }

    fn read_vm(&mut self, node: &KdlNode) -> Option<RawVm> {
        let (args, _) = self.split(node, &[]);
        let name = self.vm_name_arg(node, &args);
        let mut vm = RawVm {
            name: Spanned {
                val: String::new(),
                span: node.name().span(),
            },
            os: None,
            cpus: None,
            memory: None,
            disks: Vec::new(),
            cpu_weight: None,
            depends_on: Vec::new(),
            copy_from: None,
            copy_from_written: false,
            os_written: false,
            autostart: None,
            guest: RawGuest::default(),
            nics: Vec::new(),
            host: None,
            placement: None,
        };
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for child in node.iter_children() {
            if !self.accept_child(child, "`vm`", VM_NODES, VM_REPEATABLE, &mut seen) {
                continue;
            }
            match child.name().value() {
                "os" => {
                    vm.os_written = true;
                    vm.os = self.string_node(child);
                }
                "cpus" => vm.cpus = self.cpus(child),
                "memory" => vm.memory = self.memory(child),
                "cpu-weight" => vm.cpu_weight = self.cpu_weight(child),
                "copy-from" => {
                    vm.copy_from_written = true;
                    vm.copy_from = self.string_node(child);
                }
                n if guest_nodes::GUEST_NODES.contains(&n) => {
                    self.read_guest_node(child, &mut vm.guest);
                }
                "nic" => {
                    if let Some(nic) = self.read_nic(child) {
                        vm.nics.push(nic);
                    }
                }
                "host" => vm.host = self.string_node(child),
                "placement" => vm.placement = Some(self.read_placement(child)),
                "autostart" => {
                    self.no_children(child);
                    let (args, _) = self.split(child, &[]);
                    if let Some(e) = self.one_arg(child, &args) {
                        vm.autostart = self.boolean(e, "autostart");
                    }
                }
                "depends-on" => {
                    self.no_children(child);
                    let (args, _) = self.split(child, &[]);
                    if args.is_empty() {
                        self.one_arg(child, &args);
                    }
                    for e in args {
                        if let Some(s) = self.string(e, "depends-on")
                            && !vm.depends_on.iter().any(|d| d.val == s.val)
                        {
                            vm.depends_on.push(s);
                        }
                    }
                }
                _ => {
                    if let Some(d) = self.read_disk(child) {
                        if let Some(first) = vm.disks.iter().find(|x| x.name.val == d.name.val) {
                            self.sink.push(
                                Diag::error(
                                    "vmctl::spec::duplicate-disk",
                                    format!("disk `{}` is declared twice in this VM", d.name.val),
                                )
                                .label(d.name.span, "second")
                                .label(first.name.span, "first")
                                .help("give each disk its own name"),
                            );
                        } else {
                            vm.disks.push(d);
                        }
                    }
                }
            }
        }
        vm.name = name?;
        Some(vm)
    }
}

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unit_list() -> String {
    units::UNITS
        .iter()
        .map(|(u, _)| *u)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A correct example of a node, for help texts.
pub(crate) fn example(node: &str) -> &'static str {
    match node {
        "os" => "os \"debian-12\"",
        "cpus" => "cpus 2 max=4",
        "memory" => "memory \"1GiB\" max=\"4GiB\"",
        "disk" => "disk \"root\" size=\"10GiB\"",
        "cpu-weight" => "cpu-weight 100",
        "depends-on" => "depends-on \"db\"",
        "copy-from" => "copy-from \"web\"",
        "autostart" => "autostart #true",
        "hostname" => "hostname \"web\"",
        "user" => "user \"alice\" { ssh-key \"ssh-ed25519 AAAA... alice@laptop\"; sudo #true }",
        "packages" => "packages \"nginx\" \"postgresql-client\"",
        "file" => "file \"/etc/motd\" content=\"hello\\n\"",
        "ssh-key" => "ssh-key \"ssh-ed25519 AAAA... alice@laptop\"",
        "sudo" => "sudo #true",
        "kernel" => "kernel \"images/vmlinuz\"",
        "initrd" => "initrd \"images/initrd.img\"",
        "cmdline" => "cmdline \"console=ttyS0\"",
        "vm" => "vm \"web\" { os \"diag\" }",
        "image" => "image \"my-linux\" { kernel \"vmlinuz\" }",
        "network" => "network \"lab\" { subnet \"10.20.0.0/24\" }",
        "subnet" => "subnet \"10.20.0.0/24\"",
        "nat" => "nat #true",
        "nic" => "nic \"lab\" ip=\"10.20.0.10\"",
        "cluster" => "cluster \"lab\" { state \"etcd\" endpoints=\"http://127.0.0.1:2379\" }",
        "state" => "state \"etcd\" endpoints=\"http://127.0.0.1:2379\" lock-ttl=\"15s\"",
        "host" => "host \"h1\"",
        "ssh" => "ssh \"root@10.0.0.11\"",
        "labels" => "labels rack=\"a\"",
        "reserve" => "reserve memory=\"2GiB\" cpus=1",
        "drain" => "drain #true",
        "vmctl" => "vmctl \"/usr/local/bin/vmctl\"",
        "state-dir" => "state-dir \"/var/lib/vmctl/lab\"",
        "placement" => "placement { spread \"rack\" }",
        "spread" => "spread \"rack\"",
        _ => "see docs/kdl.md",
    }
}
