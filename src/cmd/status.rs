//! `vmctl status`: what is really running — each VM's state (running, stopped,
//! crashed), its VMM, the resources the VMM gave it, and what the guest itself
//! reports over its agent channel.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};
use vmctl_planner::{Backend, ObservedVm, RunState};
use vmctl_runtime::state::{ExitNote, StateDir};

use crate::backend;
use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the observed state as JSON.
    #[arg(long)]
    pub json: bool,
}

fn state_label(s: RunState) -> &'static str {
    s.as_str()
}

/// How the VM's last VMM ended (`vmm.exit`), for a VM with no VMM: a crash,
/// a VMM killed by its seccomp filter (`reason: "seccomp"`, naming the
/// thread and system call), or a clean stop.
fn last_exit(state_dir: &Path, vm: &ObservedVm) -> Option<ExitNote> {
    if vm.live.state.has_vmm() {
        return None;
    }
    StateDir::new(state_dir).vm(vm.name()).read_exit_note()
}

/// The `status --json` entry of one VM (design.md contract), with its
/// `last_exit` (null while a VMM runs or when none was recorded).
fn vm_json_with_exit(state_dir: &Path, vm: &ObservedVm) -> Value {
    let mut v = vm_json(vm);
    v["last_exit"] = json!(last_exit(state_dir, vm));
    let weight = weight_not_enforced(state_dir, vm);
    v["cpu_weight_enforced"] = match (&weight, vm.live.pid) {
        (_, None) => Value::Null,
        (None, Some(_)) => json!(true),
        (Some(_), Some(_)) => json!(false),
    };
    v["cpu_weight_note"] = json!(weight);
    v
}

/// Why a running VM's `cpu-weight` is not enforced (None: it is, or the VM
/// is not running) — read from the host's cgroup, not from what vmctl
/// meant to write.
fn weight_not_enforced(state_dir: &Path, vm: &ObservedVm) -> Option<String> {
    let pid = vm.live.pid?;
    let rt = vmctl_runtime::Runtime::open(state_dir).ok()?;
    rt.cpu_weight_enforced(
        vm.name(),
        i32::try_from(pid).ok()?,
        vm.record.spec.cpu_weight,
    )
    .err()
}

/// The `status --json` entry of one VM (design.md contract).
pub fn vm_json(vm: &ObservedVm) -> Value {
    let spec = &vm.record.spec;
    let running = vm.live.state.has_vmm();
    let disks: Vec<Value> = vm
        .live
        .disks
        .iter()
        .map(|d| json!({"name": d.name, "size_bytes": d.size_bytes, "path": d.path}))
        .collect();
    json!({
        "name": spec.name,
        "state": state_label(vm.live.state),
        "desired": vm.record.desired,
        "pid": vm.live.pid,
        "os": spec.os,
        "cpus": if running { vm.live.cpus.unwrap_or(spec.cpus) } else { spec.cpus },
        "max_cpus": spec.max_cpus,
        "memory_mib": if running { vm.live.memory_mib.unwrap_or(spec.memory_mib) } else { spec.memory_mib },
        "max_memory_mib": spec.max_memory_mib,
        "cpu_weight": spec.cpu_weight,
        "disks": disks,
        "nics": nics_json(vm),
        "guest": vm.live.guest,
    })
}

/// The running VM's NICs as its VMM reports them, each with the address
/// the lab gave it (`ip`: the resolved `nic … ip=`, the same NIC by
/// position).
fn nics_json(vm: &ObservedVm) -> Value {
    let spec = &vm.record.spec;
    Value::Array(
        vm.live
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut v = json!(n);
                v["ip"] = json!(spec.nics.get(i).map(|s| s.ip.to_string()));
                v
            })
            .collect(),
    )
}

/// The human `status` line of one NIC (docs/networking.md).
fn nic_line(n: &vmctl_planner::LiveNic, ip: Option<std::net::Ipv4Addr>) -> String {
    let ip = ip.map(|ip| format!(" ip {ip}")).unwrap_or_default();
    format!(
        "{:<16} nic {}{ip} mac {} tap {}  rx {} frames {} B  tx {} frames {} B\n",
        "", n.name, n.mac, n.tap, n.rx_packets, n.rx_bytes, n.tx_packets, n.tx_bytes
    )
}

fn guest_summary(guest: &Value) -> String {
    let get = |k: &str| {
        guest
            .get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into())
    };
    let disks = guest
        .get("disks")
        .and_then(Value::as_array)
        .map(|d| d.len())
        .unwrap_or(0);
    let mut line = format!(
        "guest sees cpus={} memory_mib={} disks={}",
        get("cpus"),
        get("memory_mib"),
        disks
    );
    // A debian-12 guest also says what it is (docs/images.md).
    let text = |k: &str| guest.get(k).and_then(Value::as_str);
    if let Some(os) = text("os") {
        line.push_str(&format!("\n{:<16} os={os:?}", ""));
        if let Some(h) = text("hostname") {
            line.push_str(&format!(" hostname={h}"));
        }
        if let Some(s) = text("systemd") {
            line.push_str(&format!(" systemd={s}"));
        }
        if let Some(b) = guest.get("root_fs_bytes").and_then(Value::as_u64) {
            line.push_str(&format!(" root_fs={}MiB", b >> 20));
        }
        let failed: Vec<&str> = guest
            .get("failed_units")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !failed.is_empty() {
            line.push_str(&format!(" failed_units={}", failed.join(",")));
        }
        // The addresses the guest's own kernel has on its NICs.
        let addrs: Vec<&str> = guest
            .get("nics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| n.get("addresses").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !addrs.is_empty() {
            line.push_str(&format!(" addresses={}", addrs.join(",")));
        }
    }
    line
}

/// A lab over hosts: each host reached over SSH (read-only), or why not.
struct Hosts {
    /// Host → its capacity line, or why it is unreachable.
    hosts: Vec<(String, Result<String, String>)>,
    /// VM → the host it was found on.
    found: std::collections::BTreeMap<String, String>,
    /// VMs the shared state puts on a host that did not answer.
    unreachable: Vec<(String, String)>,
    /// Why the shared state could not be read (the hosts were, anyway).
    note: Option<String>,
}

/// Observe a lab over hosts: every host over SSH, the records from etcd
/// if it answers (`status` works without quorum).
fn observe_hosts(
    desired: &vmctl_spec::DesiredState,
) -> miette::Result<(vmctl_planner::ObservedState, Hosts)> {
    let sv = crate::cluster::session::survey_read_only(desired)?;
    let (backend, placement, note) = (sv.backend, sv.placement, sv.note);
    let mut observed = sv.observed;
    // What is only assumed (a record on a host that did not answer) is not
    // shown as running: those VMs are listed as unreachable instead.
    for (vm, _) in &sv.assumed {
        observed.vms.remove(vm);
    }
    let unreachable_hosts = backend.unreachable();
    let found = backend.found();
    let hosts = desired
        .hosts
        .iter()
        .map(|h| {
            let r = match unreachable_hosts.get(&h.name) {
                Some(why) => Err(why.clone()),
                None => Ok(backend.describe(&h.name)),
            };
            (h.name.clone(), r)
        })
        .collect();
    let unreachable = placement
        .hosts
        .iter()
        .filter(|(vm, h)| !found.contains_key(*vm) && unreachable_hosts.contains_key(*h))
        .map(|(vm, h)| (vm.clone(), h.clone()))
        .collect();
    Ok((
        observed,
        Hosts {
            hosts,
            found,
            unreachable,
            note,
        },
    ))
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let state_dir = g.state_dir_for(&args.file.file);
    let desired = if args.file.file.exists() {
        // Quiet: status is about what runs; the file only says where.
        crate::cmd::load_quiet(g, &args.file.file)
            .ok()
            .map(|l| l.state)
            .filter(|d| !d.hosts.is_empty())
    } else {
        None
    };
    let (observed, hosts) = match &desired {
        Some(d) => {
            let (o, h) = observe_hosts(d)?;
            (o, Some(h))
        }
        None => {
            let backend = backend::open(&state_dir).map_err(|e| miette::miette!("{e}"))?;
            let o = backend.observe().map_err(|e| {
                miette::miette!("cannot observe the VMs in {}: {e}", state_dir.display())
            })?;
            (o, None)
        }
    };
    if let Some(note) = hosts.as_ref().and_then(|h| h.note.as_ref()) {
        eprintln!("warning: {note}");
    }
    let host_of = |vm: &str| hosts.as_ref().and_then(|h| h.found.get(vm).cloned());
    let text = if args.json {
        let vms: Vec<Value> = observed
            .vms
            .values()
            .map(|vm| {
                // A remote VM's cgroup and exit note are on its host.
                let mut v = match &hosts {
                    Some(_) => vm_json(vm),
                    None => vm_json_with_exit(&state_dir, vm),
                };
                if let Some(h) = host_of(vm.name()) {
                    v["host"] = json!(h);
                }
                v
            })
            .chain(hosts.iter().flat_map(|h| {
                h.unreachable
                    .iter()
                    .map(|(vm, host)| json!({"name": vm, "state": "unreachable", "host": host}))
            }))
            .collect();
        let mut doc = json!({"format_version": vmctl_spec::FORMAT_VERSION, "vms": vms});
        if let Some(h) = &hosts {
            doc["hosts"] = h
                .hosts
                .iter()
                .map(|(name, r)| match r {
                    Ok(line) => json!({"name": name, "reachable": true, "capacity": line}),
                    Err(why) => json!({"name": name, "reachable": false, "error": why}),
                })
                .collect();
        }
        format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        )
    } else if observed.vms.is_empty() && hosts.is_none() {
        format!("No VMs in {}.\n", state_dir.display())
    } else {
        let mut text = String::new();
        for (name, r) in hosts.iter().flat_map(|h| h.hosts.iter()) {
            match r {
                Ok(line) => text.push_str(&format!("host {name:<11} reachable    {line}\n")),
                Err(why) => text.push_str(&format!("host {name:<11} unreachable  {why}\n")),
            }
        }
        for (vm, host) in hosts.iter().flat_map(|h| h.unreachable.iter()) {
            text.push_str(&format!("{vm:<16} unreachable  on {host}\n"));
        }
        for vm in observed.vms.values() {
            let v = vm_json(vm);
            let pid = vm.live.pid.map(|p| format!(" pid {p}")).unwrap_or_default();
            let on = host_of(vm.name())
                .map(|h| format!("  on {h}"))
                .unwrap_or_default();
            text.push_str(&format!(
                "{:<16} {:<8}{pid}  cpus {}  memory {} MiB  disks {}{on}\n",
                vm.record.spec.name,
                v["state"].as_str().unwrap_or("?"),
                v["cpus"],
                v["memory_mib"],
                vm.live.disks.len()
            ));
            for (i, n) in vm.live.nics.iter().enumerate() {
                text.push_str(&nic_line(n, vm.record.spec.nics.get(i).map(|s| s.ip)));
            }
            match &vm.live.guest {
                Some(gst) => text.push_str(&format!("{:<16} {}\n", "", guest_summary(gst))),
                None if vm.live.state == RunState::Running => {
                    text.push_str(&format!("{:<16} guest has not reported yet\n", ""))
                }
                None => {}
            }
            if let Some(why) = hosts
                .is_none()
                .then(|| weight_not_enforced(&state_dir, vm))
                .flatten()
            {
                text.push_str(&format!(
                    "{:<16} cpu-weight {} not enforced: {why}\n",
                    "", vm.record.spec.cpu_weight
                ));
            }
            if vm.live.state == RunState::Crashed {
                if let Some(note) = hosts
                    .is_none()
                    .then(|| last_exit(&state_dir, vm))
                    .flatten()
                    .filter(|n| !n.is_clean())
                {
                    text.push_str(&format!(
                        "{:<16} last exit: {}: {}\n",
                        "", note.reason, note.detail
                    ));
                }
                text.push_str(&format!(
                    "{:<16} drift: the VMM is gone but the VM should run; `vmctl apply` starts it\n",
                    ""
                ));
            }
        }
        text
    };
    crate::cmd::print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nics_in_json_and_text() {
        use vmctl_planner::{Desired, Live, LiveNic, ObservedVm, Record, RunState};
        let nic = LiveNic {
            name: "lab".into(),
            mac: "52:54:00:77:00:02".into(),
            tap: "vt-a".into(),
            rx_packets: 29,
            rx_bytes: 2294,
            tx_packets: 15,
            tx_bytes: 1086,
        };
        let vm = ObservedVm {
            record: Record::new(vmctl_spec::model::VmSpec::diag("a"), Desired::Running),
            live: Live {
                state: RunState::Running,
                nics: vec![nic.clone()],
                ..Live::stopped()
            },
        };
        let v = vm_json(&vm);
        assert_eq!(
            v["nics"],
            serde_json::json!([{"name": "lab", "mac": "52:54:00:77:00:02", "tap": "vt-a",
                "rx_packets": 29, "rx_bytes": 2294, "tx_packets": 15, "tx_bytes": 1086,
                "ip": null}])
        );
        assert_eq!(
            nic_line(&nic, Some([10, 77, 0, 2].into())),
            format!(
                "{:<16} nic lab ip 10.77.0.2 mac 52:54:00:77:00:02 tap vt-a  rx 29 frames 2294 B  tx 15 frames 1086 B\n",
                ""
            )
        );
        let stopped = ObservedVm {
            live: Live::stopped(),
            ..vm
        };
        assert_eq!(vm_json(&stopped)["nics"], serde_json::json!([]));
    }

    #[test]
    fn a_debian_guest_says_what_it_is() {
        let g = serde_json::json!({"cpus": 2, "memory_mib": 469, "disks": [{}],
            "os": "Debian GNU/Linux 12 (bookworm)", "hostname": "web", "systemd": "degraded",
            "root_fs_bytes": 1038462976u64, "failed_units": ["ssh.service"],
            "nics": [{"name": "enp0s1", "mac": "52:54:00:12:34:56", "state": "UP",
                      "addresses": ["10.20.0.10/24"]}]});
        assert_eq!(
            guest_summary(&g),
            format!(
                "guest sees cpus=2 memory_mib=469 disks=1\n{:<16} os=\"Debian GNU/Linux 12 (bookworm)\" \
                 hostname=web systemd=degraded root_fs=990MiB failed_units=ssh.service \
                 addresses=10.20.0.10/24",
                ""
            )
        );
        let diag = serde_json::json!({"cpus": 1, "memory_mib": 128, "disks": []});
        assert_eq!(
            guest_summary(&diag),
            "guest sees cpus=1 memory_mib=128 disks=0"
        );
    }
}
