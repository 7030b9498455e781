//! The runtime as the apply engine sees it: VMs in a state directory that can
//! be listed, observed, created, started, stopped and destroyed — each
//! operation idempotent (start on a running VM and destroy of a missing VM
//! are no-ops) and safe to repeat after a crash.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmctl_spec::model::{DiskSpec, SourceFormat, VmSpec};

use crate::api::{ApiClient, Status};
use crate::cgroup::CpuController;
use crate::os::SourceImage;
use crate::process::{self, ProcessError, VmmCommand};
use crate::snapshot::Snapshot;
use crate::state::{Desired, Record, StateDir, StateError, VmDir};

/// Extra time after a graceful shutdown's grace period before SIGKILL.
const KILL_MARGIN: Duration = Duration::from_secs(5);

/// How long to wait for a VMM that says it stops the VM within `ms`: that,
/// plus the margin for its exit, and never more than ten minutes whatever
/// it says.
fn stopping_wait(ms: u64) -> Duration {
    (Duration::from_millis(ms) + KILL_MARGIN).min(Duration::from_secs(600))
}

/// Whether an observed live VMM is on its way out, and how long to give it:
/// it says so (`stopping_in_ms`, while the guest is asked to power off), or
/// it no longer answers while the VM's record says a stop was asked for
/// (the guest is off and the VMM is tearing down: its control loop is gone
/// before its pid file is).
fn exit_wait(o: &Observed) -> Option<Duration> {
    match &o.status {
        Some(s) => s.stopping_in_ms.map(stopping_wait),
        None if o.record.desired == Desired::Stopped => Some(KILL_MARGIN),
        None => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("VM {0:?} does not exist")]
    NoSuchVm(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Resolve(#[from] crate::resolve::ResolveError),
    #[error("VM {vm:?} has no disk {disk:?}")]
    NoSuchDisk { vm: String, disk: String },
    #[error("cannot resize disk {disk:?} of VM {vm:?}: {message}")]
    Resize {
        vm: String,
        disk: String,
        message: String,
    },
    #[error("VM {vm:?}: {message}")]
    Hotplug { vm: String, message: String },
    #[error("VM {vm:?}: {message}")]
    Os { vm: String, message: String },
    #[error("VM {vm:?}, disk {disk:?}: {source}")]
    DiskFile {
        vm: String,
        disk: String,
        #[source]
        source: crate::disk_file::DiskFileError,
    },
    #[error(
        "VM {vm:?}, disk {disk:?}: disk file {path} is in use by VM {holder:?} (its VMM holds the file's lock); two VMs never share a disk"
    )]
    DiskInUse {
        vm: String,
        disk: String,
        path: PathBuf,
        holder: String,
    },
    #[error(
        "VM {vm:?}, disk {disk:?}: cannot move the disk file {from} to {to}: {to} already exists (remove it, or choose another path)"
    )]
    MoveTargetExists {
        vm: String,
        disk: String,
        from: PathBuf,
        to: PathBuf,
    },
    #[error("VM {vm:?}: consistent copy failed: {message}")]
    Snapshot { vm: String, message: String },
    #[error("VM {name:?} is {state}; refusing to {action}")]
    Busy {
        name: String,
        state: &'static str,
        action: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub use vmctl_spec::state::RunState;

/// One VM as it really is.
#[derive(Debug, Clone)]
pub struct Observed {
    pub record: Record,
    /// `running`, `stopped` or `crashed` (never `paused`: that is the
    /// VMM's own status).
    pub live: RunState,
    pub pid: Option<i32>,
    /// The VMM's own status, when it answered.
    pub status: Option<Status>,
}

/// Pin the SSH host key the guest reported (the first one only; see
/// `host_key`). A failure to write the pin is logged: observing must not
/// fail for it, and `vmctl ssh` says when there is no pin.
fn pin_host_key(name: &str, dir: &VmDir, key: &str) {
    match crate::host_key::pin(dir, key) {
        Ok(crate::host_key::Pin::Pinned) => {
            tracing::info!(vm = name, "pinned the SSH host key the guest reported");
        }
        Ok(crate::host_key::Pin::Same) => {}
        Ok(crate::host_key::Pin::Changed { pinned }) => tracing::warn!(
            vm = name,
            reported = key,
            pinned = %pinned,
            "the guest reports a different SSH host key than the one pinned at its first boot; `vmctl ssh` keeps checking against the pinned one"
        ),
        Err(e) => tracing::warn!(vm = name, error = %e, "cannot pin the guest's SSH host key"),
    }
}

/// The VMs of one state directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    state: StateDir,
    vmm: Option<VmmCommand>,
    /// The host's cpu cgroup controller, if vmctl can use it.
    cpu: Option<CpuController>,
    /// Each VM's `console.log` is rotated when it would pass this.
    console_log_max: u64,
    /// Provides the built-in Linux OSes (images, root disks, configuration).
    os: Option<std::sync::Arc<dyn crate::os::OsProvider>>,
}

impl Runtime {
    /// Open (and create if needed) a state directory.
    pub fn open(state_dir: impl Into<PathBuf>) -> Result<Self, RuntimeError> {
        let state = StateDir::new(state_dir);
        let vms = state.vms_dir();
        std::fs::create_dir_all(&vms).map_err(io(&vms))?;
        Ok(Runtime {
            state,
            vmm: None,
            cpu: CpuController::usable(),
            console_log_max: crate::devices::serial::CONSOLE_LOG_MAX,
            os: None,
        })
    }

    /// Boot the built-in Linux OSes through `provider` (the control plane's
    /// image builder); without one, only `diag` and `image` VMs boot.
    pub fn with_os_provider(mut self, provider: std::sync::Arc<dyn crate::os::OsProvider>) -> Self {
        self.os = Some(provider);
        self
    }

    /// Rotate each VM's `console.log` at `bytes` instead of
    /// [`crate::devices::serial::CONSOLE_LOG_MAX`] (for VMs started from now on).
    pub fn with_console_log_max(mut self, bytes: u64) -> Self {
        self.console_log_max = bytes.max(1);
        self
    }

    /// Use `cmd` to start VMMs instead of re-executing this binary.
    pub fn with_vmm_command(mut self, cmd: VmmCommand) -> Self {
        self.vmm = Some(cmd);
        self
    }

    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    pub fn vm_dir(&self, name: &str) -> VmDir {
        self.state.vm(name)
    }

    /// Every VM record, by name. A VM destroyed while we list (its
    /// directory or `vm.json` gone between the directory listing and the
    /// read) is simply not listed.
    pub fn list(&self) -> Result<Vec<Record>, RuntimeError> {
        let mut out = Vec::new();
        for name in self.state.vm_names()? {
            if let Some(rec) = self.state.vm(&name).read_record_if_exists()? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// The VM's record, liveness and live status; None if it does not exist.
    pub fn observe(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        let obs = self.observe_once(name)?;
        // A VMM in the middle of a shutdown (asked by a stop whose vmctl
        // may be gone: an apply killed inside a restart) is about to exit.
        // Planning a live change for it would fail once it has, so wait for
        // the exit and observe what it leaves.
        if let Some(o) = &obs
            && let Some(pid) = o.pid
            && let Some(wait) = exit_wait(o)
        {
            tracing::info!(
                vm = name,
                pid,
                ?wait,
                "the VMM is shutting down; waiting for it to exit"
            );
            if process::wait_gone(pid, &self.state.vm(name).path, wait) {
                return self.observe_once(name);
            }
        }
        Ok(obs)
    }

    fn observe_once(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        let dir = self.state.vm(name);
        // No record (or one that vanished just now: another action is
        // destroying this VM) is no VM.
        let Some(record) = dir.read_record_if_exists()? else {
            return Ok(None);
        };
        let mut pid = dir.read_pid();
        let mut alive = pid.is_some_and(|p| process::is_vmm_of(p, &dir.path));
        if !alive && process::vmm_lock_held(&dir.path) {
            // A VMM is starting (its pid file is not written yet): wait for it
            // rather than mistake it for a stopped or crashed VM.
            if let Some(p) = process::wait_for_holder(&dir.path, process::READY_TIMEOUT) {
                pid = Some(p);
                alive = true;
            }
        }
        let (live, status) = if alive {
            (
                RunState::Running,
                ApiClient::new(dir.api_sock()).status().ok(),
            )
        } else if pid.is_some() {
            (RunState::Crashed, None)
        } else if record.desired == Desired::Running {
            match dir.read_exit_note() {
                Some(note) if note.is_clean() => (RunState::Stopped, None),
                _ => (RunState::Crashed, None),
            }
        } else {
            (RunState::Stopped, None)
        };
        if let Some(key) = status
            .as_ref()
            .and_then(|s| s.guest.as_ref())
            .and_then(crate::host_key::from_report)
        {
            pin_host_key(name, &dir, &key);
        }
        Ok(Some(Observed {
            record,
            live,
            pid: pid.filter(|_| alive),
            status,
        }))
    }

    /// Write a VM's record (atomically).
    pub fn write_record(&self, record: &Record) -> Result<(), RuntimeError> {
        let dir = self.state.vm(&record.spec.name);
        std::fs::create_dir_all(&dir.path).map_err(io(&dir.path))?;
        Ok(dir.write_record(record)?)
    }

    /// Create the VM's directory, disk files (sparse) and record; start it
    /// when `autostart`. Existing disk files keep their data and are grown
    /// to the declared size when shorter.
    pub fn create(&self, spec: &VmSpec) -> Result<(), RuntimeError> {
        let dir = self.state.vm(&spec.name);
        // What each new disk starts as, all checked before anything is
        // created: an unreadable, corrupt or too big `source` leaves no VM
        // directory behind. An existing disk keeps its data and is only
        // grown when shorter than declared (a restart that grows a disk
        // comes through here).
        let mut starts = Vec::with_capacity(spec.disks.len());
        for disk in &spec.disks {
            // A regular file or nothing yet (not a device, directory, FIFO).
            crate::disk_file::check_path(&dir.disk_path(disk)).map_err(|source| {
                RuntimeError::DiskFile {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    source,
                }
            })?;
            let start = if dir.disk_path(disk).exists() {
                None
            } else {
                self.disk_start(spec, disk)?
            };
            starts.push(start);
        }
        let disks = dir.disks_dir();
        std::fs::create_dir_all(&disks).map_err(io(&disks))?;
        for (disk, start) in spec.disks.iter().zip(&starts) {
            let path = dir.disk_path(disk);
            if let Some(start) = start {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                // A disk made anew from an image or a source is a new
                // guest identity: its host key is pinned again when it
                // first reports one.
                let pin = dir.ssh_host_key();
                if let Err(e) = std::fs::remove_file(&pin)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(io(&pin)(e));
                }
                self.import(spec, start, &path)?;
            }
            // Guest data: the disk is the VM owner's alone.
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path))?;
            let len = f.metadata().map_err(io(&path))?.len();
            if len < disk.size_bytes {
                f.set_len(disk.size_bytes).map_err(io(&path))?;
            }
        }
        let desired = if spec.autostart {
            Desired::Running
        } else {
            Desired::Stopped
        };
        self.write_record(&Record::new(spec.clone(), desired))?;
        if spec.autostart {
            self.start(&spec.name)?;
        }
        Ok(())
    }

    /// What a new disk starts as: its `source` (inspected by the OS
    /// provider, which knows image formats; without one only raw), the OS
    /// image's root filesystem, or nothing (empty). A start bigger than the
    /// declared size is an error naming both.
    fn disk_start(&self, spec: &VmSpec, disk: &DiskSpec) -> Result<Option<Start>, RuntimeError> {
        let os_err = |message: String| RuntimeError::Os {
            vm: spec.name.clone(),
            message,
        };
        let (from, image) = match (&disk.source, &self.os) {
            (Some(source), Some(os)) => {
                let image = os
                    .inspect_source(source, disk.source_format)
                    .map_err(os_err)?;
                (source.clone(), image)
            }
            (Some(source), None) => {
                if let Some(f) = disk.source_format.filter(|f| *f != SourceFormat::Raw) {
                    return Err(os_err(format!(
                        "{}: cannot import a {f} image without the control plane's \
                         image support (only raw)",
                        source.display()
                    )));
                }
                (source.clone(), raw_image(source)?)
            }
            (None, Some(os)) => match os.disk_source(spec, disk).map_err(os_err)? {
                Some(from) => {
                    let image = raw_image(&from)?;
                    (from, image)
                }
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        if image.virtual_size > disk.size_bytes {
            let need = image.virtual_size.div_ceil(1 << 20);
            let what = match image.format {
                SourceFormat::Raw => String::new(),
                f => format!(" a {f} image of"),
            };
            return Err(os_err(format!(
                "disk {:?} is declared {} bytes ({} MiB), smaller than {} ({what} {} bytes) \
                 that it starts as; declare at least {need} MiB",
                disk.name,
                disk.size_bytes,
                disk.size_bytes >> 20,
                from.display(),
                image.virtual_size,
            )));
        }
        Ok(Some(Start { from, image }))
    }

    /// Make `to` from `start`, whole or not at all (see `copy_whole`).
    fn import(&self, spec: &VmSpec, start: &Start, to: &Path) -> Result<(), RuntimeError> {
        let os = match (start.image.format, &self.os) {
            (SourceFormat::Raw, _) => {
                // Copied beside it and renamed: a create killed halfway
                // leaves no half disk that the next apply would accept.
                copy_whole(&start.from, to)?;
                return Ok(());
            }
            (_, Some(os)) => os,
            (f, None) => {
                return Err(RuntimeError::Os {
                    vm: spec.name.clone(),
                    message: format!("{}: cannot import a {f} image", start.from.display()),
                });
            }
        };
        let partial = crate::sparse::partial_path(to);
        let done = os
            .convert_source(&start.from, &start.image, &partial)
            .map_err(|message| RuntimeError::Os {
                vm: spec.name.clone(),
                message,
            })
            .and_then(|()| {
                std::fs::File::open(&partial)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&partial))?;
                std::fs::rename(&partial, to).map_err(io(to))
            });
        if done.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        done
    }

    fn vmm_command(&self) -> Result<VmmCommand, RuntimeError> {
        match &self.vmm {
            Some(c) => Ok(c.clone()),
            None => Ok(VmmCommand::current()?),
        }
    }

    /// Start the VM's VMM (no-op when it is running). Returns its pid.
    pub fn start(&self, name: &str) -> Result<i32, RuntimeError> {
        let Some(obs) = self.observe(name)? else {
            return Err(RuntimeError::NoSuchVm(name.into()));
        };
        let dir = self.state.vm(name);
        if obs.record.desired != Desired::Running {
            let mut rec = obs.record.clone();
            rec.desired = Desired::Running;
            dir.write_record(&rec)?;
        }
        if let (RunState::Running, Some(pid)) = (obs.live, obs.pid) {
            return Ok(pid);
        }
        self.check_disks_free(&obs.record.spec)?;
        // What the guest reads at boot (its configuration), written while
        // it is stopped.
        if let Some(os) = &self.os {
            let spec = &obs.record.spec;
            let disks: Vec<_> = spec
                .disks
                .iter()
                .map(|d| (d.clone(), dir.disk_path(d)))
                .collect();
            let nics: Vec<_> = crate::resolve::resolve_nics(&self.state, spec)?
                .into_iter()
                .map(|n| n.guest)
                .collect();
            os.configure(spec, &disks, &nics)
                .map_err(|message| RuntimeError::Os {
                    vm: name.into(),
                    message,
                })?;
        }
        // The VMM's whole input, resolved from the record now (a restart
        // after a change boots the new config).
        crate::resolve::write_machine_config(
            &self.state,
            &dir,
            &obs.record.spec,
            self.os.as_deref(),
            self.console_log_max,
        )?;
        // spawn() clears stale files itself, under the VM's lock.
        // The VM's cgroup is set while its VMM sets up.
        let weight = obs.record.spec.cpu_weight;
        let mut placed = false;
        let pid = process::spawn_then(&self.vmm_command()?, &dir.path, |pid| {
            self.enforce_cpu_weight(name, pid, weight);
            placed = true;
        })?;
        if !placed {
            self.enforce_cpu_weight(name, pid, weight);
        }
        Ok(pid as i32)
    }

    /// Refuse to start a VM whose disk files are not regular files or are
    /// locked by another VMM, naming the holder when it is a VM of this
    /// state directory. The VMM's own lock ([`crate::disk_file`]) is what
    /// really keeps two writers apart (this check races with other starts);
    /// this one only makes the message say who.
    fn check_disks_free(&self, spec: &VmSpec) -> Result<(), RuntimeError> {
        let dir = self.state.vm(&spec.name);
        for disk in &spec.disks {
            let path = dir.disk_path(disk);
            let file_err = |source| RuntimeError::DiskFile {
                vm: spec.name.clone(),
                disk: disk.name.clone(),
                source,
            };
            crate::disk_file::check_path(&path).map_err(file_err)?;
            if !crate::disk_file::is_locked(&path).map_err(file_err)? {
                continue;
            }
            return Err(match self.disk_holder(&spec.name, &path) {
                Some(holder) => RuntimeError::DiskInUse {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    path,
                    holder,
                },
                None => file_err(crate::disk_file::DiskFileError::Locked { path }),
            });
        }
        Ok(())
    }

    /// The other VM of this state directory whose disks include `path`
    /// (the same file: device and inode), if any.
    fn disk_holder(&self, except: &str, path: &Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let want = std::fs::metadata(path).ok()?;
        let same = |p: &Path| {
            std::fs::metadata(p).is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        };
        self.list().ok()?.into_iter().find_map(|rec| {
            let name = rec.spec.name.clone();
            let dir = self.state.vm(&name);
            (name != except && rec.spec.disks.iter().any(|d| same(&dir.disk_path(d))))
                .then_some(name)
        })
    }

    /// Make the disk files of a stopped VM match `new` before it is
    /// re-created with it (a restart): a disk whose file moved (its `path`
    /// changed) has its file moved — the data follows, the target must not
    /// exist; a disk no longer declared has its file deleted when it lives
    /// in the state directory, and left in place (the plan warned) when it
    /// is at a user-chosen `path`. Idempotent: a file already moved or
    /// deleted is not touched again.
    pub fn reconcile_disk_files(&self, old: &VmSpec, new: &VmSpec) -> Result<(), RuntimeError> {
        let dir = self.state.vm(&new.name);
        for have in &old.disks {
            let from = dir.disk_path(have);
            match new.disks.iter().find(|d| d.name == have.name) {
                Some(want) => {
                    let to = dir.disk_path(want);
                    if to == from || !from.exists() {
                        continue;
                    }
                    if to.exists() {
                        return Err(RuntimeError::MoveTargetExists {
                            vm: new.name.clone(),
                            disk: have.name.clone(),
                            from,
                            to,
                        });
                    }
                    crate::disk_file::check_path(&from).map_err(|source| {
                        RuntimeError::DiskFile {
                            vm: new.name.clone(),
                            disk: have.name.clone(),
                            source,
                        }
                    })?;
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                    match std::fs::rename(&from, &to) {
                        Ok(()) => {}
                        // Another file system: copy whole, then drop the old.
                        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                            copy_whole(&from, &to)?;
                            std::fs::remove_file(&from).map_err(io(&from))?;
                        }
                        Err(e) => return Err(io(&to)(e)),
                    }
                    tracing::info!(vm = %new.name, disk = %have.name, from = %from.display(), to = %to.display(), "disk file moved");
                }
                None if have.path.is_none() => match std::fs::remove_file(&from) {
                    Ok(()) => {
                        tracing::info!(vm = %new.name, disk = %have.name, path = %from.display(), "removed disk's file deleted");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&from)(e)),
                },
                None => {
                    tracing::warn!(vm = %new.name, disk = %have.name, path = %from.display(), "removed disk's file is at a user-chosen path: left in place");
                }
            }
        }
        Ok(())
    }

    /// Stop the VM: graceful shutdown within `timeout`, then forced. Records
    /// `desired: stopped`. No-op when it is not running.
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let Some(obs) = self.observe(name)? else {
            return Err(RuntimeError::NoSuchVm(name.into()));
        };
        let dir = self.state.vm(name);
        if obs.record.desired != Desired::Stopped {
            let mut rec = obs.record.clone();
            rec.desired = Desired::Stopped;
            dir.write_record(&rec)?;
        }
        if let Some(pid) = obs.pid {
            let client = ApiClient::new(dir.api_sock());
            if let Err(e) = client.shutdown(timeout) {
                tracing::warn!(vm = name, error = %e, "graceful shutdown failed; killing the VMM");
            }
            if !process::wait_gone(pid, &dir.path, KILL_MARGIN) {
                process::signal_vmm(pid, &dir.path, libc::SIGKILL);
                process::wait_gone(pid, &dir.path, KILL_MARGIN);
            }
        }
        process::remove_stale_files(&dir);
        if let Some(ctl) = &self.cpu {
            ctl.group(name, &dir.path).remove();
        }
        Ok(())
    }

    /// Stop the VM and delete its directory. Disks with a user-chosen `path`
    /// are kept unless `delete_external_disks`. No-op when it does not exist.
    pub fn destroy(&self, name: &str, delete_external_disks: bool) -> Result<(), RuntimeError> {
        let dir = self.state.vm(name);
        if !dir.path.exists() {
            return Ok(());
        }
        let record = dir.read_record().ok();
        if dir.record().exists()
            && let Err(e) = self.stop(name, Duration::from_secs(10))
        {
            tracing::warn!(vm = name, error = %e, "stop before destroy failed");
        }
        if let Some(pid) = dir.read_pid() {
            // Only this VM's own VMM, never whatever else has that pid now.
            process::signal_vmm(pid, &dir.path, libc::SIGKILL);
            process::wait_gone(pid, &dir.path, KILL_MARGIN);
        }
        if delete_external_disks {
            for disk in record.iter().flat_map(|r| &r.spec.disks) {
                if let Some(p) = &disk.path {
                    match std::fs::remove_file(p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(p)(e)),
                        _ => {}
                    }
                }
            }
        }
        if let Some(ctl) = &self.cpu {
            ctl.group(name, &dir.path).remove();
        }
        match std::fs::remove_dir_all(&dir.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir.path)(e)),
            _ => Ok(()),
        }
    }

    /// Grow one disk to `size_bytes` and record it: live through the VMM when
    /// the VM runs (the guest is told), by extending the file otherwise.
    /// Shrinking is refused.
    pub fn resize_disk(&self, name: &str, disk: &str, size_bytes: u64) -> Result<(), RuntimeError> {
        let Some(obs) = self.observe(name)? else {
            return Err(RuntimeError::NoSuchVm(name.into()));
        };
        let dir = self.state.vm(name);
        let mut rec = obs.record;
        let Some(spec_disk) = rec.spec.disks.iter_mut().find(|d| d.name == disk) else {
            return Err(RuntimeError::NoSuchDisk {
                vm: name.into(),
                disk: disk.into(),
            });
        };
        if obs.live == RunState::Running {
            ApiClient::new(dir.api_sock())
                .resize_disk(disk, size_bytes)
                .map_err(|e| RuntimeError::Resize {
                    vm: name.into(),
                    disk: disk.into(),
                    message: e.to_string(),
                })?;
        } else {
            let path = dir.disk_path(spec_disk);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            if f.metadata().map_err(io(&path))?.len() < size_bytes {
                f.set_len(size_bytes).map_err(io(&path))?;
            }
        }
        spec_disk.size_bytes = size_bytes;
        dir.write_record(&rec)?;
        Ok(())
    }

    /// Create `new` as a copy of VM `source`: every disk `new` shares by name
    /// with the source is copied, disks only `new` has are created empty,
    /// then the VM is created like any other. A running source keeps running:
    /// the copy is taken in one short pause ([`Runtime::snapshot_disks`]:
    /// crash-consistent, by reflink where the filesystem can, else sparse).
    /// Crash-safe: each disk is copied to `<disk>.partial` and renamed, and
    /// the record is written last, so a copy killed halfway is simply made
    /// again by the next apply.
    pub fn copy(&self, source: &str, new: &VmSpec) -> Result<Snapshot, RuntimeError> {
        let Some(src) = self.observe(source)? else {
            return Err(RuntimeError::NoSuchVm(source.into()));
        };
        let dst_dir = self.state.vm(&new.name);
        let disks = dst_dir.disks_dir();
        std::fs::create_dir_all(&disks).map_err(io(&disks))?;
        let targets: Vec<(String, PathBuf)> = new
            .disks
            .iter()
            .filter(|d| src.record.spec.disks.iter().any(|s| s.name == d.name))
            .map(|d| (d.name.clone(), dst_dir.disk_path(d)))
            .collect();
        let snap = self.snapshot_disks(source, &targets)?;
        self.create(new)?;
        Ok(snap)
    }

    /// Whether this host lets vmctl enforce (and live-change) `cpu-weight`.
    /// Asks the host without writing anything (`vmctl plan` writes nothing).
    pub fn host_can_set_cpu_weight() -> bool {
        CpuController::usable().is_some()
    }

    /// Whether `cpu-weight` is really enforced for the running VM `name`
    /// whose VMM is `pid`: its VMM sits in the VM's cgroup and the group's
    /// weight file holds `weight`. `Err` says why not (what `vmctl status`
    /// shows). The one source of truth for the weight: the host's cgroup,
    /// not what vmctl meant to write.
    pub fn cpu_weight_enforced(&self, name: &str, pid: i32, weight: u32) -> Result<(), String> {
        let Some(ctl) = &self.cpu else {
            return Err("this host has no writable cpu cgroup controller".into());
        };
        let group = ctl.group(name, &self.state.vm(name).path);
        if !group.holds(pid) {
            return Err(format!(
                "the VMM is not in its cgroup {}",
                group.path.display()
            ));
        }
        let want = group.file_value(weight);
        match group.raw_weight() {
            Some(w) if w == want => Ok(()),
            other => Err(format!("its cgroup's weight is {other:?}, not {want}")),
        }
    }

    /// Put the VM's VMM in its cgroup with `weight`. A host that refuses is
    /// logged, not fatal: the VM runs, unweighted, and `vmctl status` says
    /// the weight is not enforced ([`Runtime::cpu_weight_enforced`]).
    fn enforce_cpu_weight(&self, name: &str, pid: u32, weight: u32) {
        let Some(ctl) = &self.cpu else {
            return;
        };
        let group = ctl.group(name, &self.state.vm(name).path);
        if let Err(e) = group.place(pid, weight) {
            tracing::warn!(vm = name, error = %e, "cpu-weight not enforced");
        }
    }

    /// Change a running VM's CPU share (live) and record it. On a stopped VM
    /// only the record changes; the weight applies at its next start.
    pub fn set_cpu_weight(&self, name: &str, weight: u32) -> Result<(), RuntimeError> {
        let Some(obs) = self.observe(name)? else {
            return Err(RuntimeError::NoSuchVm(name.into()));
        };
        let dir = self.state.vm(name);
        // Without a controller the plan said so ("recorded, not enforced"):
        // the new weight is recorded and nothing restarts for it.
        if obs.live == RunState::Running
            && let Some(ctl) = &self.cpu
        {
            let group = ctl.group(name, &dir.path);
            group.set_weight(weight)?;
            if let Some(pid) = obs.pid.and_then(|p| u32::try_from(p).ok()) {
                // Idempotent; covers a VMM started before the group existed.
                group.add_process(pid)?;
            }
        }
        let mut rec = obs.record;
        rec.spec.cpu_weight = weight;
        dir.write_record(&rec)?;
        Ok(())
    }
}

/// What a new disk starts as a copy or conversion of.
struct Start {
    from: PathBuf,
    image: SourceImage,
}

/// A raw file to copy: a regular file (symlinks followed), its length.
fn raw_image(path: &Path) -> Result<SourceImage, RuntimeError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(RuntimeError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                if meta.is_dir() {
                    "is a directory, not a disk image"
                } else {
                    "not a regular file"
                },
            ),
        });
    }
    Ok(SourceImage {
        format: SourceFormat::Raw,
        virtual_size: meta.len(),
    })
}

/// Copy `from` to `to` (sparse) so that `to` only ever appears complete:
/// the bytes go to `<to>.partial`, renamed over `to` at the end. `create`
/// trusts an existing disk file (a restart keeps its data), so a copy or
/// import killed halfway must not leave one behind: it leaves the
/// `.partial`, which the next attempt truncates and redoes.
fn copy_whole(from: &Path, to: &Path) -> Result<u64, RuntimeError> {
    let partial = crate::sparse::partial_path(to);
    let copied = crate::sparse::copy_sparse(from, &partial).map_err(io(from))?;
    std::fs::rename(&partial, to).map_err(io(to))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use vmctl_spec::model::DiskFormat;

    use super::*;
    use crate::state::ExitNote;

    fn spec(name: &str, autostart: bool) -> VmSpec {
        VmSpec {
            disks: vec![DiskSpec {
                name: "root".into(),
                size_bytes: 8 << 30,
                format: DiskFormat::Raw,
                path: None,
                source: None,
                source_format: None,
            }],
            autostart,
            ..VmSpec::diag(name)
        }
    }

    fn live(rt: &Runtime, name: &str) -> RunState {
        rt.observe(name).unwrap().unwrap().live
    }

    /// Issue 15, found by `cargo xtask crash`: a `source=` import killed
    /// after the disk file was created and sized, before its bytes were in,
    /// left an all-zero disk under the real name, which the next create
    /// kept (an existing disk file is trusted). Here the import dies by an
    /// error instead of SIGKILL. (A directory, which once opened and then
    /// failed to read, is now refused before anything is created; either
    /// way no disk may be left under the real name.)
    #[test]
    fn an_import_that_died_halfway_is_redone_by_the_next_create() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path().join("state")).unwrap();
        let source = tmp.path().join("seed.raw");
        std::fs::create_dir(&source).unwrap();
        let mut s = spec("a", false);
        s.disks[0].size_bytes = 1 << 20;
        s.disks[0].source = Some(source.clone());
        assert!(rt.create(&s).is_err(), "the import fails halfway");
        let disk = rt.vm_dir("a").disks_dir().join("root.raw");
        assert!(!disk.exists(), "no half-imported disk under the real name");

        std::fs::remove_dir(&source).unwrap();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(64 << 10).collect();
        std::fs::write(&source, &bytes).unwrap();
        rt.create(&s).unwrap();
        let got = std::fs::read(&disk).unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert!(got[..bytes.len()] == bytes[..], "the source was imported");
        assert!(got[bytes.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn create_without_autostart_makes_sparse_disks_and_a_stopped_record() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path()).unwrap();
        rt.create(&spec("a", false)).unwrap();
        let disk = rt.vm_dir("a").disks_dir().join("root.raw");
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), 8 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() < 64, "sparse: {} blocks", meta.blocks());
        assert_eq!(live(&rt, "a"), RunState::Stopped);
        assert_eq!(rt.list().unwrap().len(), 1);
        assert!(rt.observe("missing").unwrap().is_none());
    }

    /// Issue 14: disks and the record (guest `file` contents) are 0600,
    /// whether made empty or imported.
    #[test]
    fn disks_and_records_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path().join("state")).unwrap();
        let seed = tmp.path().join("seed.raw");
        std::fs::write(&seed, [1u8; 4096]).unwrap();
        let mut s = spec("a", false);
        s.disks[0].size_bytes = 1 << 20;
        let mut imported = s.disks[0].clone();
        imported.name = "imported".into();
        imported.source = Some(seed);
        s.disks.push(imported);
        rt.create(&s).unwrap();
        let dir = rt.vm_dir("a");
        for f in [
            dir.disks_dir().join("root.raw"),
            dir.disks_dir().join("imported.raw"),
            dir.record(),
        ] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }

    /// Without an OS provider (no image tools) only raw imports; a source
    /// too big for its disk, a directory or a declared foreign format is an
    /// error that creates nothing.
    #[test]
    fn without_a_provider_only_raw_imports_and_bad_sources_create_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path().join("state")).unwrap();
        let seed = tmp.path().join("seed.img");
        std::fs::write(&seed, vec![1u8; 2 << 20]).unwrap();
        let mut s = spec("a", false);
        s.disks[0].size_bytes = 1 << 20;
        s.disks[0].source = Some(seed.clone());
        let err = rt.create(&s).unwrap_err().to_string();
        assert!(err.contains("1048576") && err.contains("2097152"), "{err}");
        assert!(err.contains(&seed.display().to_string()), "{err}");

        s.disks[0].size_bytes = 4 << 20;
        s.disks[0].source_format = Some(SourceFormat::Qcow2);
        let err = rt.create(&s).unwrap_err().to_string();
        assert!(err.contains("qcow2"), "{err}");

        s.disks[0].source_format = None;
        s.disks[0].source = Some(tmp.path().to_path_buf());
        let err = rt.create(&s).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        assert!(!rt.vm_dir("a").path.exists(), "nothing of the VM created");
    }

    #[test]
    fn create_again_keeps_disk_data_and_grows_a_shorter_disk() {
        use std::os::unix::fs::FileExt;
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path()).unwrap();
        let mut s = spec("a", false);
        s.disks[0].size_bytes = 1 << 20;
        rt.create(&s).unwrap();
        let disk = rt.vm_dir("a").disks_dir().join("root.raw");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .write_all_at(b"data", 0)
            .unwrap();
        // A restart that grows the disk re-creates through the same path.
        s.disks[0].size_bytes = 4 << 20;
        rt.create(&s).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
        assert_eq!(&std::fs::read(&disk).unwrap()[..4], b"data");
        // Never shrunk by create.
        s.disks[0].size_bytes = 1 << 20;
        rt.create(&s).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
    }

    #[test]
    fn liveness_from_files() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path()).unwrap();
        rt.create(&spec("a", false)).unwrap();
        let dir = rt.vm_dir("a");
        let mut rec = dir.read_record().unwrap();
        rec.desired = Desired::Running;
        rt.write_record(&rec).unwrap();
        // desired running, no VMM, no exit note: it died.
        assert_eq!(live(&rt, "a"), RunState::Crashed);
        // ... unless the guest powered off cleanly.
        let note = ExitNote {
            reason: "poweroff".into(),
            detail: String::new(),
            code: 0,
        };
        dir.write_exit_note(&note).unwrap();
        assert_eq!(live(&rt, "a"), RunState::Stopped);
        // A pid file whose process is not a VMM (here: this test, a reused
        // pid) means the VMM is gone.
        std::fs::write(dir.pid_file(), format!("{}\n", std::process::id())).unwrap();
        let o = rt.observe("a").unwrap().unwrap();
        assert_eq!((o.live, o.pid), (RunState::Crashed, None));
        std::fs::write(dir.pid_file(), "garbage").unwrap();
        assert_eq!(live(&rt, "a"), RunState::Stopped);
        // stop on a dead VM cleans up and records desired=stopped.
        rt.stop("a", Duration::from_millis(10)).unwrap();
        assert!(!dir.pid_file().exists());
        assert_eq!(dir.read_record().unwrap().desired, Desired::Stopped);
        assert_eq!(live(&rt, "a"), RunState::Stopped);
    }

    /// Issue 15: listing or observing while another thread destroys a VM
    /// (its `vm.json` and directory vanish between readdir and read) must
    /// see the VM or not see it, never fail.
    #[test]
    fn list_and_observe_tolerate_a_vm_destroyed_meanwhile() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path()).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (rt, stop) = (rt.clone(), stop.clone());
            std::thread::spawn(move || {
                let s = VmSpec {
                    autostart: false,
                    ..VmSpec::diag("churn")
                };
                let mut cycles = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    rt.create(&s).unwrap();
                    rt.destroy("churn", false).unwrap();
                    cycles += 1;
                }
                cycles
            })
        };
        let mut errors = Vec::new();
        for _ in 0..20_000 {
            if let Err(e) = rt.list() {
                errors.push(format!("list: {e}"));
            }
            if let Err(e) = rt.observe("churn") {
                errors.push(format!("observe: {e}"));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let cycles = churn.join().unwrap();
        assert!(cycles > 0);
        assert!(
            errors.is_empty(),
            "{} errors, first: {:?}",
            errors.len(),
            errors.first()
        );
    }

    /// Issue 15: a process whose command line says `__vmm` (even with this
    /// VM's `--vm-dir`) and whose pid is in `vmm.pid` — a reused pid — is
    /// not this VM's VMM unless it holds the VM's `vmm.lock`: observe calls
    /// the VM crashed, and stop/destroy never signal it.
    #[test]
    fn a_stranger_with_vmm_in_its_cmdline_is_never_taken_for_the_vmm_or_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path()).unwrap();
        rt.create(&spec("a", false)).unwrap();
        let dir = rt.vm_dir("a");
        let mut rec = dir.read_record().unwrap();
        rec.desired = Desired::Running;
        rt.write_record(&rec).unwrap();
        let mut fake = std::process::Command::new("sh")
            .args(["-c", "while :; do sleep 1; done", "__vmm", "--vm-dir"])
            .arg(&dir.path)
            .spawn()
            .unwrap();
        let pid = fake.id() as i32;
        std::fs::write(dir.pid_file(), format!("{pid}\n")).unwrap();
        // A lock file nobody holds, as a dead VMM leaves it.
        std::fs::write(dir.path.join(process::VMM_LOCK), "").unwrap();
        // Give sh the moment it needs to exec (its cmdline is set by then).
        std::thread::sleep(Duration::from_millis(50));

        let o = rt.observe("a").unwrap().unwrap();
        let (live, seen) = (o.live, o.pid);
        rt.stop("a", Duration::from_millis(10)).unwrap();
        std::fs::write(dir.pid_file(), format!("{pid}\n")).unwrap();
        rt.destroy("a", false).unwrap();
        let survived = fake.try_wait().unwrap().is_none();
        let _ = fake.kill();
        let _ = fake.wait();
        assert!(
            survived,
            "stop/destroy killed a process that was not the VMM"
        );
        assert_eq!((live, seen), (RunState::Crashed, None));
    }

    /// Issue 14: starting a VM whose disk file another VMM has locked is
    /// refused before a VMM is spawned, naming the VM of this state
    /// directory that uses the file (here the lock is taken by the test,
    /// as VM "a"'s VMM would).
    #[test]
    fn start_names_the_vm_whose_vmm_holds_a_disk_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path().join("state")).unwrap();
        let shared = tmp.path().join("shared.raw");
        let with_shared = |name: &str| {
            let mut s = spec(name, false);
            s.disks[0].size_bytes = 1 << 20;
            s.disks[0].path = Some(shared.clone());
            s
        };
        rt.create(&with_shared("a")).unwrap();
        rt.create(&with_shared("b")).unwrap();
        let held = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&shared)
            .unwrap();
        crate::disk_file::lock(&held, &shared, true).unwrap();
        let e = rt.start("b").unwrap_err();
        assert!(
            matches!(&e, RuntimeError::DiskInUse { holder, .. } if holder == "a"),
            "{e}"
        );
        assert!(e.to_string().contains(&shared.display().to_string()), "{e}");
        assert!(rt.vm_dir("b").read_pid().is_none(), "no VMM was spawned");
    }

    /// Issue 14: a directory where a disk file should be is refused at
    /// create, with the path in the message.
    #[test]
    fn create_refuses_a_disk_path_that_is_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path().join("state")).unwrap();
        let mut s = spec("a", false);
        s.disks[0].path = Some(tmp.path().to_path_buf());
        let e = rt.create(&s).unwrap_err().to_string();
        assert!(
            e.contains("is a directory") && e.contains(&tmp.path().display().to_string()),
            "{e}"
        );
    }

    /// Issue 14: a path change moves the file (refused onto an existing
    /// file), a removed state-dir disk's file is deleted, an external one
    /// kept; running it again changes nothing.
    #[test]
    fn reconcile_moves_deletes_and_keeps_disk_files() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path().join("state")).unwrap();
        let mut old = spec("a", false);
        old.disks[0].size_bytes = 1 << 20;
        let mut scratch = old.disks[0].clone();
        scratch.name = "scratch".into();
        let mut ext = old.disks[0].clone();
        ext.name = "ext".into();
        ext.path = Some(tmp.path().join("ext.raw"));
        old.disks.extend([scratch, ext]);
        rt.create(&old).unwrap();
        let dir = rt.vm_dir("a");
        let root = dir.disk_path(&old.disks[0]);
        std::fs::write(&root, b"root data").unwrap();

        let mut new = spec("a", false);
        new.disks[0].size_bytes = 1 << 20;
        new.disks[0].path = Some(tmp.path().join("moved/root.raw"));
        let target = tmp.path().join("moved/root.raw");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"other").unwrap();
        let e = rt.reconcile_disk_files(&old, &new).unwrap_err();
        assert!(matches!(e, RuntimeError::MoveTargetExists { .. }), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"other");
        assert!(root.exists());

        std::fs::remove_file(&target).unwrap();
        rt.reconcile_disk_files(&old, &new).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"root data");
        assert!(!root.exists());
        assert!(!dir.disks_dir().join("scratch.raw").exists(), "deleted");
        assert!(tmp.path().join("ext.raw").exists(), "external: kept");
        rt.reconcile_disk_files(&old, &new).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"root data");
    }

    #[test]
    fn destroy_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::open(tmp.path()).unwrap();
        rt.destroy("never-existed", true).unwrap();
        rt.create(&spec("a", false)).unwrap();
        rt.destroy("a", false).unwrap();
        assert!(!rt.vm_dir("a").path.exists());
        rt.destroy("a", false).unwrap();
        assert!(matches!(rt.start("a"), Err(RuntimeError::NoSuchVm(_))));
    }
}
