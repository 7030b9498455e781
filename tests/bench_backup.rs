//! Benchmark for docs/disks.md (issue 14's closing note), not a test: run
//! with `cargo test --release --test bench_backup -- --ignored --nocapture`.
//!
//! A running diag VM with a 10 GiB sparse disk holding 200 MiB of data is
//! backed up by `vmctl backup` (live: a pause, a sparse copy, sha256 of the
//! raw contents for the manifest), and the same disk file copied by
//! `cp --sparse=always` and by `qemu-img convert -O raw` (offline peers: a
//! running VM's file copied by them is not consistent). Runs interleaved,
//! medians and ratios, and the source's pause time, printed as a table.
//! `VMCTL_BENCH_DIR=DIR` runs it in DIR's filesystem (e.g. a loop-mounted
//! XFS with `reflink=1`, where the backup is a reflink). The peers read the seed image the disk was imported from (identical
//! bytes and extents): the VM's own file is locked by its VMM.

mod common;

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const RUNS: usize = 5;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: minutes of disk I/O; run with --ignored"]
fn backup_of_a_10_gib_disk_holding_200_mib() {
    if !kvm_available() || !qemu_img_available() {
        return;
    }
    // VMCTL_BENCH_DIR: run on another filesystem (XFS with reflink, say).
    let lab = match std::env::var_os("VMCTL_BENCH_DIR") {
        Some(d) => Lab::new_in(std::path::Path::new(&d), ""),
        None => Lab::new(""),
    };
    let seed = lab.dir.path().join("seed.raw");
    let f = std::fs::File::create(&seed).expect("seed");
    f.set_len(10 << 30).expect("len");
    // 200 chunks of 1 MiB spread over the 10 GiB.
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..200u64 {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8) | 1;
        }
        f.write_all_at(&chunk, i * (50 << 20)).expect("write");
    }
    f.sync_all().expect("sync");
    lab.write("vm \"big\" {\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"10GiB\" source=\"seed.raw\"\n}\n");
    lab.ok(&["apply", "--auto-approve"]);
    lab.wait_vm("big", "running", |v| v["guest"]["disks"][0].is_object());
    // The peers copy the seed: the same bytes and extents as the VM's disk
    // (imported from it sparsely), on the same filesystem, but not locked
    // by a VMM (qemu-img honours the VMM's lock and would refuse the disk).
    let disk = seed.clone();
    let out = lab.dir.path().join("out");
    std::fs::create_dir(&out).expect("out");
    let (mut vm, mut cp, mut qi, mut pause, mut quiesce_free) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..RUNS {
        let dir = out.join(format!("bk{i}"));
        let t = Instant::now();
        let text = lab.ok(&[
            "backup",
            "big",
            "-o",
            dir.to_str().expect("utf-8"),
            "--json",
        ]);
        vm.push(t.elapsed());
        let m: Value = serde_json::from_str(&text[text.find('{').expect("json")..]).expect("json");
        pause.push(Duration::from_micros(
            m["paused_us"].as_u64().expect("paused_us"),
        ));
        quiesce_free.push(
            m["disks"][0]["copied_by"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
        );
        std::fs::remove_dir_all(&dir).expect("rm");

        let to = out.join("cp.raw");
        let t = Instant::now();
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&disk)
            .arg(&to)
            .status()
            .expect("cp");
        cp.push(t.elapsed());
        assert!(st.success());
        std::fs::remove_file(&to).expect("rm");

        let to = out.join("qi.raw");
        let t = Instant::now();
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            disk.to_str().expect("utf-8"),
            to.to_str().expect("utf-8"),
        ]);
        qi.push(t.elapsed());
        std::fs::remove_file(&to).expect("rm");
    }
    let (vm, cp, qi, pause) = (
        median(&mut vm),
        median(&mut cp),
        median(&mut qi),
        median(&mut pause),
    );
    let s = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    println!(
        "\n10 GiB sparse disk, 200 MiB of data, {RUNS} interleaved runs, medians ({}):",
        lab.dir.path().display()
    );
    println!("| tool | time | ratio to vmctl backup |");
    println!("|---|---|---|");
    println!(
        "| vmctl backup (live, {}; incl. block digest) | {} | 1.00 |",
        quiesce_free[0],
        s(vm)
    );
    println!(
        "| cp --sparse=always (offline) | {} | {:.2} |",
        s(cp),
        cp.as_secs_f64() / vm.as_secs_f64()
    );
    println!(
        "| qemu-img convert -O raw (offline) | {} | {:.2} |",
        s(qi),
        qi.as_secs_f64() / vm.as_secs_f64()
    );
    println!(
        "| source VM paused (vmctl backup) | {:.1} ms | |",
        pause.as_secs_f64() * 1000.0
    );
}
