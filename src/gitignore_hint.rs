//! The one-time `.gitignore` hint. Why: a state directory holds live VM
//! state — disk images, sockets, logs, the lock — and committing it is a
//! classic mistake in a git-driven workflow. So when vmctl *creates* a state
//! directory inside a git work tree that does not already ignore it, it says
//! once (the directory exists from then on) which line to add. Asking git
//! (`git check-ignore`) honours every ignore rule; without a usable git the
//! `.gitignore` files on the way up are searched for a plain matching line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The work tree containing `dir` (the nearest ancestor with `.git`).
fn work_tree(dir: &Path) -> Option<PathBuf> {
    let dir = std::path::absolute(dir).ok()?;
    dir.ancestors()
        .skip(1)
        .find(|a| a.join(".git").exists())
        .map(Path::to_path_buf)
}

/// Whether git ignores `dir`; `None` when git cannot tell.
fn git_ignores(root: &Path, dir: &Path) -> Option<bool> {
    let status = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["check-ignore", "-q", "--"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    match status.code() {
        Some(0) => Some(true),
        Some(1) => Some(false),
        _ => None,
    }
}

/// The `.gitignore` line that ignores `dir` in the work tree at `root`.
fn ignore_line(root: &Path, dir: &Path) -> String {
    if dir.file_name().is_some_and(|n| n == ".vmctl") {
        return ".vmctl/".to_string();
    }
    match dir.strip_prefix(root) {
        Ok(rel) => format!("/{}/", rel.display()),
        Err(_) => format!("{}/", dir.display()),
    }
}

/// Without git: does a `.gitignore` between `dir` and `root` have the line?
fn listed(root: &Path, dir: &Path, line: &str) -> bool {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let wanted = [line.to_string(), name.clone(), format!("{name}/")];
    dir.ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(root))
        .any(|a| {
            std::fs::read_to_string(a.join(".gitignore"))
                .is_ok_and(|t| t.lines().any(|l| wanted.iter().any(|w| l.trim() == w)))
        })
}

/// Create the state directory (and its parents); print the hint when this
/// created it and one is due. Every command that creates one goes through here.
pub fn create_state_dir(state_dir: &Path) -> std::io::Result<()> {
    let new_dir = !state_dir.exists();
    std::fs::create_dir_all(state_dir)?;
    if new_dir && let Some(hint) = hint_for(state_dir) {
        eprintln!("{hint}");
    }
    Ok(())
}

/// The hint for a state directory just created, if one is due.
pub fn hint_for(state_dir: &Path) -> Option<String> {
    let dir = std::path::absolute(state_dir).ok()?;
    let root = work_tree(&dir)?;
    let line = ignore_line(&root, &dir);
    let ignored = git_ignores(&root, &dir).unwrap_or_else(|| listed(&root, &dir, &line));
    if ignored {
        return None;
    }
    Some(format!(
        "hint: vmctl created its state directory {} inside the git work tree {}.\n\
         hint: It holds live VM state (disks, sockets, logs) and never belongs in git:\n\
         hint:     echo '{line}' >> {}",
        dir.display(),
        root.display(),
        root.join(".gitignore").display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_work_tree_there_is_no_hint() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(hint_for(&t.path().join(".vmctl")), None);
    }

    #[test]
    fn without_git_a_gitignore_line_is_enough() {
        let t = tempfile::tempdir().unwrap();
        // A `.git` file (as in a worktree) that git itself cannot use.
        std::fs::write(t.path().join(".git"), "gitdir: /nonexistent\n").unwrap();
        let state = t.path().join("lab/.vmctl");
        let hint = hint_for(&state).expect("a hint");
        assert!(hint.contains("echo '.vmctl/' >>"), "{hint}");
        std::fs::create_dir(t.path().join("lab")).unwrap();
        std::fs::write(t.path().join(".gitignore"), "target/\n.vmctl/\n").unwrap();
        assert_eq!(hint_for(&state), None);
        assert_eq!(
            ignore_line(t.path(), &t.path().join("labs/state")),
            "/labs/state/"
        );
    }
}
