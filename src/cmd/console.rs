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
/// With piped input: detach once the console has been quiet this long after
/// the input ended…
const QUIET: Duration = Duration::from_millis(300);
/// …or this long after it ended, whichever comes first.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

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
            if now >= eof + ANSWER_WAIT || (now >= eof + QUIET && now.saturating_sub(last) >= QUIET)
            {
                break;
            }
        }
        let _ = writer.shutdown(std::net::Shutdown::Both);
    }
    let _ = output.join();
    Ok(ExitCode::SUCCESS)
}
