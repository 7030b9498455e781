//! Builds the diag guest (../guest, a freestanding no_std kernel outside the
//! workspace) with its own link flags and leaves it at `$OUT_DIR/diag.elf`
//! for `src/diag.rs` to embed. It runs a nested `cargo build` with a clean
//! environment: nothing of the outer build (RUSTFLAGS, target dir, target,
//! wrappers such as clippy-driver, jobserver) may leak into it.

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// The guest is always an x86-64 ELF, whatever the outer build targets.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Known-good flags for a freestanding kernel built with the host toolchain
/// (see /work/shared/testing.md): static, no SSE (this machine's KVM cannot
/// emulate SSE stores), no C runtime, linked at 2 MiB.
const GUEST_RUSTFLAGS: &[&str] = &[
    "-Crelocation-model=static",
    "-Ctarget-feature=-sse,-sse2",
    "-Clink-arg=-nostartfiles",
    "-Clink-arg=-nostdlib",
    "-Clink-arg=-static",
    "-Clink-arg=-no-pie",
    "-Clink-arg=-Wl,--image-base=0x200000",
    "-Clink-arg=-Wl,--build-id=none",
];

/// Environment variables of the outer cargo that must not reach the inner
/// one. (All `CARGO_*` variables except `CARGO_HOME` are removed as well.)
const STRIP_VARS: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
    "MAKEFLAGS",
    "MFLAGS",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "OPT_LEVEL",
    "PROFILE",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
    "LLVM_PROFILE_FILE",
];

fn main() -> Result<(), String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    let guest_dir = manifest_dir.join("..").join("guest");
    let guest_manifest = guest_dir.join("Cargo.toml");

    println!("cargo:rerun-if-changed=../guest/src");
    println!("cargo:rerun-if-changed=../guest/Cargo.toml");
    println!("cargo:rerun-if-changed=../guest/Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");

    if !guest_manifest.is_file() {
        return Err(format!(
            "diag guest sources not found at {}",
            guest_manifest.display()
        ));
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let target_dir = out_dir.join("guest-target");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&guest_dir)
        .arg("build")
        .arg("--release")
        .arg("--offline")
        .arg("--bin")
        .arg("diag")
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--manifest-path")
        .arg(&guest_manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key.starts_with("DEP_") {
            cmd.env_remove(key);
        }
    }
    for key in STRIP_VARS {
        cmd.env_remove(key);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", GUEST_RUSTFLAGS.join("\u{1f}"));
    // The guest is built with the same toolchain as the outer build.
    if let Some(rustc) = env::var_os("RUSTC") {
        cmd.env("RUSTC", rustc);
    }

    let output = cmd.output().map_err(|e| {
        format!(
            "running {} for the diag guest: {e}",
            PathBuf::from(&cargo).display()
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "building the diag guest failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }

    let built = target_dir.join(GUEST_TARGET).join("release").join("diag");
    let dest = out_dir.join("diag.elf");
    std::fs::copy(&built, &dest)
        .map_err(|e| format!("copying {} to {}: {e}", built.display(), dest.display()))?;
    Ok(())
}
