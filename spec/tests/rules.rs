//! One test per validation rule: the problem codes a file yields, and an insta
//! snapshot of every diagnostic exactly as a user sees it.

#[macro_use]
mod common;

use common::{errors_of, parse, render};

/// Assert the codes and snapshot the rendering.
fn check(name: &str, text: &str, codes: &[&str]) {
    let (got, rendered) = errors_of(&format!("{name}.kdl"), text);
    assert_eq!(got, codes, "{rendered}");
    snap!(format!("diag_{name}"), rendered);
}

#[test]
fn unknown_top_level_node() {
    check(
        "unknown_top_node",
        "vmm \"a\" {\n    os \"diag\"\n}\n",
        &["vmctl::spec::unknown-node"],
    );
}

#[test]
fn unknown_vm_node_did_you_mean() {
    check(
        "unknown_vm_node",
        "vm \"a\" {\n    os \"diag\"\n    memroy \"1GiB\"\n}\n",
        &["vmctl::spec::unknown-node"],
    );
}

#[test]
fn unknown_node_without_suggestion_lists_known() {
    check(
        "unknown_vm_node_no_match",
        "vm \"a\" {\n    os \"diag\"\n    network \"br0\"\n}\n",
        &["vmctl::spec::unknown-node"],
    );
}

#[test]
fn unknown_property_did_you_mean() {
    check(
        "unknown_property",
        "vm \"a\" {\n    os \"diag\"\n    disk \"data\" sise=\"1GiB\"\n}\n",
        &["vmctl::spec::unknown-property"],
    );
}

#[test]
fn wrong_types() {
    check(
        "wrong_type",
        "vm \"a\" {\n    os 12\n    cpus \"two\"\n    cpu-weight \"100\"\n    autostart \"true\"\n}\n",
        &[
            "vmctl::spec::wrong-type",
            "vmctl::spec::wrong-type",
            "vmctl::spec::wrong-type",
            "vmctl::spec::wrong-type",
        ],
    );
}

#[test]
fn negative_cpus_out_of_range() {
    check(
        "negative_cpus",
        "vm \"a\" {\n    os \"diag\"\n    cpus -1\n}\n",
        &["vmctl::spec::wrong-type"],
    );
}

#[test]
fn bare_number_size() {
    check(
        "bare_number",
        "vm \"a\" {\n    os \"diag\"\n    memory 512\n}\nvm \"b\" {\n    os \"diag\"\n    memory \"512\"\n}\n",
        &[
            "vmctl::spec::size-without-unit",
            "vmctl::spec::size-without-unit",
        ],
    );
}

#[test]
fn bad_sizes() {
    check(
        "bad_size",
        "vm \"a\" {\n    os \"diag\"\n    memory \"1.5GiB\"\n    disk \"d\" size=\"10Gib\"\n    disk \"e\" size=\"lots\"\n}\n",
        &[
            "vmctl::spec::bad-size",
            "vmctl::spec::bad-size",
            "vmctl::spec::bad-size",
        ],
    );
}

#[test]
fn duplicate_vm_points_at_both() {
    check(
        "duplicate_vm",
        "vm \"a\" {\n    os \"diag\"\n}\nvm \"a\" {\n    os \"diag\"\n}\n",
        &["vmctl::spec::duplicate-vm"],
    );
}

#[test]
fn unknown_depends_on_target() {
    check(
        "unknown_depends_on",
        "vm \"database\" {\n    os \"diag\"\n}\nvm \"web\" {\n    os \"diag\"\n    depends-on \"databse\"\n}\n",
        &["vmctl::spec::unknown-vm"],
    );
}

#[test]
fn unknown_copy_from_target() {
    check(
        "unknown_copy_from",
        "vm \"web\" {\n    os \"diag\"\n}\nvm \"web-2\" {\n    copy-from \"nope\"\n}\n",
        &["vmctl::spec::unknown-vm"],
    );
}

#[test]
fn cycle_names_every_vm() {
    check(
        "cycle_three",
        "vm \"a\" {\n    os \"diag\"\n    depends-on \"b\"\n}\nvm \"b\" {\n    os \"diag\"\n    depends-on \"c\"\n}\nvm \"c\" {\n    os \"diag\"\n    depends-on \"a\"\n}\n",
        &["vmctl::spec::cycle"],
    );
}

#[test]
fn cycle_through_copy_from() {
    check(
        "cycle_copy_from",
        "vm \"a\" {\n    copy-from \"b\"\n}\nvm \"b\" {\n    os \"diag\"\n    depends-on \"a\"\n}\n",
        &["vmctl::spec::cycle"],
    );
}

#[test]
fn self_dependency_is_a_cycle() {
    check(
        "cycle_self",
        "vm \"a\" {\n    os \"diag\"\n    depends-on \"a\"\n}\n",
        &["vmctl::spec::cycle"],
    );
}

#[test]
fn two_separate_cycles_two_diagnostics() {
    let text = "vm \"a\" {\n    os \"diag\"\n    depends-on \"b\"\n}\nvm \"b\" {\n    os \"diag\"\n    depends-on \"a\"\n}\nvm \"c\" {\n    os \"diag\"\n    depends-on \"d\"\n}\nvm \"d\" {\n    os \"diag\"\n    depends-on \"c\"\n}\n";
    let (codes, _) = errors_of("two.kdl", text);
    assert_eq!(codes, ["vmctl::spec::cycle", "vmctl::spec::cycle"]);
}

#[test]
fn max_below_boot() {
    check(
        "max_below_boot",
        "vm \"a\" {\n    os \"diag\"\n    cpus 4 max=2\n    memory \"1GiB\" max=\"512MiB\"\n}\n",
        &["vmctl::spec::max-below-boot", "vmctl::spec::max-below-boot"],
    );
}

#[test]
fn memory_not_multiple_of_2mib() {
    check(
        "memory_alignment",
        "vm \"a\" {\n    os \"diag\"\n    memory \"129MiB\"\n}\nvm \"b\" {\n    os \"diag\"\n    memory \"1000MB\"\n}\n",
        &[
            "vmctl::spec::memory-alignment",
            "vmctl::spec::memory-alignment",
        ],
    );
}

#[test]
fn zero_memory() {
    check(
        "zero_memory",
        "vm \"a\" {\n    os \"diag\"\n    memory \"0MiB\"\n}\n",
        &["vmctl::spec::zero-memory"],
    );
}

#[test]
fn zero_vcpus() {
    check(
        "zero_cpus",
        "vm \"a\" {\n    os \"diag\"\n    cpus 0\n}\n",
        &["vmctl::spec::zero-cpus"],
    );
}

#[test]
fn cpu_weight_out_of_range() {
    check(
        "cpu_weight_range",
        "vm \"a\" {\n    os \"diag\"\n    cpu-weight 0\n}\nvm \"b\" {\n    os \"diag\"\n    cpu-weight 10001\n}\n",
        &[
            "vmctl::spec::cpu-weight-range",
            "vmctl::spec::cpu-weight-range",
        ],
    );
}

#[test]
fn more_cpus_than_host_is_a_warning() {
    let loaded = parse("host.kdl", "vm \"a\" {\n    os \"diag\"\n    cpus 16\n}\n").unwrap();
    assert_eq!(loaded.state.vms[0].cpus, 16);
    assert_eq!(loaded.warnings.len(), 1);
    let d = loaded.warnings[0]
        .downcast_ref::<vmctl_spec::SpecDiagnostic>()
        .unwrap();
    assert_eq!(d.code, "vmctl::spec::host-cpus");
    assert_eq!(d.severity, miette::Severity::Warning);
    snap!("diag_host_cpus_warning", render(&loaded.warnings[0]));
}

#[test]
fn memory_headroom_not_in_hot_add_blocks_is_a_warning() {
    let loaded = parse(
        "steps.kdl",
        "vm \"a\" {\n    os \"diag\"\n    memory \"256MiB\" max=\"1000MiB\"\n}\n",
    )
    .unwrap();
    assert_eq!(loaded.state.vms[0].max_memory_mib, 1000);
    assert_eq!(loaded.warnings.len(), 1);
    let d = loaded.warnings[0]
        .downcast_ref::<vmctl_spec::SpecDiagnostic>()
        .unwrap();
    assert_eq!(d.code, "vmctl::spec::hot-add-steps");
    snap!("diag_hot_add_steps_warning", render(&loaded.warnings[0]));
}

#[test]
fn duplicate_disk_names() {
    check(
        "duplicate_disk",
        "vm \"a\" {\n    os \"diag\"\n    disk \"data\" size=\"1GiB\"\n    disk \"data\" size=\"2GiB\"\n}\n",
        &["vmctl::spec::duplicate-disk"],
    );
}

#[test]
fn zero_disk_size() {
    check(
        "zero_disk",
        "vm \"a\" {\n    os \"diag\"\n    disk \"data\" size=\"0GiB\"\n}\n",
        &["vmctl::spec::zero-disk"],
    );
}

#[test]
fn disk_without_size() {
    check(
        "disk_no_size",
        "vm \"a\" {\n    os \"diag\"\n    disk \"data\"\n}\n",
        &["vmctl::spec::missing-value"],
    );
}

#[test]
fn disk_bad_format() {
    check(
        "disk_format",
        "vm \"a\" {\n    os \"diag\"\n    disk \"data\" size=\"1GiB\" format=\"qcow2\"\n}\n",
        &["vmctl::spec::bad-format"],
    );
}

#[test]
fn disk_bad_source_format_suggests() {
    check(
        "disk_source_format",
        "vm \"a\" {\n    os \"diag\"\n    disk \"data\" size=\"1GiB\" source=\"x.img\" source-format=\"qcow\"\n    disk \"b\" size=\"1GiB\" source=\"y.img\" source-format=\"vpc\"\n}\n",
        &[
            "vmctl::spec::bad-source-format",
            "vmctl::spec::bad-source-format",
        ],
    );
}

#[test]
fn unknown_os_lists_known() {
    check(
        "unknown_os",
        "vm \"a\" {\n    os \"debain-12\"\n}\nvm \"b\" {\n    os \"windows\"\n}\n",
        &["vmctl::spec::unknown-os", "vmctl::spec::unknown-os"],
    );
}

#[test]
fn missing_os() {
    check(
        "missing_os",
        "vm \"a\" {\n    cpus 1\n}\n",
        &["vmctl::spec::missing-value"],
    );
}

#[test]
fn syntax_error_has_a_span() {
    let (codes, rendered) = errors_of(
        "syntax.kdl",
        "vm \"a\" {\n    os \"diag\"\n    memory \"1GiB\n}\n",
    );
    assert!(!codes.is_empty());
    assert!(
        codes.iter().all(|c| *c == "vmctl::spec::syntax"),
        "{codes:?}"
    );
    assert!(rendered.contains("syntax.kdl:"), "{rendered}");
    snap!("diag_syntax", rendered);
}

#[test]
fn duplicate_settings() {
    check(
        "duplicate_setting",
        "vm \"a\" {\n    os \"diag\"\n    memory \"128MiB\"\n    memory \"256MiB\"\n    cpus 1 max=2 max=3\n}\n",
        &[
            "vmctl::spec::duplicate-field",
            "vmctl::spec::duplicate-field",
        ],
    );
}

#[test]
fn argument_count() {
    check(
        "argument_count",
        "vm \"a\" {\n    os \"diag\" \"debian-12\"\n    cpus\n}\n",
        &["vmctl::spec::argument-count", "vmctl::spec::missing-value"],
    );
}

#[test]
fn unexpected_children_block() {
    check(
        "unexpected_children",
        "vm \"a\" {\n    os \"diag\"\n    disk \"d\" {\n        size \"1GiB\"\n    }\n}\n",
        &["vmctl::spec::unexpected-children"],
    );
}

#[test]
fn images_must_be_unique_and_not_shadow_builtins() {
    check(
        "image_problems",
        "image \"k\" {\n    kernel \"vmlinuz\"\n}\nimage \"k\" {\n    kernel \"other\"\n}\nimage \"diag\" {\n    kernel \"x\"\n}\nimage \"nok\" {\n    cmdline \"quiet\"\n}\n",
        &[
            "vmctl::spec::duplicate-image",
            "vmctl::spec::image-shadows-os",
            "vmctl::spec::missing-value",
        ],
    );
}

#[test]
fn five_mistakes_example_yields_five_diagnostics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/invalid/five-mistakes.kdl"
    ))
    .unwrap();
    let (codes, rendered) = errors_of("five-mistakes.kdl", &text);
    assert_eq!(
        codes,
        [
            "vmctl::spec::unknown-property",
            "vmctl::spec::bad-size",
            "vmctl::spec::cycle",
            "vmctl::spec::duplicate-vm",
            "vmctl::spec::unknown-vm",
        ]
    );
    snap!("diag_five_mistakes", rendered);
}

#[test]
fn every_invalid_example_fails() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "kdl") {
            assert!(
                vmctl_spec::load_file(&path).is_err(),
                "{} validated",
                path.display()
            );
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn unreadable_file() {
    let err = vmctl_spec::load_file(std::path::Path::new("/nonexistent/vmctl.kdl")).unwrap_err();
    assert_eq!(err.codes(), ["vmctl::spec::unreadable"]);
}

#[test]
fn bad_vm_names_are_refused_with_a_valid_suggestion() {
    check(
        "bad_vm_name",
        "vm \"My Web_Server\" {\n    os \"diag\"\n}\nvm \"ok\" {\n    os \"diag\"\n    depends-on \"My Web_Server\"\n}\nvm \"../etc\" {\n    os \"diag\"\n}\n",
        &["vmctl::spec::bad-vm-name", "vmctl::spec::bad-vm-name"],
    );
}

#[test]
fn vm_name_length_and_dashes() {
    let long = "a".repeat(64);
    for (name, ok) in [
        ("a".repeat(63), true),
        (long, false),
        ("-a".into(), false),
        ("a-".into(), false),
        ("0a-b".into(), true),
        ("tab\there".into(), false),
    ] {
        let text = format!("vm {name:?} {{\n    os \"diag\"\n}}\n");
        match parse("n.kdl", &text) {
            Ok(_) => assert!(ok, "{name:?} accepted"),
            Err(e) => {
                assert!(!ok, "{name:?} refused: {}", common::render_all(&e));
                assert_eq!(e.codes(), ["vmctl::spec::bad-vm-name"], "{name:?}");
            }
        }
    }
}

#[test]
fn docs_list_every_code() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/kdl.md")).unwrap();
    for (code, _) in vmctl_spec::diagnostic::CODES {
        assert!(docs.contains(code), "docs/kdl.md does not describe {code}");
    }
}

#[test]
fn spans_are_right_after_non_ascii_text() {
    check(
        "non_ascii_before_error",
        "// café → ünïcödé\nvm \"e\" { // é\n    os \"diag\"\n    memory \"1Gib\" // ☃\n}\n",
        &["vmctl::spec::bad-size"],
    );
}

#[test]
fn syntax_error_after_non_ascii_text() {
    let (codes, rendered) = errors_of(
        "syntax_non_ascii.kdl",
        "// café → ünïcödé\nvm \"é\" {\n    os \"diag\"\n    cpus 1.\n}\n",
    );
    assert!(
        codes.iter().all(|c| *c == "vmctl::spec::syntax"),
        "{codes:?}"
    );
    snap!("diag_syntax_non_ascii", rendered);
}

/// Issue 14: two VMs whose disks name the same file would both write it.
#[test]
fn two_vms_sharing_a_disk_path() {
    check(
        "shared_disk_path",
        "vm \"a\" {\n    os \"diag\"\n    disk \"data\" size=\"1GiB\" path=\"/srv/vm/shared.raw\"\n}\nvm \"b\" {\n    os \"diag\"\n    disk \"data\" size=\"1GiB\" path=\"/srv/vm/shared.raw\"\n}\n",
        &["vmctl::spec::shared-disk-path"],
    );
}

/// Issue 14: a disk path that exists and is a directory is refused at
/// validate (`/` is a directory on every host).
#[test]
fn disk_path_that_is_a_directory() {
    check(
        "disk_path_directory",
        "vm \"a\" {\n    os \"diag\"\n    disk \"data\" size=\"1GiB\" path=\"/\"\n}\n",
        &["vmctl::spec::disk-path-not-file"],
    );
}
