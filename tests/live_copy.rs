//! Issue 14, live copy: a `copy-from` of a running diag VM that keeps
//! writing a sequence record (`diag.seqwrite`, docs/diag-guest.md) does not
//! stop its source (same VMM pid), the copy holds one consistent record
//! (checksum valid), a guest booted on the copy reads that record back, and
//! apply reports the source's pause.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use serde_json::Value;

/// Poll (until `deadline`) for the first valid record diag writes into
/// `disk`, and return its sequence number.
fn wait_for_record(disk: &Path, deadline: std::time::Instant) -> u64 {
    loop {
        if let Some(Ok(n)) = seq_record(disk) {
            return n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "diag never wrote its record"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What sector 1 of a disk file holds, decoded as diag's seqlog record
/// (guest/src/seqlog.rs): `Some(Ok(seq))` valid, `Some(Err(()))` corrupt,
/// `None` all zero.
fn seq_record(disk: &Path) -> Option<Result<u64, ()>> {
    let f = std::fs::File::open(disk).expect("open disk");
    let mut s = [0u8; 512];
    f.read_exact_at(&mut s, 512).expect("read sector 1");
    if s.iter().all(|&b| b == 0) {
        return None;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &b) in s.iter().enumerate() {
        if (16..24).contains(&i) {
            continue;
        }
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let word = |r: std::ops::Range<usize>| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[r]);
        u64::from_le_bytes(w)
    };
    if &s[..8] != b"VMCTLSEQ" || word(16..24) != h {
        return Some(Err(()));
    }
    Some(Ok(word(8..16)))
}

/// The diag kernel as a custom image with `diag.seqwrite` (polled: this
/// host's KVM cannot deliver interrupts, see /work/shared/testing.md).
fn seq_lab() -> Lab {
    let lab = Lab::new("");
    std::fs::write(lab.dir.path().join("diag.elf"), vmctl_runtime::diag::KERNEL).expect("kernel");
    lab
}

const SEQ_IMAGE: &str = "image \"seqdiag\" {\n    kernel \"diag.elf\"\n    cmdline \"console=ttyS0 diag.seqwrite\"\n}\n";

fn apply_json(lab: &Lab) -> Vec<Value> {
    let out = lab
        .cmd(&["apply", "--auto-approve", "--json"])
        .env("VMCTL_IRQ_MODE", "polled")
        .output()
        .expect("apply");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "apply failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_live_copy_of_a_writing_vm_holds_one_consistent_record() {
    if !kvm_available() {
        return;
    }
    let lab = seq_lab();
    let src_vm = "vm \"src\" {\n    os \"seqdiag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"1MiB\"\n}\n";
    lab.write(&format!("{SEQ_IMAGE}{src_vm}"));
    apply_json(&lab);
    let before = lab.wait_vm("src", "reported its seqlog", |v| {
        v["guest"]["seqlog"].is_object()
    });
    assert_eq!(
        before["guest"]["seqlog"]["found"],
        Value::Null,
        "a new disk"
    );
    let src_disk = lab.state().join("vms/src/disks/data.raw");
    // The guest is writing: the record moves on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let first = wait_for_record(&src_disk, deadline);
    loop {
        match seq_record(&src_disk) {
            Some(Ok(n)) if n > first => break,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the record stopped at {first}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    lab.write(&format!(
        "{SEQ_IMAGE}{src_vm}vm \"dst\" {{\n    copy-from \"src\"\n}}\n"
    ));
    let events = apply_json(&lab);
    let copy = events
        .iter()
        .find(|e| e["event"] == "finished" && e["kind"] == "copy")
        .unwrap_or_else(|| panic!("no finished copy event: {events:#?}"));
    assert_eq!(copy["copy"]["live"], true, "{copy}");
    // diag's agent freezes nothing: the level says so, and why.
    assert_eq!(copy["copy"]["consistency"], "crash-consistent", "{copy}");
    assert_eq!(
        copy["copy"]["consistency_note"], "the guest agent froze no filesystem",
        "{copy}"
    );
    let paused_us = copy["copy"]["paused_us"].as_u64().expect("pause reported");
    eprintln!("source paused {paused_us} us ({})", copy["copy"]["methods"]);

    let after = lab.wait_vm("src", "running", |v| v["state"] == "running");
    assert_eq!(after["pid"], before["pid"], "the source's VMM kept running");

    let dst_disk = lab.state().join("vms/dst/disks/data.raw");
    let copied = match seq_record(&dst_disk) {
        Some(Ok(n)) => n,
        other => panic!("the copy holds no consistent record: {other:?}"),
    };
    assert!(copied > first, "the copy is recent: {copied} vs {first}");
    let dst = lab.wait_vm("dst", "reported its seqlog", |v| {
        v["guest"]["seqlog"].is_object()
    });
    assert_eq!(
        dst["guest"]["seqlog"],
        serde_json::json!({"found": copied, "corrupt": false}),
        "the guest booted on the copy reads the record the copy holds"
    );
    // The source went on writing past the pause point.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match seq_record(&src_disk) {
            Some(Ok(n)) if n > copied => break,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the source stopped writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A loop-mounted XFS with reflink (the root filesystem here is ext4,
/// which has none), unmounted and removed on drop.
struct Xfs {
    mnt: tempfile::TempDir,
    _image: tempfile::TempDir,
}

impl Xfs {
    /// `None` (skipped) where it cannot be made: not root, no mkfs.xfs.
    /// With `VMCTL_REQUIRE_KVM=1` (CI) that is a failure instead.
    fn mount() -> Option<Xfs> {
        let required = std::env::var("VMCTL_REQUIRE_KVM").as_deref() == Ok("1");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mkfs = std::process::Command::new("mkfs.xfs")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !root || !mkfs {
            assert!(
                !required,
                "the reflink test needs root and mkfs.xfs (apt-get install xfsprogs)"
            );
            eprintln!("skipping: needs root and mkfs.xfs");
            return None;
        }
        let image = tempfile::tempdir().expect("tempdir");
        let file = image.path().join("xfs.img");
        std::fs::File::create(&file)
            .expect("img")
            .set_len(512 << 20)
            .expect("len");
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().expect("run");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&file));
        let mnt = tempfile::tempdir().expect("mnt");
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(mnt.path()));
        Some(Xfs { mnt, _image: image })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.mnt.path())
            .status();
    }
}

#[test]
fn on_a_reflink_filesystem_copy_and_backup_clone_the_disks() {
    if !kvm_available() {
        return;
    }
    let Some(xfs) = Xfs::mount() else { return };
    {
        let lab = Lab::new_in(xfs.mnt.path(), "");
        std::fs::write(lab.dir.path().join("diag.elf"), vmctl_runtime::diag::KERNEL)
            .expect("kernel");
        let src_vm = "vm \"src\" {\n    os \"seqdiag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"1MiB\"\n}\n";
        lab.write(&format!("{SEQ_IMAGE}{src_vm}"));
        apply_json(&lab);
        let before = lab.wait_vm("src", "reported its seqlog", |v| {
            v["guest"]["seqlog"].is_object()
        });
        // Its boot report comes before its first write: copy only once the
        // disk holds a record (else the clone is rightly all zeros).
        let src_disk = lab.state().join("vms/src/disks/data.raw");
        wait_for_record(
            &src_disk,
            std::time::Instant::now() + std::time::Duration::from_secs(30),
        );
        lab.write(&format!(
            "{SEQ_IMAGE}{src_vm}vm \"dst\" {{\n    copy-from \"src\"\n}}\n"
        ));
        let events = apply_json(&lab);
        let copy = events
            .iter()
            .find(|e| e["event"] == "finished" && e["kind"] == "copy")
            .unwrap_or_else(|| panic!("no finished copy event: {events:#?}"));
        assert_eq!(
            copy["copy"]["methods"],
            serde_json::json!(["reflink"]),
            "{copy}"
        );
        eprintln!(
            "reflink copy: source paused {} us",
            copy["copy"]["paused_us"]
        );
        assert_eq!(lab.vm("src")["pid"], before["pid"]);
        match seq_record(&lab.state().join("vms/dst/disks/data.raw")) {
            Some(Ok(_)) => {}
            other => panic!("the clone holds no consistent record: {other:?}"),
        }
        let bk = lab.dir.path().join("bk");
        let out = lab.ok(&["backup", "src", "-o", bk.to_str().expect("utf-8"), "--json"]);
        let m: Value = serde_json::from_str(&out[out.find('{').expect("json")..]).expect("json");
        assert_eq!(m["disks"][0]["copied_by"], "reflink", "{m:#}");
        assert!(matches!(seq_record(&bk.join("data.raw")), Some(Ok(_))));
        // The lab (and its VMs) go before the filesystem is unmounted.
    }
    drop(xfs);
}

/// A quiesce is held by its connection: a control plane that dies (its
/// connection closes) without thawing does not leave the VM paused, and a
/// second quiesce meanwhile joins the first pause.
#[test]
fn a_quiesce_whose_client_goes_away_is_thawed_by_the_vmm() {
    if !kvm_available() {
        return;
    }
    let lab = Lab::new(
        "vm \"q\" {\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"d\" size=\"1MiB\"\n}\n",
    );
    lab.ok(&["apply", "--auto-approve"]);
    lab.wait_vm("q", "running", |v| v["state"] == "running");
    let api = vmctl_runtime::api::ApiClient::new(lab.state().join("vms/q/api.sock"));
    let state = || api.status().expect("status").state;
    let held = api
        .quiesce(std::time::Duration::from_secs(600))
        .expect("quiesce");
    assert_eq!(state(), vmctl_runtime::RunState::Paused);
    let joined = api
        .quiesce(std::time::Duration::from_secs(600))
        .expect("join");
    assert_ne!(joined.result.id, held.result.id);
    let t = joined.thaw().expect("thaw the second");
    assert_eq!(
        state(),
        vmctl_runtime::RunState::Paused,
        "still held by the first"
    );
    assert!(t.paused_us > 0);
    drop(held); // the connection closes: the VMM thaws it
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state() != vmctl_runtime::RunState::Running {
        assert!(std::time::Instant::now() < deadline, "still paused");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
