//! Networks and NICs: resolution (automatic subnets, addresses, MACs) and one
//! snapshot per diagnostic, exactly as a user sees it.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use common::{HOST_CPUS, errors_of, render};
use vmctl_spec::net::{HostRoute, NetEnv};
use vmctl_spec::{DesiredState, Ipv4Subnet, MacAddr};

fn env() -> NetEnv {
    NetEnv {
        lab: "/lab/.vmctl".into(),
        ..NetEnv::default()
    }
}

fn ok_in(text: &str, env: &NetEnv) -> DesiredState {
    match vmctl_spec::parse_str_in("net.kdl", text, Path::new("/lab"), HOST_CPUS, env) {
        Ok(l) => l.state,
        Err(e) => panic!("{e:?}"),
    }
}

fn check(name: &str, text: &str, codes: &[&str]) {
    let (got, rendered) = errors_of(&format!("{name}.kdl"), text);
    assert_eq!(got, codes, "{rendered}");
    snap!(format!("diag_{name}"), rendered);
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

#[test]
fn a_lab_resolves_with_addresses_and_macs() {
    let s = ok_in(LAB, &env());
    assert_eq!(s.networks.len(), 1);
    let n = &s.networks[0];
    assert_eq!(n.subnet.to_string(), "10.20.0.0/24");
    assert_eq!(n.host_ip, Ipv4Addr::new(10, 20, 0, 1));
    assert!(!n.nat);
    let db = &s.vm("db").unwrap().nics[0];
    assert_eq!(db.ip, Ipv4Addr::new(10, 20, 0, 10));
    let web = &s.vm("web").unwrap().nics[0];
    assert!(n.subnet.is_vm_address(web.ip) && web.ip != db.ip);
    assert_ne!(db.mac, web.mac);
    for m in [db.mac, web.mac] {
        assert_eq!(m.octets()[0] & 3, 2, "{m}: locally administered unicast");
    }
    // The same lab resolves the same way; another lab gets other MACs but
    // the same addresses (they come from the VM names).
    assert_eq!(ok_in(LAB, &env()), s);
    let other = ok_in(
        LAB,
        &NetEnv {
            lab: "/elsewhere/.vmctl".into(),
            ..NetEnv::default()
        },
    );
    assert_ne!(other.vm("web").unwrap().nics[0].mac, web.mac);
    assert_eq!(other.vm("web").unwrap().nics[0].ip, web.ip);
    // Resolved values are what the JSON contract shows.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["networks"][0]["subnet"], "10.20.0.0/24");
    assert_eq!(json["networks"][0]["host_ip"], "10.20.0.1");
    assert_eq!(json["vms"][0]["nics"][0]["ip"], "10.20.0.10");
    assert_eq!(json["vms"][0]["nics"][0]["mac"], db.mac.to_string());
}

#[test]
fn a_declared_mac_and_nat_are_kept() {
    let s = ok_in(
        r#"network "lab" { subnet "10.30.0.0/16"; nat #true }
           vm "a" { os "diag"; nic "lab" mac="02:00:00:00:00:01" }"#,
        &env(),
    );
    assert!(s.networks[0].nat);
    assert_eq!(
        s.vms[0].nics[0].mac,
        "02:00:00:00:00:01".parse::<MacAddr>().unwrap()
    );
}

#[test]
fn files_without_networks_have_no_network_fields() {
    let s = ok_in("vm \"a\" { os \"diag\" }", &env());
    let json = serde_json::to_value(&s).unwrap();
    assert!(json.get("networks").is_none(), "{json}");
    assert!(json["vms"][0].get("nics").is_none(), "{json}");
}

#[test]
fn an_automatic_subnet_is_deterministic_and_avoids_routes_and_others() {
    let text = r#"network "a" {}
                  network "b" { subnet "10.99.0.0/16" }
                  vm "x" { os "diag"; nic "a"; nic "b" }"#;
    let s = ok_in(text, &env());
    let a = s.network("a").unwrap().subnet;
    assert_eq!(a.prefix(), 24);
    assert_eq!(a.network().octets()[0], 10);
    assert!(!a.overlaps("10.99.0.0/16".parse().unwrap()));
    assert_eq!(ok_in(text, &env()), s);
    // A host route on that subnet moves it elsewhere...
    let routed = NetEnv {
        routes: vec![HostRoute {
            iface: "eth0".into(),
            dest: a,
        }],
        ..env()
    };
    let moved = ok_in(text, &routed).network("a").unwrap().subnet;
    assert_ne!(moved, a);
    // ...unless the lab recorded it: a recorded subnet stays put.
    let recorded = NetEnv {
        recorded: BTreeMap::from([("a".to_string(), a)]),
        ..routed
    };
    assert_eq!(ok_in(text, &recorded).network("a").unwrap().subnet, a);
    // A recorded subnet that now collides with a declared one is dropped.
    let clash = NetEnv {
        recorded: BTreeMap::from([("a".to_string(), "10.99.3.0/24".parse().unwrap())]),
        ..env()
    };
    assert_eq!(ok_in(text, &clash).network("a").unwrap().subnet, a);
}

#[test]
fn automatic_addresses_skip_declared_ones() {
    // A /30 has one VM address: the declared NIC takes it, so the
    // automatic one has nowhere to go.
    check(
        "network_full",
        "network \"tiny\" { subnet \"10.1.0.0/30\" }\nvm \"a\" { os \"diag\"; nic \"tiny\" ip=\"10.1.0.2\" }\nvm \"b\" { os \"diag\"; nic \"tiny\" }\n",
        &["vmctl::spec::network-full"],
    );
}

#[test]
fn unknown_network_did_you_mean() {
    check(
        "unknown_network",
        "network \"lab\" { subnet \"10.20.0.0/24\" }\nvm \"a\" {\n    os \"diag\"\n    nic \"labb\"\n}\n",
        &["vmctl::spec::unknown-network"],
    );
}

#[test]
fn unknown_network_without_networks() {
    check(
        "unknown_network_none_declared",
        "vm \"a\" {\n    os \"diag\"\n    nic \"lab\"\n}\n",
        &["vmctl::spec::unknown-network"],
    );
}

#[test]
fn ip_outside_the_subnet() {
    check(
        "ip_outside_subnet",
        "network \"lab\" { subnet \"10.20.0.0/24\" }\nvm \"a\" {\n    os \"diag\"\n    nic \"lab\" ip=\"10.21.0.5\"\n}\n",
        &["vmctl::spec::ip-outside-subnet"],
    );
}

#[test]
fn reserved_addresses() {
    check(
        "reserved_ip",
        "network \"lab\" { subnet \"10.20.0.0/24\" }\nvm \"a\" { os \"diag\"; nic \"lab\" ip=\"10.20.0.0\" }\nvm \"b\" { os \"diag\"; nic \"lab\" ip=\"10.20.0.1\" }\nvm \"c\" { os \"diag\"; nic \"lab\" ip=\"10.20.0.255\" }\n",
        &[
            "vmctl::spec::reserved-ip",
            "vmctl::spec::reserved-ip",
            "vmctl::spec::reserved-ip",
        ],
    );
}

#[test]
fn duplicate_ip() {
    check(
        "duplicate_ip",
        "network \"lab\" { subnet \"10.20.0.0/24\" }\nvm \"a\" {\n    os \"diag\"\n    nic \"lab\" ip=\"10.20.0.10\"\n}\nvm \"b\" {\n    os \"diag\"\n    nic \"lab\" ip=\"10.20.0.10\"\n}\n",
        &["vmctl::spec::duplicate-ip"],
    );
}

#[test]
fn duplicate_mac() {
    check(
        "duplicate_mac",
        "network \"lab\" { subnet \"10.20.0.0/24\" }\nvm \"a\" {\n    os \"diag\"\n    nic \"lab\" mac=\"02:00:00:00:00:07\"\n}\nvm \"b\" {\n    os \"diag\"\n    nic \"lab\" mac=\"02:00:00:00:00:07\"\n}\n",
        &["vmctl::spec::duplicate-mac"],
    );
}

#[test]
fn overlapping_subnets() {
    check(
        "overlapping_subnets",
        "network \"a\" {\n    subnet \"10.20.0.0/16\"\n}\nnetwork \"b\" {\n    subnet \"10.20.5.0/24\"\n}\n",
        &["vmctl::spec::overlapping-subnets"],
    );
}

#[test]
fn bad_values() {
    check(
        "network_bad_values",
        "network \"lab\" {\n    subnet \"10.20.0.5/24\"\n}\nnetwork \"Bad_Name\" {}\nvm \"a\" {\n    os \"diag\"\n    nic \"lab\" ip=\"10.20.0.300\" mac=\"01:00:5e:00:00:01\"\n}\n",
        &[
            "vmctl::spec::bad-subnet",
            "vmctl::spec::bad-network-name",
            "vmctl::spec::bad-ip",
            "vmctl::spec::bad-mac",
        ],
    );
}

#[test]
fn subnet_on_a_host_route_is_a_warning() {
    let env = NetEnv {
        routes: vec![HostRoute {
            iface: "eth0".into(),
            dest: "10.20.0.0/16".parse::<Ipv4Subnet>().unwrap(),
        }],
        ..env()
    };
    let text = "network \"lab\" {\n    subnet \"10.20.0.0/24\"\n}\n";
    let loaded = vmctl_spec::parse_str_in(
        "subnet_host_route.kdl",
        text,
        Path::new("/lab"),
        HOST_CPUS,
        &env,
    )
    .unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    snap!(
        "diag_subnet_host_route_warning",
        render(&loaded.warnings[0])
    );
}
