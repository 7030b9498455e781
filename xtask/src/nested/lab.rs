//! The lab a nested run applies: the KDL file as declared (through
//! `vmctl validate --json`, so the harness compares against exactly what vmctl
//! resolved), and the edited copy for the "change memory, apply, restart" step.

use std::path::Path;
use std::process::Command;

use vmctl_spec::DesiredState;

/// `vmctl validate --json -f FILE`, parsed.
pub fn resolve(vmctl: &Path, file: &Path) -> Result<DesiredState, String> {
    let out = Command::new(vmctl)
        .args(["validate", "--json", "-f"])
        .arg(file)
        .output()
        .map_err(|e| format!("running {}: {e}", vmctl.display()))?;
    if !out.status.success() {
        return Err(format!(
            "vmctl validate {} failed:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("vmctl validate --json printed something unexpected: {e}"))
}

/// Every VM must be a debian-12 or debian-12-minimal guest: their agents
/// report back the same way.
pub fn check_all_debian(state: &DesiredState) -> Result<(), String> {
    if state.vms.is_empty() {
        return Err("the lab declares no VMs".into());
    }
    let others: Vec<String> = state
        .vms
        .iter()
        .filter(|v| v.os != "debian-12" && v.os != "debian-12-minimal")
        .map(|v| format!("{} (os {:?})", v.name, v.os))
        .collect();
    if others.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the nested lab checks debian-12 and debian-12-minimal guests only; not: {}",
            others.join(", ")
        ))
    }
}

/// The KDL text with `vm "NAME"`'s boot memory set to `mib` MiB (the
/// `memory` line replaced, or added when the VM takes the profile default).
/// Any `max=` on that line is kept.
pub fn with_memory(text: &str, vm: &str, mib: u64) -> Result<String, String> {
    let header = format!("vm \"{vm}\"");
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&header) && l.contains('{'))
        .ok_or_else(|| format!("cannot find `{header} {{` on a line of its own"))?;
    let mut depth = 0i32;
    let mut end = None;
    for (i, l) in lines.iter().enumerate().skip(start) {
        depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
        if depth <= 0 {
            end = Some(i);
            break;
        }
    }
    let end = end.ok_or_else(|| format!("`{header}` block is not closed"))?;
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let new_value = format!("\"{mib}MiB\"");
    match (start + 1..end).find(|&i| out[i].trim_start().starts_with("memory ")) {
        Some(i) => {
            let line = &out[i];
            let open = line.find('"').ok_or("memory line without a quoted size")?;
            let close = line[open + 1..]
                .find('"')
                .map(|c| open + 1 + c)
                .ok_or("memory line with an unterminated size")?;
            out[i] = format!("{}{}{}", &line[..open], new_value, &line[close + 1..]);
        }
        None => {
            let indent = "    ";
            out.insert(start + 1, format!("{indent}memory {new_value}"));
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    Ok(s)
}

/// The KDL text with `vm "NAME"`'s disk `disk` set to `bytes` (a whole
/// number of MiB): its `size=` replaced, or a `disk "DISK" size=...` line
/// added (which resizes a disk the VM has from its OS profile).
pub fn with_disk_size(text: &str, vm: &str, disk: &str, bytes: u64) -> Result<String, String> {
    let (start, end) = vm_block(text, vm)?;
    let mut out: Vec<String> = text.lines().map(str::to_string).collect();
    let new_size = format!("size=\"{}MiB\"", bytes >> 20);
    let prefix = format!("disk \"{disk}\"");
    match (start + 1..end).find(|&i| out[i].trim_start().starts_with(&prefix)) {
        Some(i) => {
            let line = out[i].clone();
            let at = line
                .find("size=\"")
                .ok_or_else(|| format!("`{prefix}` has no size=\"...\" to change"))?;
            let close = line[at + 6..]
                .find('"')
                .map(|c| at + 6 + c)
                .ok_or("disk line with an unterminated size")?;
            out[i] = format!("{}{}{}", &line[..at], new_size, &line[close + 1..]);
        }
        None => out.insert(start + 1, format!("    {prefix} {new_size}")),
    }
    let mut s = out.join("\n");
    s.push('\n');
    Ok(s)
}

/// The KDL text with `vm "NAME"`'s boot vCPUs set to `cpus` (the number
/// after `cpus` replaced; `max=` kept). The VM must have a `cpus` line.
pub fn with_cpus(text: &str, vm: &str, cpus: u32) -> Result<String, String> {
    let (start, end) = vm_block(text, vm)?;
    let mut out: Vec<String> = text.lines().map(str::to_string).collect();
    let i = (start + 1..end)
        .find(|&i| out[i].trim_start().starts_with("cpus "))
        .ok_or_else(|| format!("vm \"{vm}\" has no `cpus` line to change"))?;
    let line = out[i].clone();
    let at = line.find("cpus ").ok_or("no cpus")? + "cpus ".len();
    let digits = line[at..].chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("`{}` has no vCPU count", line.trim()));
    }
    out[i] = format!("{}{cpus}{}", &line[..at], &line[at + digits..]);
    let mut s = out.join("\n");
    s.push('\n');
    Ok(s)
}

/// The KDL text with every `ssh-key "..."` value replaced by `key` (the
/// public half of the key pair the harness made for the run, so `vmctl ssh`
/// in L1 can log in as the lab's users). Other lines are kept as they are.
pub fn with_ssh_key(text: &str, key: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        match t.strip_prefix("ssh-key \"") {
            Some(rest) if rest.contains('"') => {
                let indent = &line[..line.len() - t.len()];
                let after = &rest[rest.find('"').map_or(rest.len(), |i| i + 1)..];
                out.push(format!("{indent}ssh-key \"{key}\"{after}"));
            }
            _ => out.push(line.to_string()),
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Line numbers of `vm "NAME" {` and of its closing brace.
fn vm_block(text: &str, vm: &str) -> Result<(usize, usize), String> {
    let header = format!("vm \"{vm}\"");
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&header) && l.contains('{'))
        .ok_or_else(|| format!("cannot find `{header} {{` on a line of its own"))?;
    let mut depth = 0i32;
    for (i, l) in lines.iter().enumerate().skip(start) {
        depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
        if depth <= 0 {
            return Ok((start, i));
        }
    }
    Err(format!("`{header}` block is not closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_memory_of_the_named_vm_only() {
        let text = "vm \"a\" {\n    memory \"256MiB\"\n}\nvm \"b\" {\n    cpus 2\n    memory \"512MiB\" max=\"2GiB\"\n}\n";
        let out = with_memory(text, "b", 640).unwrap();
        assert_eq!(
            out,
            "vm \"a\" {\n    memory \"256MiB\"\n}\nvm \"b\" {\n    cpus 2\n    memory \"640MiB\" max=\"2GiB\"\n}\n"
        );
    }

    #[test]
    fn adds_memory_when_defaulted() {
        let out = with_memory("vm \"a\" {\n    os \"debian-12\"\n}\n", "a", 384).unwrap();
        assert_eq!(
            out,
            "vm \"a\" {\n    memory \"384MiB\"\n    os \"debian-12\"\n}\n"
        );
        assert!(with_memory("vm \"a\" {\n", "a", 1).is_err());
        assert!(with_memory("", "a", 1).is_err());
    }

    #[test]
    fn ssh_keys_replaced() {
        let t = "vm \"a\" {\n    user \"alice\" {\n        ssh-key \"ssh-ed25519 AAAA old@x\"\n    }\n    file \"/k\" content=\"ssh-key \\\"x\\\"\"\n}\n";
        let got = with_ssh_key(t, "ssh-ed25519 BBBB lab");
        assert_eq!(
            got,
            "vm \"a\" {\n    user \"alice\" {\n        ssh-key \"ssh-ed25519 BBBB lab\"\n    }\n    file \"/k\" content=\"ssh-key \\\"x\\\"\"\n}\n"
        );
    }

    #[test]
    fn cpus_replaced_keeping_max() {
        let t = "vm \"a\" {\n    cpus 1 max=2\n}\nvm \"b\" {\n    cpus 1\n}\n";
        let got = with_cpus(t, "a", 2).unwrap();
        assert!(got.contains("    cpus 2 max=2\n"), "{got}");
        assert!(got.contains("vm \"b\" {\n    cpus 1\n"), "{got}");
        assert!(with_cpus("vm \"c\" {\n}\n", "c", 2).is_err());
    }

    #[test]
    fn disk_size_replaced_or_added() {
        let text = "vm \"b\" {\n    disk \"data\" size=\"32MiB\" format=\"raw\"\n}\n";
        assert_eq!(
            with_disk_size(text, "b", "data", 96 << 20).unwrap(),
            "vm \"b\" {\n    disk \"data\" size=\"96MiB\" format=\"raw\"\n}\n"
        );
        assert_eq!(
            with_disk_size("vm \"a\" {\n}\n", "a", "root", 9 << 30).unwrap(),
            "vm \"a\" {\n    disk \"root\" size=\"9216MiB\"\n}\n"
        );
        assert!(
            with_disk_size(
                "vm \"a\" {\n    disk \"d\" path=\"x\"\n}\n",
                "a",
                "d",
                1 << 20
            )
            .is_err()
        );
    }
}
