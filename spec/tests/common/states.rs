//! Proptest strategies for resolved desired states: every field, every
//! node type, names and sizes across their ranges (used by the round-trip
//! and the fmt properties).

use std::path::PathBuf;

use base64::Engine as _;
use proptest::prelude::*;
use vmctl_spec::{
    DesiredState, DiskFormat, DiskSpec, FORMAT_VERSION, FileSpec, GuestConfig, ImageSpec,
    Ipv4Subnet, MacAddr, NetworkSpec, NicSpec, SourceFormat, UserSpec, VmSpec,
};

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,8}"
}

/// A VM name: a DNS label (no `-` at the end).
pub fn vm_name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,7}[a-z0-9])?"
}

fn abs_path() -> impl Strategy<Value = Option<PathBuf>> {
    proptest::option::of(
        "(/[a-z0-9_.-]{1,6}){1,3}".prop_filter("no dot segments", |p| {
            !p.split('/').any(|s| s == "." || s == "..")
        }),
    )
    .prop_map(|p| p.map(PathBuf::from))
}

fn disk() -> impl Strategy<Value = DiskSpec> {
    (
        name(),
        1u64..(1 << 42),
        abs_path(),
        abs_path(),
        proptest::option::of(proptest::sample::select(SourceFormat::ALL.to_vec())),
    )
        .prop_map(|(name, size_bytes, path, source, source_format)| DiskSpec {
            name,
            size_bytes,
            format: DiskFormat::Raw,
            path,
            // `source-format` only means something with a `source`.
            source_format: source.as_ref().and(source_format),
            source,
        })
}

/// A well-formed OpenSSH key line of a known type (random key material).
fn ssh_key() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(vmctl_spec::guest::SSH_KEY_TYPES),
        proptest::collection::vec(any::<u8>(), 1..40),
        proptest::option::of("[a-zA-Z0-9@. ]{0,12}"),
    )
        .prop_map(|(kind, data, comment)| {
            let mut blob = (kind.len() as u32).to_be_bytes().to_vec();
            blob.extend_from_slice(kind.as_bytes());
            blob.extend_from_slice(&data);
            let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
            let line = match comment {
                Some(c) => format!("{kind} {b64} {c}"),
                None => format!("{kind} {b64}"),
            };
            line.trim().to_string()
        })
}

fn user() -> impl Strategy<Value = UserSpec> {
    (
        "[a-z][a-z0-9_-]{0,10}".prop_filter("not a system account", |n| {
            !vmctl_spec::guest::is_system_user(n)
        }),
        proptest::collection::vec(ssh_key(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(name, mut ssh_keys, sudo)| {
            ssh_keys.dedup();
            UserSpec {
                name,
                ssh_keys,
                sudo,
            }
        })
}

fn guest_file() -> impl Strategy<Value = FileSpec> {
    (
        "(/[a-z0-9_][a-z0-9_.-]{0,5}){1,3}".prop_filter("valid, not reserved", |p| {
            vmctl_spec::guest::file_path_problem(p).is_none()
        }),
        any::<String>(),
        0u32..=0o7777,
    )
        .prop_map(|(path, content, mode)| FileSpec {
            path,
            content,
            mode,
        })
}

/// Packages and guest configuration, all valid; names and paths unique.
fn guest() -> impl Strategy<Value = (Vec<String>, GuestConfig)> {
    (
        proptest::collection::btree_set("[a-z0-9][a-z0-9+.-]{1,10}", 0..4),
        proptest::option::of("[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z0-9]{1,5}){0,2}"),
        proptest::collection::vec(user(), 0..3),
        proptest::collection::vec(guest_file(), 0..3),
    )
        .prop_map(|(packages, hostname, mut users, mut files)| {
            let mut names = std::collections::HashSet::new();
            users.retain(|u| names.insert(u.name.clone()));
            let mut paths = std::collections::HashSet::new();
            files.retain(|f| paths.insert(f.path.clone()));
            (
                packages.into_iter().collect(),
                GuestConfig {
                    hostname,
                    users,
                    files,
                },
            )
        })
}

/// One VM before cross-VM fix-ups; `os_pick` 0 = diag, 1 = debian-12, 2 = image.
#[derive(Debug, Clone)]
struct Draft {
    os_pick: u8,
    cpus: u32,
    extra_cpus: u32,
    memory_2mib: u64,
    extra_2mib: u64,
    disks: Vec<DiskSpec>,
    cpu_weight: u32,
    autostart: bool,
    dep_picks: Vec<usize>,
    copy_pick: Option<usize>,
    packages: Vec<String>,
    config: GuestConfig,
}

fn draft() -> impl Strategy<Value = Draft> {
    (
        0u8..3,
        1u32..64,
        0u32..64,
        1u64..4096,
        0u64..4096,
        proptest::collection::vec(disk(), 0..3),
        1u32..=10_000,
        any::<bool>(),
        proptest::collection::vec(any::<usize>(), 0..3),
        proptest::option::of(any::<usize>()),
        guest(),
    )
        .prop_map(
            |(
                os_pick,
                cpus,
                extra_cpus,
                memory_2mib,
                extra_2mib,
                disks,
                cpu_weight,
                autostart,
                dep_picks,
                copy_pick,
                (packages, config),
            )| Draft {
                os_pick,
                cpus,
                extra_cpus,
                memory_2mib,
                extra_2mib,
                disks,
                cpu_weight,
                autostart,
                dep_picks,
                copy_pick,
                packages,
                config,
            },
        )
}

/// Build a state the schema can express: references only point backwards (no
/// cycles), disk names are unique, a debian-12 VM has its profile's root disk
/// first, and a copy lists its source's disks first (they are inherited).
fn build(
    names: Vec<String>,
    drafts: Vec<Draft>,
    image: ImageSpec,
    networks: Vec<NetworkSpec>,
    nic_picks: Vec<Vec<usize>>,
) -> DesiredState {
    let mut vms: Vec<VmSpec> = Vec::new();
    for (i, ((name, d), picks)) in names.into_iter().zip(drafts).zip(nic_picks).enumerate() {
        // Unique addresses and MACs: (VM, NIC) → .(2 + 4i + k), 02:..:i:k.
        let nics: Vec<NicSpec> = if networks.is_empty() {
            Vec::new()
        } else {
            picks
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let net = &networks[p % networks.len()];
                    NicSpec {
                        network: net.name.clone(),
                        ip: net.subnet.nth(2 + 4 * i as u64 + k as u64),
                        mac: MacAddr([0x02, 0, 0, 0, i as u8, k as u8]),
                    }
                })
                .collect()
        };
        let copy_from = d
            .copy_pick
            .filter(|_| i > 0)
            .map(|p| vms[p % i].name.clone());
        let src = copy_from
            .as_ref()
            .and_then(|c| vms.iter().find(|v| &v.name == c))
            .cloned();
        let (os, img) = match d.os_pick {
            0 => ("diag".to_string(), None),
            1 => ("debian-12".to_string(), None),
            _ => (image.name.clone(), Some(image.clone())),
        };
        let mut disks: Vec<DiskSpec> = Vec::new();
        match &src {
            // A copy's disks are fresh copies: never at the source's `path`
            // (one file is one disk of one VM: shared-disk-path).
            Some(s) => disks.extend(s.disks.iter().map(|d| DiskSpec {
                path: None,
                ..d.clone()
            })),
            None if os == "debian-12" => disks.push(DiskSpec {
                name: "root".into(),
                size_bytes: 8 << 30,
                format: DiskFormat::Raw,
                path: None,
                source: None,
                source_format: None,
            }),
            None => {}
        }
        for mut disk in d.disks {
            if !disks.iter().any(|x| x.name == disk.name) {
                // Unique per VM and disk (shared-disk-path), and under a
                // directory no host has (disk-path-not-file looks at it).
                disk.path = disk.path.map(|p| {
                    PathBuf::from(format!(
                        "/nonexistent-vmctl-roundtrip/{i}-{}{}",
                        disk.name,
                        p.display()
                    ))
                });
                disks.push(disk);
            }
        }
        let mut depends_on: Vec<String> = Vec::new();
        if i > 0 {
            for p in d.dep_picks {
                let n = vms[p % i].name.clone();
                if !depends_on.contains(&n) {
                    depends_on.push(n);
                }
            }
        }
        if depends_on.is_empty() {
            // Nothing written means "inherit the source's".
            if let Some(s) = &src {
                depends_on = s.depends_on.clone();
            }
        }
        // Only debian-12 takes guest configuration; a copy has its source's
        // packages (its root disk is a copy) but its own configuration.
        let (packages, config) = match &src {
            _ if os != "debian-12" => (Vec::new(), GuestConfig::default()),
            Some(s) => (s.packages.clone(), d.config),
            None => (d.packages, d.config),
        };
        vms.push(VmSpec {
            name,
            os,
            cpus: d.cpus,
            max_cpus: (d.cpus + d.extra_cpus).min(254),
            memory_mib: d.memory_2mib * 2,
            // Headroom in whole 128 MiB hot-add blocks (else a warning).
            max_memory_mib: (d.memory_2mib + d.extra_2mib / 64 * 64) * 2,
            disks,
            depends_on,
            copy_from,
            cpu_weight: d.cpu_weight,
            autostart: d.autostart,
            image: img,
            packages,
            config,
            nics,
            host: None,
            placement: None,
        });
    }
    let uses_image = vms.iter().any(|v| v.image.is_some());
    DesiredState {
        format_version: FORMAT_VERSION.to_string(),
        vms,
        images: if uses_image { vec![image] } else { Vec::new() },
        networks,
        cluster: None,
        hosts: Vec::new(),
    }
}

/// Up to three networks on distinct /24s (or one /16), NAT on or off.
fn networks() -> impl Strategy<Value = Vec<NetworkSpec>> {
    proptest::collection::btree_map(vm_name(), (any::<bool>(), any::<bool>()), 0..3).prop_map(|m| {
        m.into_iter()
            .enumerate()
            .map(|(i, (name, (nat, wide)))| {
                let subnet = if wide {
                    Ipv4Subnet::new(std::net::Ipv4Addr::new(10, 100 + i as u8, 0, 0), 16)
                } else {
                    Ipv4Subnet::new(std::net::Ipv4Addr::new(10, 20, i as u8, 0), 24)
                };
                NetworkSpec {
                    nat,
                    ..NetworkSpec::new(name, subnet)
                }
            })
            .collect()
    })
}

pub fn state() -> impl Strategy<Value = DesiredState> {
    let image = (name(), abs_path(), ".{0,20}", "(/[a-z]{1,5}){1,3}").prop_map(
        |(n, initrd, cmdline, kernel)| ImageSpec {
            name: format!("img-{n}"),
            kernel: PathBuf::from(kernel),
            initrd,
            cmdline,
        },
    );
    (
        proptest::collection::hash_set(vm_name(), 0..6),
        image,
        networks(),
    )
        .prop_flat_map(|(names, image, nets)| {
            let names: Vec<String> = names.into_iter().collect();
            let n = names.len();
            (
                Just(names),
                proptest::collection::vec(draft(), n),
                Just(image),
                Just(nets),
                proptest::collection::vec(proptest::collection::vec(any::<usize>(), 0..3), n),
            )
                .prop_map(|(names, drafts, image, nets, picks)| {
                    build(names, drafts, image, nets, picks)
                })
        })
}
