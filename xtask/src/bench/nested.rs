//! `cargo xtask bench --nested`: the one row that needs the nested lab — a
//! Debian boot (the debian-12-minimal kernel and initrd) to the guest
//! agent's first report on its serial port, under vmctl's VMM and under
//! QEMU microvm in the same L1, interleaved by the lab's boot loop
//! (`nested-lab --boot-loop N --vmm both`). Kept apart from the main table
//! because L1 alone takes minutes: the main run stays within its budget.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{BenchError, Options, Row, print_table, target_dir, workspace_root};
use crate::nested::{self, BootVmm, bootloop};

/// The default lab's first VM: one VM boots at a time, so the row measures
/// a boot, not three guests sharing L1's two vCPUs.
const NESTED_VM: &str = "alpha";

#[derive(Debug, Serialize)]
struct NestedResults<'a> {
    format_version: &'static str,
    started_unix: u64,
    quick: bool,
    boots_per_side: u32,
    /// Boots that did not report (crash or timeout), per VMM: the row counts
    /// only the ones that did.
    failed: Vec<String>,
    rows: &'a [Row],
}

pub fn main(opts: &Options) -> Result<bool, BenchError> {
    let boots_per_side = if opts.quick {
        1
    } else {
        (opts.runs / 2).max(1) as u32
    };
    let lab = nested::Options {
        boot_loop: Some(boots_per_side),
        boot_vmm: BootVmm::Both,
        boot_vm: Some(NESTED_VM.into()),
        ..nested::Options::default()
    };
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    eprintln!(
        "bench: nested: {boots_per_side} boot(s) a side of VM {NESTED_VM} in one L1 (nested-lab --boot-loop {boots_per_side} --vmm both --boot-vm {NESTED_VM})"
    );
    let (boots, clean) = nested::boot_loop_boots(&lab).map_err(BenchError::Run)?;
    let failed: Vec<String> = boots
        .iter()
        .filter(|b| b.result != "ok")
        .map(|b| format!("{} boot {}: {} after {} ms", b.vmm, b.n, b.result, b.ms))
        .collect();
    let rows = [Row::new(
        "nested_debian_boot",
        "in L1: Debian kernel+initrd boot → guest agent's first report (1 VM, 1 vCPU)",
        "ms",
        ("vmctl __vmm", &bootloop::ok_ms(&boots, "vmctl")),
        Some(("QEMU microvm", &bootloop::ok_ms(&boots, "qemu"))),
    )];
    print_table(&rows);
    let results = NestedResults {
        format_version: "1",
        started_unix,
        quick: opts.quick,
        boots_per_side,
        failed,
        rows: &rows,
    };
    let json = serde_json::to_string_pretty(&results)
        .map_err(|e| BenchError::Run(format!("results-nested.json: {e}")))?;
    let out_dir = target_dir(&workspace_root()).join("bench");
    std::fs::create_dir_all(&out_dir).map_err(BenchError::io("creating target/bench"))?;
    let path = out_dir.join("results-nested.json");
    std::fs::write(&path, json + "\n").map_err(BenchError::io("writing results-nested.json"))?;
    println!("\nwrote {}", path.display());
    if !clean {
        eprintln!("bench: nested: not every boot reported (see the boot-loop table above)");
    }
    Ok(clean)
}
