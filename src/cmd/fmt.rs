//! `vmctl fmt [--check] [PATH…]`: rewrite KDL files in the canonical layout
//! (`vmctl_spec::fmt` has the rules), or with `--check` only list the files
//! that would change and exit 1 — the CI and pre-commit gate. A directory
//! means every `*.kdl` below it (hidden directories and `target/` skipped);
//! no PATH means the current directory. Formatting needs valid KDL, not a
//! valid lab: `validate` judges the meaning.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not write; list the files that are not formatted and exit 1 if any.
    #[arg(long)]
    pub check: bool,
    /// KDL files or directories (default: the current directory).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Why fmt could not do its work.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FmtError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} file(s) are not valid KDL and were left alone:\n{}", .0.len(), .0.join("\n"))]
    #[diagnostic(help("`vmctl validate -f FILE` shows where"))]
    Syntax(Vec<String>),
}

pub fn run(_g: &Global, args: Args) -> miette::Result<ExitCode> {
    let roots = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let mut files = Vec::new();
    for root in &roots {
        collect(root, root == Path::new(".") || root.is_dir(), &mut files)?;
    }
    let mut changed = Vec::new();
    let mut broken = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| FmtError::Read {
            path: file.clone(),
            source,
        })?;
        let formatted = match vmctl_spec::fmt::format(&text) {
            Ok(f) => f,
            Err(e) => {
                broken.push(format!("  {}: {e}", file.display()));
                continue;
            }
        };
        if formatted == text {
            continue;
        }
        if !args.check {
            std::fs::write(&file, &formatted).map_err(|source| FmtError::Write {
                path: file.clone(),
                source,
            })?;
        }
        changed.push(file);
    }
    let list: String = changed
        .iter()
        .map(|f| format!("{}\n", f.display()))
        .collect();
    crate::cmd::print_stdout(&list)?;
    if !broken.is_empty() {
        return Err(FmtError::Syntax(broken).into());
    }
    Ok(if args.check && !changed.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `path` itself if it is a file; every `*.kdl` below it if a directory.
fn collect(path: &Path, dir: bool, out: &mut Vec<PathBuf>) -> Result<(), FmtError> {
    if !dir {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let read = |e| FmtError::Read {
        path: path.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .map_err(read)?
        .collect::<Result<_, _>>()
        .map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let p = e.path();
        // file_type does not follow symlinks: a link cycle cannot loop here.
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            if !name.starts_with('.') && name != "target" {
                collect(&p, true, out)?;
            }
        } else if t.is_file() && name.ends_with(".kdl") {
            out.push(p);
        }
    }
    Ok(())
}
