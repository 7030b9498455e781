//! Raw declarations → resolved [`DesiredState`].
//!
//! Cross-node rules live here: duplicate names, `depends-on`/`copy-from`
//! targets, dependency cycles, OS lookup; then every VM is resolved, sources
//! before copies, layering explicit > copy-from source > `defaults` > OS profile.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use miette::SourceSpan;

use crate::diagnostic::{Diag, Sink};
use crate::guest;
use crate::model::{
    DesiredState, DiskFormat, DiskSpec, FORMAT_VERSION, FileSpec, GuestConfig, ImageSpec, UserSpec,
    VmSpec,
};
use crate::net::NetEnv;
use crate::profiles::{self, DEFAULT_CMDLINE, DEFAULT_CPU_WEIGHT, IMAGE_PROFILE};
use crate::resolve_hosts;
use crate::resolve_net;
use crate::suggest::did_you_mean;
use crate::syntax::{RawFile, RawVm};

/// Make `p` absolute against `base` and drop `.`/`..` lexically.
pub(crate) fn absolute(base: &Path, p: &str) -> PathBuf {
    let joined = base.join(p);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    out
}

pub(crate) fn resolve(raw: RawFile, base: &Path, env: &NetEnv, sink: &mut Sink) -> DesiredState {
    let images = resolve_images(&raw, base, sink);
    let networks = resolve_net::resolve_networks(&raw.networks, env, sink);

    // Unique VMs (the first of a duplicated name wins; both are pointed at).
    let mut vms: Vec<&RawVm> = Vec::new();
    for vm in &raw.vms {
        if let Some(first) = vms.iter().find(|v| v.name.val == vm.name.val) {
            sink.push(
                Diag::error(
                    "vmctl::spec::duplicate-vm",
                    format!("VM `{}` is declared twice", vm.name.val),
                )
                .label(vm.name.span, "declared again here")
                .label(first.name.span, "first declared here")
                .help("VM names must be unique: rename or remove one of them"),
            );
        } else {
            vms.push(vm);
        }
    }
    let index: HashMap<&str, usize> = vms
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.val.as_str(), i))
        .collect();
    let names: Vec<&str> = vms.iter().map(|v| v.name.val.as_str()).collect();

    // Edges (from, to, span of the reference) for both kinds of reference.
    let mut edges: Vec<Vec<(usize, SourceSpan)>> = vec![Vec::new(); vms.len()];
    let mut copy_src: Vec<Option<usize>> = vec![None; vms.len()];
    let mut copy_broken = vec![false; vms.len()];
    for (i, vm) in vms.iter().enumerate() {
        let refs = vm
            .depends_on
            .iter()
            .map(|d| (d, "depends-on"))
            .chain(vm.copy_from.iter().map(|c| (c, "copy-from")));
        for (r, kind) in refs {
            match index.get(r.val.as_str()) {
                Some(&j) => {
                    edges[i].push((j, r.span));
                    if kind == "copy-from" {
                        copy_src[i] = Some(j);
                    }
                }
                None => {
                    if kind == "copy-from" {
                        copy_broken[i] = true;
                    }
                    let help = match did_you_mean(&r.val, names.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None if names.len() <= 1 => {
                            "declare that VM with `vm \"...\" { ... }`".to_string()
                        }
                        None => format!("VMs in this file: {}", quoted_list(&names)),
                    };
                    sink.push(
                        Diag::error(
                            "vmctl::spec::unknown-vm",
                            format!("`{kind}` names VM `{}`, which does not exist", r.val),
                        )
                        .label(r.span, "no VM of this name")
                        .help(help),
                    );
                }
            }
        }
        if vm.copy_from_written && vm.copy_from.is_none() {
            copy_broken[i] = true;
        }
    }

    let cyclic = report_cycles(&vms, &edges, sink);
    for (i, c) in cyclic.iter().enumerate() {
        if *c {
            copy_broken[i] = copy_broken[i] || copy_src[i].is_some();
            copy_src[i] = None;
        }
    }

    // Resolve sources before copies (copy_src has no cycles left).
    let mut resolved: Vec<Option<VmSpec>> = vec![None; vms.len()];
    for i in 0..vms.len() {
        let mut chain = vec![i];
        while let Some(&top) = chain.last() {
            match copy_src[top] {
                Some(s) if resolved[s].is_none() && !chain.contains(&s) => chain.push(s),
                _ => {
                    chain.pop();
                    if resolved[top].is_none() {
                        let src = copy_src[top].and_then(|s| resolved[s].clone());
                        resolved[top] = Some(resolve_vm(
                            vms[top],
                            src.as_ref(),
                            copy_broken[top],
                            &raw,
                            &images,
                            base,
                            sink,
                        ));
                    }
                }
            }
        }
    }

    check_disk_paths(&vms, base, sink);
    let declared: Vec<&str> = raw.networks.iter().map(|n| n.name.val.as_str()).collect();
    let nics = resolve_net::resolve_nics(&vms, &networks, &declared, env, sink);
    let placed = resolve_hosts::resolve(&raw, &vms, base, sink);

    DesiredState {
        format_version: FORMAT_VERSION.to_string(),
        vms: resolved
            .into_iter()
            .zip(nics)
            .zip(placed.per_vm)
            .filter_map(|((vm, nics), (host, placement))| {
                vm.map(|vm| VmSpec {
                    nics,
                    host,
                    placement,
                    ..vm
                })
            })
            .collect(),
        images: images.into_iter().map(|(img, _)| img).collect(),
        networks: networks.into_iter().map(|(n, _)| n).collect(),
        cluster: placed.cluster,
        hosts: placed.hosts,
    }
}

/// Disk `path`s (issue 14): one file is one disk of one VM — two disks
/// naming the same path would have two VMMs (or one VM twice) write the same
/// file — and a path that already exists must be a regular file (a
/// directory, device, FIFO... is refused; the runtime checks again at apply,
/// and locks the file while a VMM has it open).
fn check_disk_paths(vms: &[&RawVm], base: &Path, sink: &mut Sink) {
    let mut seen: Vec<(PathBuf, &str, &str, SourceSpan)> = Vec::new();
    for vm in vms {
        for d in &vm.disks {
            let (Some(p), Some(span)) = (&d.path, d.path_span) else {
                continue;
            };
            let path = absolute(base, p);
            if let Some((_, other_vm, other_disk, first)) = seen.iter().find(|s| s.0 == path) {
                sink.push(
                    Diag::error(
                        "vmctl::spec::shared-disk-path",
                        format!(
                            "disk `{}` of VM `{}` and disk `{other_disk}` of VM `{other_vm}` both use {}",
                            d.name.val,
                            vm.name.val,
                            path.display()
                        ),
                    )
                    .label(span, "used again here")
                    .label(*first, "first used here")
                    .help("a disk file belongs to one disk of one VM: give each disk its own path"),
                );
                continue;
            }
            seen.push((path.clone(), &vm.name.val, &d.name.val, span));
            if let Ok(m) = std::fs::metadata(&path)
                && !m.is_file()
            {
                let kind = if m.is_dir() {
                    "a directory"
                } else {
                    "not a regular file"
                };
                sink.push(
                    Diag::error(
                        "vmctl::spec::disk-path-not-file",
                        format!("disk `{}` path {} is {kind}", d.name.val, path.display()),
                    )
                    .label(span, "this path")
                    .help("a disk's path must be a regular file or not exist yet (vmctl creates it); block devices are not supported"),
                );
            }
        }
    }
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn resolve_images(raw: &RawFile, base: &Path, sink: &mut Sink) -> Vec<(ImageSpec, SourceSpan)> {
    let mut out: Vec<(ImageSpec, SourceSpan)> = Vec::new();
    for img in &raw.images {
        if let Some((_, first)) = out.iter().find(|(i, _)| i.name == img.name.val) {
            sink.push(
                Diag::error(
                    "vmctl::spec::duplicate-image",
                    format!("image `{}` is declared twice", img.name.val),
                )
                .label(img.name.span, "declared again here")
                .label(*first, "first declared here")
                .help("image names must be unique"),
            );
            continue;
        }
        if profiles::builtin(&img.name.val).is_some() {
            sink.push(
                Diag::error(
                    "vmctl::spec::image-shadows-os",
                    format!("image `{}` has the name of a built-in OS", img.name.val),
                )
                .label(img.name.span, "built-in OS name")
                .help(format!(
                    "built-in OSes: {}; give the image another name",
                    profiles::builtin_names().collect::<Vec<_>>().join(", ")
                )),
            );
            continue;
        }
        out.push((
            ImageSpec {
                name: img.name.val.clone(),
                kernel: img
                    .kernel
                    .as_ref()
                    .map(|k| absolute(base, &k.val))
                    .unwrap_or_default(),
                initrd: img.initrd.as_ref().map(|p| absolute(base, &p.val)),
                cmdline: img
                    .cmdline
                    .as_ref()
                    .map(|c| c.val.clone())
                    .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            },
            img.name.span,
        ));
    }
    out
}

/// Report every dependency cycle (through `depends-on` and `copy-from`) once,
/// naming each VM on it; returns which VMs sit on a cycle.
fn report_cycles(vms: &[&RawVm], edges: &[Vec<(usize, SourceSpan)>], sink: &mut Sink) -> Vec<bool> {
    let n = vms.len();
    let sccs = tarjan(n, edges);
    let mut cyclic = vec![false; n];
    let mut cycles: Vec<Vec<usize>> = Vec::new();
    for comp in sccs {
        let self_loop = comp.len() == 1 && edges[comp[0]].iter().any(|(j, _)| *j == comp[0]);
        if comp.len() < 2 && !self_loop {
            continue;
        }
        for &v in &comp {
            cyclic[v] = true;
        }
        let start = comp.iter().copied().min().unwrap_or(0);
        cycles.push(shortest_cycle(start, &comp, edges));
    }
    cycles.sort();
    for cyc in cycles {
        let mut path: Vec<&str> = cyc.iter().map(|&i| vms[i].name.val.as_str()).collect();
        path.push(vms[cyc[0]].name.val.as_str());
        let mut d = Diag::error(
            "vmctl::spec::cycle",
            format!("dependency cycle: {}", path.join(" → ")),
        );
        for (k, &u) in cyc.iter().enumerate() {
            let v = cyc[(k + 1) % cyc.len()];
            if let Some((_, span)) = edges[u].iter().find(|(j, _)| *j == v) {
                let copies = vms[u].copy_from.as_ref().is_some_and(|c| c.span == *span);
                let verb = if copies { "copies" } else { "depends on" };
                d = d.label(
                    *span,
                    format!("`{}` {verb} `{}`", vms[u].name.val, vms[v].name.val),
                );
            }
        }
        sink.push(d.help(
            "a VM cannot (even indirectly) depend on or copy from itself; \
             remove one `depends-on` or `copy-from` on this cycle",
        ));
    }
    cyclic
}

/// Strongly connected components (Tarjan, iterative).
fn tarjan(n: usize, edges: &[Vec<(usize, SourceSpan)>]) -> Vec<Vec<usize>> {
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut counter = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&mut (v, ref mut ei)) = work.last_mut() {
            if *ei == 0 && index[v] == usize::MAX {
                index[v] = counter;
                low[v] = counter;
                counter += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&(w, _)) = edges[v].get(*ei) {
                *ei += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                comp.sort_unstable();
                out.push(comp);
            }
        }
    }
    out
}

/// A shortest cycle through `start` inside one component (BFS).
fn shortest_cycle(start: usize, comp: &[usize], edges: &[Vec<(usize, SourceSpan)>]) -> Vec<usize> {
    let mut prev: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(u) = queue.pop_front() {
        for &(w, _) in &edges[u] {
            if !comp.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![u];
                let mut cur = u;
                while cur != start {
                    match prev.get(&cur) {
                        Some(&p) => {
                            path.push(p);
                            cur = p;
                        }
                        None => break,
                    }
                }
                path.reverse();
                return path;
            }
            if w != start && !prev.contains_key(&w) {
                prev.insert(w, u);
                queue.push_back(w);
            }
        }
    }
    vec![start]
}

fn resolve_vm(
    vm: &RawVm,
    src: Option<&VmSpec>,
    copy_broken: bool,
    raw: &RawFile,
    images: &[(ImageSpec, SourceSpan)],
    base: &Path,
    sink: &mut Sink,
) -> VmSpec {
    let os = match (&vm.os, src) {
        (Some(os), _) => Some(os.val.clone()),
        (None, Some(s)) => Some(s.os.clone()),
        (None, None) => None,
    };
    let image = os
        .as_ref()
        .and_then(|o| images.iter().find(|(i, _)| &i.name == o))
        .map(|(i, _)| i.clone());
    let profile = match os.as_deref() {
        Some(o) => match profiles::builtin(o) {
            Some(p) => Some(*p),
            None if image.is_some() => Some(IMAGE_PROFILE),
            None => {
                if let Some(span) = vm.os.as_ref().map(|s| s.span) {
                    let mut known: Vec<&str> = profiles::builtin_names().collect();
                    known.extend(images.iter().map(|(i, _)| i.name.as_str()));
                    let list = quoted_list(&known);
                    let help = match did_you_mean(o, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`? known OSes: {list}"),
                        None => format!(
                            "known OSes: {list}; or declare `image \"{o}\" {{ kernel \"...\" }}`"
                        ),
                    };
                    sink.push(
                        Diag::error("vmctl::spec::unknown-os", format!("unknown OS `{o}`"))
                            .label(span, "not a built-in OS or an image")
                            .help(help),
                    );
                }
                None
            }
        },
        None => {
            if !copy_broken && !vm.copy_from_written && !vm.os_written {
                sink.push(
                    Diag::error(
                        "vmctl::spec::missing-value",
                        format!("VM `{}` has no `os`", vm.name.val),
                    )
                    .label(vm.name.span, "this VM")
                    .help(format!(
                        "add `os \"diag\"` (or {}, or an image name), or `copy-from` another VM",
                        profiles::builtin_names()
                            .skip(1)
                            .map(|n| format!("\"{n}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
            None
        }
    };
    let profile_found = profile.is_some();
    let profile = profile.unwrap_or(IMAGE_PROFILE);
    let d = &raw.defaults;

    let (cpus, max_cpus) = match (&vm.cpus, src, &d.cpus) {
        (Some(p), _, _) => (p.boot, p.max),
        (None, Some(s), _) => (s.cpus, s.max_cpus),
        (None, None, Some(p)) => (p.boot, p.max),
        (None, None, None) => (profile.cpus, profile.cpus),
    };
    let (memory_mib, max_memory_mib) = match (&vm.memory, src, &d.memory) {
        (Some(p), _, _) => (p.boot, p.max),
        (None, Some(s), _) => (s.memory_mib, s.max_memory_mib),
        (None, None, Some(p)) => (p.boot, p.max),
        (None, None, None) => (profile.memory_mib, profile.memory_mib),
    };
    let cpu_weight = match (&vm.cpu_weight, src, &d.cpu_weight) {
        (Some(w), _, _) => w.val,
        (None, Some(s), _) => s.cpu_weight,
        (None, None, Some(w)) => w.val,
        (None, None, None) => DEFAULT_CPU_WEIGHT,
    };

    // Disks: the base set (the source's, as fresh copies, or the profile's),
    // then the VM's own `disk` nodes override by name or add.
    let mut disks: Vec<DiskSpec> = match src {
        Some(s) => s
            .disks
            .iter()
            .map(|d| DiskSpec {
                path: None,
                source: None,
                source_format: None,
                ..d.clone()
            })
            .collect(),
        None => profile
            .disks
            .iter()
            .map(|(name, size)| DiskSpec {
                name: (*name).to_string(),
                size_bytes: *size,
                format: DiskFormat::Raw,
                path: None,
                source: None,
                source_format: None,
            })
            .collect(),
    };
    for rd in &vm.disks {
        let path = rd.path.as_ref().map(|p| absolute(base, p));
        let source = rd.source.as_ref().map(|p| absolute(base, p));
        if let Some(existing) = disks.iter_mut().find(|d| d.name == rd.name.val) {
            if let Some(s) = &rd.size {
                existing.size_bytes = s.val;
            }
            if let Some(f) = rd.format {
                existing.format = f;
            }
            if path.is_some() {
                existing.path = path;
            }
            if source.is_some() {
                existing.source = source;
                existing.source_format = rd.source_format;
            }
            continue;
        }
        let size = match &rd.size {
            Some(s) => s.val,
            None => {
                if !rd.reported {
                    sink.push(
                        Diag::error(
                            "vmctl::spec::missing-value",
                            format!("disk `{}` has no size", rd.name.val),
                        )
                        .label(rd.name.span, "this disk")
                        .help(format!(
                            "add one: disk {} size=\"10GiB\"",
                            crate::render::quote(&rd.name.val)
                        )),
                    );
                }
                0
            }
        };
        disks.push(DiskSpec {
            name: rd.name.val.clone(),
            size_bytes: size,
            format: rd.format.unwrap_or(DiskFormat::Raw),
            path,
            source,
            source_format: rd.source_format,
        });
    }

    let depends_on = if vm.depends_on.is_empty() {
        src.map(|s| s.depends_on.clone()).unwrap_or_default()
    } else {
        vm.depends_on.iter().map(|d| d.val.clone()).collect()
    };

    let (packages, config) = resolve_guest(vm, os.as_deref(), profile_found, src, sink);

    VmSpec {
        name: vm.name.val.clone(),
        os: os.unwrap_or_default(),
        cpus,
        max_cpus,
        memory_mib,
        max_memory_mib,
        disks,
        depends_on,
        copy_from: vm.copy_from.as_ref().map(|c| c.val.clone()),
        cpu_weight,
        autostart: vm.autostart.or(src.map(|s| s.autostart)).unwrap_or(true),
        image,
        packages,
        config,
        // Filled in by resolve_net once every VM is known.
        nics: Vec::new(),
        // Set from resolve_hosts (a copy is not pinned by its source's
        // `host`: the planner puts it beside its source).
        host: None,
        placement: None,
    }
}

/// Packages and guest configuration. Only an OS in
/// [`guest::CONFIGURABLE_OSES`] takes them (elsewhere they are reported once
/// per VM and dropped). A copy inherits its source's packages — its root disk
/// is a copy — and may only repeat them; hostname, users and files are its own.
fn resolve_guest(
    vm: &RawVm,
    os: Option<&str>,
    os_known: bool,
    src: Option<&VmSpec>,
    sink: &mut Sink,
) -> (Vec<String>, GuestConfig) {
    let g = &vm.guest;
    if !os.is_some_and(|o| os_known && guest::os_takes_config(o)) {
        // An unknown or missing OS was reported already.
        if let (Some(os), true, Some(first)) = (os, os_known, g.nodes.first()) {
            let oses = guest::CONFIGURABLE_OSES
                .iter()
                .map(|o| format!("`os \"{o}\"`"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut d = Diag::error(
                "vmctl::spec::guest-config-os",
                format!(
                    "VM `{}` runs `{os}`, which takes no guest configuration",
                    vm.name.val
                ),
            )
            .label(*first, format!("needs {oses}"));
            for span in &g.nodes[1..] {
                d = d.label(*span, "this too");
            }
            d = match (&vm.os, &vm.copy_from) {
                (Some(o), _) => d.label(o.span, "this OS"),
                (None, Some(c)) => d.label(c.span, format!("`{os}` comes from this VM")),
                (None, None) => d,
            };
            sink.push(d.help(format!(
                "`hostname`, `user`, `packages` and `file` are applied by the guest image's \
                 vmctl-config service, which only {oses} has: switch the VM to it, or remove them"
            )));
        }
        return (Vec::new(), GuestConfig::default());
    }

    let mut own: Vec<String> = g.packages.iter().map(|p| p.val.clone()).collect();
    own.sort();
    own.dedup();
    let packages = match src {
        Some(s) => {
            if !g.packages_nodes.is_empty() && !g.packages_reported && own != s.packages {
                let theirs = if s.packages.is_empty() {
                    "none".to_string()
                } else {
                    s.packages.join(", ")
                };
                let mut d = Diag::error(
                    "vmctl::spec::copy-packages",
                    format!(
                        "VM `{}` is a copy of `{}` and cannot have other packages",
                        vm.name.val, s.name
                    ),
                );
                for span in &g.packages_nodes {
                    d = d.label(*span, format!("differs from `{}`'s packages", s.name));
                }
                if let Some(c) = &vm.copy_from {
                    d = d.label(c.span, "copies its disks");
                }
                sink.push(d.help(format!(
                    "a copy's root disk is a copy of its source's, so it has the same packages \
                     ({theirs}): remove `packages` here, or change them on `{}`",
                    s.name
                )));
            }
            s.packages.clone()
        }
        None => own,
    };
    let config = GuestConfig {
        hostname: g.hostname.as_ref().map(|h| h.val.clone()),
        users: g
            .users
            .iter()
            .map(|u| UserSpec {
                name: u.name.val.clone(),
                ssh_keys: u.ssh_keys.clone(),
                sudo: u.sudo,
            })
            .collect(),
        files: g
            .files
            .iter()
            .map(|f| FileSpec {
                path: f.path.val.clone(),
                content: f.content.clone(),
                mode: f.mode,
            })
            .collect(),
    };
    (packages, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths() {
        let base = Path::new("/lab/x");
        assert_eq!(absolute(base, "d.raw"), PathBuf::from("/lab/x/d.raw"));
        assert_eq!(
            absolute(base, "./a/../b.raw"),
            PathBuf::from("/lab/x/b.raw")
        );
        assert_eq!(absolute(base, "../../../up.raw"), PathBuf::from("/up.raw"));
        assert_eq!(absolute(base, "/abs/d.raw"), PathBuf::from("/abs/d.raw"));
        assert_eq!(absolute(base, "."), PathBuf::from("/lab/x"));
    }

    fn graph(edges: &[(usize, usize)], n: usize) -> Vec<Vec<(usize, SourceSpan)>> {
        let mut g = vec![Vec::new(); n];
        for &(a, b) in edges {
            g[a].push((b, SourceSpan::from(0..0)));
        }
        g
    }

    #[test]
    fn components_and_cycles() {
        // 0 -> 1 -> 2 -> 0, 3 -> 3, 4 -> 0
        let g = graph(&[(0, 1), (1, 2), (2, 0), (3, 3), (4, 0)], 5);
        let mut sccs = tarjan(5, &g);
        sccs.sort();
        assert_eq!(sccs, vec![vec![0, 1, 2], vec![3], vec![4]]);
        assert_eq!(shortest_cycle(0, &[0, 1, 2], &g), vec![0, 1, 2]);
        assert_eq!(shortest_cycle(3, &[3], &g), vec![3]);
    }

    #[test]
    fn shortest_cycle_picks_the_short_way_round() {
        // 0 -> 1 -> 0 and 0 -> 2 -> 3 -> 0
        let g = graph(&[(0, 2), (2, 3), (3, 0), (0, 1), (1, 0)], 4);
        assert_eq!(shortest_cycle(0, &[0, 1, 2, 3], &g), vec![0, 1]);
    }

    #[test]
    fn long_chains_do_not_overflow_the_stack() {
        let n = 100_000;
        let edges: Vec<(usize, usize)> = (0..n - 1).map(|i| (i, i + 1)).collect();
        let g = graph(&edges, n);
        assert_eq!(tarjan(n, &g).len(), n);
    }
}
