//! Issue 14, disks as portable files, through the binary with diag VMs on
//! the real /dev/kvm: `vmctl export` in every format and `vmctl import`
//! into another state directory with other CPUs and memory (the guest there
//! reports the original's whole-disk checksum, the disk stays sparse);
//! `vmctl backup` / `vmctl restore`; bad bundles refused naming the file
//! with nothing created.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// The checksum diag reports for a whole disk (docs/diag-guest.md): FNV-1a
/// 64 over little-endian 64-bit words.
fn whole_fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in bytes.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h ^= u64::from_le_bytes(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

const DISK: usize = 1 << 20;

/// 1 MiB: a pattern in the first 64 KiB and at 512 KiB, holes elsewhere.
fn seed(dir: &Path) -> Vec<u8> {
    let mut bytes = vec![0u8; DISK];
    for (i, b) in bytes.iter_mut().take(64 << 10).enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8;
    }
    bytes[512 << 10..(512 << 10) + 4096].fill(0x5a);
    let path = dir.join("seed.raw");
    let f = std::fs::File::create(&path).expect("seed");
    f.set_len(DISK as u64).expect("len");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&bytes[..64 << 10], 0).expect("write");
    f.write_all_at(&bytes[512 << 10..(512 << 10) + 4096], 512 << 10)
        .expect("write");
    bytes
}

fn source_lab() -> (Lab, String) {
    let lab = Lab::new("");
    let bytes = seed(lab.dir.path());
    lab.write("vm \"orig\" {\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"1MiB\" source=\"seed.raw\"\n}\n");
    lab.ok(&["apply", "--auto-approve"]);
    let want = whole_fnv1a(&bytes);
    let v = lab.wait_vm("orig", "reported its whole-disk checksum", |v| {
        v["guest"]["disks"][0]["whole_fnv1a"].is_string()
    });
    assert_eq!(v["guest"]["disks"][0]["whole_fnv1a"], want.as_str());
    (lab, want)
}

const FORMATS: [&str; 6] = ["raw", "qcow2", "vdi", "vmdk", "vhd", "vhdx"];

#[test]
fn a_vm_moves_through_a_bundle_in_every_format_and_boots_the_same_disk() {
    if !kvm_available() || !qemu_img_available() {
        return;
    }
    let (src, want) = source_lab();
    let src_pid = src.vm("orig")["pid"].clone();
    let raw_sha = sha256(&src.dir.path().join("seed.raw"));
    let raw_digest =
        vmctl_runtime::sparse::block_digest(&src.dir.path().join("seed.raw")).expect("digest");
    let dst = Lab::new("");
    for fmt in FORMATS {
        let bundle = src.dir.path().join(format!("bundle-{fmt}"));
        let b = bundle.to_str().expect("utf-8");
        let out = src.ok(&["export", "orig", "-o", b, "--format", fmt, "--json"]);
        let m: Value =
            serde_json::from_str(&out[out.find('{').expect("json")..]).expect("manifest json");
        assert_eq!(m["live"], true, "{fmt}: exported while running");
        assert!(m["paused_us"].is_u64(), "{fmt}: pause reported");
        let d = &m["disks"][0];
        assert_eq!(d["format"], fmt);
        assert_eq!(d["virtual_size"], DISK as u64, "{fmt}");
        assert_eq!(d["raw_digest"], raw_digest.as_str(), "{fmt}: raw contents");
        let file = bundle.join(d["file"].as_str().expect("file"));
        assert_eq!(
            d["file_digest"],
            vmctl_runtime::sparse::block_digest(&file)
                .expect("digest")
                .as_str(),
            "{fmt}"
        );
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&bundle), 0o700, "{fmt}: bundle dir");
        for f in ["manifest.json", "vm.kdl"] {
            assert_eq!(mode(&bundle.join(f)), 0o600, "{fmt}: {f}");
        }
        assert_eq!(mode(&file), 0o600, "{fmt}: disk file");
        let kdl = std::fs::read_to_string(bundle.join("vm.kdl")).expect("vm.kdl");
        assert!(
            !kdl.contains(".vmctl") && !kdl.contains("source="),
            "{fmt}: no host paths:\n{kdl}"
        );
        dst.ok(&["import", b, "--as", &format!("m-{fmt}")]);
    }
    assert_eq!(
        src.vm("orig")["pid"],
        src_pid,
        "six exports never stopped the source"
    );
    // Other hardware: 2 vCPUs and 96 MiB instead of 1 and 64.
    let text = std::fs::read_to_string(dst.file()).expect("kdl");
    assert_eq!(
        text.matches("cpus 1 max=1").count(),
        FORMATS.len(),
        "{text}"
    );
    dst.write(&text.replace("cpus 1 max=1", "cpus 2 max=2").replace(
        "memory \"64MiB\" max=\"64MiB\"",
        "memory \"96MiB\" max=\"96MiB\"",
    ));
    dst.ok(&["apply", "--auto-approve"]);
    for fmt in FORMATS {
        let name = format!("m-{fmt}");
        let v = dst.wait_vm(&name, "reported its disk", |v| {
            v["guest"]["disks"][0]["whole_fnv1a"].is_string()
        });
        assert_eq!(v["guest"]["cpus"], 2, "{fmt}");
        assert_eq!(v["guest"]["memory_mib"], 96, "{fmt}");
        assert_eq!(
            v["guest"]["disks"][0]["whole_fnv1a"],
            want.as_str(),
            "{fmt}: the moved guest sees the original disk"
        );
        let disk = dst.state().join(format!("vms/{name}/disks/data.raw"));
        assert_eq!(sha256(&disk), raw_sha, "{fmt}: byte for byte");
        let meta = std::fs::metadata(&disk).expect("stat");
        assert_eq!(meta.len(), DISK as u64);
        assert!(
            meta.blocks() * 512 <= 256 << 10,
            "{fmt}: sparse: {} bytes allocated of {DISK}",
            meta.blocks() * 512
        );
    }
    // The raw bundle itself stays sparse.
    let raw = src.dir.path().join("bundle-raw/data.raw");
    assert!(std::fs::metadata(&raw).expect("stat").blocks() * 512 <= 256 << 10);
    // A second import of the same name is a diagnostic on the file; the
    // file is unchanged.
    let before = std::fs::read_to_string(dst.file()).expect("kdl");
    let b = src.dir.path().join("bundle-raw");
    let out = dst.run(&["import", b.to_str().expect("utf-8"), "--as", "m-raw"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("m-raw"), "names the clash:\n{err}");
    assert_eq!(std::fs::read_to_string(dst.file()).expect("kdl"), before);
}

#[test]
fn backup_and_restore_put_the_disk_back_without_stopping_the_vm_for_the_backup() {
    if !kvm_available() {
        return;
    }
    let (lab, want) = source_lab();
    let pid = lab.vm("orig")["pid"].clone();
    let bk = lab.dir.path().join("bk");
    let out = lab.ok(&["backup", "orig", "-o", bk.to_str().expect("utf-8")]);
    assert!(out.contains("paused"), "{out}");
    assert_eq!(lab.vm("orig")["pid"], pid, "backup did not stop the VM");
    // Ruin the disk, then restore it.
    let disk = lab.state().join("vms/orig/disks/data.raw");
    std::fs::write(&disk, vec![0xffu8; DISK]).expect("overwrite");
    let refused = lab.run(&["restore", "orig", "--from", bk.to_str().expect("utf-8")]);
    assert!(
        !refused.status.success(),
        "no TTY, no --auto-approve: refused"
    );
    let out = lab.ok(&[
        "restore",
        "orig",
        "--from",
        bk.to_str().expect("utf-8"),
        "--auto-approve",
    ]);
    assert!(
        out.contains("-/+ orig replace"),
        "shown as a replace:\n{out}"
    );
    assert!(out.contains("restore from"), "with its reason:\n{out}");
    let v = lab.wait_vm("orig", "rebooted on the restored disk", |v| {
        v["pid"] != pid && v["guest"]["disks"][0]["whole_fnv1a"].is_string()
    });
    assert_eq!(v["guest"]["disks"][0]["whole_fnv1a"], want.as_str());
    assert_eq!(sha256(&disk), sha256(&lab.dir.path().join("seed.raw")));
    assert_eq!(
        std::fs::metadata(&disk).expect("stat").permissions().mode() & 0o777,
        0o600
    );
}

/// Rewrite the bundle's manifest through `f`.
fn edit_manifest(bundle: &Path, f: impl FnOnce(&mut Value)) {
    let p = bundle.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&p).expect("manifest")).expect("json");
    f(&mut m);
    std::fs::write(&p, serde_json::to_vec(&m).expect("json")).expect("write");
}

#[test]
fn bad_bundles_are_refused_naming_the_file_and_nothing_is_created() {
    if !kvm_available() || !qemu_img_available() {
        return;
    }
    let (src, _) = source_lab();
    let export = |name: &str, fmt: &str| {
        let b = src.dir.path().join(name);
        src.ok(&[
            "export",
            "orig",
            "-o",
            b.to_str().expect("utf-8"),
            "--format",
            fmt,
        ]);
        b
    };
    // (bundle, what the error must name)
    let mut cases = Vec::new();
    let wrong_hash = export("wrong-hash", "qcow2");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(wrong_hash.join("data.qcow2"))
            .expect("open");
        f.write_all_at(b"x", 70_000).expect("flip");
    }
    cases.push((wrong_hash.clone(), wrong_hash.join("data.qcow2"), "digest"));
    // A truncated vmdk whose manifest hash was updated to match: only the
    // image check can see it.
    let cut = export("truncated", "vmdk");
    let vmdk = cut.join("data.vmdk");
    let bytes = std::fs::read(&vmdk).expect("vmdk");
    std::fs::write(&vmdk, &bytes[..bytes.len() / 2]).expect("truncate");
    let h = vmctl_runtime::sparse::block_digest(&vmdk).expect("digest");
    edit_manifest(&cut, |m| m["disks"][0]["file_digest"] = Value::String(h));
    cases.push((cut.clone(), vmdk, "vmdk"));
    let no_manifest = export("no-manifest", "raw");
    std::fs::remove_file(no_manifest.join("manifest.json")).expect("rm");
    cases.push((
        no_manifest.clone(),
        no_manifest.join("manifest.json"),
        "missing",
    ));
    let unknown = export("unknown", "raw");
    edit_manifest(&unknown, |m| {
        m["disks"][0]["format"] = Value::String("floppy".into())
    });
    cases.push((unknown.clone(), unknown.join("data.raw"), "floppy"));
    let escape = export("escape", "raw");
    edit_manifest(&escape, |m| {
        m["disks"][0]["file"] = Value::String("../seed.raw".into())
    });
    cases.push((escape.clone(), escape.join("manifest.json"), "../seed.raw"));

    let dst = Lab::new("");
    std::fs::remove_file(dst.file()).expect("no KDL file yet");
    for (bundle, named, what) in cases {
        let out = dst.run(&["import", bundle.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "{}: import must fail",
            bundle.display()
        );
        let shown = err.replace('\n', "");
        assert!(
            shown.contains(named.to_str().expect("utf-8"))
                || err.contains(named.file_name().and_then(|n| n.to_str()).unwrap_or("?")),
            "names {}:\n{err}",
            named.display()
        );
        assert!(err.contains(what), "says {what}:\n{err}");
        assert!(!dst.file().exists(), "no KDL file created:\n{err}");
        assert!(!dst.state().exists(), "no state created");
        // restore refuses the same bundle before touching the VM.
        let out = src.run(&[
            "restore",
            "orig",
            "--from",
            bundle.to_str().expect("utf-8"),
            "--auto-approve",
        ]);
        assert!(
            !out.status.success(),
            "{}: restore must fail",
            bundle.display()
        );
    }
}
