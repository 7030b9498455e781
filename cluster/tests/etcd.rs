//! The shared state against a real 3-member etcd on 127.0.0.1
//! (`vmctl_cluster::testkit`): mutual exclusion, a holder killed with
//! `kill -9`, a holder paused past its lease (fencing), the leader killed
//! mid-write, and no quorum. Holders that must really die or pause run as
//! their own process (`vmctl-cluster-holder`). Skipped where `etcd` is not
//! installed unless `VMCTL_REQUIRE_ETCD` is set.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use vmctl_cluster::testkit::EtcdCluster;
use vmctl_cluster::{AcquireOptions, ClusterError, Etcd};

/// One etcd cluster at a time: three members each are enough load for two
/// cores, and the lease timings stay honest.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn opts(command: &str, wait: Duration) -> AcquireOptions {
    AcquireOptions {
        command: command.into(),
        wait,
    }
}

/// A `vmctl-cluster-holder` process and its pipes.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn start(c: &EtcdCluster, cluster: &str, ttl_ms: u64) -> (Holder, i64) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmctl-cluster-holder"))
            .args([
                &c.endpoints().join(","),
                cluster,
                &ttl_ms.to_string(),
                "test-holder",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the holder");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut h = Holder {
            child,
            stdin,
            stdout,
        };
        let line = h.read_line();
        let token = line
            .strip_prefix("LOCKED ")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("holder did not take the lock: {line}"));
        (h, token)
    }

    fn read_line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).expect("read from the holder");
        s.trim_end().to_string()
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write to the holder");
        self.stdin.flush().expect("flush");
        self.read_line()
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn records_and_journal_round_trip_under_the_lock() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let etcd = Etcd::connect(c.config("rt")).unwrap();
    assert_eq!(etcd.lock_status().unwrap(), None);
    // Acquire and release a few times, for the figure (no assertion on it).
    let mut took: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let l = etcd.lock(&opts("apply", Duration::ZERO)).unwrap();
            let d = t.elapsed();
            l.release().unwrap();
            d
        })
        .collect();
    took.sort();
    println!(
        "lock acquire: median {:?}, max {:?} (10 runs)",
        took[5], took[9]
    );
    let lock = etcd.lock(&opts("apply", Duration::ZERO)).unwrap();
    lock.put_vm("db", &json!({"host": "h1", "spec": {"memory": 512}}))
        .unwrap();
    lock.put_vm("web", &json!({"host": "h2"})).unwrap();
    lock.delete_vm("web").unwrap();
    lock.delete_vm("never-was").unwrap();
    assert_eq!(lock.append_journal(&json!({"step": 1})).unwrap(), 1);
    assert_eq!(lock.append_journal(&json!({"step": 2})).unwrap(), 2);
    let vms = etcd.list_vms().unwrap();
    assert_eq!(vms.keys().collect::<Vec<_>>(), ["db"]);
    assert_eq!(etcd.get_vm("db").unwrap().unwrap()["host"], "h1");
    let j = etcd.list_journal().unwrap();
    assert_eq!(
        j.iter()
            .map(|e| (e.seq, e.value["step"].as_i64()))
            .collect::<Vec<_>>(),
        [(1, Some(1)), (2, Some(2))]
    );
    let shown = etcd.lock_status().unwrap().expect("held");
    assert_eq!(shown.token, lock.token());
    assert_eq!(shown.holder.command, "apply");
    assert!(
        shown
            .holder
            .holder
            .contains(&format!("pid {}", std::process::id()))
    );
    assert!(
        shown.ttl_left_secs.is_some_and(|t| t > 0 && t <= 15),
        "{shown:?}"
    );
    // Another cluster name is another key space.
    let other = Etcd::connect(c.config("other")).unwrap();
    assert!(other.list_vms().unwrap().is_empty());
    assert_eq!(other.lock_status().unwrap(), None);
    drop(lock);
    assert_eq!(
        etcd.lock_status().unwrap(),
        None,
        "dropping the guard frees the lock"
    );
}

#[test]
fn two_lockers_exclude_each_other_and_the_second_names_the_first() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let a = Etcd::connect(c.config("mx")).unwrap();
    let b = Etcd::connect(c.config("mx")).unwrap();
    let held = a.lock(&opts("apply", Duration::ZERO)).unwrap();

    // No waiting: Held at once, naming the holder.
    match b.lock(&opts("destroy", Duration::ZERO)) {
        Err(ClusterError::Held { holder, waited }) => {
            assert_eq!(holder.token, held.token());
            assert_eq!(holder.holder.command, "apply");
            assert!(
                holder
                    .holder
                    .holder
                    .ends_with(&format!("pid {}", std::process::id()))
            );
            assert_eq!(waited, None);
        }
        other => panic!("second locker got {other:?}"),
    }

    // Waiting: told once who holds it, then gets it when the first lets go.
    let released = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(held);
    });
    let mut told = Vec::new();
    let second = b
        .lock_with(&opts("destroy", Duration::from_secs(60)), |s| {
            told.push(s.clone())
        })
        .unwrap();
    released.join().unwrap();
    assert_eq!(told.len(), 1, "the holder is named once: {told:?}");
    assert_eq!(told[0].holder.command, "apply");
    assert!(second.token() > told[0].token);

    // A holder in another process is named with its pid.
    drop(second);
    let (h, token) = Holder::start(&c, "mx", 15_000);
    match a.lock(&opts("apply", Duration::from_millis(300))) {
        Err(ClusterError::Held { holder, waited }) => {
            assert_eq!(holder.token, token);
            assert!(
                holder
                    .holder
                    .holder
                    .ends_with(&format!("pid {}", h.child.id())),
                "{holder:?}"
            );
            assert!(waited.is_some());
        }
        other => panic!("got {other:?}"),
    }
}

#[test]
fn a_holder_killed_with_sigkill_frees_the_lock_through_its_lease() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let etcd = Etcd::connect(c.config("k9")).unwrap();
    let (mut h, token) = Holder::start(&c, "k9", 2_000);
    assert_eq!(h.ask("put db {\"by\":\"first\"}"), "OK");
    let pid = h.child.id();
    let killed = Instant::now();
    h.signal(libc::SIGKILL);
    let _ = h.child.wait();
    let mut told = None;
    let lock = etcd
        .lock_with(&opts("apply", Duration::from_secs(60)), |s| {
            told = Some(s.clone())
        })
        .expect("the lock frees itself when the dead holder's lease expires");
    println!(
        "takeover {:?} after kill -9 (lease TTL 2 s)",
        killed.elapsed()
    );
    let told = told.expect("it was still held right after the kill");
    assert!(
        told.holder.holder.ends_with(&format!("pid {pid}")),
        "{told:?}"
    );
    assert_eq!(told.token, token);
    assert!(lock.token() > token);
    lock.put_vm("db", &json!({"by": "second"})).unwrap();
}

#[test]
fn a_holder_paused_past_its_lease_is_fenced_by_etcd_after_a_takeover() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let etcd = Etcd::connect(c.config("stop")).unwrap();
    let (mut old, old_token) = Holder::start(&c, "stop", 2_000);
    assert_eq!(old.ask("put db {\"by\":\"old\"}"), "OK");
    assert_eq!(old.ask("journal {\"by\":\"old\"}"), "OK 1");

    old.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let new = etcd
        .lock(&opts("apply", Duration::from_secs(60)))
        .expect("the paused holder's lease expires");
    println!(
        "takeover {:?} after SIGSTOP (lease TTL 2 s)",
        stopped.elapsed()
    );
    assert!(new.token() > old_token);
    new.put_vm("db", &json!({"by": "new"})).unwrap();
    assert_eq!(new.append_journal(&json!({"by": "new"})).unwrap(), 2);

    old.signal(libc::SIGCONT);
    // Through etcd itself, bypassing the holder's own lease check: refused
    // by the transaction's compare on the token, naming the new one.
    let raw = old.ask("put-raw db {\"by\":\"old-again\"}");
    assert!(
        raw.starts_with("ERR fenced ") && raw.contains(&format!("token {}", new.token())),
        "{raw}"
    );
    // Every other write it tries is refused too (fenced by etcd, or by its
    // own knowledge that the lease is gone).
    for cmd in [
        "put db {\"by\":\"old-again\"}",
        "put other {}",
        "journal {\"by\":\"old-again\"}",
    ] {
        let a = old.ask(cmd);
        assert!(
            a.starts_with("ERR fenced ") || a.starts_with("ERR lease-lost "),
            "{cmd}: {a}"
        );
    }
    assert_eq!(old.ask("lost"), "LOST true");

    // Nothing of the old holder's landed after the takeover.
    assert_eq!(etcd.get_vm("db").unwrap(), Some(json!({"by": "new"})));
    assert_eq!(etcd.get_vm("other").unwrap(), None);
    let j = etcd.list_journal().unwrap();
    assert_eq!(
        j.iter().map(|e| e.value["by"].clone()).collect::<Vec<_>>(),
        [json!("old"), json!("new")]
    );
    // The old holder exiting (revoking its own, dead lease) leaves the new
    // holder's lock alone.
    drop(old);
    assert_eq!(
        etcd.lock_status().unwrap().map(|s| s.token),
        Some(new.token())
    );
    new.put_vm("db", &json!({"by": "new", "n": 2})).unwrap();
}

#[test]
fn breaking_the_lock_fences_its_holder() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let etcd = Etcd::connect(c.config("brk")).unwrap();
    assert_eq!(etcd.break_lock().unwrap(), None, "nothing to break");
    let (mut h, token) = Holder::start(&c, "brk", 15_000);
    let broken = etcd.break_lock().unwrap().expect("it was held");
    assert_eq!(broken.token, token);
    assert!(
        broken
            .holder
            .holder
            .ends_with(&format!("pid {}", h.child.id()))
    );
    assert_eq!(etcd.lock_status().unwrap(), None);
    let a = h.ask("put-raw db {}");
    assert!(
        a.starts_with("ERR fenced ") && a.contains("nobody holds the lock"),
        "{a}"
    );
    assert_eq!(
        h.ask("release"),
        "OK",
        "a broken lock still releases cleanly"
    );
    etcd.lock(&opts("apply", Duration::ZERO))
        .expect("free after the break");
}

#[test]
fn writes_go_on_through_the_other_members_when_the_leader_is_killed() {
    let _s = serial();
    let Some(mut c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let leader = c.leader().unwrap();
    // The leader's endpoint first: the client talks to the member that dies.
    let mut cfg = c.config("ldr");
    cfg.endpoints.rotate_left(leader);
    assert_eq!(cfg.endpoints[0], c.endpoint(leader));
    let etcd = Etcd::connect(cfg).unwrap();
    let lock = etcd.lock(&opts("apply", Duration::ZERO)).unwrap();
    // A writer keeps writing records and journal entries; the leader is
    // killed under it after its fifth write.
    let (progress, writes) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let mut slowest = Duration::ZERO;
        for i in 0..40 {
            let t = Instant::now();
            lock.put_vm(&format!("vm{i}"), &json!({"i": i}))?;
            lock.append_journal(&json!({"i": i}))?;
            slowest = slowest.max(t.elapsed());
            let _ = progress.send(i);
        }
        Ok::<_, ClusterError>((lock, slowest))
    });
    while writes.recv().expect("the writer stopped early") < 5 {}
    c.kill(leader);
    let (lock, slowest) = writer
        .join()
        .unwrap()
        .expect("every write, across the leader's death");
    println!("slowest write pair while the leader was killed: {slowest:?}");
    assert_eq!(etcd.list_vms().unwrap().len(), 40);
    let j = etcd.list_journal().unwrap();
    assert_eq!(
        j.iter().map(|e| e.value["i"].as_i64()).collect::<Vec<_>>(),
        (0..40).map(Some).collect::<Vec<_>>(),
        "each entry once, in order"
    );
    assert!(!lock.is_lost());
    assert_ne!(c.leader().unwrap(), leader);
    // The member comes back and catches up.
    c.restart(leader).unwrap();
    c.wait_healthy(Duration::from_secs(60)).unwrap();
    lock.put_vm("vm40", &json!({"i": 40})).unwrap();
}

#[test]
fn a_live_holder_keeps_the_lock_past_its_ttl() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let mut cfg = c.config("live");
    cfg.lock_ttl = Duration::from_secs(2);
    let etcd = Etcd::connect(cfg).unwrap();
    let lock = etcd.lock(&opts("apply", Duration::ZERO)).unwrap();
    // Three TTLs: only the renewals keep it.
    std::thread::sleep(Duration::from_secs(6));
    assert!(!lock.is_lost());
    let s = etcd.lock_status().unwrap().expect("still held");
    assert_eq!(s.token, lock.token());
    assert_eq!(s.granted_ttl_secs, Some(2));
    lock.put_vm("db", &json!({})).unwrap();
    assert!(matches!(
        etcd.lock(&opts("apply", Duration::ZERO)),
        Err(ClusterError::Held { .. })
    ));
    lock.release().unwrap();
    assert_eq!(
        etcd.lock_status().unwrap(),
        None,
        "release revokes the lease"
    );
}

#[test]
fn without_quorum_locks_and_writes_fail_as_unavailable_instead_of_hanging() {
    let _s = serial();
    let Some(mut c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let mut cfg = c.config("nq");
    cfg.retry_for = Duration::from_secs(3);
    let budget = cfg.retry_for + cfg.request_timeout;
    let etcd = Etcd::connect(cfg.clone()).unwrap();
    let lock = etcd.lock(&opts("apply", Duration::ZERO)).unwrap();
    lock.put_vm("db", &json!({})).unwrap();
    c.kill(0);
    c.kill(1);

    // Each call runs on a thread so a hang shows as a failure, not a stuck
    // test. The bound is generous (a hang detector, not a speed check).
    let (tx, rx) = std::sync::mpsc::channel();
    let e2 = Etcd::connect(cfg).unwrap();
    std::thread::spawn(move || {
        let t = Instant::now();
        let w = lock.put_vm("db", &json!({"n": 1}));
        let w_took = t.elapsed();
        let t = Instant::now();
        let l = e2.lock(&opts("apply", Duration::ZERO)).map(|g| g.token());
        let _ = tx.send((w, w_took, l, t.elapsed()));
    });
    let (w, w_took, l, l_took) = rx
        .recv_timeout(budget * 6)
        .expect("a call without quorum hung");
    println!("without quorum: write failed after {w_took:?}, lock after {l_took:?}");
    assert!(
        matches!(w, Err(ClusterError::Unavailable { ref endpoints, .. }) if endpoints.contains(&c.endpoint(2))),
        "{w:?}"
    );
    assert!(matches!(l, Err(ClusterError::Unavailable { .. })), "{l:?}");
    assert!(matches!(
        etcd.lock_status(),
        Err(ClusterError::Unavailable { .. })
    ));

    // Quorum back: the lock can be taken and written again.
    c.restart(0).unwrap();
    c.wait_healthy(Duration::from_secs(60)).unwrap();
    // The old lock's lease may still be alive (a cluster without a leader
    // expires nothing): wait for it.
    let g = etcd
        .lock(&opts("apply", Duration::from_secs(60)))
        .expect("the lock after quorum came back");
    g.put_vm("db", &json!({"n": 2})).unwrap();
}

#[test]
fn tls_with_a_client_certificate() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip_with(3, true) else {
        return;
    };
    assert!(
        c.endpoints()
            .iter()
            .all(|e| e.starts_with("https://127.0.0.1:"))
    );
    let etcd = Etcd::connect(c.config("tls")).unwrap();
    let lock = etcd.lock(&opts("apply", Duration::ZERO)).unwrap();
    lock.put_vm("db", &json!({"tls": true})).unwrap();
    assert_eq!(etcd.get_vm("db").unwrap(), Some(json!({"tls": true})));

    // The members require a client certificate: the CA alone is refused.
    let mut cfg = c.config("tls");
    cfg.retry_for = Duration::from_secs(1);
    if let Some(t) = cfg.tls.as_mut() {
        t.cert = None;
        t.key = None;
    }
    let r = Etcd::connect(cfg).and_then(|e| e.list_vms());
    assert!(matches!(r, Err(ClusterError::Unavailable { .. })), "{r:?}");
    // Plain http to a TLS member is refused before any traffic.
    let mut cfg = c.config("tls");
    cfg.endpoints = vec![c.endpoint(0).replace("https://", "http://")];
    assert!(matches!(Etcd::connect(cfg), Err(ClusterError::Config(_))));
}

#[test]
fn etcd_user_auth() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    c.enable_auth("s3cret").unwrap();
    let mut cfg = c.config("auth");
    cfg.auth = Some(vmctl_cluster::Auth {
        user: "root".into(),
        password: "s3cret".into(),
    });
    let etcd = Etcd::connect(cfg.clone()).unwrap();
    let lock = etcd.lock(&opts("apply", Duration::ZERO)).unwrap();
    lock.put_vm("db", &json!({})).unwrap();
    assert_eq!(etcd.list_vms().unwrap().len(), 1);

    // A wrong password and no credentials at all: refused, not retried.
    cfg.auth = Some(vmctl_cluster::Auth {
        user: "root".into(),
        password: "wrong".into(),
    });
    let r = Etcd::connect(cfg.clone());
    assert!(matches!(r, Err(ClusterError::Auth { .. })), "{r:?}");
    cfg.auth = None;
    let r = Etcd::connect(cfg).and_then(|e| e.list_vms());
    assert!(matches!(r, Err(ClusterError::Auth { .. })), "{r:?}");
}

#[test]
fn writes_whose_answers_were_lost_are_re_read_not_applied_twice() {
    let _s = serial();
    let Some(c) = EtcdCluster::start_or_skip(3) else {
        return;
    };
    let etcd = Etcd::connect(c.config("lost")).unwrap();
    // The lock's create lands but its answer is lost: the re-read finds
    // our lease on the key, so we hold it (not "held by" ourselves).
    etcd.lose_write_answers_for_tests(1);
    let lock = etcd.lock(&opts("apply", Duration::ZERO)).unwrap();
    assert_eq!(
        etcd.lock_status().unwrap().map(|s| s.token),
        Some(lock.token())
    );

    assert_eq!(lock.append_journal(&json!({"n": 1})).unwrap(), 1);
    etcd.lose_write_answers_for_tests(1);
    assert_eq!(lock.append_journal(&json!({"n": 2})).unwrap(), 2);
    etcd.lose_write_answers_for_tests(1);
    assert_eq!(lock.append_journal(&json!({"n": 3})).unwrap(), 3);
    etcd.lose_write_answers_for_tests(1);
    lock.put_vm("db", &json!({"v": 1})).unwrap();
    etcd.lose_write_answers_for_tests(1);
    lock.delete_vm("db").unwrap();
    let j = etcd.list_journal().unwrap();
    assert_eq!(
        j.iter()
            .map(|e| (e.seq, e.value["n"].as_i64()))
            .collect::<Vec<_>>(),
        [(1, Some(1)), (2, Some(2)), (3, Some(3))]
    );
    assert_eq!(etcd.get_vm("db").unwrap(), None);
}
