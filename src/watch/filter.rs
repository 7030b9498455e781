//! Which file-system events concern the watched file.
//!
//! Watch observes the file's PARENT directory (non-recursively) rather than
//! the file itself: editors that save by writing a temporary file and renaming
//! it over the original replace the inode, and a watch on the old inode would
//! go silent. The price is events for every sibling, filtered here by name.
//! Our own reads of the file (open, read, close without write) are ignored, or
//! every reconcile would trigger the next one. A file that is a symlink is
//! also watched where it points (as resolved at start-up), so edits to the
//! target count too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, EventKind};

/// The directories to watch and the file name that matters in each.
#[derive(Debug, Clone)]
pub struct FileFilter {
    spots: Vec<(PathBuf, OsString)>,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FilterError {
    #[error("{0} does not name a file")]
    #[diagnostic(help("pass the KDL file with -f, e.g. `vmctl watch -f vmctl.kdl`"))]
    NoFileName(PathBuf),
}

fn spot(file: &Path) -> Option<(PathBuf, OsString)> {
    let name = file.file_name()?.to_os_string();
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((dir, name))
}

impl FileFilter {
    pub fn new(file: &Path) -> Result<Self, FilterError> {
        let first = spot(file).ok_or_else(|| FilterError::NoFileName(file.to_path_buf()))?;
        Ok(FileFilter { spots: vec![first] })
    }

    /// Also watch `target` (the file a symlink points to).
    pub fn also(mut self, target: &Path) -> Self {
        if let Some(s) = spot(target)
            && !self.spots.contains(&s)
        {
            self.spots.push(s);
        }
        self
    }

    /// [`FileFilter::new`], plus the symlink's target when `file` is one.
    pub fn following_symlink(file: &Path) -> Result<Self, FilterError> {
        let filter = FileFilter::new(file)?;
        let is_link = std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
        Ok(match std::fs::canonicalize(file) {
            Ok(target) if is_link => filter.also(&target),
            _ => filter,
        })
    }

    /// The directories to watch (each non-recursively).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.spots.iter().map(|(d, _)| d.as_path())
    }

    /// Whether `event` may have changed the file's content or existence.
    pub fn relevant(&self, event: &notify::Event) -> bool {
        if event.need_rescan() {
            // The kernel queue overflowed: anything may have happened.
            return true;
        }
        kind_relevant(&event.kind) && event.paths.iter().any(|p| self.names(p))
    }

    fn names(&self, path: &Path) -> bool {
        self.spots.iter().any(|(dir, name)| {
            path.file_name() == Some(name.as_os_str()) && path.parent() == Some(dir.as_path())
        })
    }
}

fn kind_relevant(kind: &EventKind) -> bool {
    match kind {
        // Closing after a write ends a save; opens and reads (ours included) don't change anything.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::Event;
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        paths
            .iter()
            .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
    }

    fn filter() -> FileFilter {
        FileFilter::new(Path::new("/lab/vmctl.kdl")).unwrap()
    }

    #[test]
    fn watches_the_parent_directory() {
        let dirs = |f: &FileFilter| f.dirs().map(Path::to_path_buf).collect::<Vec<_>>();
        assert_eq!(dirs(&filter()), [Path::new("/lab")]);
        let bare = FileFilter::new(Path::new("vmctl.kdl")).unwrap();
        assert_eq!(dirs(&bare), [Path::new(".")]);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(bare.relevant(&ev(write, &["./vmctl.kdl"])));
        assert!(FileFilter::new(Path::new("/")).is_err());
    }

    #[test]
    fn a_symlinks_target_counts_in_its_own_directory_only() {
        let f = filter().also(Path::new("/dotfiles/lab.kdl"));
        let dirs: Vec<_> = f.dirs().collect();
        assert_eq!(dirs, [Path::new("/lab"), Path::new("/dotfiles")]);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(f.relevant(&ev(write, &["/dotfiles/lab.kdl"])));
        assert!(f.relevant(&ev(write, &["/lab/vmctl.kdl"])));
        assert!(!f.relevant(&ev(write, &["/lab/lab.kdl"])));
        assert!(!f.relevant(&ev(write, &["/dotfiles/vmctl.kdl"])));
        // Adding the same place twice watches it once.
        assert_eq!(f.also(Path::new("/lab/vmctl.kdl")).dirs().count(), 2);
    }

    #[test]
    fn writes_to_the_file_count() {
        let f = filter();
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(f.relevant(&ev(write, &["/lab/vmctl.kdl"])));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(f.relevant(&ev(close, &["/lab/vmctl.kdl"])));
        let created = EventKind::Create(CreateKind::File);
        assert!(f.relevant(&ev(created, &["/lab/vmctl.kdl"])));
        let removed = EventKind::Remove(RemoveKind::File);
        assert!(f.relevant(&ev(removed, &["/lab/vmctl.kdl"])));
    }

    #[test]
    fn a_temporary_file_renamed_over_the_file_counts() {
        let f = filter();
        // The temporary file's own writes are someone else's business...
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(!f.relevant(&ev(write, &["/lab/.vmctl.kdl.swp"])));
        // ...until it is renamed over ours (inotify reports both halves).
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(f.relevant(&ev(to, &["/lab/vmctl.kdl"])));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(f.relevant(&ev(both, &["/lab/.vmctl.kdl.swp", "/lab/vmctl.kdl"])));
        // Renaming ours away (a delete, in effect) counts too.
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert!(f.relevant(&ev(from, &["/lab/vmctl.kdl"])));
    }

    #[test]
    fn reads_and_siblings_are_ignored() {
        let f = filter();
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!f.relevant(&ev(kind, &["/lab/vmctl.kdl"])), "{kind:?}");
        }
        let created = EventKind::Create(CreateKind::Folder);
        assert!(!f.relevant(&ev(created, &["/lab/.vmctl"])));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(!f.relevant(&ev(write, &["/lab/vmctl.kdl.bak"])));
    }

    #[test]
    fn a_queue_overflow_counts() {
        let e = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(filter().relevant(&e));
    }
}
