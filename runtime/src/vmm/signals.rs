//! SIGTERM / SIGINT / SIGHUP to a VMM mean "shut the VM down": the signals are
//! blocked in every thread and taken synchronously by one thread (sigwait),
//! which tells the main loop — so `kill <pid>` is a graceful stop that still
//! cleans up the pid file and sockets, never a crash.

use std::sync::mpsc::Sender;

const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block the stop signals in the calling thread; threads spawned afterwards
/// inherit the mask. Call before spawning any thread.
pub fn block() {
    let set = signal_set();
    // SAFETY: changes only this thread's signal mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Forward each stop signal as `make(signal)` to the main loop.
pub fn forward<E: Send + 'static>(to_main: Sender<E>, make: fn(i32) -> E) -> std::io::Result<()> {
    crate::confine::spawn(
        "signals".into(),
        crate::confine::ThreadKind::Signals,
        move || {
            let set = signal_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait reads the set and writes the signal number.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                if to_main.send(make(sig)).is_err() {
                    return;
                }
            }
        },
    )?;
    Ok(())
}
