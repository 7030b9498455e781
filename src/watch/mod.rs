//! `vmctl watch`: reconcile on every settled change of the KDL file, heal
//! drift on a timer, and never destroy anything because of a bad save.
//!
//! The pieces: [`filter`] picks the file's events out of its directory,
//! [`debounce`] turns a save's burst of events into one change, [`guard`]
//! refuses empty files, [`backoff`] limits healing of a crash-looping VM,
//! [`session`] decides what each trigger does and prints it, [`engine`] is
//! the real validate + reconcile. This module owns the threads and the loop.

pub mod backoff;
pub mod clock;
pub mod debounce;
pub mod engine;
pub mod filter;
pub mod guard;
pub mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use miette::{IntoDiagnostic, WrapErr};
use notify::{RecursiveMode, Watcher};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::cmd::Global;
use debounce::Debouncer;
use engine::ReconcileEngine;
use filter::FileFilter;
use session::{Config, Session};

/// Exit code when a second Ctrl-C/SIGTERM interrupts a pass in progress.
pub const FORCED_EXIT: i32 = 130;

/// Everything `vmctl watch` was asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub file: PathBuf,
    pub parallelism: usize,
    pub debounce: Duration,
    pub config: Config,
}

enum Msg {
    /// A file-system event, with when it arrived (monotonic and in ns).
    Fs(notify::Result<notify::Event>, Instant, u64),
    Signal(i32),
}

/// Run until SIGINT or SIGTERM; VMs keep running afterwards.
pub fn run(g: &Global, opts: WatchOptions) -> miette::Result<()> {
    let filter = FileFilter::new(&opts.file)?;
    let (tx, rx) = mpsc::channel::<Msg>();

    // Signals first, so a Ctrl-C during the first pass is not lost. The first
    // one lets the current pass finish; a second one exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, FORCED_EXIT, Arc::clone(&stop))
            .into_diagnostic()
            .wrap_err("cannot install the signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .into_diagnostic()
            .wrap_err("cannot install the signal handlers")?;
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .into_diagnostic()
        .wrap_err("cannot install the signal handlers")?;
    let signals_handle = signals.handle();
    let stx = tx.clone();
    std::thread::Builder::new()
        .name("watch-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if stx.send(Msg::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .into_diagnostic()?;

    let ftx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = ftx.send(Msg::Fs(res, Instant::now(), clock::monotonic_ns()));
    })
    .into_diagnostic()
    .wrap_err("cannot start the file watcher")?;
    watcher
        .watch(filter.dir(), RecursiveMode::NonRecursive)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot watch {}", filter.dir().display()))?;
    drop(tx);

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
                session.stopping(if sig == SIGTERM { "SIGTERM" } else { "SIGINT" });
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
    signals_handle.close();
    drop(watcher);
    result
}
