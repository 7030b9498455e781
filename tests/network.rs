//! Declared networks end to end through the real binary (issue 13), every
//! step inside a network namespace this test creates (`ip netns add`) and
//! deletes: no bridge, tap or lab subnet ever exists in the host's own
//! namespace, and no packet leaves the namespace.
//!
//! `apply` of a network and two diag VMs makes the bridge with the host's
//! address and one tap per NIC on it; re-apply is a no-op; removing a VM
//! removes its tap; `destroy` leaves nothing; a NIC on an undeclared
//! network or an IP clash fails with nothing created; without
//! CAP_NET_ADMIN, apply refuses before creating anything.
//!
//! Needs root (to make the namespace) and /dev/kvm (the diag VMs); skips
//! with a message without them (fails without /dev/kvm under
//! `VMCTL_REQUIRE_KVM=1`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// A network namespace of this test's own, deleted (with everything in it)
/// on drop.
struct Netns {
    name: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    /// `None` (and a message) when this process may not create one.
    fn new() -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: network namespaces need root");
            return None;
        }
        let name = format!(
            "vmctl-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("skipped: cannot create a network namespace (`ip netns add`)");
            return None;
        }
        let ns = Netns { name };
        assert!(ns.exec(&["ip", "link", "set", "lo", "up"]).status.success());
        Some(ns)
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null());
        c
    }

    fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv).output().expect("ip netns exec")
    }

    /// Every interface in the namespace, as `ip -j -d link` says.
    fn links(&self) -> Vec<Value> {
        let out = self.exec(&["ip", "-j", "-d", "link", "show"]);
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).expect("ip -j link parses")
    }

    fn link_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    fn ipv4(&self, dev: &str) -> Vec<String> {
        let out = self.exec(&["ip", "-j", "addr", "show", "dev", dev]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j addr parses");
        v[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"] == "inet")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its interfaces; VMMs still in it
        // are stopped by the lab's destroy before this.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A lab directory whose vmctl runs inside `ns`.
struct Lab<'a> {
    ns: &'a Netns,
    dir: tempfile::TempDir,
}

impl<'a> Lab<'a> {
    fn new(ns: &'a Netns, kdl: &str) -> Lab<'a> {
        let lab = Lab {
            ns,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        lab.write(kdl);
        lab
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("vmctl.kdl")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join(".vmctl")
    }

    fn write(&self, kdl: &str) {
        std::fs::write(self.file(), kdl).expect("write kdl");
    }

    /// `vmctl ARGS -f FILE` in the namespace, with a `prefix` command
    /// (e.g. setpriv) in front.
    fn run_as(&self, prefix: &[&str], args: &[&str]) -> (bool, String) {
        let file = self.file();
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.push(env!("CARGO_BIN_EXE_vmctl"));
        argv.extend_from_slice(args);
        argv.push("-f");
        argv.push(file.to_str().expect("utf-8 path"));
        let out = self
            .ns
            .command(&argv)
            .env_remove("VMCTL_STATE_DIR")
            .output()
            .expect("run vmctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run_as(&[], args);
        assert!(ok, "vmctl {args:?} failed:\n{text}");
        text
    }

    fn fails(&self, args: &[&str]) -> String {
        let (ok, text) = self.run_as(&[], args);
        assert!(!ok, "vmctl {args:?} should fail:\n{text}");
        text
    }

    fn vm_dirs(&self) -> Vec<String> {
        match std::fs::read_dir(self.state().join("vms")) {
            Ok(d) => d
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let _ = self.run_as(&[], &["destroy", "--auto-approve"]);
    }
}

fn ready() -> Option<Netns> {
    if !vmctl_runtime::testing::kvm_or_skip() {
        return None;
    }
    Netns::new()
}

const LAB: &str = r#"
network "lab" {
    subnet "10.20.0.0/24"
}
vm "db" {
    os "diag"
    nic "lab" ip="10.20.0.10"
}
vm "web" {
    os "diag"
    nic "lab"
}
"#;

fn bridge_and_taps(ns: &Netns, state: &Path) -> (Value, Vec<Value>) {
    let bridge = vmctl_hostnet::bridge_name(state, "lab");
    let links = ns.links();
    let br = links
        .iter()
        .find(|l| l["ifname"] == bridge.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no bridge {bridge} in {links:#?}"));
    let taps = links
        .iter()
        .filter(|l| l["master"] == bridge.as_str())
        .cloned()
        .collect();
    (br, taps)
}

#[test]
fn apply_wires_a_bridge_and_taps_and_destroy_removes_them() {
    let Some(ns) = ready() else { return };
    let lab = Lab::new(&ns, LAB);
    lab.ok(&["apply", "--auto-approve"]);

    let state = lab.state();
    let bridge = vmctl_hostnet::bridge_name(&state, "lab");
    let (br, taps) = bridge_and_taps(&ns, &state);
    assert_eq!(br["linkinfo"]["info_kind"], "bridge", "{br:#}");
    assert!(
        br["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "{br:#}"
    );
    assert_eq!(ns.ipv4(&bridge), ["10.20.0.1/24"]);
    let mut tap_names: Vec<&str> = taps.iter().filter_map(|t| t["ifname"].as_str()).collect();
    tap_names.sort();
    let mut want = vec![
        vmctl_hostnet::tap_name(&state, "db", 0),
        vmctl_hostnet::tap_name(&state, "web", 0),
    ];
    want.sort();
    assert_eq!(tap_names, want);
    for t in &taps {
        let data = &t["linkinfo"]["info_data"];
        assert_eq!(data["type"], "tap", "{t:#}");
        assert_eq!(data["pi"], false, "IFF_NO_PI: {t:#}");
        assert_eq!(data["vnet_hdr"], true, "IFF_VNET_HDR: {t:#}");
        assert!(
            t["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            "{t:#}"
        );
    }
    // The record and the resolved NICs.
    let rec: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("networks/lab.json")).expect("network record"),
    )
    .expect("record parses");
    assert_eq!(rec["spec"]["subnet"], "10.20.0.0/24");
    let vm: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("vms/db/vm.json")).expect("vm record"),
    )
    .expect("vm.json parses");
    assert_eq!(vm["spec"]["nics"][0]["ip"], "10.20.0.10", "{vm:#}");

    // Converged: nothing to do; the lab's own bridge route is not a
    // "host route" its subnet collides with.
    let again = lab.ok(&["apply", "--auto-approve"]);
    assert!(again.contains("No changes."), "{again}");
    assert!(!again.contains("subnet-host-route"), "{again}");

    // Removing web removes its tap only.
    lab.write(&LAB[..LAB.find("vm \"web\"").expect("web in LAB")]);
    lab.ok(&["apply", "--auto-approve"]);
    let (_, taps) = bridge_and_taps(&ns, &state);
    let names: Vec<&str> = taps.iter().filter_map(|t| t["ifname"].as_str()).collect();
    assert_eq!(names, [vmctl_hostnet::tap_name(&state, "db", 0)]);

    // Destroy leaves only the namespace's loopback.
    lab.ok(&["destroy", "--auto-approve"]);
    assert_eq!(ns.link_names(), ["lo"]);
    assert!(!state.join("networks").exists());
}

#[test]
fn bad_networks_fail_with_nothing_created() {
    let Some(ns) = ready() else { return };
    for (kdl, code) in [
        (
            "network \"lab\" { subnet \"10.20.0.0/24\" }\nvm \"a\" { os \"diag\"; nic \"lba\" }\n",
            "vmctl::spec::unknown-network",
        ),
        (
            "network \"lab\" { subnet \"10.20.0.0/24\" }\nvm \"a\" { os \"diag\"; nic \"lab\" ip=\"10.20.0.9\" }\nvm \"b\" { os \"diag\"; nic \"lab\" ip=\"10.20.0.9\" }\n",
            "vmctl::spec::duplicate-ip",
        ),
    ] {
        let lab = Lab::new(&ns, kdl);
        let text = lab.fails(&["apply", "--auto-approve"]);
        assert!(text.contains(code), "{text}");
        assert_eq!(ns.link_names(), ["lo"]);
        assert!(lab.vm_dirs().is_empty());
        assert!(!lab.state().join("networks").exists());
    }
}

#[test]
fn without_cap_net_admin_apply_refuses_before_touching_anything() {
    let Some(ns) = ready() else { return };
    let lab = Lab::new(&ns, LAB);
    // `nobody` must be able to read the file and write the lock.
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod lab dir");
    let (ok, text) = lab.run_as(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ],
        &["apply", "--auto-approve"],
    );
    assert!(!ok, "apply without CAP_NET_ADMIN succeeded:\n{text}");
    assert!(text.contains("CAP_NET_ADMIN"), "{text}");
    assert!(
        text.contains("setcap cap_net_admin+ep"),
        "says what to run: {text}"
    );
    assert_eq!(ns.link_names(), ["lo"]);
    assert!(lab.vm_dirs().is_empty());
    assert!(!lab.state().join("networks").exists());
    // `plan` reads only, and needs no privilege.
    let (ok, text) = lab.run_as(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ],
        &["plan"],
    );
    assert!(ok, "{text}");
    assert!(text.contains("+ network lab create"), "{text}");
}

#[test]
fn what_a_crashed_apply_left_is_adopted_then_destroy_removes_it_all() {
    let Some(ns) = ready() else { return };
    let lab = Lab::new(&ns, LAB);
    let state = lab.state();
    let bridge = vmctl_hostnet::bridge_name(&state, "lab");
    let db_tap = vmctl_hostnet::tap_name(&state, "db", 0);
    // A run that died after making the bridge (no address, down) and db's
    // tap (not on the bridge), and a tap of a VM no longer in the file.
    let ghost = vmctl_hostnet::tap_name(&state, "ghost", 0);
    for argv in [
        vec!["ip", "link", "add", "name", &bridge, "type", "bridge"],
        vec![
            "ip", "tuntap", "add", "dev", &db_tap, "mode", "tap", "vnet_hdr",
        ],
        vec![
            "ip", "tuntap", "add", "dev", &ghost, "mode", "tap", "vnet_hdr",
        ],
    ] {
        let out = ns.exec(&argv);
        assert!(out.status.success(), "{argv:?}: {out:?}");
    }
    lab.ok(&["apply", "--auto-approve"]);
    assert_eq!(ns.ipv4(&bridge), ["10.20.0.1/24"]);
    let (_, taps) = bridge_and_taps(&ns, &state);
    let mut names: Vec<&str> = taps.iter().filter_map(|t| t["ifname"].as_str()).collect();
    names.sort();
    let mut want = vec![db_tap.clone(), vmctl_hostnet::tap_name(&state, "web", 0)];
    want.sort();
    assert_eq!(names, want, "db's tap adopted and put on the bridge");
    let again = lab.ok(&["apply", "--auto-approve"]);
    assert!(again.contains("No changes."), "{again}");
    // The host's own kind of names is never touched.
    assert!(
        ns.exec(&["ip", "link", "add", "name", "vmbr0", "type", "bridge"])
            .status
            .success()
    );
    lab.ok(&["destroy", "--auto-approve"]);
    assert_eq!(ns.link_names(), ["lo", "vmbr0"]);
}

/// An interface (an empty bridge: not of the lab's name shape) with an
/// address in the namespace: a host route.
fn host_route(ns: &Netns, dev: &str, addr: &str) {
    for argv in [
        vec!["ip", "link", "add", dev, "type", "bridge"],
        vec!["ip", "addr", "add", addr, "dev", dev],
        vec!["ip", "link", "set", dev, "up"],
    ] {
        let out = ns.exec(&argv);
        assert!(out.status.success(), "{argv:?}: {out:?}");
    }
}

#[test]
fn host_routes_warn_a_declared_subnet_and_an_automatic_one_is_recorded() {
    let Some(ns) = ready() else { return };
    host_route(&ns, "uplink0", "10.20.5.1/16");
    let lab = Lab::new(&ns, LAB);
    let text = lab.ok(&["validate"]);
    assert!(text.contains("vmctl::spec::subnet-host-route"), "{text}");
    assert!(text.contains("uplink0"), "{text}");
    drop(lab);

    // No subnet: a free one is chosen (not the host's 10.20.0.0/16), and
    // recorded: a route that appears on it later does not move it.
    let lab = Lab::new(
        &ns,
        "network \"auto\" {}\nvm \"a\" { os \"diag\"; nic \"auto\" }\n",
    );
    lab.ok(&["apply", "--auto-approve"]);
    let rec: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.state().join("networks/auto.json")).expect("record"),
    )
    .expect("record parses");
    let subnet = rec["spec"]["subnet"].as_str().expect("subnet").to_string();
    assert!(
        subnet.starts_with("10.") && subnet.ends_with(".0/24"),
        "{subnet}"
    );
    assert!(
        !subnet.starts_with("10.20."),
        "{subnet} collides with uplink0"
    );
    let bridge = vmctl_hostnet::bridge_name(&lab.state(), "auto");
    let host = format!("{}1/24", &subnet[..subnet.len() - "0/24".len()]);
    assert_eq!(ns.ipv4(&bridge), std::slice::from_ref(&host));
    // A second route onto the same subnet (a /16 around it).
    let octets: Vec<&str> = subnet.split('.').collect();
    host_route(&ns, "uplink1", &format!("10.{}.250.1/16", octets[1]));
    let again = lab.ok(&["apply", "--auto-approve"]);
    assert!(again.contains("No changes."), "{again}");
    assert_eq!(ns.ipv4(&bridge), [host]);
    lab.ok(&["destroy", "--auto-approve"]);
    let mut left = ns.link_names();
    left.sort();
    assert_eq!(left, ["lo", "uplink0", "uplink1"]);
}

/// The whole path through the binary: apply makes the bridge and taps,
/// resolves each NIC into its VMM's machine config (the TAP, the MAC) and
/// tells diag its address and the network's host address. Each guest then
/// reports that it resolved the bridge's MAC by ARP and got its echo
/// replies back intact; the host side, inside the namespace, pings both
/// guests; status shows each VM's NIC with traffic counted by its VMM.
#[test]
fn two_diag_vms_on_a_network_reach_the_host_and_are_reached() {
    let Some(ns) = ready() else { return };
    // web starts after db, so its diag also pings db (a VM recorded on its
    // network when it starts): VM to VM through the lab bridge.
    let lab = Lab::new(
        &ns,
        &LAB.replace(
            "vm \"web\" {\n    os \"diag\"\n",
            "vm \"web\" {\n    os \"diag\"\n    depends-on \"db\"\n",
        ),
    );
    assert!(
        std::fs::read_to_string(lab.file())
            .expect("lab file")
            .contains("depends-on"),
        "the lab file has web depend on db"
    );
    lab.ok(&["apply", "--auto-approve"]);
    let state = lab.state();
    let web: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("vms/web/vm.json")).expect("vm record"),
    )
    .expect("vm.json parses");
    let web_ip = web["spec"]["nics"][0]["ip"]
        .as_str()
        .expect("web's resolved address")
        .to_string();
    let bridge = vmctl_hostnet::bridge_name(&state, "lab");
    let bridge_mac = ns
        .links()
        .iter()
        .find(|l| l["ifname"] == bridge.as_str())
        .expect("bridge")["address"]
        .as_str()
        .expect("bridge MAC")
        .to_string();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        let out = lab.ok(&["status", "--json"]);
        let st: Value = serde_json::from_str(&out[out.find('{').expect("json")..])
            .expect("status --json parses");
        let done = st["vms"].as_array().is_some_and(|vms| {
            vms.len() == 2
                && vms.iter().all(|v| {
                    let pings = v["guest"]["nics"][0]["pings"].as_array();
                    let want = if v["name"] == "web" { 2 } else { 1 };
                    pings.is_some_and(|p| {
                        p.len() == want
                            && p.iter()
                                .all(|p| p["echo_replies"].as_u64().is_some_and(|n| n >= 3))
                    })
                })
        });
        if done {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guests never reached the host: {st:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for v in status["vms"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("?");
        let want_ip = if name == "db" {
            "10.20.0.10"
        } else {
            web_ip.as_str()
        };
        let g = &v["guest"]["nics"][0];
        assert_eq!(g["ip"], format!("{want_ip}/24"), "{name}: {v:#}");
        let rec: Value = serde_json::from_str(
            &std::fs::read_to_string(state.join(format!("vms/{name}/vm.json"))).expect("vm.json"),
        )
        .expect("vm.json parses");
        assert_eq!(
            g["mac"], rec["spec"]["nics"][0]["mac"],
            "{name}: the declared MAC"
        );
        let p = &g["pings"][0];
        assert_eq!(p["target"], "10.20.0.1", "{name}");
        assert_eq!(
            p["mac"],
            bridge_mac.as_str(),
            "{name}: ARP answered by the bridge"
        );
        assert_eq!(p["bad_replies"], 0, "{name}: {p:#}");
        if name == "web" {
            // web → db: db's diag answered web's ARP with db's declared
            // MAC and echoed web's payloads intact.
            let db: Value = serde_json::from_str(
                &std::fs::read_to_string(state.join("vms/db/vm.json")).expect("db's record"),
            )
            .expect("vm.json parses");
            let p = &g["pings"][1];
            assert_eq!(p["target"], "10.20.0.10", "{p:#}");
            assert_eq!(p["mac"], db["spec"]["nics"][0]["mac"], "{p:#}");
            assert_eq!(p["bad_replies"], 0, "{p:#}");
            assert!(p["echo_replies"].as_u64().is_some_and(|n| n >= 3), "{p:#}");
        }
        let nic = &v["nics"][0];
        assert_eq!(
            nic["tap"],
            vmctl_hostnet::tap_name(&state, name, 0),
            "{name}"
        );
        assert!(
            nic["rx_packets"].as_u64().is_some_and(|n| n >= 3),
            "{name}: {nic:#}"
        );
        assert!(
            nic["tx_packets"].as_u64().is_some_and(|n| n >= 3),
            "{name}: {nic:#}"
        );
    }
    // The host reaches both guests (bounded: 3 echoes within 30 s each).
    for ip in ["10.20.0.10", web_ip.as_str()] {
        let out = ns.exec(&["ping", "-n", "-c", "3", "-i", "0.2", "-w", "30", ip]);
        assert!(
            out.status.success(),
            "ping {ip}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        status["vms"][0]["nics"][0]["ip"], "10.20.0.10",
        "{status:#}"
    );
    let text = lab.ok(&["status"]);
    assert!(text.contains("nic lab ip 10.20.0.10 mac "), "{text}");
    // `vmctl ssh`: diag declares no user and reports no SSH host key, so
    // it says what is missing rather than trusting whatever answers (the
    // login itself is the nested lab's network phase).
    let text = lab.fails(&["ssh", "db"]);
    assert!(text.contains("declares no user to log in as"), "{text}");
    let text = lab.fails(&["ssh", "db", "-l", "root"]);
    assert!(
        text.contains("has not reported its SSH host key yet"),
        "{text}"
    );
    assert!(!state.join("vms/db/ssh_host_key").exists());
}
