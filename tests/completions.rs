//! Shell completions and the man page through the binary. Each script is
//! loaded into its real shell (bash, zsh, fish: `.ci/run` installs them) and
//! asked for completions: subcommands complete from the clap definition, and
//! VM names after `console`, `logs` and `destroy` come from the KDL file
//! (`-f`, else `./vmctl.kdl`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Lab, text};

const LAB: &str = "vm \"alpha\" {\n    os \"diag\"\n}\nvm \"beta\" {\n    os \"diag\"\n}\nvm \"another\" {\n    os \"diag\"\n}\n";

fn bin_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmctl"))
        .parent()
        .expect("the binary has a directory")
}

/// Run `shell -c script` in the lab's directory with vmctl on PATH.
fn shell(lab: &Lab, shell: &str, pre: &[&str], script: &str) -> Vec<String> {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(shell)
        .args(pre)
        .arg("-c")
        .arg(script)
        .current_dir(lab.dir.path())
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("{shell} must be installed (.ci/run installs it): {e}"));
    assert!(out.status.success(), "{shell}: {}", text(&out));
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

fn script(lab: &Lab, sh: &str) -> String {
    let out = lab.run_bare(&["completions", sh]);
    assert!(out.status.success(), "{}", text(&out));
    let path = lab.path(&format!("vmctl.{sh}"));
    std::fs::write(&path, &out.stdout).expect("write script");
    path.display().to_string()
}

#[test]
fn bash_completes_commands_and_vm_names_from_the_file() {
    let lab = Lab::new(LAB);
    let s = script(&lab, "bash");
    let file = lab.file().display().to_string();
    let ask = |words: &str, cword: usize| {
        shell(
            &lab,
            "bash",
            &[],
            &format!(
                "source {s}; COMP_WORDS=({words}); COMP_CWORD={cword}; _vmctl_with_vms vmctl \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\""
            ),
        )
    };
    assert_eq!(
        ask(&format!("vmctl console -f {file} a"), 4),
        ["alpha", "another"]
    );
    assert_eq!(ask("vmctl logs ''", 2), ["alpha", "another", "beta"]);
    assert_eq!(ask("vmctl destroy alpha b", 3), ["beta"]);
    assert_eq!(ask("vmctl pl", 1), ["plan"]);
    // A file that does not load completes nothing (and prints no error).
    assert!(ask("vmctl console -f /nonexistent.kdl ''", 4).is_empty());
}

#[test]
fn zsh_completes_vm_names_from_the_file() {
    let lab = Lab::new(LAB);
    let s = script(&lab, "zsh");
    let body = std::fs::read_to_string(&s).expect("read");
    for arg in [
        "':name -- The VM to attach to:_vmctl_vms'",
        "'*::names -- VMs to destroy",
    ] {
        assert!(body.contains(arg), "zsh script lacks {arg}");
    }
    let file = lab.file().display().to_string();
    let got = shell(
        &lab,
        "zsh",
        &["-f"],
        &format!(
            "autoload -U compinit; compinit -u -D; source {s}; compadd() {{ print -l -- \"${{(@P)2}}\"; }}; words=(vmctl console -f {file} ''); CURRENT=5; _vmctl_vms"
        ),
    );
    assert_eq!(got, ["alpha", "another", "beta"]);
}

#[test]
fn fish_completes_vm_names_from_the_file() {
    let lab = Lab::new(LAB);
    let s = script(&lab, "fish");
    let file = lab.file().display().to_string();
    let got = shell(
        &lab,
        "fish",
        &["--no-config"],
        &format!("source {s}; complete -C 'vmctl console -f {file} '"),
    );
    for vm in ["alpha", "another", "beta"] {
        assert!(got.contains(&vm.to_string()), "{got:?}");
    }
    let got = shell(
        &lab,
        "fish",
        &["--no-config"],
        &format!("source {s}; complete -C 'vmctl ma'"),
    );
    assert_eq!(got, ["man"]);
}

#[test]
fn man_pages_render_for_every_command() {
    let lab = Lab::new(LAB);
    let out = lab.run_bare(&["man"]);
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH vmctl 1"),
        "{page}"
    );
    for sub in ["plan", "apply", "show", "fmt", "completions", "man"] {
        assert!(page.contains(sub), "vmctl.1 lacks {sub}");
    }
    assert!(!page.contains("__vmm") && !page.contains("__complete-vms"));

    let out = lab.run_bare(&["man", "--out-dir", "man"]);
    assert!(out.status.success(), "{}", text(&out));
    for p in [
        "vmctl.1",
        "vmctl-plan.1",
        "vmctl-apply.1",
        "vmctl-show.1",
        "vmctl-fmt.1",
    ] {
        let path = lab.path("man").join(p);
        assert!(path.exists(), "{p} missing");
        // groff renders it without a warning.
        let g = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("groff must be installed (.ci/run installs groff-base)");
        assert!(
            g.status.success() && g.stderr.is_empty(),
            "{p}: {}",
            text(&g)
        );
    }
    let plan = std::fs::read_to_string(lab.path("man").join("vmctl-plan.1")).expect("read");
    assert!(plan.contains("\\-\\-out"), "{plan}");
}
