//! Round trip through ACPICA's disassembler: every table must disassemble
//! without errors, and the disassembly is snapshotted (snapshots/acpi/) so a
//! change to the tables shows up as a readable diff.

use std::path::Path;
use std::process::Command;

use super::{AcpiConfig, build_tables};

fn iasl_available() -> bool {
    Command::new("iasl").arg("-v").output().is_ok()
}

/// `iasl -d` every table of `cfg` in a temp dir; returns (file stem, .dsl text).
fn disassemble(cfg: &AcpiConfig) -> Vec<(String, String)> {
    let tables = build_tables(cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for (name, t) in [
        ("RSDP", &tables.rsdp),
        ("XSDT", &tables.xsdt),
        ("FACP", &tables.fadt),
        ("APIC", &tables.madt),
        ("DSDT", &tables.dsdt),
    ] {
        let aml = dir.path().join(format!("{name}.aml"));
        std::fs::write(&aml, &t.bytes).unwrap();
        let res = Command::new("iasl")
            .arg("-d")
            .arg(&aml)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
        if name == "RSDP" && !res.status.success() && log.contains("not contain a valid ACPI table")
        {
            // iasl before ~2021 reads the RSDP's "PTR " as a table length and
            // rejects it; the RSDP is checked byte by byte in super::tests.
            println!("note: this iasl cannot disassemble a standalone RSDP");
            continue;
        }
        assert!(res.status.success(), "iasl -d {name}.aml failed:\n{log}");
        let dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).unwrap();
        assert!(
            !dsl.contains("Error"),
            "{name}.dsl mentions an error:\n{dsl}"
        );
        assert!(
            !log.contains("Error ") && !log.contains(" Errors,") || log.contains("0 Errors"),
            "iasl reported errors for {name}:\n{log}"
        );
        if name == "DSDT" {
            recompile(dir.path(), name);
        }
        out.push((name.to_string(), strip_volatile(&dsl)));
    }
    out
}

/// Compile the disassembled AML back: catches AML that disassembles but
/// is semantically wrong (bad references, wrong argument types).
fn recompile(dir: &Path, name: &str) {
    let res = Command::new("iasl")
        .args(["-p", "recompiled"])
        .arg(format!("{name}.dsl"))
        .current_dir(dir)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&res.stdout).to_string() + &String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success() && log.contains(" 0 Errors"),
        "iasl could not recompile {name}.dsl:\n{log}"
    );
}

/// Drop the banner lines that carry the iasl version, date and temp path.
fn strip_volatile(dsl: &str) -> String {
    dsl.lines()
        .filter(|l| {
            !(l.contains("Intel ACPI Component Architecture")
                || l.contains("AML/ASL+ Disassembler version")
                || l.contains("Copyright (c)")
                || l.contains("Disassembly of ")
                || l.contains("Disassembly of")
                || l.contains("Original Table Header")
                || l.trim_start().starts_with("* Disassembly"))
        })
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn iasl_disassembles_every_table_without_errors() {
    if !iasl_available() {
        println!("skipped: iasl not installed");
        return;
    }
    for cfg in [
        AcpiConfig::new(1, 1, 0),
        AcpiConfig::new(2, 4, 3),
        AcpiConfig::new(4, 300, 16),
        AcpiConfig::new(1, 4, 0).with_memory_hotplug(256 << 20, 1 << 30),
        AcpiConfig::new(2, 2, 1).with_memory_hotplug(4 << 30, 16 << 30),
        AcpiConfig::new(1, super::madt::MAX_CPUS, 16).with_memory_hotplug(1 << 30, 64 << 30),
    ] {
        let _ = disassemble(&cfg);
    }
}

#[test]
fn iasl_disassembly_snapshots() {
    if !iasl_available() {
        println!("skipped: iasl not installed");
        return;
    }
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../snapshots/acpi");
    for (prefix, cfg) in [
        ("boot2_max4_disks2", AcpiConfig::new(2, 4, 2)),
        (
            "boot1_max4_mem256m_max1g",
            AcpiConfig::new(1, 4, 0).with_memory_hotplug(256 << 20, 1 << 30),
        ),
        ("boot1_max1_disks0", AcpiConfig::new(1, 1, 0)),
    ] {
        for (name, dsl) in disassemble(&cfg) {
            if name == "RSDP" {
                // Only newer iasl versions decode it; keep the snapshot set stable.
                continue;
            }
            if prefix != "boot2_max4_disks2" && name != "DSDT" && name != "APIC" {
                // FADT and XSDT do not depend on the configuration.
                continue;
            }
            insta::with_settings!({
                snapshot_path => &snapshots,
                prepend_module_to_snapshot => false,
            }, {
                insta::assert_snapshot!(format!("{prefix}_{name}"), dsl);
            });
        }
    }
}
