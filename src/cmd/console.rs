//! `vmctl console NAME`: attach the terminal to a VM's serial console (COM1,
//! through the VMM's `console.sock`). The terminal goes raw so keys reach the
//! guest as typed; Ctrl-] detaches and leaves the VM running.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cli::FileArg;
use crate::cmd::Global;

/// Ctrl-] — the telnet/virsh detach key.
const DETACH: u8 = 0x1d;
/// With piped input: once the guest has answered (printed something after
/// the input ended), detach when the console has been quiet this long…
const QUIET: Duration = Duration::from_millis(300);
/// …or this long after the input ended, whichever comes first (a guest that
/// never answers; a slow or loaded host answers late, not never).
const ANSWER_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: FileArg,
    /// The VM to attach to.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Puts a terminal in raw mode until dropped.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enable(fd: i32) -> Option<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is an open terminal; saved is a valid out-pointer.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: fd is valid; raw is a fully initialised termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in enable() on the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let vm_dir = g
        .state_dir_for(&args.file.file)
        .join("vms")
        .join(&args.name);
    if !vm_dir.join("vm.json").is_file() {
        return Err(miette::miette!(
            help = "`vmctl status` lists the VMs in this state directory",
            "no VM named {:?} in {}",
            args.name,
            vm_dir.display()
        ));
    }
    let sock = vm_dir.join("console.sock");
    let stream = UnixStream::connect(&sock).map_err(|e| {
        miette::miette!(
            help = "is it running? `vmctl status` shows it; `vmctl logs` prints its console log",
            "cannot attach to the console of {:?} ({}): {e}",
            args.name,
            sock.display()
        )
    })?;
    let interactive = std::io::stdin().is_terminal();
    eprintln!(
        "Connected to the console of {}{}",
        args.name,
        if interactive {
            "; detach with Ctrl-]\r"
        } else {
            ""
        }
    );
    let _raw = if interactive {
        RawMode::enable(std::io::stdin().as_raw_fd())
    } else {
        None
    };

    let mut reader = stream
        .try_clone()
        .map_err(|e| miette::miette!("cannot use the console socket: {e}"))?;
    let started = Instant::now();
    let last_output = Arc::new(AtomicU64::new(0));
    let seen = last_output.clone();
    let output = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
            seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    });

    let mut writer = stream;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let (send, detach) = match chunk.iter().position(|&b| b == DETACH) {
            Some(i) if interactive => (&chunk[..i], true),
            _ => (chunk, false),
        };
        if writer.write_all(send).is_err() || detach {
            break;
        }
    }
    if interactive {
        let _ = writer.shutdown(std::net::Shutdown::Both);
        eprintln!("\r\nDetached from {}; the VM keeps running.\r", args.name);
    } else {
        // Piped input ended: let the guest answer, then detach once the
        // console has been quiet for QUIET (at most ANSWER_WAIT).
        let eof = started.elapsed();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = started.elapsed();
            let last = Duration::from_millis(last_output.load(Ordering::Relaxed));
            if piped_detach(now, eof, last) {
                break;
            }
        }
        let _ = writer.shutdown(std::net::Shutdown::Both);
    }
    let _ = output.join();
    Ok(ExitCode::SUCCESS)
}

/// Piped input ended at `eof` (times since the console attached); the last
/// output came at `last`. Detach once the guest has answered and then been
/// quiet for [`QUIET`], or [`ANSWER_WAIT`] after `eof` whatever it did.
fn piped_detach(now: Duration, eof: Duration, last: Duration) -> bool {
    let answered = last > eof;
    now >= eof + ANSWER_WAIT || (answered && now.saturating_sub(last) >= QUIET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_piped_console_waits_for_the_answer_then_for_quiet() {
        // Input ended at 1 s; nothing printed since: keep waiting, even long
        // after QUIET (a loaded host answers late).
        assert!(!piped_detach(ms(1_000 + 2_000), ms(1_000), ms(500)));
        // The guest answered at 4 s: detach 300 ms after its last byte.
        assert!(!piped_detach(ms(4_200), ms(1_000), ms(4_000)));
        assert!(piped_detach(ms(4_300), ms(1_000), ms(4_000)));
        // A guest that never answers: detach at ANSWER_WAIT.
        assert!(!piped_detach(ms(10_999), ms(1_000), ms(500)));
        assert!(piped_detach(ms(11_000), ms(1_000), ms(500)));
    }
}
