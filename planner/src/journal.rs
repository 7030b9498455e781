//! The apply journal, `<state>/journal.jsonl`: an intent log, one JSON object
//! per line, fsync'd before an action runs and after it ends.
//!
//! A crashed or killed apply leaves an action `started` without `finished` or
//! `failed`; the next apply reports it ([`Journal::interrupted`]) and its fresh
//! plan from observed state completes the work (actions are idempotent).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::capabilities::ActionKind;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the journal {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the journal {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What happened to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalEvent {
    Started,
    Finished,
    Failed,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    pub apply_id: String,
    pub action: String,
    pub vm: String,
    pub kind: ActionKind,
    pub event: JournalEvent,
    /// `finished` only: the action was already done, nothing was changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// `failed` only: the backend's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A fresh apply id: start time and process id (`1764143000123-4242`).
pub fn new_apply_id() -> String {
    format!("{}-{}", now_ms(), std::process::id())
}

/// A journal larger than this is compacted when the next apply (or destroy)
/// opens it, so it holds about one apply's worth of lines plus this.
pub const COMPACT_AT: u64 = 1 << 20;

/// An open journal, appended to by every worker of one apply.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// The journal file of a state directory.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("journal.jsonl")
    }

    /// Open (creating the state directory and the file if needed) for
    /// appending. A journal larger than [`COMPACT_AT`] is compacted first
    /// ([`Journal::compact`]). Callers hold the state lock, so no other
    /// apply writes the journal meanwhile.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        Self::open_with_limit(state_dir, COMPACT_AT)
    }

    /// [`Journal::open`], compacting above `limit` bytes.
    pub fn open_with_limit(state_dir: &Path, limit: u64) -> Result<Self, JournalError> {
        let path = Self::path_in(state_dir);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > limit) {
            Self::compact(state_dir)?;
        }
        let open = || -> std::io::Result<File> {
            std::fs::create_dir_all(state_dir)?;
            OpenOptions::new().create(true).append(true).open(&path)
        };
        let file = open().map_err(|source| JournalError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Journal {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`Journal::interrupted`] for this journal's state directory.
    pub fn interrupted_before(&self) -> Result<Vec<JournalEntry>, JournalError> {
        match self.path.parent() {
            Some(dir) => Self::interrupted(dir),
            None => Ok(Vec::new()),
        }
    }

    /// Append one line and fsync it before returning.
    pub fn append(&self, entry: &JournalEntry) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(entry).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push('\n');
        // A poisoned lock only means another worker panicked mid-write; the
        // file handle itself is still usable.
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Every entry in the journal of `state_dir` (none if it does not exist).
    /// Lines that do not parse (a torn last line after a crash) are skipped.
    pub fn read(state_dir: &Path) -> Result<Vec<JournalEntry>, JournalError> {
        let path = Self::path_in(state_dir);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(JournalError::Read { path, source }),
        };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|source| JournalError::Read {
                path: path.clone(),
                source,
            })?;
            match serde_json::from_str::<JournalEntry>(&line) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(path = %path.display(), "skipping a journal line: {e}"),
            }
        }
        Ok(out)
    }

    /// Rewrite the journal (atomically: temp file, fsync, rename) keeping
    /// only what [`Journal::interrupted`] needs — the `started` line of
    /// every action of the most recent apply that never finished, and the
    /// last line (which names that apply). Entries of finished or failed
    /// actions are dropped; what `interrupted` reports is unchanged.
    pub fn compact(state_dir: &Path) -> Result<(), JournalError> {
        let path = Self::path_in(state_dir);
        let entries = Self::read(state_dir)?;
        let open = Self::open_actions(&entries);
        let mut keep: Vec<&JournalEntry> = open.iter().collect();
        if let Some(last) = entries.last()
            && !keep.contains(&last)
        {
            keep.push(last);
        }
        let mut text = String::new();
        for e in keep {
            let line = serde_json::to_string(e).map_err(|e| JournalError::Write {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            text.push_str(&line);
            text.push('\n');
        }
        let tmp = state_dir.join(".journal.jsonl.compact");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(state_dir)?.sync_all()
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            JournalError::Write {
                path: path.clone(),
                source,
            }
        })?;
        tracing::info!(path = %path.display(), "journal compacted");
        Ok(())
    }

    /// The actions of the most recent apply that started and never ended:
    /// that apply was killed or crashed while they ran.
    pub fn interrupted(state_dir: &Path) -> Result<Vec<JournalEntry>, JournalError> {
        Ok(Self::open_actions(&Self::read(state_dir)?))
    }

    /// The `started` entries of the last apply in `entries` that have no
    /// `finished` or `failed` after them.
    fn open_actions(entries: &[JournalEntry]) -> Vec<JournalEntry> {
        let Some(last) = entries.last().map(|e| e.apply_id.as_str()) else {
            return Vec::new();
        };
        let mut open: Vec<JournalEntry> = Vec::new();
        for e in entries.iter().filter(|e| e.apply_id == last) {
            match e.event {
                JournalEvent::Started => open.push(e.clone()),
                JournalEvent::Finished | JournalEvent::Failed => {
                    open.retain(|o| o.action != e.action);
                }
            }
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(apply: &str, action: &str, event: JournalEvent) -> JournalEntry {
        JournalEntry {
            ts: 1,
            apply_id: apply.into(),
            action: action.into(),
            vm: "web".into(),
            kind: ActionKind::Create,
            event,
            skipped: false,
            error: None,
        }
    }

    #[test]
    fn lines_round_trip_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.append(&entry("a", "web:create", JournalEvent::Started))
            .unwrap();
        j.append(&entry("a", "web:create", JournalEvent::Finished))
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(b"{\"ts\":")
            .unwrap();
        let all = Journal::read(dir.path()).unwrap();
        assert_eq!(all.len(), 2);
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert!(text.starts_with(
            "{\"ts\":1,\"apply_id\":\"a\",\"action\":\"web:create\",\"vm\":\"web\",\"kind\":\"create\",\"event\":\"started\"}\n"
        ));
    }

    /// Issue 15: the journal was never rotated. Above the limit, opening
    /// it compacts it to what crash recovery needs; the interrupted actions
    /// it reports are exactly those reported before.
    #[test]
    fn a_large_journal_is_compacted_keeping_interrupted_actions() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        for i in 0..2000 {
            let apply = format!("old-{i}");
            j.append(&entry(&apply, "web:create", JournalEvent::Started))
                .unwrap();
            j.append(&entry(&apply, "web:create", JournalEvent::Finished))
                .unwrap();
        }
        // The latest apply was killed with two actions open.
        j.append(&entry("last", "a:create", JournalEvent::Started))
            .unwrap();
        j.append(&entry("last", "b:create", JournalEvent::Started))
            .unwrap();
        j.append(&entry("last", "c:create", JournalEvent::Started))
            .unwrap();
        j.append(&entry("last", "a:create", JournalEvent::Failed))
            .unwrap();
        j.append(&entry("last", "c:create", JournalEvent::Finished))
            .unwrap();
        drop(j);
        let before = Journal::interrupted(dir.path()).unwrap();
        let big = std::fs::metadata(Journal::path_in(dir.path()))
            .unwrap()
            .len();
        assert!(big > 100_000, "{big}");

        let j = Journal::open_with_limit(dir.path(), 64 << 10).unwrap();
        let small = std::fs::metadata(j.path()).unwrap().len();
        assert!(small < 1_000, "compacted to {small} bytes");
        let after = Journal::interrupted(dir.path()).unwrap();
        assert_eq!(after, before);
        assert_eq!(
            after.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["b:create"]
        );
        // Appending goes on after compaction.
        j.append(&entry("next", "b:create", JournalEvent::Started))
            .unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap().len(), 3);
        // Below the limit nothing is rewritten.
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap().len(), 3);
        drop(j);
    }

    #[test]
    fn interrupted_looks_at_the_last_apply_only() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.append(&entry("a", "old:create", JournalEvent::Started))
            .unwrap();
        j.append(&entry("b", "web:create", JournalEvent::Started))
            .unwrap();
        j.append(&entry("b", "db:create", JournalEvent::Started))
            .unwrap();
        j.append(&entry("b", "db:create", JournalEvent::Failed))
            .unwrap();
        let open = Journal::interrupted(dir.path()).unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].action, "web:create");
        assert!(
            Journal::interrupted(&dir.path().join("none"))
                .unwrap()
                .is_empty()
        );
    }
}
