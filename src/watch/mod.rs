//! `vmctl watch`: reconcile on every settled change of the KDL file, heal
//! drift on a timer, and never destroy anything because of a bad save.
//!
//! The pieces: [`filter`] picks the file's events out of its directory,
//! [`debounce`] turns a save's burst of events into one change, [`guard`]
//! refuses empty files, [`backoff`] limits healing of a crash-looping VM,
//! [`session`] decides what each trigger does and prints it, [`engine`] is
//! the real validate + reconcile, [`source`] the event and signal threads.
//! This module owns the loop.

pub mod backoff;
pub mod clock;
pub mod debounce;
pub mod engine;
pub mod filter;
pub mod guard;
pub mod session;
pub mod source;

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::cmd::Global;
use debounce::Debouncer;
use engine::ReconcileEngine;
use filter::FileFilter;
use session::{Config, Session};
use source::Msg;

/// Everything `vmctl watch` was asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub file: PathBuf,
    pub parallelism: usize,
    pub debounce: Duration,
    pub config: Config,
}

/// Run until SIGINT or SIGTERM; VMs keep running afterwards.
pub fn run(g: &Global, opts: WatchOptions) -> miette::Result<()> {
    let filter = FileFilter::new(&opts.file)?;
    let (tx, rx) = mpsc::channel::<Msg>();
    // Signals first, so a Ctrl-C during the first pass is not lost; the
    // watcher before the first pass, so a save during it is not lost either.
    let signals = source::signals(tx.clone())?;
    let watcher = source::watch_dir(filter.dir(), tx)?;

    let engine = ReconcileEngine {
        global: g,
        file: opts.file.clone(),
        parallelism: opts.parallelism,
    };
    let mut session = Session::new(engine, std::io::stdout(), opts.config);
    let mut debouncer = Debouncer::new(opts.debounce);
    session.startup(Instant::now());

    let result = loop {
        let now = Instant::now();
        let wake = [debouncer.deadline(), session.next_drift()]
            .into_iter()
            .flatten()
            .min();
        let msg = match wake {
            Some(w) => rx.recv_timeout(w.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Fs(Ok(event), at, at_ns)) => {
                if filter.relevant(&event) {
                    debouncer.record(at, at_ns);
                }
            }
            Ok(Msg::Fs(Err(e), _, _)) => session.note(&format!("file watch error: {e}")),
            Ok(Msg::Signal(sig)) => {
                session.stopping(source::signal_name(sig));
                break Ok(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                break Err(miette::miette!("the file watcher stopped unexpectedly"));
            }
        }
        let now = Instant::now();
        if let Some(burst) = debouncer.settle(now) {
            session.on_change(now, Some(burst));
        } else if debouncer.deadline().is_none() && session.next_drift().is_some_and(|d| now >= d) {
            // Never while a save is still settling: the file may be half written.
            session.on_drift(now);
        }
    };
    signals.close();
    drop(watcher);
    result
}
