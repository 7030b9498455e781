//! `vmctl host-rpc --state-dir DIR`: serve the host-rpc protocol
//! (vmctl-hostrpc, docs/scale-out.md) on stdin/stdout for a coordinator that
//! reached this host with `ssh HOST vmctl host-rpc ...`, acting on this
//! host's state directory through [`RuntimeBackend`](crate::backend).
//!
//! stdout carries the protocol and nothing else: before serving, the real
//! stdout is moved to a private close-on-exec descriptor and descriptor 1
//! pointed at stderr, so a stray print (or a child process) can never
//! corrupt the stream or keep the ssh session open. Logs go to stderr.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::FromRawFd;
use std::process::ExitCode;

use miette::{IntoDiagnostic, WrapErr, miette};
use vmctl_hostrpc::{FenceStore, Server, ServerInfo};

use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The host name `hello` reports (default: this machine's host name).
    #[arg(long)]
    pub host_name: Option<String>,
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    let dir = g
        .state_dir
        .clone()
        .ok_or_else(|| miette!("host-rpc needs --state-dir DIR (this host's state directory)"))?;
    let out = take_stdout()
        .into_diagnostic()
        .wrap_err("cannot set up stdout for the protocol")?;
    let backend = crate::backend::open(&dir).map_err(|e| miette!("{e}"))?;
    let info = ServerInfo {
        vmctl_version: env!("CARGO_PKG_VERSION").to_string(),
        host: args.host_name.unwrap_or_else(host_name),
        capacity: crate::backend::host_capacity(),
    };
    tracing::info!(state_dir = %dir.display(), host = %info.host, "host-rpc serving");
    let server = Server::new(&backend, FenceStore::new(&dir), info);
    server
        .serve(BufReader::new(std::io::stdin().lock()), BufWriter::new(out))
        .into_diagnostic()
        .wrap_err("host-rpc connection failed")?;
    Ok(ExitCode::SUCCESS)
}

/// The real stdout as a private close-on-exec file; descriptor 1 becomes a
/// copy of stderr.
fn take_stdout() -> std::io::Result<File> {
    // SAFETY: plain descriptor calls on 0..2, which this process owns; the
    // new descriptor is owned by the returned File alone.
    unsafe {
        let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::dup2(2, 1) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(File::from_raw_fd(fd))
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
