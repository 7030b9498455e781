//! The VMM side of the control socket: accepts connections on `api.sock`
//! (mode 0600), reads one JSON request per line and hands it to the VMM's
//! main loop, which answers on a per-request channel.
//!
//! Who may talk to it: the socket's mode already keeps other users out, and
//! every connection is checked again by its peer credentials
//! (`SO_PEERCRED`): only the VMM's own user or root is served, so a socket
//! whose mode was loosened (or a directory that was) still answers nobody
//! else. Requests are bounded: a line of at most 64 KiB, a 60 s read
//! timeout, and a 10 s write timeout for a client that stops reading.

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
    crate::confine::spawn("api".into(), crate::confine::ThreadKind::Api, move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let to_main = to_main.clone();
            // Runs under the api thread's filter, which it inherits.
            let _ = std::thread::Builder::new()
                .name("api-conn".into())
                .spawn(move || {
                    crate::confine::mark(crate::confine::ThreadKind::Api);
                    serve(conn, &to_main, wrap)
                });
        }
    })?;
    Ok(())
}

/// The uid of the process at the other end of `conn` (`SO_PEERCRED`).
pub fn peer_uid(conn: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable ucred and `len` its size; the fd
    // is an open socket owned by `conn` for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether a peer with `uid` may use the VMM of user `owner`.
pub fn peer_allowed(uid: u32, owner: u32) -> bool {
    uid == owner || uid == 0
}

fn serve<E>(conn: UnixStream, to_main: &Sender<E>, wrap: fn(Pending) -> E) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let owner = unsafe { libc::geteuid() };
    match peer_uid(&conn) {
        Ok(uid) if peer_allowed(uid, owner) => {}
        other => {
            let who = other.map_or_else(|e| format!("unknown ({e})"), |u| u.to_string());
            tracing::warn!(peer_uid = %who, "control socket: refused a connection from another user");
            let mut bytes = serde_json::to_vec(&Response::err(format!(
                "refused: peer uid {who} is neither this VMM's user ({owner}) nor root"
            )))
            .unwrap_or_default();
            bytes.push(b'\n');
            let _ = out.write_all(&bytes);
            return;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::process::CommandExt;

    #[test]
    fn only_the_owner_and_root_are_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn peer_uid_is_the_connecting_process_user() {
        let (a, _b) = UnixStream::pair().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(peer_uid(&a).unwrap(), unsafe { libc::geteuid() });
    }

    /// A socket whose mode was loosened still serves no other user: the
    /// connection of a process running as `nobody` gets a refusal and is
    /// closed without its request reaching the main loop. (Needs root to
    /// switch user; elsewhere it says so and passes vacuously.)
    #[test]
    fn another_user_is_refused_even_on_a_world_writable_socket() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: needs root to connect as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (tx, rx) = mpsc::channel::<Pending>();
        spawn(listener, tx, |p| p).unwrap();
        let py = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(5)\ns.connect({:?})\ns.sendall(b'{{\"verb\":\"status\"}}\\n')\ntry:\n    sys.stdout.write(s.makefile().readline())\nexcept OSError as e:\n    sys.stdout.write('no answer: %s' % e)",
            path.display().to_string()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &py])
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut answer = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut answer)
            .unwrap();
        assert!(child.wait().unwrap().success(), "the client ran: {answer}");
        assert!(answer.contains("refused: peer uid 65534"), "{answer}");
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "the request never reached the main loop"
        );
    }
}
