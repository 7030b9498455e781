//! `vmctl host-rpc` end to end: the planner's Backend over a pipe to the real
//! binary, and over real ssh into network-namespace "hosts"
//! (tests/common/hosts.rs), with diag VMs on this machine's /dev/kvm. The
//! fence (a lower fencing token is refused, the VM untouched) and
//! `unreachable` hosts (sshd killed, link down) are checked through the same
//! path a coordinator uses.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use vmctl_hostrpc::{PROTOCOL_VERSION, RemoteBackend, Timeouts};
use vmctl_planner::{Backend, Desired, ObservedVm, RunState};
use vmctl_spec::VmSpec;

fn diag(name: &str, cpus: u32, memory: &str) -> VmSpec {
    let kdl = format!(
        "vm \"{name}\" {{\n    os \"diag\"\n    cpus {cpus}\n    memory \"{memory}\"\n}}\n"
    );
    let loaded = vmctl_spec::parse_str("t.kdl", &kdl, Path::new("/tmp"), 2)
        .unwrap_or_else(|e| panic!("{e:?}"));
    loaded.state.vms[0].clone()
}

/// `vmctl host-rpc` on `state` as a direct child (no ssh).
fn pipe_argv(state: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![env!("CARGO_BIN_EXE_vmctl").into()];
    v.extend(extra.iter().map(OsString::from));
    v.extend(["host-rpc".into(), "--state-dir".into(), state.into()]);
    v
}

fn pipe(state: &Path, token: Option<u64>) -> RemoteBackend {
    RemoteBackend::connect("local", pipe_argv(state, &[]), token, Timeouts::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn err_text<T: std::fmt::Debug>(r: Result<T, vmctl_planner::BackendError>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.0,
    }
}

/// host-rpc servers (not zombies) serving `state`.
fn servers_of(state: &Path) -> Vec<i32> {
    let needle = state.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if cmd.contains("host-rpc") && cmd.contains(&needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

#[test]
fn over_a_pipe_the_fence_holds_and_a_dead_server_is_replaced_by_a_new_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // -vv: the server logs at debug, all to stderr; stdout stays protocol.
    let a = RemoteBackend::connect(
        "local",
        pipe_argv(&state, &["-vv"]),
        Some(5),
        Timeouts::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hello = a.hello().clone();
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert_eq!(hello.vmctl_version, env!("CARGO_PKG_VERSION"));
    assert!(
        hello
            .capacity
            .is_some_and(|c| c.memory_mib > 0 && c.cpus > 0)
    );
    assert!(a.capabilities().copy, "{:?}", a.capabilities());
    assert!(a.observe().expect("observe").vms.is_empty());
    // Observing creates nothing; the hello's token made only the fence.
    let mut made: Vec<String> = std::fs::read_dir(&state)
        .expect("the fence's directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    assert_eq!(made, ["fence", "fence.lock"]);

    // `record` mutates the state directory and needs no KVM.
    let spec = diag("rec", 1, "64MiB");
    a.record(&spec, Desired::Stopped).expect("record");
    let seen = a.observe_vm("rec").expect("observe_vm").expect("recorded");
    assert_eq!(seen.record.spec, spec);
    assert_eq!(seen.live.state, RunState::Stopped);
    assert_eq!(
        std::fs::read_to_string(state.join("fence")).ok().as_deref(),
        Some("5\n")
    );

    // Another coordinator with an older token is refused at its hello...
    let e = err_text(RemoteBackend::connect(
        "local",
        pipe_argv(&state, &[]),
        Some(3),
        Timeouts::default(),
    ));
    assert!(e.contains("fenced") && e.contains("seen token 5"), "{e}");
    // ... and, had it connected before, at its first change: it changes
    // nothing.
    let old = pipe(&state, None);
    old.set_token(Some(3));
    let e = err_text(old.record(&spec, Desired::Running));
    assert!(
        e.contains("refused (fenced)") && e.contains("seen token 5"),
        "{e}"
    );
    assert_eq!(
        a.observe_vm("rec")
            .expect("observe")
            .map(|v| v.record.desired),
        Some(Desired::Stopped)
    );
    // Without a token, a mutating call is refused.
    old.set_token(None);
    let e = err_text(old.destroy("rec", false));
    assert!(e.contains("needs a fencing token"), "{e}");
    // A newer token takes over: the first coordinator is fenced from then on.
    old.set_token(Some(7));
    old.record(&spec, Desired::Running).expect("newer token");
    let e = err_text(a.record(&spec, Desired::Stopped));
    assert!(e.contains("fenced") && e.contains("seen token 7"), "{e}");
    assert_eq!(
        a.observe_vm("rec")
            .expect("observe")
            .map(|v| v.record.desired),
        Some(Desired::Running)
    );

    // The servers die (killed; nothing is in flight): the next calls
    // connect again by themselves.
    let pids = servers_of(&state);
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        // SAFETY: kill(2) of a server this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !servers_of(&state).is_empty() {
        assert!(Instant::now() < deadline, "the killed servers live on");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(old.observe().expect("reconnected").vms.contains_key("rec"));
    assert_eq!(servers_of(&state).len(), 1);
    // The stale coordinator cannot even connect again: its hello carries
    // token 5, which this host has fenced.
    let e = err_text(a.observe());
    assert!(e.contains("fenced") && e.contains("seen token 7"), "{e}");
    old.destroy("rec", false).expect("destroy");
    assert!(old.observe().expect("observe").vms.is_empty());
}

/// Median of `n` timed calls.
fn median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

/// Medians of `n` observe calls through `a` and through `b`, interleaved
/// (this machine is shared: both see the same noise).
fn observe_medians(n: usize, a: &RemoteBackend, b: &RemoteBackend) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..n {
        for (be, t) in [(a, &mut ta), (b, &mut tb)] {
            let s = Instant::now();
            be.observe().expect("observe");
            t.push(s.elapsed());
        }
    }
    ta.sort();
    tb.sort();
    (ta[n / 2], tb[n / 2])
}

#[test]
fn ssh_hosts_answer_hello_and_a_dead_or_silent_host_is_unreachable() {
    let Some(mut hosts) = common::hosts::start(2) else {
        return;
    };
    let started = Instant::now();
    let h1 = hosts
        .backend("h1", Some(1), Timeouts::default())
        .unwrap_or_else(|e| panic!("{e}\n{}", hosts.host("h1").sshd_log()));
    let connect = started.elapsed();
    assert_eq!(h1.hello().protocol, PROTOCOL_VERSION);
    assert!(h1.observe().expect("observe").vms.is_empty());
    let hello = median(21, || {
        h1.ping().expect("hello");
    });
    let local = pipe(&hosts.host("h1").state_dir, None);
    let (over_ssh, over_pipe) = observe_medians(21, &h1, &local);
    println!(
        "figures: connect+hello+capabilities over ssh {connect:?}; hello round trip over ssh \
         (median of 21) {hello:?}; observe (empty state) over ssh {over_ssh:?}, over a pipe {over_pipe:?}"
    );

    // sshd gone: connecting fails, saying so, instead of hanging.
    hosts.kill_sshd("h2");
    let t = Instant::now();
    let e = err_text(hosts.backend("h2", Some(1), Timeouts::default()));
    println!(
        "figures: connect to a host without sshd failed after {:?}",
        t.elapsed()
    );
    assert!(e.starts_with("host h2 unreachable: "), "{e}");

    // A host that goes silent under an open connection: the call times out.
    let quick = Timeouts {
        read: Duration::from_secs(3),
        ..Timeouts::default()
    };
    let h1q = hosts.backend("h1", Some(1), quick).expect("connect h1");
    hosts.link_down("h1");
    let t = Instant::now();
    // Without the per-call timeout this would hang (for TCP's retransmission
    // limit, ~15 min): bound the wait generously so a hang fails the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h1q.observe().map(|s| s.vms.len()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("observe of a silent host hung past its 3 s timeout");
    println!(
        "figures: observe of a silent host failed after {:?}",
        t.elapsed()
    );
    let e = err_text(r);
    assert!(
        e.starts_with("host h1 unreachable: no answer to observe"),
        "{e}"
    );
    drop(h1);
}

/// Poll `b` (bounded) until `vm` is running and its guest reports `cpus` and
/// `memory_mib`.
fn wait_guest(b: &RemoteBackend, vm: &str, cpus: u32, memory_mib: u64) -> ObservedVm {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = b.observe_vm(vm).expect("observe_vm");
        if let Some(v) = &seen
            && v.live.state == RunState::Running
            && let Some(g) = &v.live.guest
            && g["cpus"] == cpus
            && g["memory_mib"] == memory_mib
        {
            return v.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{vm} on {}: guest never reported {cpus} cpus / {memory_mib} MiB: {seen:#?}",
            b.host()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn diag_vms_on_two_ssh_hosts_are_created_observed_fenced_stopped_started_destroyed() {
    if !vmctl_runtime::testing::kvm_or_skip() {
        return;
    }
    let Some(hosts) = common::hosts::start(2) else {
        return;
    };
    let h1 = hosts
        .backend("h1", Some(1), Timeouts::default())
        .expect("h1");
    let h2 = hosts
        .backend("h2", Some(1), Timeouts::default())
        .expect("h2");
    let one = diag("one", 2, "64MiB");
    let two = diag("two", 1, "96MiB");
    h1.create(&one).expect("create one on h1");
    h2.create(&two).expect("create two on h2");

    // What the guests saw comes back through ssh; each host has its own.
    let seen1 = wait_guest(&h1, "one", 2, 64);
    wait_guest(&h2, "two", 1, 96);
    let all1 = h1.observe().expect("observe h1");
    let all2 = h2.observe().expect("observe h2");
    assert_eq!(all1.vms.keys().collect::<Vec<_>>(), ["one"]);
    assert_eq!(all2.vms.keys().collect::<Vec<_>>(), ["two"]);
    let pid = seen1.live.pid.expect("a running VM has a pid");

    let local = pipe(&hosts.host("h1").state_dir, None);
    let (over_ssh, over_pipe) = observe_medians(21, &h1, &local);
    println!(
        "figures: observe of a host with one running diag VM: over ssh {over_ssh:?}, over a pipe {over_pipe:?}"
    );

    // A newer coordinator shows h1 token 2; the old one is refused and the
    // VM is untouched.
    let newer = hosts
        .backend("h1", Some(2), Timeouts::default())
        .expect("h1 again");
    newer
        .record(&one, Desired::Running)
        .expect("record with token 2");
    let e = err_text(h1.stop("one"));
    assert!(e.contains("fenced") && e.contains("seen token 2"), "{e}");
    let e = err_text(h1.destroy("one", false));
    assert!(e.contains("fenced"), "{e}");
    let after = newer
        .observe_vm("one")
        .expect("observe")
        .expect("still there");
    assert_eq!(after.live.state, RunState::Running);
    assert_eq!(after.live.pid, Some(pid), "the VM was restarted");
    // h2 never saw token 2: the old coordinator still acts there.
    h2.stop("two").expect("stop two on h2");
    assert_eq!(
        h2.observe_vm("two").expect("observe").map(|v| v.live.state),
        Some(RunState::Stopped)
    );

    // Stop, start, destroy through the newer coordinator.
    newer.stop("one").expect("stop");
    let stopped = newer.observe_vm("one").expect("observe").expect("one");
    assert_eq!(stopped.live.state, RunState::Stopped);
    assert_eq!(stopped.live.pid, None);
    newer.start("one").expect("start");
    let again = wait_guest(&newer, "one", 2, 64);
    assert_ne!(again.live.pid, Some(pid));
    newer.destroy("one", false).expect("destroy one");
    h2.destroy("two", false).expect("destroy two");
    assert!(newer.observe().expect("observe").vms.is_empty());
    assert!(h2.observe().expect("observe").vms.is_empty());
    assert!(common::vmm_pids_under(&hosts.host("h1").state_dir).is_empty());
}

#[test]
fn the_planner_and_apply_engine_drive_an_ssh_host_unchanged() {
    if !vmctl_runtime::testing::kvm_or_skip() {
        return;
    }
    let Some(hosts) = common::hosts::start(1) else {
        return;
    };
    let h1 = hosts
        .backend("h1", Some(1), Timeouts::default())
        .expect("h1");
    let kdl = "vm \"db\" {\n    os \"diag\"\n    memory \"64MiB\"\n}\n\
               vm \"web\" {\n    os \"diag\"\n    memory \"64MiB\"\n    depends-on \"db\"\n}\n";
    let desired = vmctl_spec::parse_str("lab.kdl", kdl, Path::new("/tmp"), 2)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .state;
    let apply = |desired: &vmctl_spec::DesiredState| {
        let observed = h1.observe().expect("observe");
        let plan = vmctl_planner::plan(desired, &observed, &h1.capabilities()).expect("plan");
        let outcome = vmctl_planner::engine::apply(
            &h1,
            &plan,
            desired,
            None,
            &vmctl_planner::engine::Options::default(),
            &|_| {},
        );
        assert!(outcome.ok(), "{:?}", outcome.failed);
        plan.actions.len()
    };
    assert_eq!(apply(&desired), 2, "two creates");
    wait_guest(&h1, "db", 1, 64);
    wait_guest(&h1, "web", 1, 64);
    // What comes back over ssh is faithful enough that nothing is left to do.
    let observed = h1.observe().expect("observe");
    let again = vmctl_planner::plan(&desired, &observed, &h1.capabilities()).expect("plan");
    assert!(again.actions.is_empty(), "{again:#?}");
    // An empty lab (planned explicitly, as `vmctl destroy` does) destroys both.
    let empty = vmctl_spec::DesiredState {
        vms: Vec::new(),
        ..desired.clone()
    };
    assert_eq!(apply(&empty), 2, "two destroys");
    assert!(h1.observe().expect("observe").vms.is_empty());
}
