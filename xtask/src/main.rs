//! `cargo xtask`: developer tasks that are not part of the vmctl binary.
//!
//! `cargo xtask nested-lab [options]`: boot real Debian guests under vmctl's
//! own VMM on a real KVM one level down (see docs/nested-lab.md and `--help`).
//!
//! `cargo xtask crash [options]`: SIGKILL `vmctl apply` inside its actions
//! over many seeds and require the next apply to converge with nothing lost,
//! duplicated or corrupted (see docs/testing.md and `--help`).
//!
//! `cargo xtask chaos [--runs N] [--seed S] [--quick]`: kill -9 apply, the
//! etcd leader, cut a host's link, SIGSTOP a coordinator past its lease, on
//! a lab over three SSH hosts; re-apply until converged and require no VM
//! lost or duplicated (see docs/scale-out.md and `chaos --help`).
//!
//! `cargo xtask bench [--quick]`: vmctl side by side with QEMU microvm and
//! other peers in one run (see docs/benchmarks.md and `bench --help`).
//!
//! `cargo xtask fuzz --smoke | TARGET --time SECS`: build and run the
//! libFuzzer targets in fuzz/ (see docs/fuzzing.md and `fuzz --help`).

mod bench;
mod chaos;
mod crash;
mod fuzz;
mod nested;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask bench [--quick] [--runs N] (see bench --help)
       cargo xtask chaos [--runs N] [--seed S] [--quick] (see chaos --help)
       cargo xtask fuzz --smoke | TARGET [--time SECS] (see fuzz --help)
       cargo xtask nested-lab [--lab FILE] [--timeout SECS] [--debug] [--verbose]
                             [--vmm-only] [--repeat N] [--qemu-trace]
                             [--boot-loop N [--vmm vmctl|qemu|both] [--boot-vm NAME]]
                             [--guest-append WORDS] [--l1-thp MODE] [--kvm-amd-args A]
                             [--net-bench]

  --lab FILE           lab of debian-12 VMs to run (default: xtask/labs/two-debian.kdl)
  --timeout SECS       give up on L1 after this long (default 1500; boot loop: enough for it)
  --debug              put a debug build of vmctl into L1 (default: release)
  --verbose            echo L1's whole serial console, not just the markers
  --vmm-only           smoke run: start each VM with `vmctl __vmm` directly (no apply/status)
  --repeat N           run the scenario N times (built once); print the pass rate and
                       each failure's cause
  --qemu-trace         run L1's QEMU with -d int,cpu_reset; keep the records around every
                       double or triple fault (L1's or an L2 guest's), and the last ones before
                       QEMU exits (a stall), in target/nested-lab/qemu-trace.log
  --boot-loop N        instead of the scenario: boot the lab's VMs (all at once, as apply
                       does; or only --boot-vm NAME) N times per VMM inside one L1,
                       one round at a time; print crash rates
  --vmm V              the boot loop's VMM: vmctl (default), qemu (-M microvm -accel kvm
                       inside L1) or both (interleaved)
  --guest-append W     extra guest kernel command-line words (boot loop, --vmm-only)
  --l1-thp MODE        L1's transparent hugepages: always (the kernel's default), madvise, never
  --kvm-amd-args A     parameters for kvm-amd.ko in L1 (default \"npt=0\": shadow paging;
                       \"npt=1\" uses QEMU's emulated nested paging, see docs/nested-lab.md)
  --net-bench          instead of the scenario: iperf3 throughput VM<->VM and VM<->L1 under
                       vmctl, then the same guests under QEMU microvm's virtio-net
                       (default lab: xtask/labs/net-bench.kdl; needs iperf3 on this host)

       cargo xtask crash [--kills N] [--seeds S | --seed X] [--keep]

  --kills N            kills that must land inside apply actions, over all seeds (default 100)
  --seeds S            seeds (fresh labs) to spread them over (default 10)
  --seed X             replay one seed (the state sequence; kill timing is the machine's)
  --keep               keep the labs' directories; after a violation, its VMs keep running";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(task) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match task.as_str() {
        "bench" => {
            let rest: Vec<String> = args.collect();
            if rest.iter().any(|a| a == "-h" || a == "--help") {
                println!("{}", bench::USAGE);
                return ExitCode::SUCCESS;
            }
            let result = bench::parse(rest.into_iter()).and_then(|o| bench::main(&o));
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(bench::BenchError::Usage(m)) => {
                    eprintln!("bench: {m}\n{}", bench::USAGE);
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("bench: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "chaos" => {
            let rest: Vec<String> = args.collect();
            if rest.iter().any(|a| a == "-h" || a == "--help") {
                println!("{}", chaos::USAGE);
                return ExitCode::SUCCESS;
            }
            match chaos::parse(rest.into_iter()).and_then(|o| chaos::run(&o)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(chaos::ChaosError::Usage(m)) => {
                    eprintln!("chaos: {m}\n{}", chaos::USAGE);
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("chaos: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "fuzz" => {
            let rest: Vec<String> = args.collect();
            if rest.iter().any(|a| a == "-h" || a == "--help") {
                println!("{}", fuzz::USAGE);
                return ExitCode::SUCCESS;
            }
            match fuzz::main(rest.into_iter()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(fuzz::FuzzError::Usage(m)) => {
                    eprintln!("fuzz: {m}\n{}", fuzz::USAGE);
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("fuzz: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "nested-lab" => {
            let mut opts = nested::Options::default();
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--lab" => match args.next() {
                        Some(f) => opts.lab = Some(PathBuf::from(f)),
                        None => return usage_error("--lab needs a file"),
                    },
                    "--timeout" => match args.next().and_then(|s| s.parse().ok()) {
                        Some(t) => opts.timeout_secs = Some(t),
                        None => return usage_error("--timeout needs a number of seconds"),
                    },
                    "--repeat" => match args.next().and_then(|s| s.parse().ok()) {
                        Some(n) if n >= 1 => opts.repeat = n,
                        _ => return usage_error("--repeat needs a number of runs (>= 1)"),
                    },
                    "--boot-loop" => match args.next().and_then(|s| s.parse().ok()) {
                        Some(n) if n >= 1 => opts.boot_loop = Some(n),
                        _ => return usage_error("--boot-loop needs a number of boots (>= 1)"),
                    },
                    "--vmm" => match args.next().as_deref().and_then(nested::BootVmm::parse) {
                        Some(v) => opts.boot_vmm = v,
                        None => return usage_error("--vmm needs vmctl, qemu or both"),
                    },
                    "--boot-vm" => match args.next() {
                        Some(v) => opts.boot_vm = Some(v),
                        None => return usage_error("--boot-vm needs a VM name"),
                    },
                    "--guest-append" => match args.next() {
                        Some(v) => opts.guest_append = Some(v),
                        None => {
                            return usage_error("--guest-append needs kernel command-line words");
                        }
                    },
                    "--qemu-trace" => opts.qemu_trace = true,
                    "--kvm-amd-args" => match args.next() {
                        Some(a) => opts.kvm_amd_args = Some(a),
                        None => return usage_error("--kvm-amd-args needs module parameters"),
                    },
                    "--l1-thp" => match args.next() {
                        Some(m) if ["always", "madvise", "never"].contains(&m.as_str()) => {
                            opts.l1_thp = Some(m)
                        }
                        _ => return usage_error("--l1-thp needs always, madvise or never"),
                    },
                    "--debug" => opts.release = false,
                    "--vmm-only" => opts.vmm_only = true,
                    "--net-bench" => opts.net_bench = true,
                    "--verbose" | "-v" => opts.verbose = true,
                    "-h" | "--help" => {
                        println!("{USAGE}");
                        return ExitCode::SUCCESS;
                    }
                    other => return usage_error(&format!("unknown argument {other:?}")),
                }
            }
            match nested::run(&opts) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("nested-lab: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "crash" => {
            let mut opts = crash::Options::default();
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--kills" => match args.next().and_then(|s| s.parse().ok()) {
                        Some(n) if n >= 1 => opts.kills = n,
                        _ => return usage_error("--kills needs a number of kills (>= 1)"),
                    },
                    "--seeds" => match args.next().and_then(|s| s.parse().ok()) {
                        Some(n) if n >= 1 => opts.seeds = n,
                        _ => return usage_error("--seeds needs a number of seeds (>= 1)"),
                    },
                    "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                        Some(x) => opts.seed = Some(x),
                        None => return usage_error("--seed needs a number"),
                    },
                    "--keep" => opts.keep = true,
                    "-h" | "--help" => {
                        println!("{USAGE}");
                        return ExitCode::SUCCESS;
                    }
                    other => return usage_error(&format!("unknown argument {other:?}")),
                }
            }
            match crash::run(&opts) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("crash: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "-h" | "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => usage_error(&format!("unknown task {other:?}")),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("{msg}\n{USAGE}");
    ExitCode::from(2)
}
