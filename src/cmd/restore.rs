//! `vmctl restore NAME --from DIR`: put a backup's (or an export's) disk
//! contents back into an existing VM — the inverse of `vmctl backup`. It is
//! a replace of the VM's disks, shown as `vmctl plan` shows a replace (the
//! planner's own renderer) with its reason, and
//! confirmed like `apply`: the VM is stopped, each disk file is rewritten
//! whole from the bundle (`.partial`, fsync, rename: never half-restored
//! under its real name), grown to the declared size, and the VM started
//! again if it was running.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vmctl_spec::model::SourceFormat;

use crate::bundle;
use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// The VM whose disks to restore.
    pub name: String,
    /// The bundle to restore from (`vmctl backup` / `vmctl export` output).
    #[arg(long = "from")]
    pub from: PathBuf,
    #[arg(long)]
    pub auto_approve: bool,
    /// Give up waiting for the state lock after this many seconds.
    #[arg(long)]
    pub lock_timeout: Option<u64>,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let state_dir = g.state_dir_for(&args.file.file);
    if !state_dir.join("vms").join(&args.name).is_dir() {
        return Err(bundle::BundleError::NoSuchVm(args.name.clone()).into());
    }
    let v = bundle::verify(&args.from)?;
    let _lock = crate::lock::acquire(&state_dir, args.lock_timeout.map(Duration::from_secs))?;
    let rt = vmctl_runtime::Runtime::open(&state_dir).map_err(|e| miette::miette!("{e}"))?;
    let obs = rt
        .observe(&args.name)
        .map_err(|e| miette::miette!("{e}"))?
        .ok_or_else(|| bundle::BundleError::NoSuchVm(args.name.clone()))?;
    let dir = rt.vm_dir(&args.name);
    // Every bundle disk must be a disk of the VM, no bigger than declared.
    let mut writes = Vec::new();
    for (d, (file, format)) in v.manifest.disks.iter().zip(&v.files) {
        let Some(spec) = obs.record.spec.disks.iter().find(|s| s.name == d.name) else {
            return Err(miette::miette!(
                "{}: disk {:?} is not a disk of VM {:?}",
                file.display(),
                d.name,
                args.name
            ));
        };
        if d.virtual_size > spec.size_bytes {
            return Err(miette::miette!(
                "{}: holds {} bytes, more than disk {:?} of {:?} ({} bytes): restoring would grow the VM behind its file's back",
                file.display(),
                d.virtual_size,
                d.name,
                args.name,
                spec.size_bytes
            ));
        }
        writes.push((
            file.clone(),
            *format,
            d.virtual_size,
            dir.disk_path(spec),
            spec.size_bytes,
        ));
    }
    let running = obs.live == vmctl_runtime::RunState::Running;
    let names: Vec<&str> = v.manifest.disks.iter().map(|d| d.name.as_str()).collect();
    // Shown exactly as `vmctl plan` shows a replace, with its reason.
    let reason = format!(
        "restore from {} ({} of {:?}): disks {} are replaced by its contents{}",
        v.dir.display(),
        v.manifest.kind,
        v.manifest.vm,
        names.join(", "),
        if running {
            "; the VM is stopped meanwhile and started again"
        } else {
            ""
        }
    );
    let action = vmctl_planner::Action {
        id: format!("{}:restore", args.name),
        vm: args.name.clone(),
        kind: vmctl_planner::ActionKind::Replace,
        disruption: vmctl_planner::Disruption::Replace,
        reason: Some(reason),
        changes: Vec::new(),
        depends_on: Vec::new(),
        new: Some(obs.record.spec.clone()),
        old: Some(obs.record.spec.clone()),
        source: None,
        resource: vmctl_planner::Resource::Vm,
        network: None,
        network_old: None,
        host: None,
    };
    crate::cmd::print_stdout(&vmctl_planner::render::text(&vmctl_planner::Plan {
        actions: vec![action],
    }))?;
    if !args.auto_approve && !crate::cmd::apply::confirm("restore these disks")? {
        println!("Restore cancelled.");
        return Ok(ExitCode::FAILURE);
    }
    if running {
        rt.stop(&args.name, crate::backend::STOP_GRACE)
            .map_err(|e| miette::miette!("{e}"))?;
    }
    for (from, format, size, to, declared) in &writes {
        restore_disk(from, *format, *size, to, *declared)?;
    }
    if running {
        rt.start(&args.name).map_err(|e| miette::miette!("{e}"))?;
    }
    println!(
        "{}: restore done ({} disk(s)){}.",
        args.name,
        writes.len(),
        if running { ", started again" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Write `to` whole from the bundle file, atomically.
fn restore_disk(
    from: &std::path::Path,
    format: SourceFormat,
    size: u64,
    to: &std::path::Path,
    declared: u64,
) -> miette::Result<()> {
    let partial = vmctl_runtime::sparse::partial_path(to);
    let fail = |e: String| miette::miette!("{}: {e}", to.display());
    if format == SourceFormat::Raw {
        vmctl_runtime::sparse::copy_sparse(from, &partial).map_err(|e| fail(e.to_string()))?;
    } else {
        let image = vmctl_image::disk_format::Inspected {
            format,
            virtual_size: size,
        };
        vmctl_image::disk_format::convert_to_raw(from, &image, &partial)
            .map_err(|e| miette::miette!("{e}"))?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .map_err(|e| fail(e.to_string()))?;
    if f.metadata().map_err(|e| fail(e.to_string()))?.len() < declared {
        f.set_len(declared).map_err(|e| fail(e.to_string()))?;
    }
    f.sync_all().map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&partial, to).map_err(|e| fail(e.to_string()))?;
    Ok(())
}
