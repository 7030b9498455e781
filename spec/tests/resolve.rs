//! Resolution: OS profiles, the `defaults` node, `copy-from` inheritance,
//! `max` defaults and path resolution — asserted field by field, and the
//! resolved examples snapshotted as `validate --json` prints them.

#[macro_use]
mod common;

use std::path::PathBuf;

use common::parse;
use vmctl_spec::{DesiredState, DiskFormat, VmSpec};

fn ok(text: &str) -> DesiredState {
    match parse("t.kdl", text) {
        Ok(l) => l.state,
        Err(e) => panic!("{}", common::render_all(&e)),
    }
}

fn vm<'a>(s: &'a DesiredState, name: &str) -> &'a VmSpec {
    s.vm(name).unwrap()
}

#[test]
fn diag_profile() {
    let s = ok("vm \"a\" {\n    os \"diag\"\n}\n");
    let a = vm(&s, "a");
    assert_eq!(
        (a.cpus, a.max_cpus, a.memory_mib, a.max_memory_mib),
        (1, 1, 128, 128)
    );
    assert!(a.disks.is_empty());
    assert_eq!(a.cpu_weight, 100);
    assert!(a.autostart);
    assert_eq!(a.image, None);
    assert_eq!(s.format_version, "1");
}

#[test]
fn debian_profile_has_root_disk() {
    let s = ok("vm \"a\" {\n    os \"debian-12\"\n}\n");
    let a = vm(&s, "a");
    assert_eq!((a.cpus, a.memory_mib), (1, 1024));
    assert_eq!(a.disks.len(), 1);
    assert_eq!(a.disks[0].name, "root");
    assert_eq!(a.disks[0].size_bytes, 8 << 30);
    assert_eq!(a.disks[0].format, DiskFormat::Raw);
    assert_eq!(a.disks[0].path, None);
}

#[test]
fn explicit_root_disk_overrides_profile_and_others_are_added() {
    let s = ok(
        "vm \"a\" {\n    os \"debian-12\"\n    disk \"data\" size=\"1GiB\"\n    disk \"root\" size=\"20GiB\"\n}\n",
    );
    let names: Vec<_> = vm(&s, "a")
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.size_bytes))
        .collect();
    assert_eq!(names, [("root", 20 << 30), ("data", 1 << 30)]);
}

#[test]
fn max_defaults_to_boot() {
    let s = ok("vm \"a\" {\n    os \"diag\"\n    cpus 3\n    memory \"256MiB\"\n}\n");
    let a = vm(&s, "a");
    assert_eq!(
        (a.cpus, a.max_cpus, a.memory_mib, a.max_memory_mib),
        (3, 3, 256, 256)
    );
}

#[test]
fn layering_explicit_over_defaults_over_profile() {
    let s = ok(
        "defaults {\n    memory \"512MiB\" max=\"1GiB\"\n    cpus 2\n    cpu-weight 50\n}\nvm \"a\" {\n    os \"diag\"\n}\nvm \"b\" {\n    os \"debian-12\"\n    memory \"2GiB\"\n    cpu-weight 300\n}\n",
    );
    let a = vm(&s, "a");
    assert_eq!(
        (
            a.cpus,
            a.max_cpus,
            a.memory_mib,
            a.max_memory_mib,
            a.cpu_weight
        ),
        (2, 2, 512, 1024, 50)
    );
    let b = vm(&s, "b");
    // An explicit memory without max: max follows this VM's boot value, not the defaults'.
    assert_eq!(
        (b.cpus, b.memory_mib, b.max_memory_mib, b.cpu_weight),
        (2, 2048, 2048, 300)
    );
}

#[test]
fn copy_from_inherits_everything_not_set() {
    let s = ok(
        "defaults {\n    cpu-weight 10\n}\nvm \"web\" {\n    os \"debian-12\"\n    cpus 2 max=4\n    memory \"1GiB\" max=\"2GiB\"\n    disk \"data\" size=\"5GiB\" path=\"disks/web-data.raw\"\n    cpu-weight 700\n    depends-on \"db\"\n    autostart #false\n}\nvm \"db\" {\n    os \"diag\"\n}\nvm \"web-2\" {\n    copy-from \"web\"\n    memory \"2GiB\"\n}\n",
    );
    let w2 = vm(&s, "web-2");
    assert_eq!(w2.os, "debian-12");
    assert_eq!((w2.cpus, w2.max_cpus), (2, 4));
    assert_eq!((w2.memory_mib, w2.max_memory_mib), (2048, 2048));
    assert_eq!(w2.cpu_weight, 700, "the source beats the defaults node");
    assert_eq!(w2.depends_on, ["db"]);
    assert_eq!(w2.copy_from.as_deref(), Some("web"));
    assert!(!w2.autostart);
    let disks: Vec<_> = w2
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.size_bytes, d.path.clone()))
        .collect();
    // Copied disks are the copy's own files (in its state directory), never the source's path.
    assert_eq!(disks, [("root", 8 << 30, None), ("data", 5 << 30, None)]);
    assert_eq!(
        vm(&s, "web").disks[1].path,
        Some(PathBuf::from("/lab/disks/web-data.raw"))
    );
}

#[test]
fn copy_from_chains_resolve_in_dependency_order() {
    // c is declared first and copies b, which copies a.
    let s = ok(
        "vm \"c\" {\n    copy-from \"b\"\n}\nvm \"b\" {\n    copy-from \"a\"\n    cpus 3\n}\nvm \"a\" {\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"x\" size=\"1MiB\"\n}\n",
    );
    let c = vm(&s, "c");
    assert_eq!((c.os.as_str(), c.cpus, c.memory_mib), ("diag", 3, 64));
    assert_eq!(c.disks.len(), 1);
    assert_eq!(
        s.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["c", "b", "a"]
    );
}

#[test]
fn paths_are_absolute_against_the_file_folder() {
    let s = ok(
        "vm \"a\" {\n    os \"diag\"\n    disk \"d\" size=\"1GiB\" path=\"../disks/./d.raw\" source=\"old.img\"\n    disk \"e\" size=\"1GiB\" path=\"/abs/e.raw\"\n}\n",
    );
    let a = vm(&s, "a");
    assert_eq!(a.disks[0].path, Some(PathBuf::from("/disks/d.raw")));
    assert_eq!(a.disks[0].source, Some(PathBuf::from("/lab/old.img")));
    assert_eq!(a.disks[1].path, Some(PathBuf::from("/abs/e.raw")));
}

#[test]
fn image_os_carries_the_resolved_image() {
    let s = ok(
        "image \"my-linux\" {\n    kernel \"images/vmlinuz\"\n    initrd \"images/initrd.img\"\n}\nvm \"a\" {\n    os \"my-linux\"\n}\n",
    );
    let a = vm(&s, "a");
    let img = a.image.as_ref().unwrap();
    assert_eq!(img.kernel, PathBuf::from("/lab/images/vmlinuz"));
    assert_eq!(img.initrd, Some(PathBuf::from("/lab/images/initrd.img")));
    assert_eq!(img.cmdline, "console=ttyS0");
    assert_eq!((a.cpus, a.memory_mib), (1, 512));
    assert_eq!(s.images.len(), 1);
}

#[test]
fn sizes_in_every_unit() {
    let s = ok(
        "vm \"a\" {\n    os \"diag\"\n    memory \"1G\" max=\"2048M\"\n    disk \"a\" size=\"1TB\"\n    disk \"b\" size=\"512B\"\n    disk \"c\" size=\"3K\"\n    disk \"d\" size=\"1T\"\n}\n",
    );
    let a = vm(&s, "a");
    assert_eq!((a.memory_mib, a.max_memory_mib), (1024, 2048));
    let sizes: Vec<u64> = a.disks.iter().map(|d| d.size_bytes).collect();
    assert_eq!(sizes, [1_000_000_000_000, 512, 3072, 1 << 40]);
}

#[test]
fn empty_file_is_an_empty_state() {
    let s = ok("// nothing yet\n");
    assert!(s.vms.is_empty());
}

fn example(name: &str) -> DesiredState {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    parse(name, &text).map(|l| l.state).unwrap()
}

#[test]
fn quickstart_resolves() {
    let s = example("quickstart.kdl");
    assert_eq!(s.vms.len(), 2);
    let beta = vm(&s, "beta");
    assert_eq!(
        (beta.cpus, beta.memory_mib, beta.max_memory_mib),
        (2, 256, 512)
    );
    assert_eq!(beta.depends_on, ["alpha"]);
    snap_json!("resolved_quickstart", &s);
}

#[test]
fn lab_resolves() {
    let s = example("lab.kdl");
    assert_eq!(vm(&s, "web-2").copy_from.as_deref(), Some("web"));
    snap_json!("resolved_lab", &s);
}

#[test]
fn json_round_trip_of_examples() {
    for name in ["quickstart.kdl", "lab.kdl"] {
        let s = example(name);
        let json = serde_json::to_string(&s).unwrap();
        let back: DesiredState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        // The contract fields of design.md are all present.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["format_version"], "1");
        for vm in v["vms"].as_array().unwrap() {
            for key in [
                "name",
                "os",
                "cpus",
                "max_cpus",
                "memory_mib",
                "max_memory_mib",
                "disks",
                "depends_on",
                "copy_from",
                "cpu_weight",
            ] {
                assert!(vm.get(key).is_some(), "{key} missing");
            }
            for d in vm["disks"].as_array().unwrap() {
                for key in ["name", "size_bytes", "format", "path"] {
                    assert!(d.get(key).is_some(), "disk {key} missing");
                }
            }
        }
    }
}

#[test]
fn vmspec_diag_is_what_a_bare_diag_vm_resolves_to() {
    let loaded = vmctl_spec::parse_str(
        "t.kdl",
        "vm \"probe\" {\n    os \"diag\"\n}\n",
        std::path::Path::new("/"),
        64,
    )
    .expect("valid");
    assert_eq!(loaded.state.vms, vec![vmctl_spec::VmSpec::diag("probe")]);
}
