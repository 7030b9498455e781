//! The VMM side of the control socket: accepts connections on `api.sock`
//! (mode 0600), reads one JSON request per line and hands it to the VMM's
//! main loop, which answers on a per-request channel.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use super::protocol::{Request, Response};

/// Longest request line accepted.
pub const MAX_REQUEST_LINE: u64 = 64 * 1024;

/// A request waiting for the main loop's answer.
pub struct Pending {
    pub request: Request,
    pub reply: Sender<Response>,
    /// Signalled once the response has been written to the client (so a VMM
    /// that exits right after answering does not cut it off).
    pub written: Receiver<()>,
}

/// Bind `path` (replacing a stale socket) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serve connections forever on a thread; every request goes to `to_main`
/// through `wrap`.
pub fn spawn<E: Send + 'static>(
    listener: UnixListener,
    to_main: Sender<E>,
    wrap: fn(Pending) -> E,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let to_main = to_main.clone();
                let _ = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || serve(conn, &to_main, wrap));
            }
        })?;
    Ok(())
}

fn serve<E>(conn: UnixStream, to_main: &Sender<E>, wrap: fn(Pending) -> E) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(std::io::Read::take(conn, u64::MAX));
    loop {
        let mut line = String::new();
        reader.get_mut().set_limit(MAX_REQUEST_LINE);
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let (done, written) = mpsc::channel();
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::err(format!("bad request: {e}")),
            Ok(request) => {
                let (reply, answer) = mpsc::channel();
                if to_main
                    .send(wrap(Pending {
                        request,
                        reply,
                        written,
                    }))
                    .is_err()
                {
                    return;
                }
                match answer.recv() {
                    Ok(r) => r,
                    Err(_) => Response::err("the VMM is exiting"),
                }
            }
        };
        let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
        bytes.push(b'\n');
        let ok = out.write_all(&bytes).is_ok();
        let _ = done.send(());
        if !ok {
            return;
        }
    }
}
