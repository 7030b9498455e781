//! `vmctl validate`: parse and validate a KDL file, print the resolved desired state.
//!
//! Human output is one line per network, cluster, host and VM; `--json` prints the resolved
//! [`vmctl_spec::DesiredState`] (the `validate --json` contract). Warnings go to
//! stderr as miette reports; problems are returned as one report (exit 1).

use std::process::ExitCode;

use vmctl_spec::units::{format_mib, format_size};
use vmctl_spec::{DesiredState, VmSpec};

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the resolved desired state as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let loaded = crate::cmd::load(g, &args.file.file)?;
    let text = if args.json {
        let mut t = serde_json::to_string_pretty(&loaded.state)
            .map_err(|e| miette::miette!("cannot render the desired state as JSON: {e}"))?;
        t.push('\n');
        t
    } else {
        format!(
            "{}{}{}{}: {} VM(s), valid\n",
            networks(&loaded.state),
            hosts(&loaded.state),
            summary(&loaded.state),
            args.file.file.display(),
            loaded.state.vms.len()
        )
    };
    crate::cmd::print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// One line per network: name, subnet, the host's address, NAT.
fn networks(state: &DesiredState) -> String {
    state
        .networks
        .iter()
        .map(|n| {
            let nat = if n.nat { "  nat" } else { "" };
            format!(
                "network {}  {}  host {}{nat}\n",
                n.name, n.subnet, n.host_ip
            )
        })
        .collect()
}

/// The cluster (store, endpoints, lock TTL) and one line per host: name,
/// SSH destination, labels, reserve, draining (a lab over several hosts).
fn hosts(state: &DesiredState) -> String {
    let mut out = String::new();
    if let Some(c) = &state.cluster {
        out.push_str(&format!(
            "cluster {}  {} {}  lock-ttl {}s\n",
            c.name,
            c.state.name(),
            c.endpoints.join(","),
            c.lock_ttl_secs
        ));
    }
    for h in &state.hosts {
        let mut line = format!("host {}  {}", h.name, h.ssh);
        let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !labels.is_empty() {
            line.push_str(&format!("  {}", labels.join(" ")));
        }
        if h.reserve.memory_mib > 0 || h.reserve.cpus > 0 {
            line.push_str(&format!(
                "  reserve {} {} cpu(s)",
                format_mib(h.reserve.memory_mib),
                h.reserve.cpus
            ));
        }
        if h.drain {
            line.push_str("  draining");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One line per VM: name, os, cpus/max, memory/max, disks (and NICs, and
/// its pinned host or placement rules).
fn summary(state: &DesiredState) -> String {
    let rows: Vec<[String; 5]> = state.vms.iter().map(row).collect();
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row(vm: &VmSpec) -> [String; 5] {
    let disks = if vm.disks.is_empty() {
        "no disks".to_string()
    } else {
        let d: Vec<String> = vm
            .disks
            .iter()
            .map(|d| format!("{} {}", d.name, format_size(d.size_bytes)))
            .collect();
        format!("disks: {}", d.join(", "))
    };
    let nics: String = vm
        .nics
        .iter()
        .map(|n| format!("; nic {} {} {}", n.network, n.ip, n.mac))
        .collect();
    let place = match (&vm.host, &vm.placement) {
        (Some(h), _) => format!("; on {h}"),
        (None, Some(p)) => {
            let mut rules: Vec<String> = p.spread.iter().map(|s| format!("spread {s}")).collect();
            rules.extend(p.labels.iter().map(|(k, v)| format!("{k}={v}")));
            format!("; placement {}", rules.join(", "))
        }
        (None, None) => String::new(),
    };
    [
        vm.name.clone(),
        vm.os.clone(),
        format!("cpus {}/{}", vm.cpus, vm.max_cpus),
        format!(
            "memory {}/{}",
            format_mib(vm.memory_mib),
            format_mib(vm.max_memory_mib)
        ),
        format!("{disks}{nics}{place}"),
    ]
}
