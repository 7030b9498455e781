//! `vmctl image list | build | rm`: the boot-image cache of a state directory.
//!
//! `build` makes (or finds) a built-in OS image (`debian-12` with optional
//! extra packages, or `debian-12-minimal`) and pins it in `vmctl.lock`
//! beside the KDL file; `list` shows what is cached; `rm` removes an entry
//! by id prefix. The cache itself lives in the `vmctl-image` crate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vmctl_image::{self as image, LockMode, Recipe, Variant};

use crate::cli::FileArg;
use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// List cached images.
    List {
        #[command(flatten)]
        file: FileArg,
        /// Print JSON (`{"format_version":"1","images":[...]}`).
        #[arg(long)]
        json: bool,
    },
    /// Build (or find in the cache) a built-in image and pin it in vmctl.lock.
    Build {
        #[command(flatten)]
        file: FileArg,
        /// The built-in OS to build (`debian-12`, `debian-12-minimal`).
        /// Without it: every image the KDL file's VMs boot (or `debian-12`
        /// when there is no file).
        os: Option<String>,
        /// An extra Debian package in the image (repeatable), as a VM's
        /// `packages` node asks for.
        #[arg(long = "package", value_name = "NAME")]
        packages: Vec<String>,
        /// Ignore the lock's pins: build from the newest packages and re-pin.
        #[arg(long)]
        update: bool,
        /// Print the built image as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached images by id (a unique prefix is enough).
    Rm {
        #[command(flatten)]
        file: FileArg,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `vmctl.lock` beside the KDL file.
pub fn lock_path_for(kdl_file: &Path) -> PathBuf {
    let parent = kdl_file.parent().filter(|p| !p.as_os_str().is_empty());
    parent.unwrap_or_else(|| Path::new(".")).join("vmctl.lock")
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    match args.command {
        ImageCommand::List { file, json } => list(g, &file.file, json),
        ImageCommand::Build {
            file,
            os,
            packages,
            update,
            json,
        } => {
            let variants = match os {
                Some(os) => vec![Variant::new(&os, &packages)],
                None => declared_variants(&file.file)?,
            };
            for v in variants {
                build(g, &file.file, &v, update, json)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Rm { file, ids } => rm(g, &file.file, &ids),
    }
}

/// Every built-in image the KDL file's VMs boot (`debian-12` when the file
/// does not exist or declares none).
fn declared_variants(kdl: &Path) -> miette::Result<Vec<Variant>> {
    if !kdl.exists() {
        return Ok(vec![Variant::new("debian-12", &[])]);
    }
    // Which images the VMs boot does not depend on the lab's networks.
    let loaded = vmctl_spec::load_file(kdl)?;
    for w in &loaded.warnings {
        eprintln!("{w:?}");
    }
    let mut out: Vec<Variant> = loaded
        .state
        .vms
        .iter()
        .filter(|v| v.image.is_none() && Recipe::of(&v.os).is_some())
        .map(|v| Variant::new(&v.os, &v.packages))
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        out.push(Variant::new("debian-12", &[]));
    }
    Ok(out)
}

fn list(g: &Global, kdl: &Path, json: bool) -> miette::Result<ExitCode> {
    let state = g.state_dir_for(kdl);
    let images = image::list(&state).map_err(|e| miette::miette!("{e}"))?;
    if json {
        let doc = serde_json::json!({ "format_version": "1", "images": images });
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| miette::miette!("cannot render the image list: {e}"))?;
        crate::cmd::print_stdout(&format!("{text}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if images.is_empty() {
        crate::cmd::print_stdout(&format!(
            "no images cached in {}\n",
            state.join("images").display()
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12}  {:<24}  {:<24}  {:>8}",
        "ID", "VARIANT", "KERNEL", "SIZE"
    );
    for img in images {
        let m = &img.manifest;
        let _ = writeln!(
            out,
            "{:<12}  {:<24}  {:<24}  {:>5} MiB",
            &m.id[..12.min(m.id.len())],
            m.variant_key(),
            m.kernel_version,
            img.size_bytes.div_ceil(1 << 20)
        );
    }
    crate::cmd::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn build(
    g: &Global,
    kdl: &Path,
    variant: &Variant,
    update: bool,
    json: bool,
) -> miette::Result<ExitCode> {
    let os = &variant.os;
    if Recipe::of(os).is_none() {
        return Err(miette::miette!(
            help = "declare your own kernel and initrd with an `image` node instead",
            "{os:?} is not a built-in image vmctl can build (\"debian-12\", \"debian-12-minimal\")"
        ));
    }
    if Recipe::of(os) == Some(Recipe::Minimal) && !variant.packages.is_empty() {
        return Err(miette::miette!(
            help = "use os \"debian-12\" for a root filesystem with packages",
            "{os} has no root filesystem to install packages into"
        ));
    }
    let state = g.state_dir_for(kdl);
    let lock = lock_path_for(kdl);
    let mode = if update {
        LockMode::Update
    } else {
        LockMode::Honour
    };
    crate::gitignore_hint::create_state_dir(&state)
        .map_err(|e| miette::miette!("cannot create {}: {e}", state.display()))?;
    let started = std::time::Instant::now();
    let img = image::build(&state, &lock, variant, mode).map_err(|e| miette::miette!("{e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let doc = serde_json::json!({
            "format_version": "1",
            "name": img.name,
            "variant": img.variant,
            "id": img.id,
            "rootfs": img.rootfs,
            "seconds": seconds,
            "kernel": img.kernel,
            "initrd": img.initrd,
            "cmdline": img.cmdline,
            "kernel_version": img.kernel_version,
            "lock": lock,
        });
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| miette::miette!("cannot render the image: {e}"))?;
        crate::cmd::print_stdout(&format!("{text}\n"))?;
    } else {
        crate::cmd::print_stdout(&format!(
            "{} {} (kernel {}) in {seconds:.1}s\n  kernel  {}\n  initrd  {}\n  rootfs  {}\n  cmdline {}\n  pinned in {}\n",
            img.variant,
            img.id,
            img.kernel_version,
            img.kernel.display(),
            img.initrd.display(),
            img.rootfs
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none (the initramfs is the guest)".into()),
            img.cmdline,
            lock.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(g: &Global, kdl: &Path, ids: &[String]) -> miette::Result<ExitCode> {
    let state = g.state_dir_for(kdl);
    for id in ids {
        let img = image::remove(&state, id).map_err(|e| miette::miette!("{e}"))?;
        crate::cmd::print_stdout(&format!(
            "removed {} {}\n",
            img.manifest.name, img.manifest.id
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
