//! `console.sock`: every client gets COM1's output from now on; what it
//! writes is typed into COM1 (of whichever machine is current: the COM1
//! handle is swapped on reboot).

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::machine::Com1;

pub(super) fn spawn(
    listener: UnixListener,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    com1: Arc<Mutex<Option<Com1>>>,
) -> std::io::Result<()> {
    crate::confine::spawn(
        "console".into(),
        crate::confine::ThreadKind::Console,
        move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_write_timeout(Some(Duration::from_millis(50)));
                if let (Ok(out), Ok(mut list)) = (conn.try_clone(), clients.lock()) {
                    list.push(out);
                }
                let com1 = com1.clone();
                // Runs under the console thread's filter, which it inherits.
                let _ = std::thread::Builder::new()
                    .name("console-in".into())
                    .spawn(move || {
                        crate::confine::mark(crate::confine::ThreadKind::Console);
                        type_into(conn, &com1)
                    });
            }
        },
    )?;
    Ok(())
}

/// Copy what a client writes into COM1's receive FIFO, waiting while it is
/// full.
fn type_into(mut conn: UnixStream, com1: &Mutex<Option<Com1>>) {
    let mut buf = [0u8; 256];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            return;
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let taken = com1
                .lock()
                .ok()
                .and_then(|c| {
                    c.as_ref()
                        .and_then(|s| s.lock().ok().map(|mut s| s.enqueue_input(rest)))
                })
                .unwrap_or(rest.len());
            rest = &rest[taken..];
            if !rest.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
