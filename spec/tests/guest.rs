//! Guest configuration (`hostname`, `user`, `packages`, `file`): every
//! diagnostic as an insta snapshot, and how the nodes resolve (defaults,
//! order, `copy-from` inheritance).

#[macro_use]
mod common;

use common::{errors_of, parse, render};
use vmctl_spec::{DesiredState, FileSpec, UserSpec};

/// A well-formed ed25519 public key (type, key data, comment).
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";

/// Assert the codes and snapshot the rendering.
fn check(name: &str, text: &str, codes: &[&str]) {
    let (got, rendered) = errors_of(&format!("{name}.kdl"), text);
    assert_eq!(got, codes, "{rendered}");
    snap!(format!("diag_{name}"), rendered);
}

fn ok(text: &str) -> DesiredState {
    match parse("t.kdl", text) {
        Ok(l) => {
            assert!(l.warnings.is_empty(), "{:?}", l.warnings);
            l.state
        }
        Err(e) => panic!("{}", common::render_all(&e)),
    }
}

#[test]
fn the_issue_example_resolves() {
    let text = format!(
        "vm \"web\" {{\n    os \"debian-12\"\n    hostname \"web\"\n    user \"alice\" {{ ssh-key \"{KEY}\"; sudo #true }}\n    packages \"nginx\" \"postgresql-client\"\n    file \"/etc/motd\" content=\"lab 3\\n\"\n}}\n"
    );
    let s = ok(&text);
    let web = s.vm("web").unwrap();
    assert_eq!(web.packages, ["nginx", "postgresql-client"]);
    assert_eq!(web.config.hostname.as_deref(), Some("web"));
    assert_eq!(
        web.config.users,
        [UserSpec {
            name: "alice".into(),
            ssh_keys: vec![KEY.into()],
            sudo: true
        }]
    );
    assert_eq!(
        web.config.files,
        [FileSpec {
            path: "/etc/motd".into(),
            content: "lab 3\n".into(),
            mode: 0o644
        }]
    );
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/spec"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_json_snapshot!("resolved_guest", s);
    });
    // Written back as KDL, it reads the same.
    let kdl = vmctl_spec::to_kdl(&s);
    assert!(
        kdl.contains("file \"/etc/motd\" content=\"lab 3\\n\" mode=\"0644\""),
        "{kdl}"
    );
    assert_eq!(ok(&kdl), s, "{kdl}");
}

#[test]
fn defaults_order_and_repetition() {
    let s = ok(&format!(
        "vm \"a\" {{\n    os \"debian-12\"\n    packages \"vim\" \"curl\"\n    user \"zed\"\n    packages \"bash-completion\"\n    user \"amy\" {{\n        ssh-key \"{KEY}\" \"  {KEY}  \"\n        ssh-key \"{KEY}\"\n    }}\n    file \"/srv/b\" content=\"\" mode=\"0600\"\n    file \"/etc/a\" content=\"x\" mode=\"4755\"\n}}\n"
    ));
    let a = s.vm("a").unwrap();
    // Packages sorted and unique; users and files in declaration order.
    assert_eq!(a.packages, ["bash-completion", "curl", "vim"]);
    assert_eq!(
        a.config.hostname, None,
        "default: the VM name, applied by the guest"
    );
    let users: Vec<_> = a.config.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(users, ["zed", "amy"]);
    assert!(!a.config.users[0].sudo);
    assert!(a.config.users[0].ssh_keys.is_empty());
    assert_eq!(
        a.config.users[1].ssh_keys,
        [KEY],
        "trimmed and deduplicated"
    );
    let files: Vec<_> = a
        .config
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.mode))
        .collect();
    assert_eq!(files, [("/srv/b", 0o600), ("/etc/a", 0o4755)]);
}

#[test]
fn a_vm_without_guest_nodes_has_empty_config_and_json_stays_the_same() {
    let s = ok("vm \"a\" {\n    os \"debian-12\"\n}\n");
    let a = s.vm("a").unwrap();
    assert!(a.packages.is_empty() && a.config.is_empty());
    let json = serde_json::to_value(a).unwrap();
    assert!(json.get("packages").is_none() && json.get("config").is_none());
}

#[test]
fn a_copy_inherits_packages_but_not_configuration() {
    let s = ok(
        "vm \"web\" {\n    os \"debian-12\"\n    packages \"nginx\"\n    hostname \"www\"\n    user \"alice\"\n}\nvm \"web-2\" {\n    copy-from \"web\"\n    user \"bob\"\n}\nvm \"web-3\" {\n    copy-from \"web-2\"\n    packages \"nginx\"\n}\n",
    );
    let (web2, web3) = (s.vm("web-2").unwrap(), s.vm("web-3").unwrap());
    assert_eq!(web2.packages, ["nginx"]);
    assert_eq!(web2.config.hostname, None, "its own name, not the source's");
    assert_eq!(web2.config.users.len(), 1);
    assert_eq!(web2.config.users[0].name, "bob");
    assert_eq!(
        web3.packages,
        ["nginx"],
        "repeating the same packages is fine"
    );
    assert!(web3.config.is_empty());
}

#[test]
fn a_copy_with_other_packages_is_an_error() {
    check(
        "guest_copy_packages",
        "vm \"web\" {\n    os \"debian-12\"\n    packages \"nginx\"\n}\nvm \"web-2\" {\n    copy-from \"web\"\n    packages \"nginx\" \"curl\"\n}\n",
        &["vmctl::spec::copy-packages"],
    );
}

#[test]
fn guest_nodes_need_debian() {
    check(
        "guest_config_os",
        "vm \"probe\" {\n    os \"diag\"\n    hostname \"probe\"\n    packages \"curl\"\n}\nimage \"k\" {\n    kernel \"vmlinuz\"\n}\nvm \"custom\" {\n    os \"k\"\n    file \"/etc/motd\" content=\"hi\"\n}\nvm \"probe-2\" {\n    copy-from \"probe\"\n    user \"alice\"\n}\n",
        &[
            "vmctl::spec::guest-config-os",
            "vmctl::spec::guest-config-os",
            "vmctl::spec::guest-config-os",
        ],
    );
}

#[test]
fn an_unknown_os_is_not_also_told_about_guest_configuration() {
    let (codes, _) = errors_of(
        "u.kdl",
        "vm \"a\" {\n    os \"debain-12\"\n    hostname \"a\"\n}\n",
    );
    assert_eq!(codes, ["vmctl::spec::unknown-os"]);
}

#[test]
fn bad_hostnames() {
    check(
        "guest_bad_hostname",
        "vm \"a\" {\n    os \"debian-12\"\n    hostname \"Web_Server.lab.\"\n}\nvm \"b\" {\n    os \"debian-12\"\n    hostname \"-b\"\n}\n",
        &["vmctl::spec::bad-hostname", "vmctl::spec::bad-hostname"],
    );
}

#[test]
fn bad_users() {
    check(
        "guest_bad_user",
        "vm \"a\" {\n    os \"debian-12\"\n    user \"Alice Smith\"\n    user \"root\"\n    user \"systemd-network\"\n    user \"bob\"\n    user \"bob\" { sudo #true }\n}\n",
        &[
            "vmctl::spec::bad-user-name",
            "vmctl::spec::reserved-user",
            "vmctl::spec::reserved-user",
            "vmctl::spec::duplicate-user",
        ],
    );
}

#[test]
fn user_children_are_checked() {
    check(
        "guest_user_children",
        "vm \"a\" {\n    os \"debian-12\"\n    user \"bob\" {\n        shel \"/bin/zsh\"\n        sudo \"true\"\n        sudo #false\n        ssh-key\n    }\n}\n",
        &[
            "vmctl::spec::unknown-node",
            "vmctl::spec::wrong-type",
            "vmctl::spec::duplicate-field",
            "vmctl::spec::missing-value",
        ],
    );
}

#[test]
fn bad_ssh_keys() {
    let body = KEY.split(' ').nth(1).unwrap();
    let text = format!(
        "vm \"a\" {{\n    os \"debian-12\"\n    user \"alice\" {{\n        ssh-key \"ssh-ed2519 {body}\"\n        ssh-key \"ssh-dss {body}\"\n        ssh-key \"ssh-ed25519 not-base64!\"\n        ssh-key \"ssh-rsa {body} alice@laptop\"\n        ssh-key \"ssh-ed25519\"\n        ssh-key \"{KEY}\\n{KEY}\"\n        ssh-key \"ssh-ed25519 AAAA\"\n    }}\n}}\n"
    );
    check("guest_bad_ssh_key", &text, &["vmctl::spec::bad-ssh-key"; 7]);
}

#[test]
fn bad_file_paths() {
    check(
        "guest_bad_file_path",
        "vm \"a\" {\n    os \"debian-12\"\n    file \"etc/motd\" content=\"\"\n    file \"/etc/../motd\" content=\"\"\n    file \"/etc//motd\" content=\"\"\n    file \"/srv/\" content=\"\"\n    file \"/proc/sys/vm/swappiness\" content=\"10\"\n    file \"/etc/vmctl/config.json\" content=\"{}\"\n    file \"/etc/motd\" content=\"a\"\n    file \"/etc/motd\" content=\"b\"\n}\n",
        &[
            "vmctl::spec::bad-file-path",
            "vmctl::spec::bad-file-path",
            "vmctl::spec::bad-file-path",
            "vmctl::spec::bad-file-path",
            "vmctl::spec::reserved-path",
            "vmctl::spec::reserved-path",
            "vmctl::spec::duplicate-file",
        ],
    );
}

#[test]
fn bad_file_modes_and_missing_content() {
    check(
        "guest_bad_file_mode",
        "vm \"a\" {\n    os \"debian-12\"\n    file \"/etc/a\" content=\"\" mode=\"0800\"\n    file \"/etc/b\" content=\"\" mode=\"17777\"\n    file \"/etc/c\" content=\"\" mode=600\n    file \"/etc/d\" mode=\"0600\"\n    file \"/etc/e\" contents=\"x\"\n}\n",
        &[
            "vmctl::spec::bad-file-mode",
            "vmctl::spec::bad-file-mode",
            "vmctl::spec::wrong-type",
            "vmctl::spec::missing-value",
            "vmctl::spec::unknown-property",
        ],
    );
}

#[test]
fn bad_package_names() {
    check(
        "guest_bad_package",
        "vm \"a\" {\n    os \"debian-12\"\n    packages \"Nginx\" \"curl=7.88\" \"x\" 42\n    packages\n}\n",
        &[
            "vmctl::spec::bad-package-name",
            "vmctl::spec::bad-package-name",
            "vmctl::spec::bad-package-name",
            "vmctl::spec::wrong-type",
            "vmctl::spec::missing-value",
        ],
    );
}

#[test]
fn duplicate_package_is_a_warning() {
    let loaded = parse(
        "dup.kdl",
        "vm \"a\" {\n    os \"debian-12\"\n    packages \"nginx\" \"curl\"\n    packages \"nginx\"\n}\n",
    )
    .unwrap();
    assert_eq!(loaded.state.vms[0].packages, ["curl", "nginx"]);
    assert_eq!(loaded.warnings.len(), 1);
    let d = loaded.warnings[0]
        .downcast_ref::<vmctl_spec::SpecDiagnostic>()
        .unwrap();
    assert_eq!(d.code, "vmctl::spec::duplicate-package");
    snap!("diag_guest_duplicate_package", render(&loaded.warnings[0]));
}

#[test]
fn hostname_given_twice_and_misspelled_nodes() {
    check(
        "guest_node_names",
        "vm \"a\" {\n    os \"debian-12\"\n    hostname \"a\"\n    hostname \"b\"\n    package \"curl\"\n    users \"bob\"\n}\n",
        &[
            "vmctl::spec::duplicate-field",
            "vmctl::spec::unknown-node",
            "vmctl::spec::unknown-node",
        ],
    );
}
