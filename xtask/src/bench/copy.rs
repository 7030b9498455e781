//! Row "copy of a 10 GiB disk holding 200 MiB": `vmctl backup` of a running
//! diag VM (live: quiesce, sparse copy or reflink, thaw, the block digest,
//! the manifest) against `cp --sparse=always` and `qemu-img convert -f raw
//! -O raw` of the same bytes, interleaved. The disk is imported from a seed
//! file (200 × 1 MiB spread over 10 GiB); the peers copy the seed — the same
//! bytes and extents on the same filesystem — because the VM's own file is
//! locked by its VMM (qemu-img honours the lock) and a running VM's file
//! copied by them would not be consistent anyway. Also reports how long
//! the backup kept the guest paused. `VMCTL_BENCH_DIR=DIR` runs the row on
//! DIR's filesystem (e.g. a loop-mounted XFS with `reflink=1`).
//! (This was `tests/bench_backup.rs`; docs/disks.md has its earlier figures.)

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::BenchError;
use super::lab::{Timed, lab_dir, timed, vmctl, vmctl_output, wait_vm};

/// The row's samples, ms: (vmctl backup, cp, qemu-img, guest paused).
pub struct CopySamples {
    pub backup: Vec<f64>,
    pub cp: Vec<f64>,
    pub qemu_img: Vec<f64>,
    pub paused: Vec<f64>,
}

const DISK_BYTES: u64 = 10 << 30;
const CHUNK: usize = 1 << 20;
const CHUNKS: u64 = 200;

/// Writes the sparse seed: `CHUNKS` MiB of non-zero data spread evenly.
fn write_seed(path: &Path) -> Result<(), BenchError> {
    let f = std::fs::File::create(path).map_err(BenchError::io("creating the seed disk"))?;
    f.set_len(DISK_BYTES)
        .map_err(BenchError::io("sizing the seed disk"))?;
    let mut chunk = vec![0u8; CHUNK];
    let stride = DISK_BYTES / CHUNKS;
    for i in 0..CHUNKS {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8) | 1;
        }
        f.write_all_at(&chunk, i * stride)
            .map_err(BenchError::io("writing the seed disk"))?;
    }
    f.sync_all()
        .map_err(BenchError::io("syncing the seed disk"))
}

fn run_peer(cmd: &mut Command, what: &str) -> Result<Timed, BenchError> {
    cmd.stdin(Stdio::null());
    let (out, t) = timed(cmd, what)?;
    if !out.status.success() {
        return Err(BenchError::Run(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(t)
}

/// `runs` interleaved samples of each tool. The lab lives in
/// `VMCTL_BENCH_DIR` when set, else under `work`.
pub fn copy_row(vmctl_bin: &Path, work: &Path, runs: usize) -> Result<CopySamples, BenchError> {
    let base = std::env::var_os("VMCTL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| work.to_path_buf());
    let dir = lab_dir(
        &base,
        "copy-bench",
        "vm \"big\" {\n    os \"diag\"\n    memory \"64MiB\"\n    \
         disk \"data\" size=\"10GiB\" source=\"seed.raw\"\n}\n",
    )?;
    let seed = dir.join("seed.raw");
    write_seed(&seed)?;
    vmctl(vmctl_bin, &dir, &["apply", "--auto-approve"])?;
    let result = (|| {
        wait_vm(vmctl_bin, &dir, "big", "diag's report of its disk", |v| {
            v["guest"]["disks"][0].is_object()
        })?;
        let out = dir.join("out");
        std::fs::create_dir_all(&out).map_err(BenchError::io("creating out/"))?;
        let mut s = CopySamples {
            backup: vec![],
            cp: vec![],
            qemu_img: vec![],
            paused: vec![],
        };
        for i in 0..runs {
            let bk = out.join(format!("bk{i}"));
            let bk_arg = bk.display().to_string();
            let (text, t) =
                vmctl_output(vmctl_bin, &dir, &["backup", "big", "-o", &bk_arg, "--json"])?;
            s.backup.push(t.wall_ms);
            let m: serde_json::Value =
                serde_json::from_str(&text[text.find('{').unwrap_or(0)..])
                    .map_err(|e| BenchError::Run(format!("backup --json: {e}")))?;
            let paused = m["paused_us"]
                .as_u64()
                .ok_or_else(|| BenchError::Run("backup --json has no paused_us".into()))?;
            s.paused.push(paused as f64 / 1000.0);
            let _ = std::fs::remove_dir_all(&bk);

            let to = out.join("cp.raw");
            let t = run_peer(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&seed)
                    .arg(&to),
                "cp --sparse=always",
            )?;
            s.cp.push(t.wall_ms);
            let _ = std::fs::remove_file(&to);

            let to = out.join("qi.raw");
            let t = run_peer(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "raw"])
                    .arg(&seed)
                    .arg(&to),
                "qemu-img convert",
            )?;
            s.qemu_img.push(t.wall_ms);
            let _ = std::fs::remove_file(&to);
        }
        Ok(s)
    })();
    let destroyed = vmctl(vmctl_bin, &dir, &["destroy", "--auto-approve"]);
    let s = result?;
    destroyed?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(s)
}
