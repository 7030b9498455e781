//! Where watch's wake-ups come from: file-system events of the watched
//! directory and SIGINT/SIGTERM, both funnelled into one channel so the loop
//! sleeps in a single `recv_timeout`. Each file event is stamped when it
//! arrives, which is what the latency measurements start from.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::time::Instant;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Handle;

use super::clock;

/// Exit code when a second Ctrl-C/SIGTERM interrupts a pass in progress.
pub const FORCED_EXIT: i32 = 130;

/// One wake-up.
#[derive(Debug)]
pub enum Msg {
    /// A file-system event and when it arrived (monotonic, and in ns).
    Fs(notify::Result<notify::Event>, Instant, u64),
    Signal(i32),
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SourceError {
    #[error("cannot install the SIGINT/SIGTERM handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the file watcher")]
    Watcher(#[source] notify::Error),
    #[error("cannot watch the directory {0}")]
    #[diagnostic(help("watch needs the directory that holds the KDL file to exist"))]
    Watch(String, #[source] notify::Error),
}

/// Watch each of `dirs` (not their subdirectories) and send every event to
/// `tx`. Events stop when the returned watcher is dropped.
pub fn watch_dirs<'a>(
    dirs: impl IntoIterator<Item = &'a Path>,
    tx: Sender<Msg>,
) -> Result<RecommendedWatcher, SourceError> {
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(Msg::Fs(res, Instant::now(), clock::monotonic_ns()));
    })
    .map_err(SourceError::Watcher)?;
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| SourceError::Watch(dir.display().to_string(), e))?;
    }
    Ok(watcher)
}

/// Send SIGINT/SIGTERM to `tx`. The first one lets the pass in progress
/// finish (the loop then exits 0); a second one exits at once with
/// [`FORCED_EXIT`] (an apply is journaled; the next one finishes it).
/// Close the returned handle to stop the signal thread.
pub fn signals(tx: Sender<Msg>) -> Result<Handle, SourceError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the shutdown check runs before the flag is set, so
        // it fires only from the second signal on.
        signal_hook::flag::register_conditional_shutdown(sig, FORCED_EXIT, Arc::clone(&stop))
            .map_err(SourceError::Signals)?;
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(SourceError::Signals)?;
    }
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(SourceError::Signals)?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("watch-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Msg::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(SourceError::Signals)?;
    Ok(handle)
}

/// The name watch prints for a signal.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{self, Receiver};
    use std::time::Duration;

    use super::*;
    use crate::watch::debounce::Debouncer;
    use crate::watch::filter::FileFilter;

    /// Generous bound for an event to arrive; not a timing assertion.
    const BOUND: Duration = Duration::from_secs(20);

    /// Collect events until one names `marker`; return whether any of them
    /// was relevant to `filter`.
    fn relevant_before_marker(rx: &Receiver<Msg>, filter: &FileFilter, marker: &str) -> bool {
        let mut relevant = false;
        loop {
            let Msg::Fs(Ok(ev), ..) = rx.recv_timeout(BOUND).unwrap() else {
                continue;
            };
            relevant |= filter.relevant(&ev);
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == marker))
            {
                return relevant;
            }
        }
    }

    #[test]
    fn rename_over_the_file_is_seen_and_reads_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmctl.kdl");
        std::fs::write(&file, "vm \"a\" { os \"diag\" }\n").unwrap();
        let filter = FileFilter::new(&file).unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = watch_dirs(filter.dirs(), tx).unwrap();

        // Our own reads must not look like a change.
        std::fs::read_to_string(&file).unwrap();
        std::fs::write(dir.path().join("marker-1"), "").unwrap();
        assert!(!relevant_before_marker(&rx, &filter, "marker-1"));

        // A sibling temporary file, written and renamed over the file.
        let tmp = dir.path().join(".vmctl.kdl.tmp");
        std::fs::write(&tmp, "vm \"b\" { os \"diag\" }\n").unwrap();
        std::fs::write(dir.path().join("marker-2"), "").unwrap();
        assert!(!relevant_before_marker(&rx, &filter, "marker-2"));
        std::fs::rename(&tmp, &file).unwrap();
        std::fs::write(dir.path().join("marker-3"), "").unwrap();
        assert!(relevant_before_marker(&rx, &filter, "marker-3"));

        // A subdirectory's content (e.g. the state dir beside the file) is not watched.
        std::fs::create_dir(dir.path().join(".vmctl")).unwrap();
        std::fs::write(dir.path().join(".vmctl").join("vmctl.kdl"), "").unwrap();
        std::fs::write(dir.path().join("marker-4"), "").unwrap();
        assert!(!relevant_before_marker(&rx, &filter, "marker-4"));
    }

    #[test]
    fn edits_to_a_symlinks_target_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("dotfiles");
        std::fs::create_dir(&real_dir).unwrap();
        let target = real_dir.join("lab.kdl");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("vmctl.kdl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let filter = FileFilter::following_symlink(&link).unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = watch_dirs(filter.dirs(), tx).unwrap();
        std::fs::write(&target, "vm \"a\" { os \"diag\" }\n").unwrap();
        std::fs::write(real_dir.join("marker"), "").unwrap();
        assert!(relevant_before_marker(&rx, &filter, "marker"));
    }

    #[test]
    fn an_in_place_save_settles_into_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmctl.kdl");
        std::fs::write(&file, "").unwrap();
        let filter = FileFilter::new(&file).unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = watch_dirs(filter.dirs(), tx).unwrap();
        std::fs::write(&file, "vm \"a\" { os \"diag\" }\n").unwrap();
        std::fs::write(dir.path().join("marker"), "").unwrap();

        let mut d = Debouncer::new(Duration::from_millis(100));
        loop {
            let Msg::Fs(Ok(ev), at, ns) = rx.recv_timeout(BOUND).unwrap() else {
                continue;
            };
            if filter.relevant(&ev) {
                d.record(at, ns);
            }
            if ev.paths.iter().any(|p| p.ends_with("marker")) {
                break;
            }
        }
        let deadline = d.deadline().unwrap();
        let burst = d.settle(deadline).unwrap();
        // truncate/modify/close-write of one save: at least one event, one burst.
        assert!(burst.events >= 1);
        assert!(d.settle(deadline + Duration::from_secs(1)).is_none());
    }
}
