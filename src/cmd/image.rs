//! `vmctl image list | build | rm`: the boot-image cache of a state directory.
//!
//! `build` makes (or finds) the `debian-12` image and pins it in `vmctl.lock`
//! beside the KDL file; `list` shows what is cached; `rm` removes an entry by
//! id prefix. The cache itself lives in `vmctl_runtime::image`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vmctl_runtime::image::{self, LockMode};

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
        /// The built-in OS to build.
        #[arg(default_value = "debian-12")]
        os: String,
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
            update,
            json,
        } => build(g, &file.file, &os, update, json),
        ImageCommand::Rm { file, ids } => rm(g, &file.file, &ids),
    }
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
        "{:<12}  {:<10}  {:<24}  {:>8}",
        "ID", "OS", "KERNEL", "SIZE"
    );
    for img in images {
        let m = &img.manifest;
        let _ = writeln!(
            out,
            "{:<12}  {:<10}  {:<24}  {:>5} MiB",
            &m.id[..12.min(m.id.len())],
            m.name,
            m.kernel_version,
            img.size_bytes.div_ceil(1 << 20)
        );
    }
    crate::cmd::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn build(g: &Global, kdl: &Path, os: &str, update: bool, json: bool) -> miette::Result<ExitCode> {
    if os != "debian-12" {
        return Err(miette::miette!(
            help = "declare your own kernel and initrd with an `image` node instead",
            "{os:?} is not a built-in image vmctl can build (only \"debian-12\")"
        ));
    }
    let state = g.state_dir_for(kdl);
    let lock = lock_path_for(kdl);
    let mode = if update {
        LockMode::Update
    } else {
        LockMode::Honour
    };
    let img = image::build_debian12(&state, &lock, mode).map_err(|e| miette::miette!("{e}"))?;
    if json {
        let doc = serde_json::json!({
            "format_version": "1",
            "name": img.name,
            "id": img.id,
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
            "{} {} (kernel {})\n  kernel  {}\n  initrd  {}\n  cmdline {}\n  pinned in {}\n",
            img.name,
            img.id,
            img.kernel_version,
            img.kernel.display(),
            img.initrd.display(),
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
