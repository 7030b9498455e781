//! End-to-end tests of `vmctl validate` through the built binary: exit codes,
//! the JSON contract, diagnostics with `file:line:col`, no ANSI colour off a TTY.

use std::path::Path;
use std::process::{Command, Output};

fn vmctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("FORCE_COLOR")
        .env("COLUMNS", "100")
        .output()
        .expect("run vmctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8 output")
}

#[test]
fn quickstart_validates() {
    let out = vmctl(&["validate", "-f", "examples/quickstart.kdl"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("alpha"), "{stdout}");
    assert!(stdout.contains("beta"), "{stdout}");
    assert!(stdout.contains("cpus 2/2"), "{stdout}");
    assert!(stdout.contains("memory 256MiB/512MiB"), "{stdout}");
    assert!(stdout.contains("data 64MiB"), "{stdout}");
}

#[test]
fn network_example_resolves_networks_and_nics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let run = |json: bool| {
        let mut args = vec!["validate", "-f", "examples/network.kdl"];
        if json {
            args.push("--json");
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .args(&args)
            .arg("--state-dir")
            .arg(&state)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run vmctl");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let human = run(false);
    assert!(
        human.contains("network lab  10.20.0.0/24  host 10.20.0.1"),
        "{human}"
    );
    assert!(human.contains("nic lab 10.20.0.10"), "{human}");
    let v: serde_json::Value = serde_json::from_str(&run(true)).expect("JSON on stdout");
    assert_eq!(v["networks"][0]["name"], "lab");
    assert_eq!(v["networks"][0]["subnet"], "10.20.0.0/24");
    assert_eq!(v["networks"][0]["host_ip"], "10.20.0.1");
    assert_eq!(v["networks"][0]["nat"], false);
    let db = &v["vms"][0]["nics"][0];
    assert_eq!(db["network"], "lab");
    assert_eq!(db["ip"], "10.20.0.10");
    let web = &v["vms"][1]["nics"][0];
    let ip = web["ip"].as_str().expect("web's ip");
    assert!(ip.starts_with("10.20.0.") && ip != "10.20.0.10", "{ip}");
    let mac = web["mac"].as_str().expect("web's mac");
    assert_eq!(mac.len(), 17, "{mac}");
    // The MAC is derived from the lab (the state directory): the same lab
    // gives the same one, another lab another.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&run(true)).expect("json")["vms"][1]["nics"][0]["mac"],
        mac
    );
    // Files without networks have neither field.
    let plain = vmctl(&["validate", "-f", "examples/quickstart.kdl", "--json"]);
    let p: serde_json::Value = serde_json::from_slice(&plain.stdout).expect("json");
    assert!(p.get("networks").is_none());
    assert!(p["vms"][0].get("nics").is_none());
}

#[test]
fn lab_validates_and_json_has_every_contract_field() {
    let human = vmctl(&["validate", "-f", "examples/lab.kdl"]);
    assert_eq!(human.status.code(), Some(0), "{}", text(&human.stderr));

    let out = vmctl(&["validate", "-f", "examples/lab.kdl", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["format_version"], "1");
    let vms = v["vms"].as_array().expect("vms");
    let names: Vec<&str> = vms.iter().filter_map(|vm| vm["name"].as_str()).collect();
    assert_eq!(names, ["db", "web", "web-2", "probe"]);
    for vm in vms {
        for key in [
            "name",
            "os",
            "cpus",
            "max_cpus",
            "memory_mib",
            "max_memory_mib",
            "disks",
            "depends_on",
            "copy_from",
            "cpu_weight",
        ] {
            assert!(vm.get(key).is_some(), "{key} missing in {vm}");
        }
        for d in vm["disks"].as_array().expect("disks") {
            for key in ["name", "size_bytes", "format", "path"] {
                assert!(d.get(key).is_some(), "disk {key} missing in {d}");
            }
        }
    }
    assert_eq!(vms[2]["copy_from"], "web");
    assert_eq!(vms[1]["depends_on"][0], "db");
}

#[test]
fn five_mistakes_give_five_diagnostics_with_locations() {
    let file = "examples/invalid/five-mistakes.kdl";
    let out = vmctl(&["validate", "-f", file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "ANSI escapes without a TTY:\n{stderr}"
    );
    assert!(stderr.contains("5 problem(s)"), "{stderr}");

    // Split into the five problem reports; each shows file:line:col and help.
    let parts: Vec<&str> = stderr.split("Error: vmctl::spec::").skip(1).collect();
    assert_eq!(parts.len(), 5, "{stderr}");
    let expected = [
        ("unknown-property", "5:19", "did you mean `max`?"),
        ("bad-size", "6:22", "did you mean `GiB`?"),
        ("cycle", "11:16", "a VM cannot"),
        ("duplicate-vm", "3:4", "unique"),
        ("unknown-vm", "24:15", "VMs in this file"),
    ];
    for (part, (code, loc, help)) in parts.iter().zip(expected) {
        assert!(part.starts_with(code), "expected {code}:\n{part}");
        assert!(
            part.contains(&format!("[{file}:{loc}]")),
            "expected {file}:{loc}:\n{part}"
        );
        assert!(
            part.contains("help:") && part.contains(help),
            "expected help {help}:\n{part}"
        );
    }
    // The duplicate points at both declarations; the cycle names both VMs.
    assert!(stderr.contains(&format!("[{file}:14:4]")), "{stderr}");
    assert!(stderr.contains("web → cache → web"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn every_invalid_example_exits_1() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    for entry in std::fs::read_dir(dir).expect("examples/invalid") {
        let path = entry.expect("entry").path();
        let p = path.to_str().expect("utf-8 path");
        let out = vmctl(&["validate", "-f", p]);
        assert_eq!(out.status.code(), Some(1), "{p} should be invalid");
        assert!(text(&out.stderr).contains(".kdl:"), "{p}: no location");
    }
}

#[test]
fn missing_file_exits_1() {
    let out = vmctl(&["validate", "-f", "does/not/exist.kdl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read does/not/exist.kdl"));
}

#[test]
fn too_many_vcpus_is_only_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.kdl");
    std::fs::write(&file, "vm \"big\" {\n    os \"diag\"\n    cpus 254\n}\n").expect("write");
    let out = vmctl(&["validate", "-f", file.to_str().expect("utf-8"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let host = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if host < 254 {
        let stderr = text(&out.stderr);
        assert!(stderr.contains("vmctl::spec::host-cpus"), "{stderr}");
        assert!(stderr.contains("big.kdl:3:10"), "{stderr}");
        assert!(!stderr.contains('\x1b'), "{stderr}");
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["vms"][0]["cpus"], 254);
}

#[test]
fn default_file_is_vmctl_kdl_in_the_current_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("vmctl.kdl"),
        "vm \"a\" {\n    os \"diag\"\n}\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .arg("validate")
        .current_dir(dir.path())
        .output()
        .expect("run vmctl");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("vmctl.kdl: 1 VM(s), valid"));
}

#[test]
fn json_carries_packages_and_guest_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("guest.kdl");
    std::fs::write(
        &file,
        "vm \"web\" {\n    os \"debian-12\"\n    hostname \"www\"\n    user \"alice\" { ssh-key \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop\"; sudo #true }\n    packages \"nginx\" \"curl\"\n    file \"/etc/motd\" content=\"lab 3\\n\" mode=\"0600\"\n}\nvm \"plain\" {\n    os \"debian-12\"\n}\n",
    )
    .expect("write");
    let out = vmctl(&["validate", "-f", file.to_str().expect("utf-8"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let web = &v["vms"][0];
    assert_eq!(web["packages"], serde_json::json!(["curl", "nginx"]));
    assert_eq!(web["config"]["hostname"], "www");
    assert_eq!(web["config"]["users"][0]["name"], "alice");
    assert_eq!(web["config"]["users"][0]["sudo"], true);
    assert_eq!(web["config"]["files"][0]["path"], "/etc/motd");
    assert_eq!(web["config"]["files"][0]["content"], "lab 3\n");
    assert_eq!(web["config"]["files"][0]["mode"], 0o600);
    // Empty values are left out: a VM without them prints as before.
    let plain = v["vms"][1].as_object().expect("object");
    assert!(!plain.contains_key("packages") && !plain.contains_key("config"));
}

#[test]
fn hosts_example_shows_cluster_hosts_and_placement() {
    let out = vmctl(&["validate", "-f", "examples/hosts.kdl"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("cluster lab  etcd http://127.0.0.1:2379,"),
        "{stdout}"
    );
    assert!(
        stdout.contains("host h1  root@10.0.0.11  rack=a  reserve 2GiB 1 cpu(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("; on h1"), "{stdout}");
    assert!(stdout.contains("; placement spread rack"), "{stdout}");
    let json = vmctl(&["validate", "-f", "examples/hosts.kdl", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(v["cluster"]["lock_ttl_secs"], 15);
    assert_eq!(v["hosts"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["hosts"][0]["state_dir"], "/var/lib/vmctl/lab");
    assert_eq!(v["hosts"][2]["vmctl"], "/usr/local/bin/vmctl");
    assert_eq!(v["vms"][0]["host"], "h1");
    assert_eq!(v["vms"][1]["placement"]["spread"], "rack");
    assert!(v["vms"][3].get("placement").is_none());
}

#[test]
fn hosts_mistakes_are_reported_with_locations() {
    let file = "examples/invalid/hosts.kdl";
    let out = vmctl(&["validate", "-f", file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("vmctl::spec::unknown-host"), "{stderr}");
    assert!(stderr.contains(&format!("[{file}:20:10]")), "{stderr}");
    assert!(stderr.contains("did you mean `h1`?"), "{stderr}");
    assert!(
        stderr.contains("vmctl::spec::unknown-spread-label"),
        "{stderr}"
    );
}
