//! `vmctl export NAME -o DIR [--format FMT]` and `vmctl backup NAME -o DIR`:
//! write a VM as a bundle (crate::bundle, docs/disks.md). A running VM is
//! paused for the copy, not stopped; the pause is reported.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vmctl_spec::model::SourceFormat;

use crate::bundle::{self, Manifest};
use crate::cli::FileArg;
use crate::cmd::Global;

/// The disk formats `--format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Raw,
    Qcow2,
    Vdi,
    Vmdk,
    /// Microsoft VHD (dynamic, `force_size=on`: the exact size is kept).
    Vhd,
    Vhdx,
}

impl Format {
    fn source_format(self) -> SourceFormat {
        match self {
            Format::Raw => SourceFormat::Raw,
            Format::Qcow2 => SourceFormat::Qcow2,
            Format::Vdi => SourceFormat::Vdi,
            Format::Vmdk => SourceFormat::Vmdk,
            Format::Vhd => SourceFormat::Vhd,
            Format::Vhdx => SourceFormat::Vhdx,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// The VM to export.
    pub name: String,
    /// The bundle directory to write (created 0700; must be new or empty).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Disk format of the bundle.
    #[arg(long, value_enum, default_value = "raw")]
    pub format: Format,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up waiting for the state lock after this many seconds.
    #[arg(long)]
    pub lock_timeout: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// The VM to back up.
    pub name: String,
    /// The backup directory to write (created 0700; must be new or empty).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up waiting for the state lock after this many seconds.
    #[arg(long)]
    pub lock_timeout: Option<u64>,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    write(
        g,
        &args.file,
        &args.name,
        &args.output,
        args.format.source_format(),
        "export",
        args.json,
        args.lock_timeout,
    )
}

pub fn backup(g: &Global, args: BackupArgs) -> miette::Result<ExitCode> {
    write(
        g,
        &args.file,
        &args.name,
        &args.output,
        SourceFormat::Raw,
        "backup",
        args.json,
        args.lock_timeout,
    )
}

#[allow(clippy::too_many_arguments)]
fn write(
    g: &Global,
    file: &FileArg,
    name: &str,
    output: &std::path::Path,
    format: SourceFormat,
    kind: &str,
    json: bool,
    lock_timeout: Option<u64>,
) -> miette::Result<ExitCode> {
    let state_dir = g.state_dir_for(&file.file);
    if !state_dir.join("vms").join(name).is_dir() {
        return Err(bundle::BundleError::NoSuchVm(name.to_string()).into());
    }
    let _lock = crate::lock::acquire(&state_dir, lock_timeout.map(Duration::from_secs))?;
    let rt = vmctl_runtime::Runtime::open(&state_dir).map_err(|e| miette::miette!("{e}"))?;
    let manifest = bundle::write(&rt, name, output, format, kind)?;
    if json {
        let mut v = serde_json::to_value(&manifest).map_err(|e| miette::miette!("{e}"))?;
        v["dir"] = serde_json::Value::String(output.display().to_string());
        crate::cmd::print_stdout(&format!("{v:#}\n"))?;
    } else {
        crate::cmd::print_stdout(&summary(&manifest, output))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(m: &Manifest, dir: &std::path::Path) -> String {
    let mut out = format!("{} {:?} → {}\n", m.kind, m.vm, dir.display());
    for d in &m.disks {
        out.push_str(&format!(
            "  {}: {} ({} bytes, {}, copied by {})\n",
            d.name, d.file, d.virtual_size, d.format, d.copied_by
        ));
    }
    match m.paused_us {
        Some(us) if m.live => out.push_str(&format!(
            "The VM kept running: paused {:.1} ms for a {} copy ({:.1} ms of it to park the vCPUs and flush the disks).\n",
            us as f64 / 1000.0,
            if m.consistency.is_empty() {
                "crash-consistent"
            } else {
                &m.consistency
            },
            m.quiesce_us.unwrap_or(0) as f64 / 1000.0
        )),
        _ => out.push_str("The VM was not running.\n"),
    }
    if !m.frozen.is_empty() {
        out.push_str(&format!(
            "The guest agent froze {} around the pause.\n",
            m.frozen.join(", ")
        ));
    }
    if let Some(why) = &m.consistency_note {
        out.push_str(&format!("Not filesystem-consistent: {why}.\n"));
    }
    out
}
