//! virtio-net on real KVM (issue 13): two diag VMs on one bridge exchange
//! ARP and ICMP echo with each other and with the host's bridge address,
//! and the host pings them.
//!
//! Everything network lives in a namespace this test creates
//! (`vmctl-t-<pid>`) and deletes when it ends, however it ends: the bridge
//! (10.77.0.1/24), two persistent TAPs enslaved to it, and both VMMs (run
//! under `ip netns exec`, so they open `/dev/net/tun` in that namespace).
//! Nothing is created in the host's own namespace (asserted), no route or
//! NAT leads out, and every wait is bounded.
//!
//! Needs /dev/kvm, root (`ip netns`, TAPs), iproute2 and ping; without them
//! it prints why it is skipped — and fails instead under
//! `VMCTL_REQUIRE_KVM=1` (.ci/run sets it and installs both packages).
//!
//! Run: `cargo test -p vmctl-runtime --test net`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmctl_runtime::Runtime;
use vmctl_runtime::api::ApiClient;
use vmctl_runtime::process::VmmCommand;
use vmctl_runtime::vmm::config::NicConfig;
use vmctl_spec::model::{ImageSpec, VmSpec};

mod common;
use common::{TESTPROG_RESET, elf};

const BRIDGE: &str = "vmctlt-br";
const BRIDGE_MAC: &str = "02:77:00:00:00:01";
const HOST_IP: &str = "10.77.0.1";

/// One diag VM of the test.
struct Guest {
    name: &'static str,
    tap: &'static str,
    mac: &'static str,
    ip: &'static str,
    peer_ip: &'static str,
}

const GUESTS: [Guest; 2] = [
    Guest {
        name: "a",
        tap: "vmctlt-a",
        mac: "52:54:00:77:00:02",
        ip: "10.77.0.2",
        peer_ip: "10.77.0.3",
    },
    Guest {
        name: "b",
        tap: "vmctlt-b",
        mac: "52:54:00:77:00:03",
        ip: "10.77.0.3",
        peer_ip: "10.77.0.2",
    },
];

/// Echo replies diag wants per target (guest/src/netproto.rs ECHO_COUNT).
const ECHO_COUNT: u64 = 3;

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace that is deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!("vmctl-t-{}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        Ok(Netns { name })
    }

    /// `ip -n NS ARGS`.
    fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec NS CMD...`.
    fn exec(&self, cmd: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(cmd);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Its bridge and TAPs go with it; the VMMs in it are gone by now.
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Why this host cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces and TAPs need root".into());
    }
    if let Err(e) = run("ip", &["-V"]) {
        return Some(format!("iproute2 (ip) not usable: {e}"));
    }
    if let Err(e) = run("ping", &["-V"]) {
        return Some(format!("ping (iputils-ping) not usable: {e}"));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun does not exist".into());
    }
    None
}

/// The bridge with the host address and one TAP per guest, all in `ns`.
fn wire(ns: &Netns) -> Result<(), String> {
    ns.ip(&["link", "set", "lo", "up"])?;
    ns.ip(&["link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])?;
    ns.ip(&["link", "set", BRIDGE, "address", BRIDGE_MAC])?;
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE])?;
    ns.ip(&["link", "set", BRIDGE, "up"])?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() }.to_string();
    for g in &GUESTS {
        // Persistent, owned by the VMM's user: what the control plane makes
        // (docs/networking.md). `ip tuntap` opens /dev/net/tun, so it runs
        // inside the namespace.
        ns.exec(&[
            "ip", "tuntap", "add", "dev", g.tap, "mode", "tap", "user", &uid,
        ])?;
        ns.ip(&["link", "set", g.tap, "master", BRIDGE, "up"])?;
    }
    Ok(())
}

/// Poll `f` until it returns Some; a generous bound turns a hang into a
/// failure (no timing assertion).
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The state directory and its VMMs, killed when dropped (before the
/// namespace goes).
struct Lab {
    _tmp: tempfile::TempDir,
    rt: Runtime,
    cmd: VmmCommand,
}

impl Lab {
    fn new(ns: &Netns) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        // `ip netns exec` execs the VMM (same pid, the spawner's lock
        // descriptor inherited) inside the namespace.
        let cmd = VmmCommand {
            exe: "ip".into(),
            args: vec![
                "netns".into(),
                "exec".into(),
                ns.name.clone().into(),
                exe.into(),
                "__vmm".into(),
                "--vm-dir".into(),
            ],
            env: Vec::new(),
        };
        let rt = Runtime::open(tmp.path().join("state"))
            .unwrap()
            .with_vmm_command(cmd.clone());
        Lab { _tmp: tmp, rt, cmd }
    }

    /// Create and start diag VM `g` with its NIC on `g.tap`. The machine
    /// config is the facade's plus the NIC and diag's network options —
    /// what the control plane's network wiring adds (docs/networking.md).
    fn start(&self, g: &Guest) {
        let spec = VmSpec {
            autostart: false,
            ..VmSpec::diag(g.name)
        };
        let cmdline = format!(" vmctl.net={}/24 vmctl.ping={},{HOST_IP}", g.ip, g.peer_ip);
        self.start_with_nic(&spec, &cmdline, g.mac, g.tap).unwrap();
    }

    /// Create `spec` (not started), write its machine config with one NIC
    /// on `tap` and `extra_cmdline` appended, and spawn its VMM.
    fn start_with_nic(
        &self,
        spec: &VmSpec,
        extra_cmdline: &str,
        mac: &str,
        tap: &str,
    ) -> Result<u32, vmctl_runtime::process::ProcessError> {
        self.rt.create(spec).unwrap();
        let dir = self.rt.vm_dir(&spec.name);
        let mut mc =
            vmctl_runtime::resolve::machine_config(self.rt.state_dir(), &dir, spec, None).unwrap();
        mc.cmdline.push_str(extra_cmdline);
        mc.nics.push(NicConfig {
            name: "lab".into(),
            mac: mac.into(),
            tap: tap.into(),
        });
        vmctl_runtime::state::write_atomic(&dir.machine_config(), &mc.to_json()).unwrap();
        vmctl_runtime::process::spawn(&self.cmd, &dir.path)
    }

    fn client(&self, name: &str) -> ApiClient {
        ApiClient::new(self.rt.vm_dir(name).api_sock())
    }

    fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.rt.vm_dir(name).console_log()).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        common::kill_vmms(&self.rt);
    }
}

/// The ping entry for `target` in a diag report's first NIC.
fn ping<'a>(report: &'a Value, target: &str) -> &'a Value {
    report["nics"][0]["pings"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["target"] == target))
        .unwrap_or(&Value::Null)
}

/// Both targets answered at least `ECHO_COUNT` echo requests. (More is
/// fine: diag stops sending at 3 replies, but replies to requests it
/// re-sent while earlier replies were on their way still count.)
/// The guest's report is final for the test: its own pings got their
/// replies, and it has answered the peer's (the peer pings it at its own
/// pace, so a report taken when only its own pings were done could be a
/// step behind — seen: `echo_answered` 2 of 3).
fn pings_done(report: &Value, g: &Guest) -> bool {
    let nic = &report["nics"][0];
    [g.peer_ip, HOST_IP]
        .iter()
        .all(|t| ping(report, t)["echo_replies"].as_u64() >= Some(ECHO_COUNT))
        && nic["arp_answered"].as_u64() >= Some(1)
        && nic["echo_answered"].as_u64() >= Some(ECHO_COUNT)
}

/// A target answered: its MAC learnt by ARP, at least `ECHO_COUNT` distinct
/// replies with diag's payload, no more than were sent, none wrong.
fn assert_answered(p: &Value, mac: &str, why: &dyn Fn() -> String) {
    assert_eq!(p["mac"], mac, "{}", why());
    let replies = p["echo_replies"].as_u64().unwrap_or(0);
    assert!(replies >= ECHO_COUNT, "{}", why());
    assert!(p["echo_sent"].as_u64() >= Some(replies), "{}", why());
    assert_eq!(p["bad_replies"], 0, "{}", why());
}

fn two_diag_vms_talk_to_each_other_and_to_the_host() {
    let ns = Netns::create().unwrap();
    wire(&ns).unwrap();
    for name in [BRIDGE, GUESTS[0].tap, GUESTS[1].tap] {
        assert!(
            !Path::new("/sys/class/net").join(name).exists(),
            "{name} must not exist in the host's namespace"
        );
    }
    let lab = Lab::new(&ns);
    for g in &GUESTS {
        lab.start(g);
    }
    // diag gives up on a target after ~90 s (ARP) or ~60 s (echo); this
    // bound is above both, so a timeout means the guest's counts stopped.
    let reports: Vec<Value> = GUESTS
        .iter()
        .map(|g| {
            let c = lab.client(g.name);
            let deadline = Instant::now() + Duration::from_secs(150);
            loop {
                let r = c.status().ok().and_then(|s| s.guest);
                if let Some(r) = r.as_ref().filter(|r| pings_done(r, g)) {
                    break r.clone();
                }
                if Instant::now() > deadline {
                    let vmm = |n: &str| {
                        c.status()
                            .map(|s| format!("{:?}", s.nics))
                            .unwrap_or_else(|e| format!("{n}: {e}"))
                    };
                    let logs: String = GUESTS
                        .iter()
                        .map(|o| {
                            let log = lab.rt.vm_dir(o.name).vmm_log();
                            format!("--- {} vmm.log:\n{}\n", o.name, vmctl_runtime::process::tail(&log, 30))
                        })
                        .collect();
                    panic!(
                        "{}'s pings did not finish: last report {r:?}\nVMM: {}\nconsole:\n{}\n{logs}",
                        g.name,
                        vmm(g.name),
                        lab.console(g.name)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .collect();

    for (g, r) in GUESTS.iter().zip(&reports) {
        let peer = GUESTS.iter().find(|p| p.ip == g.peer_ip).unwrap();
        let nic = &r["nics"][0];
        let why = || format!("{} reported {r}\nconsole:\n{}", g.name, lab.console(g.name));
        assert_eq!(nic["mac"], g.mac, "{}", why());
        assert_eq!(nic["ip"], format!("{}/24", g.ip), "{}", why());
        // ARP resolved the other VM and the host's bridge, to the right
        // MACs; every echo came back with diag's payload.
        assert_answered(ping(r, g.peer_ip), peer.mac, &why);
        assert_answered(ping(r, HOST_IP), BRIDGE_MAC, &why);
        // It answered the peer's ARP and echo requests.
        assert!(nic["arp_answered"].as_u64() >= Some(1), "{}", why());
        assert!(
            nic["echo_answered"].as_u64() >= Some(ECHO_COUNT),
            "{}",
            why()
        );
    }

    // The host side: ping each guest from inside the namespace. Bounded by
    // a deadline (`-w`: stop at 3 replies or after 30 s), not by a
    // per-reply timeout: `-W` waits only two round trips for the rest once
    // one reply came, which a busy host can exceed without anything being
    // wrong.
    for g in &GUESTS {
        let before =
            lab.client(g.name).status().unwrap().guest.unwrap()["nics"][0]["echo_answered"]
                .as_u64()
                .unwrap();
        let out = ns
            .exec(&["ping", "-c", "3", "-w", "30", "-i", "0.2", g.ip])
            .unwrap_or_else(|e| panic!("the host cannot ping {}: {e}", g.name));
        // With -w, ping keeps sending (every 0.2 s) until 3 replies came:
        // a guest slowed by a loaded host makes it send a 4th before the
        // 3rd reply is back ("4 packets transmitted, 3 received"), which
        // is no loss. What counts is the replies.
        let received = out
            .split("packets transmitted, ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok());
        assert!(received >= Some(3), "{out}");
        let c = lab.client(g.name);
        wait_for("the guest to report the host's pings", || {
            let r = c.status().ok()?.guest?;
            (r["nics"][0]["echo_answered"].as_u64()? >= before + 3).then_some(())
        });
    }

    // The VMM's own view: NIC identity and counters.
    for g in &GUESTS {
        let st = lab.client(g.name).status().unwrap();
        assert_eq!(st.nics.len(), 1, "{st:?}");
        let n = &st.nics[0];
        assert_eq!(
            (n.name.as_str(), n.mac.as_str(), n.tap.as_str()),
            ("lab", g.mac, g.tap)
        );
        // ARP + echo to two targets, echo replies, the host's pings: well
        // over a handful each way; no malformed chain from diag.
        assert!(n.stats.rx_packets >= 2 * ECHO_COUNT + 3, "{n:?}");
        assert!(n.stats.tx_packets >= 2 * ECHO_COUNT + 3, "{n:?}");
        assert!(n.stats.rx_bytes >= 60 * n.stats.rx_packets / 2, "{n:?}");
        assert!(n.stats.tx_bytes > 0, "{n:?}");
        assert_eq!(n.stats.bad_chains, 0, "{n:?}");
        println!(
            "  {}: {} guest nic {} | VMM {:?}",
            g.name,
            n.tap,
            st.guest
                .as_ref()
                .map_or(Value::Null, |r| r["nics"][0].clone()),
            n.stats
        );
    }
    drop(lab);
    drop(ns);
}

/// A NIC whose TAP does not exist: the VMM refuses to start and says why
/// (it never creates a TAP itself).
fn a_missing_tap_is_refused_before_the_vm_runs() {
    let ns = Netns::create().unwrap();
    let lab = Lab::new(&ns);
    let spec = VmSpec {
        autostart: false,
        ..VmSpec::diag("lost")
    };
    let err = lab
        .start_with_nic(&spec, "", "52:54:00:77:00:09", "vmctlt-none")
        .expect_err("a VMM without its TAP must not run")
        .to_string();
    assert!(
        err.contains("vmctlt-none") && err.contains("does not exist"),
        "{err}"
    );
    assert!(
        ns.ip(&["link", "show", "vmctlt-none"]).is_err(),
        "the VMM created a TAP"
    );
    drop(lab);
    drop(ns);
}

/// A guest that resets again and again (irqchip mode, the NIC's interrupt
/// line wired): every reboot rebuilds the machine in the same, confined VMM
/// on a dup of the TAP it attached at set-up — no seccomp kill, no second
/// attach, the NIC still there.
fn a_nic_survives_guest_reboots_in_the_same_vmm() {
    let ns = Netns::create().unwrap();
    wire(&ns).unwrap();
    let lab = Lab::new(&ns);
    let kernel = lab._tmp.path().join("reset.elf");
    std::fs::write(&kernel, elf(TESTPROG_RESET)).unwrap();
    let spec = VmSpec {
        autostart: false,
        os: "testprog".into(),
        image: Some(ImageSpec {
            name: "testprog".into(),
            kernel,
            initrd: None,
            cmdline: "console=ttyS0".into(),
        }),
        ..VmSpec::diag("r")
    };
    let g = &GUESTS[0];
    let pid = lab.start_with_nic(&spec, "", g.mac, g.tap).unwrap();
    let c = lab.client("r");
    let st = wait_for("three boots", || c.status().ok().filter(|s| s.boots >= 3));
    assert_eq!(st.pid, pid, "same VMM process");
    assert_eq!(st.irq_mode, "irqchip");
    assert_eq!(st.nics.len(), 1, "{st:?}");
    assert_eq!(
        (st.nics[0].mac.as_str(), st.nics[0].tap.as_str()),
        (g.mac, g.tap)
    );
    // Still attached: the TAP has a reader (carrier up).
    let link = ns.ip(&["link", "show", g.tap]).unwrap();
    assert!(!link.contains("NO-CARRIER"), "{link}");
    drop(lab);
    drop(ns);
}

const TESTS: &[(&str, fn())] = &[
    (
        "two_diag_vms_talk_to_each_other_and_to_the_host",
        two_diag_vms_talk_to_each_other_and_to_the_host,
    ),
    (
        "a_missing_tap_is_refused_before_the_vm_runs",
        a_missing_tap_is_refused_before_the_vm_runs,
    ),
    (
        "a_nic_survives_guest_reboots_in_the_same_vmm",
        a_nic_survives_guest_reboots_in_the_same_vmm,
    ),
];

fn main() {
    vmctl_runtime::testing::run_as_vmm_if_asked();
    if !vmctl_runtime::testing::kvm_or_skip() {
        return;
    }
    if let Some(why) = missing_prerequisite() {
        if std::env::var_os(vmctl_runtime::testing::REQUIRE_KVM)
            .is_some_and(|v| v != "0" && !v.is_empty())
        {
            panic!("the network tests cannot run here ({why}) but VMCTL_REQUIRE_KVM is set");
        }
        println!("skipped: {why}");
        return;
    }
    common::run_tests(TESTS);
}
