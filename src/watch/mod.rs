//! `vmctl watch`: reconcile on every settled change of the KDL file, heal
//! drift on a timer, and never destroy anything because of a bad save.
//!
//! The pieces: [`filter`] picks the file's events out of its directory,
//! [`debounce`] turns a save's burst of events into one change, [`guard`]
//! refuses empty files, [`backoff`] limits healing of a crash-looping VM
//! and [`hold`] keeps it out of a pass,
//! [`session`] decides what each trigger does and prints it, [`engine`] is
//! the real validate + reconcile, [`source`] the event and signal threads,
//! [`instance`] keeps a second watch off the same state directory.
//! This module owns the loop.

pub mod backoff;
pub mod clock;
pub mod debounce;
pub mod engine;
pub mod filter;
pub mod guard;
pub mod hold;
pub mod instance;
pub mod session;
pub mod source;

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::cmd::Global;
use debounce::{Burst, Debouncer};
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
    let filter = FileFilter::following_symlink(&opts.file)?;
    let _instance = instance::acquire(&g.state_dir_for(&opts.file))?;
    let (tx, rx) = mpsc::channel::<Msg>();
    // Signals first, so a Ctrl-C during the first pass is not lost; the
    // watcher before the first pass, so a save during it is not lost either.
    let signals = source::signals(tx.clone())?;
    let watcher = source::watch_dirs(filter.dirs(), tx)?;

    let engine = ReconcileEngine::new(g, opts.file.clone(), opts.parallelism);
    let mut session = Session::new(engine, std::io::stdout(), opts.config);
    let mut debouncer = Debouncer::new(opts.debounce);
    session.startup(Instant::now());

    let result = loop {
        if session.output_closed() {
            break Ok(());
        }
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
        match step(&mut debouncer, session.next_drift(), now) {
            Step::Change(burst) => session.on_change(now, Some(burst)),
            Step::Drift => session.on_drift(now),
            Step::Wait => {}
        }
    };
    signals.close();
    drop(watcher);
    result
}

/// What the loop does after a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Change(Burst),
    Drift,
    Wait,
}

/// A settled save first; a due drift check only when no save is settling
/// (the file may be half written).
fn step(debouncer: &mut Debouncer, next_drift: Option<Instant>, now: Instant) -> Step {
    if let Some(burst) = debouncer.settle(now) {
        return Step::Change(burst);
    }
    if debouncer.deadline().is_none() && next_drift.is_some_and(|d| now >= d) {
        return Step::Drift;
    }
    Step::Wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settling_save_holds_back_a_due_drift_check() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100));
        assert_eq!(step(&mut d, Some(t0), t0), Step::Drift);
        assert_eq!(step(&mut d, None, t0), Step::Wait);
        assert_eq!(step(&mut d, Some(t0 + ms(1)), t0), Step::Wait);
        d.record(t0, 0);
        assert_eq!(step(&mut d, Some(t0), t0 + ms(50)), Step::Wait);
        assert!(matches!(
            step(&mut d, Some(t0), t0 + ms(100)),
            Step::Change(_)
        ));
        assert_eq!(step(&mut d, Some(t0), t0 + ms(100)), Step::Drift);
    }
}
