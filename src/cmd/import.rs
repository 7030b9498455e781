//! `vmctl import BUNDLE [--as NAME] [-f FILE]`: verify a bundle
//! (crate::bundle) and add its VM to the KDL file, its disks coming from
//! the bundle through `source=`, so the next `apply` converts, checks and
//! places them like any imported image (docs/disks.md). Nothing is copied
//! into the state directory here: the bundle must stay until that apply.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::bundle;
use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// The bundle directory (`vmctl export` / `vmctl backup` output).
    pub bundle: PathBuf,
    /// Import the VM under this name.
    #[arg(long = "as")]
    pub as_name: Option<String>,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let v = bundle::verify(&args.bundle)?;
    let mut spec = bundle::portable(&v.spec);
    if let Some(n) = &args.as_name {
        spec.name = n.clone();
    }
    for (d, (path, format)) in v.manifest.disks.iter().zip(&v.files) {
        if let Some(disk) = spec.disks.iter_mut().find(|s| s.name == d.name) {
            disk.source = Some(path.clone());
            disk.source_format = Some(*format);
        }
    }
    let file = &args.file.file;
    let existing = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(miette::miette!("cannot read {}: {e}", file.display())),
    };
    let state_dir = g.state_dir_for(file);
    if state_dir.join("vms").join(&spec.name).exists() {
        return Err(miette::miette!(
            help = "import it under another name with --as NAME",
            "the state directory {} already has a VM named {:?}",
            state_dir.display(),
            spec.name
        ));
    }
    // A custom image the file already declares identically is not repeated.
    let current = if existing.trim().is_empty() {
        None
    } else {
        Some(crate::cmd::load(g, file)?.state)
    };
    let mut block = bundle::render(&spec);
    if let (Some(img), Some(cur)) = (&spec.image, &current)
        && cur.images.iter().any(|i| i == img)
    {
        let mut s = spec.clone();
        s.image = None;
        block = bundle::render(&s);
        // The renderer leaves out the image node with the image; the VM's
        // `os` still names it, resolved against the file's own node.
    }
    let mut text = existing.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "// imported from {} ({} of {:?})\n",
        v.dir.display(),
        v.manifest.kind,
        v.manifest.vm
    ));
    text.push_str(&block);
    // The whole new file must validate (a name clash is a diagnostic on it)
    // before it replaces the old one.
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    vmctl_spec::parse_str(
        &file.display().to_string(),
        &text,
        dir,
        vmctl_spec::host_cpus(),
    )?;
    let tmp = dir.join(format!(
        ".{}.import.tmp",
        file.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("vmctl.kdl")
    ));
    std::fs::write(&tmp, &text).map_err(|e| miette::miette!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| miette::miette!("{}: {e}", file.display()))?;
    crate::cmd::print_stdout(&format!(
        "Imported {:?} as {:?} into {} ({} disk(s) verified). `vmctl apply` creates it from the bundle, which must stay until then.\n",
        v.manifest.vm,
        spec.name,
        file.display(),
        v.files.len()
    ))?;
    Ok(ExitCode::SUCCESS)
}
