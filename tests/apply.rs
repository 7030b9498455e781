//! End-to-end tests of the VM lifecycle through the real binary, with diag
//! VMs on the real /dev/kvm: apply → status shows what the guests report,
//! re-apply is a no-op, a memory change restarts, removal destroys, a killed
//! VMM is crashed drift that apply heals, destroy leaves no process; the
//! state lock; and crash safety (apply killed with SIGKILL at random points,
//! then re-applied).

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn lab_kdl(beta_memory: &str, with_gamma: bool) -> String {
    lab_kdl_with_alpha(beta_memory, with_gamma, 1, 128)
}

/// The lab with alpha at `alpha_cpus` / `alpha_mib` within its hot-add
/// headroom (max 2 vCPUs, 384 MiB): changing them is a live hot-add.
fn lab_kdl_with_alpha(
    beta_memory: &str,
    with_gamma: bool,
    alpha_cpus: u32,
    alpha_mib: u64,
) -> String {
    let mut s = format!(
        r#"
vm "alpha" {{
    os "diag"
    cpus {alpha_cpus} max=2
    memory "{alpha_mib}MiB" max="384MiB"
}}
vm "beta" {{
    os "diag"
    cpus 2
    memory "{beta_memory}"
    disk "data" size="64MiB"
    depends-on "alpha"
}}
"#
    );
    if with_gamma {
        s.push_str("vm \"gamma\" {\n    os \"diag\"\n    memory \"64MiB\"\n}\n");
    }
    s
}

#[test]
fn lifecycle_apply_noop_restart_remove_crash_heal_destroy() {
    if !kvm_available() {
        return;
    }
    let lab = Lab::new(&lab_kdl("256MiB", true));

    // apply → every VM running, guests report what was declared.
    let out = lab.ok(&["apply", "--auto-approve"]);
    assert!(out.contains("Plan: 3 to create"), "{out}");
    lab.wait_guest("alpha", 1, 128);
    let beta = lab.wait_guest("beta", 2, 256);
    assert_eq!(beta["guest"]["disks"][0]["size_bytes"], 64 * 1024 * 1024);
    assert_eq!(beta["guest"]["disks"][0]["id"], "data");
    lab.wait_guest("gamma", 1, 64);
    assert_eq!(lab.vmm_pids().len(), 3);

    // logs prints the console log; console (piped) types into COM1 and shows
    // the answer (diag reprints its summary on any key).
    let logs = lab.ok(&["logs", "alpha"]);
    assert!(logs.contains("diag: cpus=1"), "{logs}");
    let mut console = lab
        .cmd(&["console", "beta"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn console");
    {
        use std::io::Write;
        let mut stdin = console.stdin.take().expect("stdin");
        stdin.write_all(b"\r").expect("type a key");
    }
    let out = console
        .wait_with_output()
        .expect("console exits after its input");
    assert!(out.status.success());
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("diag: cpus=2"), "console showed: {seen}");

    // re-apply is a no-op; plan --detailed-exitcode says 0.
    let out = lab.ok(&["apply", "--auto-approve"]);
    assert!(out.contains("No changes"), "{out}");
    let json = lab.run(&["apply", "--auto-approve", "--json"]);
    let events: Vec<Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every --json line is a JSON object"))
        .collect();
    assert_eq!(
        events.first().map(|e| e["event"].clone()),
        Some("plan".into())
    );
    let last = events.last().expect("a summary event");
    assert_eq!(last["event"], "summary");
    assert_eq!(last["no_changes"], true);
    assert!(events.iter().all(|e| e["format_version"] == "1"));
    let plan = lab.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );

    // memory change beyond max → restart → the guest reports the new size;
    // --json reports the restart as started + finished events.
    let old_pid = lab.vm("beta")["pid"].clone();
    lab.write(&lab_kdl("384MiB", true));
    let plan = lab.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("~! beta restart"), "{text}");
    let json = lab.run(&["apply", "--auto-approve", "--json"]);
    assert!(json.status.success());
    let text = String::from_utf8_lossy(&json.stdout);
    assert!(
        text.contains(r#""action":"beta:restart","event":"started""#),
        "{text}"
    );
    assert!(text.contains(r#""event":"finished""#), "{text}");
    let beta = lab.wait_guest("beta", 2, 384);
    assert_ne!(beta["pid"], old_pid, "a restart runs a new VMM");

    // removing a VM from the file destroys it.
    lab.write(&lab_kdl("384MiB", false));
    let out = lab.ok(&["apply", "--auto-approve"]);
    assert!(out.contains("gamma destroy"), "{out}");
    assert_eq!(lab.vm("gamma"), Value::Null);
    assert!(!lab.state().join("vms/gamma").exists());
    assert_eq!(lab.vmm_pids().len(), 2);

    // SIGKILL a VMM → crashed → apply starts it again.
    let pid = lab.vm("alpha")["pid"].as_i64().expect("alpha pid") as i32;
    // SAFETY: kill(2) of the VMM this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    lab.wait_vm("alpha", "crashed", |v| v["state"] == "crashed");
    let text = lab.ok(&["status"]);
    assert!(text.contains("crashed"), "{text}");
    let out = lab.ok(&["apply", "--auto-approve"]);
    assert!(out.contains("alpha"), "{out}");
    lab.wait_guest("alpha", 1, 128);

    // destroy → no VMM left, no VM directories.
    lab.ok(&["destroy", "--auto-approve"]);
    assert!(lab.vmm_pids().is_empty(), "VMMs left: {:?}", lab.vmm_pids());
    assert_eq!(lab.status()["vms"].as_array().map(Vec::len), Some(0));
}

#[test]
fn apply_without_tty_or_auto_approve_refuses_and_changes_nothing() {
    let lab = Lab::new(&lab_kdl("256MiB", false));
    let out = lab.run(&["apply"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auto-approve"), "{err}");
    assert!(!lab.state().join("vms/alpha").exists());
}

/// A VM that needs more RAM than this host has is refused at plan time,
/// with both sizes, and nothing of it is created (no VMM that dies after
/// its record was written).
#[test]
fn a_vm_bigger_than_the_host_is_refused_at_plan_time() {
    let lab = Lab::new("vm \"huge\" {\n    os \"diag\"\n    memory \"64TiB\"\n}\n");
    let plan = lab.ok(&["plan"]);
    assert!(plan.contains("! huge create (refused)"), "{plan}");
    assert!(
        plan.contains("memory 64 TiB does not fit on this host, which has "),
        "{plan}"
    );
    let out = lab.run(&["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("huge: memory 64 TiB does not fit"), "{err}");
    assert!(!lab.state().join("vms/huge").exists());
}

#[test]
fn an_empty_file_never_destroys_everything() {
    if !kvm_available() {
        return;
    }
    let lab = Lab::new("vm \"solo\" {\n    os \"diag\"\n    memory \"64MiB\"\n}\n");
    lab.ok(&["apply", "--auto-approve"]);
    lab.write("// nothing here\n");
    let out = lab.run(&["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("declares no VMs"), "{err}");
    assert_eq!(lab.vm("solo")["state"], "running");
}

#[test]
fn a_second_apply_waits_for_the_lock_or_times_out() {
    let lab = Lab::new(&lab_kdl("256MiB", false));
    std::fs::create_dir_all(lab.state()).expect("state dir");
    // Hold the lock from this process.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lab.state().join("lock"))
        .expect("lock file");
    // SAFETY: flock on a file we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) },
        0
    );
    let out = lab.run(&["apply", "--auto-approve", "--lock-timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waiting for the state lock"), "{err}");
    assert!(err.contains("gave up"), "{err}");
    assert!(!lab.state().join("vms").exists(), "nothing was applied");
    drop(f);
}

/// A small deterministic PRNG (xorshift), so the kill points are reproducible
/// from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn spawn_apply(lab: &Lab) -> Child {
    lab.cmd(&["apply", "--auto-approve", "--parallelism", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn apply")
}

#[test]
fn apply_killed_at_random_points_is_completed_by_the_next_apply() {
    if !kvm_available() {
        return;
    }
    let seed = std::env::var("VMCTL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_u64);
    println!("crash-safety seed {seed} (set VMCTL_CRASH_SEED to replay)");
    let mut rng = Rng(seed | 1);
    let lab = Lab::new(&lab_kdl("256MiB", true));
    let names = ["alpha", "beta", "gamma"];
    for round in 0..8 {
        // Alternate between two desired states so each round has work:
        // even rounds want beta at 256 MiB with gamma and alpha at 1 vCPU /
        // 128 MiB (a live hot-remove and a restart for its memory), odd
        // rounds beta at 384 without gamma and alpha at 2 vCPUs / 256 MiB
        // (live CPU and memory hot-add).
        let (mem, gamma, alpha) = if round % 2 == 0 {
            ("256MiB", true, (1, 128))
        } else {
            ("384MiB", false, (2, 256))
        };
        lab.write(&lab_kdl_with_alpha(mem, gamma, alpha.0, alpha.1));
        let mut child = spawn_apply(&lab);
        let delay = rng.next() % 400;
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        // The next apply must finish the job.
        let out = lab.ok(&["apply", "--auto-approve"]);
        let want_mem = if gamma { 256 } else { 384 };
        lab.wait_guest("alpha", u64::from(alpha.0), alpha.1);
        lab.wait_guest("beta", 2, want_mem);
        if gamma {
            lab.wait_guest("gamma", 1, 64);
        } else {
            assert_eq!(lab.vm("gamma"), Value::Null, "round {round}: {out}");
        }
        // No VM lost or duplicated, no orphan VMM.
        let expected = if gamma { 3 } else { 2 };
        let pids = lab.vmm_pids();
        let cmds: Vec<String> = pids
            .iter()
            .map(|p| {
                String::from_utf8_lossy(
                    &std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default(),
                )
                .replace('\0', " ")
            })
            .collect();
        assert_eq!(
            pids.len(),
            expected,
            "round {round} (killed after {delay} ms): VMMs {pids:?} {cmds:#?}\n{out}"
        );
        let listed: Vec<String> = lab.status()["vms"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| gamma || *n != "gamma")
            .collect();
        assert_eq!(listed, want, "round {round}");
        let again = lab.run(&["plan", "--detailed-exitcode"]);
        assert_eq!(
            again.status.code(),
            Some(0),
            "round {round}: not converged:\n{}",
            String::from_utf8_lossy(&again.stdout)
        );
    }
}

#[test]
fn refused_changes_fail_apply_and_external_disks_survive_destroy() {
    // autostart off: nothing boots, so this needs no KVM.
    let kdl = |size: &str| {
        format!(
            "vm \"web\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"{size}\" path=\"ext.raw\"\n    autostart #false\n}}\nvm \"db\" {{\n    os \"diag\"\n    autostart #false\n}}\n"
        )
    };
    let lab = Lab::new(&kdl("16MiB"));
    let ext = lab.dir.path().join("ext.raw");
    lab.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        std::fs::metadata(&ext).map(|m| m.len()).ok(),
        Some(16 << 20)
    );

    // A shrink is refused: named on stderr, exit 1, the disk untouched.
    lab.write(&kdl("8MiB"));
    let out = lab.run(&["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "a refused change fails apply");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 change(s) refused"), "{err}");
    assert!(err.contains("web: disk data"), "{err}");
    assert_eq!(
        std::fs::metadata(&ext).map(|m| m.len()).ok(),
        Some(16 << 20)
    );

    lab.write(&kdl("16MiB"));
    lab.ok(&["destroy", "--auto-approve"]);
    assert!(!lab.state().join("vms/web").exists());
    assert!(ext.exists(), "a disk outside the state directory is kept");

    lab.ok(&["apply", "--auto-approve"]);
    lab.ok(&["destroy", "--auto-approve", "--delete-external-disks"]);
    assert!(!ext.exists(), "--delete-external-disks deletes it");
}

#[test]
fn copy_from_copies_the_disks_of_a_running_source_and_both_vms_run() {
    if !kvm_available() {
        return;
    }
    let lab = Lab::new("");
    // A seed image with a known first sector, imported with source=.
    let seed = lab.dir.path().join("seed.raw");
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    bytes.resize(1 << 20, 0);
    std::fs::write(&seed, &bytes).expect("seed");
    let web = "vm \"web\" {\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"16MiB\" source=\"seed.raw\"\n}\n";
    lab.write(web);
    lab.ok(&["apply", "--auto-approve"]);
    let before = lab.wait_vm("web", "reported its disk", |v| {
        v["guest"]["disks"][0]["sector0_fnv1a"].is_string()
    });
    let sector0 = before["guest"]["disks"][0]["sector0_fnv1a"].clone();
    assert_ne!(
        sector0, "7da144b97d054b25",
        "not the all-zero sector: the seed was imported"
    );

    lab.write(&format!(
        "{web}vm \"web-2\" {{\n    copy-from \"web\"\n    memory \"96MiB\"\n}}\n"
    ));
    let plan = lab.ok(&["plan"]);
    assert!(plan.contains("=> web-2 copy from web"), "{plan}");
    assert!(
        !plan.contains("(for copy)"),
        "a live copy stops nothing:\n{plan}"
    );
    let applied = lab.ok(&["apply", "--auto-approve"]);
    assert!(
        applied.contains("source web paused"),
        "apply reports the pause:\n{applied}"
    );
    let copy = lab.wait_guest("web-2", 1, 96);
    assert_eq!(
        copy["guest"]["disks"][0]["sector0_fnv1a"], sector0,
        "the copy boots the copied disk"
    );
    assert_eq!(copy["guest"]["disks"][0]["size_bytes"], 16u64 << 20);
    let src = lab.wait_guest("web", 1, 64);
    assert_eq!(src["guest"]["disks"][0]["sector0_fnv1a"], sector0);
    assert_eq!(
        src["pid"], before["pid"],
        "the source kept running: the copy paused it, did not stop it"
    );
    let again = lab.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "converged");
}

#[test]
fn cpu_weight_is_enforced_by_cgroup_and_changed_live() {
    if !kvm_available() {
        return;
    }
    let Some(ctl) = vmctl_runtime::cgroup::CpuController::usable() else {
        println!("skipped: no writable cpu cgroup controller on this host");
        return;
    };
    let kdl = |w: u32| {
        format!("vm \"w\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    cpu-weight {w}\n}}\n")
    };
    let lab = Lab::new(&kdl(200));
    lab.ok(&["apply", "--auto-approve"]);
    let w = lab.wait_guest("w", 1, 64);
    let group = ctl.group("w", &lab.state().join("vms/w"));
    let in_group = |pid: &Value| {
        let procs = std::fs::read_to_string(group.path.join("cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .any(|l| Some(l.trim()) == pid.as_i64().map(|p| p.to_string()).as_deref())
    };
    assert!(
        in_group(&w["pid"]),
        "the VMM runs in its cgroup {}",
        group.path.display()
    );
    let expect = |weight: u32| match ctl {
        vmctl_runtime::cgroup::CpuController::V2(_) => u64::from(weight),
        vmctl_runtime::cgroup::CpuController::V1(_) => {
            vmctl_runtime::cgroup::weight_to_shares(weight)
        }
    };
    assert_eq!(group.raw_weight(), Some(expect(200)));

    // A weight change is live: planned as such, applied without a restart.
    lab.write(&kdl(50));
    let plan = lab.ok(&["plan"]);
    assert!(plan.contains("~ w set-cpu-weight"), "{plan}");
    lab.ok(&["apply", "--auto-approve"]);
    let after = lab.vm("w");
    assert_eq!(after["pid"], w["pid"], "no restart");
    assert_eq!(after["cpu_weight"], 50);
    assert_eq!(group.raw_weight(), Some(expect(50)));
    assert_eq!(after["cpu_weight_enforced"], true, "{after}");

    // status reads the truth from the host's cgroup: a weight changed
    // behind vmctl's back is reported as not enforced.
    group.set_weight(300).expect("write the cgroup");
    let tampered = lab.vm("w");
    assert_eq!(tampered["cpu_weight_enforced"], false, "{tampered}");
    assert!(
        tampered["cpu_weight_note"]
            .as_str()
            .is_some_and(|n| n.contains("weight")),
        "{tampered}"
    );
    let text = lab.ok(&["status"]);
    assert!(text.contains("cpu-weight 50 not enforced"), "{text}");

    lab.ok(&["destroy", "--auto-approve"]);
    assert!(!group.path.exists(), "the group is removed with the VM");
}

#[test]
fn a_disk_grows_live_and_the_guest_sees_it() {
    if !kvm_available() {
        return;
    }
    let kdl = |size: &str| {
        format!(
            "vm \"d\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"{size}\"\n}}\n"
        )
    };
    let lab = Lab::new(&kdl("64MiB"));
    lab.ok(&["apply", "--auto-approve"]);
    let before = lab.wait_vm("d", "reported its disk", |v| {
        v["guest"]["disks"][0]["size_bytes"] == 64u64 << 20
    });

    lab.write(&kdl("128MiB"));
    let plan = lab.ok(&["plan"]);
    assert!(plan.contains("~ d resize-disk"), "{plan}");
    assert!(plan.contains("grow live"), "{plan}");
    lab.ok(&["apply", "--auto-approve"]);
    let after = lab.wait_vm("d", "reported the grown disk", |v| {
        v["guest"]["disks"][0]["size_bytes"] == 128u64 << 20
    });
    assert_eq!(after["pid"], before["pid"], "no restart");
    let file = lab.state().join("vms/d/disks/data.raw");
    assert_eq!(
        std::fs::metadata(&file).map(|m| m.len()).ok(),
        Some(128 << 20)
    );
    let again = lab.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "converged");

    // The VMM itself refuses a shrink or an unknown disk sent to its socket.
    let client = vmctl_runtime::api::ApiClient::new(lab.state().join("vms/d/api.sock"));
    let err = client
        .resize_disk("data", 32 << 20)
        .expect_err("shrink refused");
    assert!(err.to_string().contains("lose data"), "{err}");
    assert!(client.resize_disk("nope", 1 << 30).is_err());
    assert!(
        client.resize_disk("data", (128 << 20) + 1).is_err(),
        "whole sectors only"
    );
}

/// Issue 11 through the binary: editing `cpus` and `memory` within `max`
/// plans live hot-add lines, apply keeps the VMM (same pid), status shows
/// the guest's own new figures, and the next plan is empty; then a CPU
/// hot-remove the same way.
#[test]
fn cpu_and_memory_hot_add_and_cpu_hot_remove_are_live() {
    if !kvm_available() {
        return;
    }
    let kdl = |cpus: u32, memory: &str| {
        format!(
            "vm \"h\" {{\n    os \"diag\"\n    cpus {cpus} max=4\n    memory \"{memory}\" max=\"1GiB\"\n}}\n"
        )
    };
    let lab = Lab::new(&kdl(1, "256MiB"));
    lab.ok(&["apply", "--auto-approve"]);
    let before = lab.wait_guest("h", 1, 256);

    lab.write(&kdl(3, "768MiB"));
    let out = lab.run(&["plan", "--json"]);
    assert!(out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan --json parses");
    let kinds: Vec<(String, String)> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or("").to_string(),
                a["disruption"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("hot-add-cpu".to_string(), "live".to_string()),
            ("hot-add-memory".to_string(), "live".to_string())
        ],
        "{plan:#}"
    );
    let text = lab.ok(&["plan"]);
    assert!(text.contains("~ h hot-add-cpu"), "{text}");
    assert!(
        text.contains("cpus 1 → 3 within hot-add max 4: hot-add"),
        "{text}"
    );
    assert!(text.contains("~ h hot-add-memory"), "{text}");
    lab.ok(&["apply", "--auto-approve"]);
    let after = lab.wait_guest("h", 3, 768);
    assert_eq!(after["pid"], before["pid"], "no restart");
    assert_eq!(after["guest"]["cpus_online"], 3, "{after:#}");
    assert_eq!(after["guest"]["memory_verified_mib"], 768, "{after:#}");
    assert_eq!(
        (after["cpus"].as_u64(), after["memory_mib"].as_u64()),
        (Some(3), Some(768))
    );
    let again = lab.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "converged");

    lab.write(&kdl(2, "768MiB"));
    let text = lab.ok(&["plan"]);
    assert!(text.contains("~ h hot-remove-cpu"), "{text}");
    lab.ok(&["apply", "--auto-approve"]);
    let removed = lab.wait_guest("h", 2, 768);
    assert_eq!(removed["pid"], before["pid"], "no restart");
    assert_eq!(removed["guest"]["cpus_online"], 2, "{removed:#}");
    let again = lab.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "converged");
    lab.ok(&["destroy", "--auto-approve"]);
}

/// Loops of [`parallel_apply_and_destroy_of_many_vms_never_trips_over_each_other`]:
/// 5 by default, `VMCTL_STRESS_LOOPS=50` for a longer run.
fn stress_loops() -> usize {
    std::env::var("VMCTL_STRESS_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Issue 15: `destroy` of 20 diag VMs after `apply --parallelism 8` failed
/// about 1 run in 8 with `v12: destroy FAILED: .../v0/vm.json: No such file
/// or directory` — an action listing every VM while another one deleted
/// its directory. Apply and destroy 20 small VMs at high parallelism in a
/// loop; every run must succeed and leave no VMM behind.
#[test]
fn parallel_apply_and_destroy_of_many_vms_never_trips_over_each_other() {
    if !kvm_available() {
        return;
    }
    const VMS: usize = 20;
    let kdl: String = (0..VMS)
        .map(|i| format!("vm \"v{i}\" {{\n    os \"diag\"\n    memory \"64MiB\"\n}}\n"))
        .collect();
    let lab = Lab::new(&kdl);
    let loops = stress_loops();
    let mut failures = Vec::new();
    for round in 0..loops {
        for args in [
            ["apply", "--auto-approve", "--parallelism", "8"],
            ["destroy", "--auto-approve", "--parallelism", "8"],
        ] {
            let out = lab.run(&args);
            if !out.status.success() {
                failures.push(format!(
                    "round {round}: vmctl {}: {}{}",
                    args[0],
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let left = lab.vmm_pids();
        if !left.is_empty() {
            failures.push(format!("round {round}: VMMs left after destroy: {left:?}"));
            // Clean up so the next round starts from nothing.
            let _ = lab.run(&["destroy", "--auto-approve"]);
        }
    }
    println!(
        "stress: {loops} loops of {VMS} VMs, {} failure(s)",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// `vmctl logs` shows the whole kept console output across a rotation:
/// `console.log.1` (older) first, then `console.log`.
#[test]
fn logs_shows_the_rotated_console_log_first() {
    let lab = Lab::new("vm \"a\" {\n    os \"diag\"\n}\n");
    let dir = lab.state().join("vms").join("a");
    std::fs::create_dir_all(&dir).expect("vm dir");
    std::fs::write(dir.join("console.log.1"), "older\n").expect("write");
    std::fs::write(dir.join("console.log"), "newer\n").expect("write");
    let out = lab.ok(&["logs", "a"]);
    assert_eq!(out, "older\nnewer\n");
}

/// An apply with nothing to do still reports what a killed apply left open
/// in the journal — as already done — and closes it, so the next apply with
/// work does not report it again (found by `cargo xtask crash`).
#[test]
fn a_no_op_apply_settles_an_action_a_killed_apply_left_open() {
    // autostart off: nothing boots, so this needs no KVM.
    let lab = Lab::new("vm \"web\" {\n    os \"diag\"\n    autostart #false\n}\n");
    lab.ok(&["apply", "--auto-approve"]);
    // As a kill between the action's effect and its `finished` line leaves it.
    let line = r#"{"ts":1,"apply_id":"1-1","action":"web:create","vm":"web","kind":"create","event":"started"}"#;
    let journal = lab.state().join("journal.jsonl");
    let mut text = std::fs::read_to_string(&journal).expect("journal");
    text.push_str(line);
    text.push('\n');
    std::fs::write(&journal, text).expect("write journal");

    let out = lab.ok(&["apply", "--auto-approve"]);
    assert!(out.contains("No changes"), "{out}");
    assert!(
        out.contains("web: create was interrupted by a killed apply; it is already done"),
        "{out}"
    );
    let out = lab.ok(&["apply", "--auto-approve", "--json"]);
    assert!(!out.contains("interrupted"), "reported once only: {out}");
}

/// Issue 14: `source=` images in qcow2, vdi, vmdk, vhd (dynamic and fixed),
/// vhdx and parallels are detected by their headers and converted to raw:
/// the guest reads the original's sector 0, and the VM's raw disk file (read
/// from the host: the diag guest checksums only sector 0) equals the
/// original byte for byte, sparse, mode 0600. A truncated qcow2 or an image
/// bigger than the declared disk fails apply naming the file, and nothing
/// of that VM is created.
#[test]
fn foreign_disk_images_are_converted_on_import() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !kvm_available() || !qemu_img_available() {
        return;
    }
    let lab = Lab::new("");
    let dir = lab.dir.path();
    const SIZE: usize = 8 << 20;
    // A pattern in the first MiB, holes after.
    let mut original: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    original.resize(SIZE, 0);
    let raw = dir.join("original.raw");
    std::fs::write(&raw, &original).expect("original");
    let raw = raw.to_str().expect("utf-8 path");
    // (disk name, file, qemu-img -O, -o options, source-format)
    let images: [(&str, &str, &str, &str, Option<&str>); 8] = [
        ("q", "d.qcow2", "qcow2", "", None),
        ("vdi", "d.vdi", "vdi", "", None),
        ("vmdk", "d.vmdk", "vmdk", "", None),
        ("vhd", "d.vhd", "vpc", "force_size=on", None),
        (
            "vhd-fixed",
            "f.vhd",
            "vpc",
            "force_size=on,subformat=fixed",
            None,
        ),
        ("vhdx", "d.vhdx", "vhdx", "", None),
        ("hds", "d.hds", "parallels", "", None),
        ("declared", "declared.img", "qcow2", "", Some("qcow2")),
    ];
    let mut kdl = String::from("vm \"imp\" {\n    os \"diag\"\n    memory \"64MiB\"\n");
    for (name, file, fmt, opts, declared) in images {
        let out = dir.join(file);
        let out = out.to_str().expect("utf-8 path");
        if opts.is_empty() {
            qemu_img(&["convert", "-f", "raw", "-O", fmt, raw, out]);
        } else {
            qemu_img(&["convert", "-f", "raw", "-O", fmt, "-o", opts, raw, out]);
        }
        kdl.push_str(&format!(
            "    disk \"{name}\" size=\"8MiB\" source=\"{file}\"{}\n",
            declared
                .map(|f| format!(" source-format=\"{f}\""))
                .unwrap_or_default()
        ));
    }
    kdl.push_str("}\n");
    lab.write(&kdl);
    lab.ok(&["apply", "--auto-approve"]);

    let want = fnv1a(&original[..512]);
    let v = lab.wait_vm("imp", "reported all its disks", |v| {
        v["guest"]["disks"]
            .as_array()
            .is_some_and(|d| d.len() == images.len())
    });
    for (i, (name, file, ..)) in images.iter().enumerate() {
        let d = &v["guest"]["disks"][i];
        assert_eq!(
            d["sector0_fnv1a"],
            want.as_str(),
            "{file}: guest's sector 0"
        );
        assert_eq!(d["size_bytes"], SIZE as u64, "{file}");
        let disk = lab.state().join(format!("vms/imp/disks/{name}.raw"));
        let got = std::fs::read(&disk).expect("imported disk");
        assert!(got == original, "{file}: the raw disk equals the original");
        let meta = std::fs::metadata(&disk).expect("stat");
        assert!(
            meta.blocks() * 512 <= 2 << 20,
            "{file}: sparse ({} bytes allocated of {SIZE})",
            meta.blocks() * 512
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}: mode");
    }

    // A truncated qcow2, and an image bigger than its disk: apply fails
    // naming the file and creates nothing of that VM.
    let qcow2 = std::fs::read(dir.join("d.qcow2")).expect("qcow2");
    std::fs::write(dir.join("cut.qcow2"), &qcow2[..100_000]).expect("cut");
    for (vm, disk, file) in [
        ("cut", "size=\"8MiB\"", "cut.qcow2"),
        ("small", "size=\"4MiB\"", "d.vdi"),
    ] {
        lab.write(&format!(
            "{kdl}vm \"{vm}\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"d\" {disk} source=\"{file}\"\n}}\n"
        ));
        let out = lab.run(&["apply", "--auto-approve"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{vm}: apply must fail:\n{text}");
        assert!(text.contains(file), "{vm}: the error names {file}:\n{text}");
        if vm == "small" {
            assert!(
                text.contains(&(4u64 << 20).to_string()) && text.contains(&SIZE.to_string()),
                "both sizes named:\n{text}"
            );
        }
        assert!(
            !lab.state().join("vms").join(vm).exists(),
            "{vm}: nothing created:\n{text}"
        );
    }
}

/// The FNV of an all-zero sector 0.
const ZERO_SECTOR: &str = "7da144b97d054b25";

/// A recognisable first sector written over `path`'s sector 0 (the file is
/// created when missing); returns what diag will report for it.
fn write_pattern(path: &Path) -> String {
    use std::os::unix::fs::FileExt;
    let sector: Vec<u8> = (0..512u32).map(|i| (i * 7 + 3) as u8).collect();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .expect("open disk file");
    f.write_all_at(&sector, 0).expect("write sector 0");
    fnv1a(&sector)
}

fn sector0(v: &Value, disk: usize) -> Value {
    v["guest"]["disks"][disk]["sector0_fnv1a"].clone()
}

/// Issue 14: two VMs — here of two labs, so two state directories that
/// know nothing of each other — pointing `path=` at one file. The first
/// VM's VMM holds the file's lock; the second fails to start, naming the
/// file, and the first keeps running.
#[test]
fn a_disk_file_in_use_by_one_vm_cannot_be_started_by_another() {
    if !kvm_available() {
        return;
    }
    let shared_dir = tempfile::tempdir().expect("tempdir");
    let shared = shared_dir.path().join("shared.raw");
    let kdl = |vm: &str| {
        format!(
            "vm \"{vm}\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"16MiB\" path=\"{}\"\n}}\n",
            shared.display()
        )
    };
    let one = Lab::new(&kdl("one"));
    one.ok(&["apply", "--auto-approve"]);
    let first = one.wait_guest("one", 1, 64);

    let two = Lab::new(&kdl("two"));
    let out = two.run(&["apply", "--auto-approve"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the second VM must not start:\n{text}"
    );
    assert!(
        text.contains(&shared.display().to_string()) && text.contains("locked by another process"),
        "the error names the file and says it is locked:\n{text}"
    );
    assert!(two.vmm_pids().is_empty(), "no VMM left for the second VM");

    let still = one.wait_guest("one", 1, 64);
    assert_eq!(still["pid"], first["pid"], "the first VM kept running");
    assert_eq!(still["state"], "running");
}

/// Issue 14: changing a disk's `path` moves its file — the guest sees its
/// old contents at the new place — and a move onto an existing file is
/// refused, leaving both files alone.
#[test]
fn a_path_change_moves_the_disk_file_with_its_data() {
    if !kvm_available() {
        return;
    }
    let kdl = |path: &str| {
        format!(
            "vm \"d\" {{\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"16MiB\" path=\"{path}\"\n}}\n"
        )
    };
    let lab = Lab::new(&kdl("one.raw"));
    let one = lab.dir.path().join("one.raw");
    let two = lab.dir.path().join("two.raw");
    let pattern = write_pattern(&one);
    lab.ok(&["apply", "--auto-approve"]);
    let before = lab.wait_vm("d", "reported its disk", |v| sector0(v, 0).is_string());
    assert_eq!(
        sector0(&before, 0),
        pattern.as_str(),
        "an existing file keeps its data"
    );

    lab.write(&kdl("two.raw"));
    let plan = lab.ok(&["plan"]);
    assert!(
        plan.contains(&format!(
            "move disk file {} → {}",
            one.display(),
            two.display()
        )),
        "{plan}"
    );
    lab.ok(&["apply", "--auto-approve"]);
    let after = lab.wait_vm("d", "restarted on the moved disk", |v| {
        v["pid"] != before["pid"] && sector0(v, 0).is_string()
    });
    assert_eq!(
        sector0(&after, 0),
        pattern.as_str(),
        "the data followed the file"
    );
    assert!(!one.exists(), "moved, not copied");
    assert!(two.exists());

    // Onto a file that exists: refused, nothing overwritten.
    let three = lab.dir.path().join("three.raw");
    std::fs::write(&three, b"someone else's").expect("write");
    lab.write(&kdl("three.raw"));
    let out = lab.run(&["apply", "--auto-approve"]);
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a move onto an existing file fails:\n{err}"
    );
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&three).expect("read"), b"someone else's");
    assert!(two.exists(), "the disk file was not touched");
}

/// Issue 14: a removed disk's file in the state directory is deleted, so a
/// disk of that name added again is empty — the guest reads zeros, not the
/// old data; a removed disk at a user-chosen path is left in place, with a
/// warning in the plan.
#[test]
fn a_removed_disk_is_deleted_and_comes_back_empty() {
    if !kvm_available() {
        return;
    }
    let with = "vm \"d\" {\n    os \"diag\"\n    memory \"64MiB\"\n    disk \"data\" size=\"16MiB\"\n    disk \"ext\" size=\"16MiB\" path=\"ext.raw\"\n}\n";
    let without = "vm \"d\" {\n    os \"diag\"\n    memory \"64MiB\"\n}\n";
    let lab = Lab::new(with);
    lab.ok(&["apply", "--auto-approve"]);
    lab.wait_vm("d", "reported its disks", |v| sector0(v, 1).is_string());
    let file = lab.state().join("vms/d/disks/data.raw");
    let ext = lab.dir.path().join("ext.raw");
    let pattern = write_pattern(&file);
    assert_ne!(pattern, ZERO_SECTOR);

    lab.write(without);
    let plan = lab.ok(&["plan"]);
    assert!(
        plan.contains("disk data removed: its file is deleted"),
        "{plan}"
    );
    assert!(plan.contains("WARNING its file"), "{plan}");
    lab.ok(&["apply", "--auto-approve"]);
    assert!(!file.exists(), "the removed disk's file is deleted");
    assert!(
        ext.exists(),
        "a disk at a user-chosen path is left in place"
    );

    lab.write(with);
    lab.ok(&["apply", "--auto-approve"]);
    let back = lab.wait_vm("d", "reported the re-added disk", |v| {
        v["guest"]["disks"].as_array().is_some_and(|d| d.len() == 2) && sector0(v, 0).is_string()
    });
    assert_eq!(
        sector0(&back, 0),
        ZERO_SECTOR,
        "an empty disk, not the old data"
    );
    let bytes = std::fs::read(&file).expect("the re-added disk's file");
    assert!(bytes[..512].iter().all(|&b| b == 0));
}
