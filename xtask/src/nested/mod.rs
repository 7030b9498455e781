//! `cargo xtask nested-lab`: the acceptance test for real Linux guests.
//!
//! This machine's `/dev/kvm` cannot run a stock kernel, so the harness boots an
//! L1 Linux under QEMU TCG with an emulated AMD-V CPU, where kvm-amd gives a
//! real KVM; inside it vmctl applies a lab of `debian-12` VMs with its own
//! VMM (L2) and the guests report what they see. See docs/nested-lab.md.

mod backup_check;
pub mod bootloop;
pub(crate) mod check;
mod l1;
mod lab;
mod netbench;
mod trace;

pub use bootloop::BootVmm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmctl_image::{LockFile, apt, minimal};
use vmctl_runtime::vmm::config::{DiskConfig, MACHINE_CONFIG_VERSION, MachineConfig};
use vmctl_runtime::vmm::irq::IrqMode;
use vmctl_spec::model::VmSpec;

/// Command-line options of `nested-lab`.
#[derive(Debug, Clone)]
pub struct Options {
    pub lab: Option<PathBuf>,
    /// L1 budget; None: [`DEFAULT_TIMEOUT_SECS`], or enough for the `--boot-loop`.
    pub timeout_secs: Option<u64>,
    pub release: bool,
    pub verbose: bool,
    /// Smoke run: start each VM's VMM directly (`vmctl __vmm`) with the
    /// image in its vm.json, wait for the guests' reports, no apply/status.
    pub vmm_only: bool,
    /// Run L1's QEMU with `-d int,cpu_reset` and keep the records around
    /// every triple fault (`qemu-trace.log`).
    pub qemu_trace: bool,
    /// Boot one VM this many times per VMM instead of the scenario.
    pub boot_loop: Option<u32>,
    /// The VMM(s) of the boot loop.
    pub boot_vmm: BootVmm,
    /// The VM of the lab the boot loop boots (default or `all`: every VM
    /// of the lab at the same time, as `apply` starts them).
    pub boot_vm: Option<String>,
    /// Extra guest kernel command-line words (boot loop and `--vmm-only`).
    pub guest_append: Option<String>,
    /// Run the scenario this many times (building once).
    pub repeat: u32,
    /// L1's transparent-hugepage mode (`always`, `madvise`, `never`);
    /// None: the kernel's default (`always` in Debian's cloud kernel).
    pub l1_thp: Option<String>,
    /// Module parameters for kvm-amd.ko in L1; None: [`DEFAULT_KVM_AMD_ARGS`].
    pub kvm_amd_args: Option<String>,
    /// Instead of the scenario: iperf3 throughput VM↔VM and VM↔L1 under
    /// vmctl, then under QEMU microvm (default lab: `xtask/labs/net-bench.kdl`).
    pub net_bench: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lab: None,
            timeout_secs: None,
            release: true,
            verbose: false,
            vmm_only: false,
            qemu_trace: false,
            boot_loop: None,
            boot_vmm: BootVmm::Vmctl,
            boot_vm: None,
            guest_append: None,
            repeat: 1,
            l1_thp: None,
            kvm_amd_args: None,
            net_bench: false,
        }
    }
}

/// kvm-amd in L1 uses shadow paging (`npt=0`): with nested paging, QEMU
/// 7.2's emulation of it now and then loses an L2 guest's mappings and the
/// guest triple-faults (docs/nested-lab.md, "Known environment failures").
/// `--kvm-amd-args npt=1` brings nested paging back.
pub const DEFAULT_KVM_AMD_ARGS: &str = "npt=0";

/// The default L1 budget of the scenario.
const DEFAULT_TIMEOUT_SECS: u64 = 1500;
/// One boot of the boot loop gives up after this long.
const BOOT_TIMEOUT_SECS: u64 = 90;

/// How long guests may take to report inside L1 (each wait).
const GUEST_TIMEOUT_SECS: u64 = 240;
/// `--net-bench`: iperf3 runs per path and VMM, and each run's length.
const NET_BENCH_RUNS: u32 = 3;
const NET_BENCH_SECS: u32 = 5;
/// The memory step: the changed VM gets this much more RAM.
const MEMORY_STEP_MIB: u64 = 128;
/// The disk step: the changed VM's last disk grows by this much.
const DISK_STEP_BYTES: u64 = 64 << 20;

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn phase(name: &str, start: Instant) {
    eprintln!("nested-lab: {name} [{:.1}s]", start.elapsed().as_secs_f64());
}

/// Everything a run of L1 needs, built once.
struct Prepared {
    work: PathBuf,
    l1_kernel: PathBuf,
    l1_initrd: PathBuf,
    /// The lab directory as L1's `/lab` disk (pristine; copied per boot).
    lab_disk: PathBuf,
    before: vmctl_spec::DesiredState,
    after: vmctl_spec::DesiredState,
    grown: Option<vmctl_spec::DesiredState>,
    /// Phases 4 (vCPU and memory hot-added) and 5 (the vCPU hot-removed),
    /// when the lab has a VM with hot-add headroom.
    hot: Option<(vmctl_spec::DesiredState, vmctl_spec::DesiredState)>,
    /// The network phase runs (the lab has two debian-12 VMs with a NIC
    /// and a user).
    net: bool,
    timeout: Duration,
    start: Instant,
}

/// Run the whole scenario (or the boot loop); `Ok(true)` when every check passed.
pub fn run(opts: &Options) -> Result<bool, String> {
    let p = prepare(opts)?;
    if let Some(n) = opts.boot_loop {
        return boot_loop(&p, opts, n);
    }
    if opts.net_bench {
        return net_bench(&p, opts);
    }
    let runs = opts.repeat.max(1);
    if runs == 1 {
        return Ok(run_once(&p, opts, None)?.failure.is_none());
    }
    let mut outcomes = Vec::new();
    for i in 1..=runs {
        eprintln!("nested-lab: ===== run {i} of {runs} =====");
        let o = run_once(&p, opts, Some(i))?;
        eprintln!(
            "nested-lab: run {i}: {}",
            o.failure
                .as_ref()
                .map_or("PASSED".to_string(), |f| format!("FAILED: {f}"))
        );
        outcomes.push(o);
    }
    println!("\n{}", repeat_report(&outcomes));
    Ok(outcomes.iter().all(|o| o.failure.is_none()))
}

/// The result of one L1 run of the scenario.
struct Outcome {
    /// The recognised L1 failures that made the harness boot L1 again.
    l1_retry: Vec<String>,
    failure: Option<check::Failure>,
    l1_secs: f64,
}

fn repeat_report(outcomes: &[Outcome]) -> String {
    let passed = outcomes.iter().filter(|o| o.failure.is_none()).count();
    let retried = outcomes.iter().filter(|o| !o.l1_retry.is_empty()).count();
    let reruns: usize = outcomes.iter().map(|o| o.l1_retry.len()).sum();
    let mut longest = 0;
    let mut streak = 0;
    for o in outcomes {
        streak = if o.failure.is_none() { streak + 1 } else { 0 };
        longest = longest.max(streak);
    }
    let mut out = format!(
        "nested-lab --repeat: {passed} of {} runs passed ({:.0} %), longest streak of passes {longest}; \
         {retried} run(s) needed L1 re-runs ({reruns} in all) after a recognised L1 kernel panic or stall\n",
        outcomes.len(),
        100.0 * passed as f64 / outcomes.len() as f64
    );
    for (i, o) in outcomes.iter().enumerate() {
        let verdict = match &o.failure {
            None => "passed".to_string(),
            Some(f) => format!("FAILED: {f}"),
        };
        let retry = if o.l1_retry.is_empty() {
            String::new()
        } else {
            format!(" (after L1 re-run(s): {})", o.l1_retry.join("; "))
        };
        out.push_str(&format!(
            "  run {:>2}: {verdict}{retry} [L1 {:.0} s]\n",
            i + 1,
            o.l1_secs
        ));
    }
    out
}

fn net_pair(lab: &vmctl_spec::DesiredState) -> Option<(&VmSpec, &VmSpec)> {
    let net_vms: Vec<&VmSpec> = lab
        .vms
        .iter()
        .filter(|v| v.os == "debian-12" && !v.nics.is_empty() && !v.config.users.is_empty())
        .collect();
    match net_vms[..] {
        [listener, client, ..] => Some((listener, client)),
        _ => None,
    }
}

/// The network phase's parameters: the first two debian-12 VMs with a NIC
/// and a user — the first listens on TCP, the second sends it bytes, both
/// are reached with `vmctl ssh` (docs/nested-lab.md). Empty when the lab
/// has no such pair.
fn net_env(lab: &vmctl_spec::DesiredState) -> String {
    let Some((listener, client)) = net_pair(lab) else {
        return "NET_LISTENER=\"\"\n".to_string();
    };
    let host = |v: &VmSpec| v.config.hostname.clone().unwrap_or(v.name.clone());
    let host_ip = lab
        .networks
        .iter()
        .find(|n| n.name == listener.nics[0].network)
        .map(|n| n.host_ip.to_string())
        .unwrap_or_default();
    format!(
        "NET_HOST_IP={host_ip}\nNET_BENCH_N={NET_BENCH_RUNS}\nNET_BENCH_SECS={NET_BENCH_SECS}\nNET_LISTENER=\"{}\"\nNET_LISTENER_IP={}\nNET_LISTENER_HOST=\"{}\"\nNET_CLIENT=\"{}\"\nNET_CLIENT_IP={}\nNET_CLIENT_HOST=\"{}\"\n",
        listener.name,
        listener.nics[0].ip,
        host(listener),
        client.name,
        client.nics[0].ip,
        host(client),
    )
}

fn prepare(opts: &Options) -> Result<Prepared, String> {
    let start = Instant::now();
    for tool in ["qemu-system-x86_64", "ldd"] {
        if !on_path(tool) {
            return Err(format!(
                "`{tool}` is not installed; the nested lab needs: apt-get install -y qemu-system-x86"
            ));
        }
    }
    apt::require_tools().map_err(|e| e.to_string())?;
    let root = workspace_root();
    let target = target_dir(&root);
    let work = target.join("nested-lab");
    let lab_dir = work.join("lab");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&lab_dir)
        .map_err(|e| format!("creating {}: {e}", lab_dir.display()))?;

    // 1. vmctl itself.
    let profile = if opts.release { "release" } else { "debug" };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(&root).args(["build", "-p", "vmctl"]);
    if opts.release {
        build.arg("--release");
    }
    run_checked(&mut build, "building vmctl")?;
    let vmctl = target.join(profile).join("vmctl");
    phase("vmctl built", start);

    // 2. The lab: as declared, and with one VM's memory changed.
    let lab_src = opts.lab.clone().unwrap_or_else(|| {
        root.join(if opts.net_bench {
            "xtask/labs/net-bench.kdl"
        } else {
            "xtask/labs/two-debian.kdl"
        })
    });
    let mut text = std::fs::read_to_string(&lab_src)
        .map_err(|e| format!("reading {}: {e}", lab_src.display()))?;
    // The lab's users log in with a key pair made for this run: `vmctl ssh`
    // in L1 holds the private half.
    let ssh_key = if text.contains("ssh-key ") {
        let key = work.join("lab_ed25519");
        run_checked(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "nested-lab", "-f"])
                .arg(&key),
            "ssh-keygen (apt-get install openssh-client)",
        )?;
        let public = std::fs::read_to_string(key.with_extension("pub"))
            .map_err(|e| format!("reading the lab's public key: {e}"))?;
        text = lab::with_ssh_key(&text, public.trim());
        Some(key)
    } else {
        None
    };
    let kdl = lab_dir.join("vmctl.kdl");
    std::fs::write(&kdl, &text).map_err(|e| format!("writing {}: {e}", kdl.display()))?;
    if let Some(lock) = lab_src
        .parent()
        .map(|p| p.join("vmctl.lock"))
        .filter(|p| p.is_file())
    {
        std::fs::copy(&lock, lab_dir.join("vmctl.lock"))
            .map_err(|e| format!("copying {}: {e}", lock.display()))?;
    }
    let before = lab::resolve(&vmctl, &kdl)?;
    lab::check_all_debian(&before)?;
    let changed = before.vms.last().ok_or("the lab declares no VMs")?;
    let new_mib = changed.memory_mib + MEMORY_STEP_MIB;
    let kdl2 = lab_dir.join("vmctl-2.kdl");
    std::fs::write(&kdl2, lab::with_memory(&text, &changed.name, new_mib)?)
        .map_err(|e| format!("writing {}: {e}", kdl2.display()))?;
    let after = lab::resolve(&vmctl, &kdl2)?;
    // Phase 3: grow the same VM's last disk by 64 MiB (when it has one) —
    // a debian-12 VM's root disk, whose filesystem the guest grows too.
    let grow = changed
        .disks
        .iter()
        .find(|d| changed.os == "debian-12" && d.name == "root")
        .or(changed.disks.last())
        .map(|d| (d.name.clone(), d.size_bytes + DISK_STEP_BYTES));
    let text2 =
        std::fs::read_to_string(&kdl2).map_err(|e| format!("reading {}: {e}", kdl2.display()))?;
    let kdl3 = lab_dir.join("vmctl-3.kdl");
    let grown = match &grow {
        Some((disk, bytes)) => {
            std::fs::write(
                &kdl3,
                lab::with_disk_size(&text2, &changed.name, disk, *bytes)?,
            )
            .map_err(|e| format!("writing {}: {e}", kdl3.display()))?;
            let grown = lab::resolve(&vmctl, &kdl3)?;
            let got = grown
                .vm(&changed.name)
                .and_then(|v| v.disks.iter().find(|d| &d.name == disk))
                .map(|d| d.size_bytes);
            if got != Some(*bytes) {
                return Err(format!(
                    "could not grow {}'s disk {disk} in the lab file",
                    changed.name
                ));
            }
            Some(grown)
        }
        None => None,
    };
    // Phases 4 and 5: the first VM with both vCPU and memory headroom gets
    // its vCPUs raised to max and MEMORY_STEP_MIB more RAM live, then its
    // vCPUs back to the boot count, live.
    let last_text = if grown.is_some() { &kdl3 } else { &kdl2 };
    let last_text = std::fs::read_to_string(last_text)
        .map_err(|e| format!("reading {}: {e}", last_text.display()))?;
    let hot_vm = before
        .vms
        .iter()
        .find(|v| v.max_cpus > v.cpus && v.max_memory_mib >= v.memory_mib + MEMORY_STEP_MIB)
        .cloned();
    let hot = match &hot_vm {
        None => None,
        Some(v) => {
            let kdl4 = lab_dir.join("vmctl-4.kdl");
            let text4 = lab::with_memory(
                &lab::with_cpus(&last_text, &v.name, v.max_cpus)?,
                &v.name,
                v.memory_mib + MEMORY_STEP_MIB,
            )?;
            std::fs::write(&kdl4, &text4)
                .map_err(|e| format!("writing {}: {e}", kdl4.display()))?;
            let kdl5 = lab_dir.join("vmctl-5.kdl");
            std::fs::write(&kdl5, lab::with_cpus(&text4, &v.name, v.cpus)?)
                .map_err(|e| format!("writing {}: {e}", kdl5.display()))?;
            let added = lab::resolve(&vmctl, &kdl4)?;
            let removed = lab::resolve(&vmctl, &kdl5)?;
            let got = added.vm(&v.name).map(|x| (x.cpus, x.memory_mib));
            if got != Some((v.max_cpus, v.memory_mib + MEMORY_STEP_MIB)) {
                return Err(format!(
                    "could not raise {}'s cpus and memory in the lab file",
                    v.name
                ));
            }
            Some((added, removed))
        }
    };
    if after.vm(&changed.name).map(|v| v.memory_mib) != Some(new_mib) {
        return Err(format!(
            "could not change {}'s memory to {new_mib} MiB in the lab file",
            changed.name
        ));
    }

    // 3. The images, built on the host (apt is not in L1): every one the
    // lab's VMs boot, and debian-12-minimal, whose pinned kernel and busybox
    // L1 itself runs. They are built in a cache kept across runs
    // (target/nested-lab-cache: its own vmctl.lock and image cache, so a
    // second run reuses what the first pinned and built), then copied in.
    let cache = target.join("nested-lab-cache");
    std::fs::create_dir_all(&cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let cache_kdl = cache.join("vmctl.kdl");
    std::fs::copy(&kdl, &cache_kdl).map_err(|e| format!("writing {}: {e}", cache_kdl.display()))?;
    if lab_dir.join("vmctl.lock").is_file() {
        std::fs::copy(lab_dir.join("vmctl.lock"), cache.join("vmctl.lock"))
            .map_err(|e| format!("copying the lab's vmctl.lock: {e}"))?;
    }
    for os in [None, Some(minimal::NAME)] {
        let mut cmd = Command::new(&vmctl);
        cmd.args(["image", "build"]);
        cmd.args(os);
        cmd.arg("-f").arg(&cache_kdl);
        cmd.arg("--state-dir").arg(cache.join(".vmctl"));
        run_checked(&mut cmd, "vmctl image build")?;
    }
    std::fs::copy(cache.join("vmctl.lock"), lab_dir.join("vmctl.lock"))
        .map_err(|e| format!("copying vmctl.lock into the lab: {e}"))?;
    std::fs::create_dir_all(lab_dir.join(".vmctl"))
        .map_err(|e| format!("creating the lab's state directory: {e}"))?;
    run_checked(
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(cache.join(".vmctl/images"))
            .arg(lab_dir.join(".vmctl/")),
        "copying the image cache into the lab",
    )?;
    phase("images built", start);
    let lock = LockFile::read(&lab_dir.join("vmctl.lock")).map_err(|e| e.to_string())?;
    let pinned = lock
        .images
        .get(minimal::NAME)
        .ok_or("vmctl image build left no debian-12-minimal entry in vmctl.lock")?;

    // 4. L1: the same kernel package as the image, busybox, vmctl, the lab.
    let packages: Vec<(String, String)> = pinned
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    let pkgs = l1::fetch(&work, &packages)?;
    let floor = check::memory_floor_mib(new_mib);
    let vms: Vec<&str> = before.vms.iter().map(|v| v.name.as_str()).collect();
    let cmdline = match &opts.guest_append {
        Some(extra) => format!("{} {extra}", minimal::CMDLINE),
        None => minimal::CMDLINE.to_string(),
    };
    if opts.vmm_only || opts.boot_loop.is_some() {
        write_vm_records(&lab_dir, &before, pinned, &cmdline)?;
    }
    let boot_vms: Vec<&str> = match opts.boot_vm.as_deref() {
        None | Some("all") => vms.clone(),
        Some(name) => vec![
            before
                .vm(name)
                .ok_or_else(|| format!("--boot-vm {name}: no such VM in the lab"))?
                .name
                .as_str(),
        ],
    };
    let image_dir = PathBuf::from("/lab/.vmctl/images").join(&pinned.image_id);
    let boot_env = format!(
        "BOOT_N={}\nBOOT_VMMS=\"{}\"\nBOOT_VMS=\"{}\"\nBOOT_TIMEOUT={BOOT_TIMEOUT_SECS}\nBOOT_KERNEL={}\nBOOT_INITRD={}\nBOOT_CMDLINE='{}'\n",
        opts.boot_loop.unwrap_or(0),
        opts.boot_vmm.names().join(" "),
        boot_vms.join(" "),
        image_dir.join("vmlinuz").display(),
        image_dir.join("initrd.img").display(),
        cmdline,
    );
    let mode = if opts.net_bench {
        "net-bench"
    } else if opts.boot_loop.is_some() {
        "boot-loop"
    } else if opts.vmm_only {
        "vmm-only"
    } else {
        "full"
    };
    let hot_env = match &hot_vm {
        Some(v) => {
            let mib = v.memory_mib + MEMORY_STEP_MIB;
            format!(
                "HOT_VM=\"{}\"\nHOT_CPUS={}\nHOT_BOOT_CPUS={}\nHOT_MIN_MIB={}\nHOT_MAX_MIB={mib}\n",
                v.name,
                v.max_cpus,
                v.cpus,
                check::memory_floor_mib(mib)
            )
        }
        None => "HOT_VM=\"\"\n".to_string(),
    };
    // A debian-12 VM whose root disk grew must also grow its filesystem:
    // phase 3 waits for `df /` to reach 92 % of the new size.
    let grow_root_min = grown
        .as_ref()
        .and_then(|g| g.vm(&changed.name))
        .filter(|v| v.os == "debian-12")
        .and_then(|v| v.disks.iter().find(|d| d.name == "root"))
        .filter(|_| grow.as_ref().is_some_and(|(d, _)| d == "root"))
        .map(|d| d.size_bytes / 100 * 92)
        .unwrap_or(0);
    let login_vms = before
        .vms
        .iter()
        .filter(|v| v.os == "debian-12")
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let net_env = net_env(&before);
    let env = format!(
        "{net_env}MODE={mode}\nVMS=\"{}\"\nCHANGED_VM=\"{}\"\nEXPECT_MIN_MIB={floor}\nEXPECT_MAX_MIB={new_mib}\nGUEST_TIMEOUT={GUEST_TIMEOUT_SECS}\nALWAYS_DUMP={}\nGROW_DISKS='{}'\nGROW_ROOT_MIN={grow_root_min}\nLOGIN_VMS=\"{login_vms}\"\nL1_THP={}\nKVM_AMD_ARGS='{}'\n{hot_env}{boot_env}{}",
        vms.join(" "),
        changed.name,
        u8::from(opts.verbose),
        grown
            .as_ref()
            .and_then(|g| g.vm(&changed.name))
            .map(disks_json)
            .unwrap_or_default(),
        opts.l1_thp.as_deref().unwrap_or(""),
        opts.kvm_amd_args.as_deref().unwrap_or(DEFAULT_KVM_AMD_ARGS),
        backup_check::env(&before)
    );
    std::fs::write(lab_dir.join("scenario.env"), env)
        .map_err(|e| format!("writing scenario.env: {e}"))?;
    let l1_kernel = work.join("l1-vmlinuz");
    std::fs::copy(
        pkgs.root
            .join("boot")
            .join(format!("vmlinuz-{}", pkgs.kernel_version)),
        &l1_kernel,
    )
    .map_err(|e| format!("copying L1's kernel: {e}"))?;
    let l1_initrd = work.join("l1.cpio.gz");
    l1::initramfs(
        &l1::L1Contents {
            packages: &pkgs,
            vmctl: &vmctl,
            lab_dir: &lab_dir,
            with_qemu: (opts.boot_loop.is_some() && opts.boot_vmm != BootVmm::Vmctl)
                || opts.net_bench,
            with_iperf3: opts.net_bench,
            ssh_key: ssh_key.as_deref(),
        },
        &l1_initrd,
    )?;
    let lab_disk = work.join("lab.ext4");
    l1::lab_disk(&lab_dir, &lab_disk)?;
    phase(
        "L1 initramfs assembled; booting L1 (QEMU TCG, -cpu EPYC,+svm)",
        start,
    );
    let timeout = Duration::from_secs(opts.timeout_secs.unwrap_or_else(|| match opts.boot_loop {
        // L1 boot, then every boot at its worst.
        Some(n) => {
            120 + u64::from(n) * opts.boot_vmm.names().len() as u64 * (BOOT_TIMEOUT_SECS + 5)
        }
        None => DEFAULT_TIMEOUT_SECS,
    }));
    let net = net_pair(&before).is_some();
    Ok(Prepared {
        work,
        l1_kernel,
        l1_initrd,
        lab_disk,
        before,
        after,
        grown,
        hot,
        net,
        timeout,
        start,
    })
}

/// How L1 was booted for one run.
struct L1Run {
    res: l1::RunResult,
    /// Each recognised failure of L1 itself that made us boot L1 again,
    /// with that L1's serial console.
    retry: Vec<(String, String)>,
    serial_log: PathBuf,
}

/// How many times the harness boots L1 again after a recognised failure of
/// L1 itself — its kernel panicked (`check::l1_kernel_panic`) or it stalled
/// — which is the emulated-SVM environment, never a vmctl check
/// (docs/nested-lab.md, "L1's own kernel panics"). Every re-run is
/// announced, its log kept, and `--repeat` counts them; a vmctl check that
/// fails is never re-run.
pub const L1_ENV_RERUNS: usize = 2;

/// Boot L1 (again after a recognised L1 failure, at most [`L1_ENV_RERUNS`] times).
/// `iteration`: the run's number under `--repeat` (its logs get it in their names).
fn boot_l1(p: &Prepared, opts: &Options, iteration: Option<u32>) -> Result<L1Run, String> {
    let name = |base: &str, ext: &str| match iteration {
        Some(i) => p.work.join(format!("{base}.{i}.{ext}")),
        None => p.work.join(format!("{base}.{ext}")),
    };
    let serial_log = name("l1-serial", "log");
    let trace_log = name("qemu-trace", "log");
    let boot = l1::Boot {
        kernel: &p.l1_kernel,
        initrd: &p.l1_initrd,
        lab_disk: &p.lab_disk,
        log_path: &serial_log,
        timeout: p.timeout,
        verbose: opts.verbose,
        trace: opts.qemu_trace.then_some(trace_log.as_path()),
    };
    let (res, retry) = rerun_on_l1_failure(
        || {
            let res = l1::boot(&boot)?;
            report_trace(&res, &trace_log);
            Ok(res)
        },
        |attempt, failure, last| {
            let kept = serial_log.with_extension(format!("crashed.{attempt}.log"));
            if last {
                eprintln!(
                    "nested-lab: {failure}; L1 itself failed {attempt} times in a row, giving up."
                );
                return;
            }
            let _ = std::fs::rename(&serial_log, &kept);
            if opts.qemu_trace {
                let _ = std::fs::rename(
                    &trace_log,
                    trace_log.with_extension(format!("crashed.{attempt}.log")),
                );
            }
            eprintln!(
                "nested-lab: {failure}; this is the emulated-SVM environment, \
                 not a vmctl check. Serial log kept as {}; booting L1 again \
                 (re-run {attempt} of at most {L1_ENV_RERUNS}).",
                kept.display()
            );
        },
    )?;
    Ok(L1Run {
        res,
        retry,
        serial_log,
    })
}

/// The re-run rule: boot L1 (`boot`); while it ends in a recognised L1
/// failure ([`l1_env_failure`]) and fewer than [`L1_ENV_RERUNS`] re-runs
/// were made, `report(attempt, failure, false)` and boot again. The last
/// L1 is returned as it is — a vmctl failure, or the failure that used up
/// the re-runs (`report(.., true)`) — with each earlier failure and its
/// serial console.
fn rerun_on_l1_failure(
    mut boot: impl FnMut() -> Result<l1::RunResult, String>,
    mut report: impl FnMut(usize, &str, bool),
) -> Result<(l1::RunResult, Vec<(String, String)>), String> {
    let mut res = boot()?;
    let mut retry = Vec::new();
    while let Some(failure) = l1_env_failure(&res) {
        let attempt = retry.len() + 1;
        if retry.len() == L1_ENV_RERUNS {
            report(attempt, &failure, true);
            break;
        }
        report(attempt, &failure, false);
        retry.push((failure, std::mem::take(&mut res.serial)));
        res = boot()?;
    }
    Ok((res, retry))
}

/// A recognised failure of L1 itself: its kernel panicked, or it stalled.
fn l1_env_failure(res: &l1::RunResult) -> Option<String> {
    // L1's own kernel died or stalled (QEMU TCG's emulated SVM now and
    // then runs L1's kernel with an L2 guest's GS base, or stops
    // delivering L1's interrupts while L2 runs): the environment failed.
    match check::l1_kernel_panic(&res.serial) {
        Some(panic) => Some(format!("L1's own kernel crashed ({panic})")),
        None if res.stalled => Some(l1::stall_reason()),
        None => None,
    }
}

fn report_trace(res: &l1::RunResult, kept: &Path) {
    if let Some(t) = &res.trace {
        eprint!("{}", trace::report(t));
        if t.records == 0 {
            let _ = std::fs::remove_file(kept);
        } else {
            eprintln!(
                "qemu-trace: records around each double or triple fault, and the last {}, kept in {}",
                t.tail_kept,
                kept.display()
            );
        }
    }
}

/// One run of the scenario in L1, judged.
fn run_once(p: &Prepared, opts: &Options, iteration: Option<u32>) -> Result<Outcome, String> {
    let start = p.start;
    let (before, after, grown) = (&p.before, &p.after, &p.grown);
    // 5. Boot L1 and judge what it says.
    let L1Run {
        res,
        retry,
        serial_log,
    } = boot_l1(p, opts, iteration)?;
    let l1_retry: Vec<String> = retry.into_iter().map(|(panic, _)| panic).collect();
    let log = check::parse(&res.serial);
    let mut phases: Vec<(u32, &vmctl_spec::DesiredState)> = vec![(1, before)];
    if !opts.vmm_only {
        phases.push((2, after));
        if let Some(g) = grown {
            phases.push((3, g));
        }
        if let Some((added, removed)) = &p.hot {
            phases.push((4, added));
            phases.push((5, removed));
        }
    }
    let mut verdict = check::judge(
        &log,
        &phases,
        opts.vmm_only,
        grown.is_some(),
        p.hot.is_some(),
    );
    if p.net && !opts.vmm_only {
        check::require_steps(&log, check::NET_STEPS, &mut verdict);
    }
    if res.timed_out {
        verdict
            .problems
            .push(format!("L1 timed out after {} s", p.timeout.as_secs()));
    }
    println!("\n{}", check::table(&verdict));
    println!(
        "nested-lab: L1 ran {:.1} s, whole run {:.1} s; serial log: {}",
        res.elapsed.as_secs_f64(),
        start.elapsed().as_secs_f64(),
        serial_log.display()
    );
    if !verdict.passed() {
        let tail: Vec<&str> = res.serial.lines().rev().take(30).collect();
        eprintln!("--- last lines of L1's serial console ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    let failure = check::classify(&res.serial, &log, &verdict, res.timed_out);
    match &failure {
        None => println!("nested-lab: PASSED"),
        Some(f) => println!("nested-lab: FAILED ({f})"),
    }
    Ok(Outcome {
        l1_retry,
        failure,
        l1_secs: res.elapsed.as_secs_f64(),
    })
}

/// `--boot-loop N`: boot one VM N times per VMM in one L1; print crash rates.
/// `--net-bench`: boot L1 once, print the throughput table, keep it as
/// `net-bench.json` beside the serial log.
fn net_bench(p: &Prepared, opts: &Options) -> Result<bool, String> {
    let L1Run {
        res, serial_log, ..
    } = boot_l1(p, opts, None)?;
    let log = check::parse(&res.serial);
    let samples = netbench::parse(&res.serial);
    let rows = netbench::rows(&samples);
    let (table, json) = netbench::report(&rows);
    println!("\n{table}");
    let out = p.work.join("net-bench.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap_or_default())
        .map_err(|e| format!("writing {}: {e}", out.display()))?;
    let failed: Vec<String> = log
        .steps
        .iter()
        .filter(|s| s.rc != s.want)
        .map(|s| s.line.clone())
        .collect();
    println!(
        "nested-lab: net bench: {} samples; L1 ran {:.1} s; serial log: {}; results: {}",
        samples.len(),
        res.elapsed.as_secs_f64(),
        serial_log.display(),
        out.display()
    );
    for f in &failed {
        println!("  failed step: {f}");
    }
    let complete = rows
        .iter()
        .all(|r| r.vmctl.is_some() && r.qemu.is_some() && r.qemu_plain.is_some());
    Ok(log.done && failed.is_empty() && complete)
}

/// `cargo xtask bench --nested`: build, run the boot loop of `opts` and
/// return every boot with whether the loop completed cleanly.
pub fn boot_loop_boots(opts: &Options) -> Result<(Vec<bootloop::Boot>, bool), String> {
    let n = opts
        .boot_loop
        .ok_or("boot_loop_boots needs opts.boot_loop")?;
    let p = prepare(opts)?;
    collect_boots(&p, opts, n)
}

fn boot_loop(p: &Prepared, opts: &Options, n: u32) -> Result<bool, String> {
    collect_boots(p, opts, n).map(|(_, ok)| ok)
}

/// Run L1's boot loop, print the crash-rate table; the boots and whether
/// every one of the `n` rounds reported ok.
fn collect_boots(
    p: &Prepared,
    opts: &Options,
    n: u32,
) -> Result<(Vec<bootloop::Boot>, bool), String> {
    let L1Run {
        res,
        retry,
        serial_log,
    } = boot_l1(p, opts, None)?;
    // Boots L1 finished before its own kernel panicked count too.
    let mut boots = Vec::new();
    for (panic, serial) in &retry {
        let before = bootloop::parse(serial);
        println!(
            "nested-lab: boot loop: {} boots before L1 failed ({panic}) are counted too",
            before.len()
        );
        boots.extend(before);
    }
    boots.extend(bootloop::parse(&res.serial));
    println!("\n{}", bootloop::report(&boots));
    let finished = check::parse(&res.serial).done;
    let per_round = match opts.boot_vm.as_deref() {
        None | Some("all") => p.before.vms.len(),
        Some(_) => 1,
    };
    let want = n as usize * opts.boot_vmm.names().len() * per_round;
    let boots_now = bootloop::parse(&res.serial).len();
    println!(
        "nested-lab: boot loop: {boots_now} of {want} boots reported by the last L1{}; L1 ran {:.1} s; serial log: {}",
        if finished { "" } else { " (L1 did not finish)" },
        res.elapsed.as_secs_f64(),
        serial_log.display()
    );
    if let Some(t) = &res.trace {
        println!(
            "nested-lab: qemu-trace saw {} triple fault(s), {} double fault(s)",
            t.triple_faults.len(),
            t.double_faults.len()
        );
    }
    let ok = finished && boots_now == want && boots.iter().all(|b| b.result == "ok");
    Ok((boots, ok))
}

/// `--vmm-only` and `--boot-loop`: each VM's `vm.json` and `machine.json`
/// (with the debian-12 image's L1 paths as its boot image), `disks.list`
/// (`name=bytes` lines for the L1 script) and `boot.env`.
fn write_vm_records(
    lab_dir: &Path,
    state: &vmctl_spec::DesiredState,
    pinned: &vmctl_image::LockedImage,
    cmdline: &str,
) -> Result<(), String> {
    let image_dir = PathBuf::from("/lab/.vmctl/images").join(&pinned.image_id);
    for vm in &state.vms {
        let mut spec = vm.clone();
        spec.image = Some(vmctl_spec::ImageSpec {
            name: minimal::NAME.into(),
            kernel: image_dir.join("vmlinuz"),
            initrd: Some(image_dir.join("initrd.img")),
            cmdline: cmdline.into(),
        });
        let record = serde_json::json!({"format_version": "1", "spec": spec, "desired": "running"});
        let dir = lab_dir.join(".vmctl/vms").join(&vm.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("vm.json"), text).map_err(|e| format!("writing vm.json: {e}"))?;
        // The VMM's only input (`vmctl __vmm` reads nothing else), with L1 paths.
        let l1_dir = PathBuf::from("/lab/.vmctl/vms").join(&vm.name);
        let machine = MachineConfig {
            format_version: MACHINE_CONFIG_VERSION.into(),
            name: vm.name.clone(),
            kernel: image_dir.join("vmlinuz"),
            initrd: Some(image_dir.join("initrd.img")),
            cmdline: cmdline.into(),
            cpus: vm.cpus.max(1),
            max_cpus: vm.max_cpus.max(vm.cpus.max(1)),
            memory_mib: vm.memory_mib,
            max_memory_mib: vm.max_memory_mib.max(vm.memory_mib),
            disks: vm
                .disks
                .iter()
                .map(|d| DiskConfig {
                    name: d.name.clone(),
                    path: l1_dir.join("disks").join(format!("{}.raw", d.name)),
                })
                .collect(),
            nics: Vec::new(),
            irq_mode: IrqMode::Irqchip,
            console_log: l1_dir.join("console.log"),
            console_log_max_bytes: vmctl_runtime::devices::serial::CONSOLE_LOG_MAX,
        };
        std::fs::write(dir.join("machine.json"), machine.to_json())
            .map_err(|e| format!("writing machine.json: {e}"))?;
        let disks: String = vm
            .disks
            .iter()
            .map(|d| format!("{}={}\n", d.name, d.size_bytes))
            .collect();
        std::fs::write(dir.join("disks.list"), disks)
            .map_err(|e| format!("writing disks.list: {e}"))?;
        // For the boot loop's QEMU runs (`-m`, `-smp`).
        std::fs::write(
            dir.join("boot.env"),
            format!("BOOT_MIB={}\nBOOT_CPUS={}\n", vm.memory_mib, vm.cpus),
        )
        .map_err(|e| format!("writing boot.env: {e}"))?;
    }
    Ok(())
}

/// The `disks` array the debian-12 agent reports for `vm` as declared
/// (`vda`, `vdb`, ... in declaration order), exactly as the agent prints it.
fn disks_json(vm: &vmctl_spec::VmSpec) -> String {
    let items: Vec<String> = vm
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let letter = char::from(b'a' + (i % 26) as u8);
            format!(
                "{{\"name\":\"vd{letter}\",\"size_bytes\":{}}}",
                d.size_bytes
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1_run(serial: &str) -> l1::RunResult {
        l1::RunResult {
            serial: serial.to_string(),
            timed_out: false,
            stalled: false,
            elapsed: std::time::Duration::from_secs(1),
            trace: None,
        }
    }

    /// Boots that end as `serials` say, one after the other; how many ran.
    fn rerun(serials: &[&str]) -> (l1::RunResult, Vec<(String, String)>, usize, Vec<bool>) {
        let mut next = serials.iter();
        let mut boots = 0;
        let mut reports = Vec::new();
        let (res, retry) = rerun_on_l1_failure(
            || {
                boots += 1;
                Ok(l1_run(
                    next.next().copied().unwrap_or("@@NESTED done failed=0"),
                ))
            },
            |_, _, last| reports.push(last),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (res, retry, boots, reports)
    }

    const PANIC: &str =
        "[ 30.1] BUG: TASK stack guard page was hit at 0\n[ 30.4] Kernel panic - not syncing: x\n";

    #[test]
    fn l1_is_booted_again_only_after_its_own_failure_and_at_most_twice() {
        // A vmctl failure (an L2 guest crash) is never re-run.
        let (res, retry, boots, _) = rerun(&["@@NESTED step=guests-1 rc=1 want=0\n"]);
        assert_eq!((boots, retry.len()), (1, 0));
        assert!(res.serial.contains("rc=1"));
        // One L1 panic, then a clean run: passed after one re-run.
        let (res, retry, boots, reports) = rerun(&[PANIC, "@@NESTED done failed=0\n"]);
        assert_eq!((boots, retry.len(), reports), (2, 1, vec![false]));
        assert!(retry[0].0.contains("stack guard page"), "{:?}", retry[0].0);
        assert!(
            retry[0].1.contains("Kernel panic"),
            "the crashed console is kept"
        );
        assert!(res.serial.contains("done"));
        // A stall counts as L1's own failure too.
        let mut boots = 0;
        let (_, retry) = rerun_on_l1_failure(
            || {
                boots += 1;
                let mut r = l1_run("");
                r.stalled = boots == 1;
                Ok(r)
            },
            |_, _, _| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((boots, retry.len()), (2, 1));
        assert_eq!(retry[0].0, l1::stall_reason());
        // Three panics in a row: two re-runs, then the third is judged as it is.
        let (res, retry, boots, reports) =
            rerun(&[PANIC, PANIC, PANIC, "@@NESTED done failed=0\n"]);
        assert_eq!((boots, retry.len()), (3, L1_ENV_RERUNS));
        assert_eq!(reports, vec![false, false, true]);
        assert!(
            res.serial.contains("Kernel panic"),
            "the last L1 is judged with its panic"
        );
    }

    #[test]
    fn repeat_report_counts_passes_streaks_and_retries() {
        let ok = |retry: Option<&str>| Outcome {
            l1_retry: retry.map(String::from).into_iter().collect(),
            failure: None,
            l1_secs: 40.0,
        };
        let bad = Outcome {
            l1_retry: Vec::new(),
            failure: Some(check::Failure::L2Crash {
                vm: "alpha".into(),
                detail: "vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)".into(),
            }),
            l1_secs: 70.0,
        };
        let r = repeat_report(&[ok(None), bad, ok(Some("BUG: x")), ok(None), ok(None)]);
        assert!(
            r.starts_with("nested-lab --repeat: 4 of 5 runs passed (80 %), longest streak of passes 3; 1 run(s)"),
            "{r}"
        );
        assert!(
            r.contains("run  2: FAILED: L2 guest alpha crashed: vCPU 0: triple fault"),
            "{r}"
        );
        assert!(
            r.contains("run  3: passed (after L1 re-run(s): BUG: x)"),
            "{r}"
        );
    }
}
