//! What more than one KVM test binary needs: a minimal ELF around a
//! hand-assembled test program, and the programs they share.

/// `testprog-reset`: greets on COM1, then pulses the i8042 reset line
/// (0xFE to port 0x64) — a guest that reboots forever.
pub const TESTPROG_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x35, 0x12, 0x00, 0x00, 0x00, 0xb9, 0x14, 0x00, 0x00, 0x00,
    0xac, 0xee, 0xff, 0xc9, 0x75, 0xfa, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd, 0x68, 0x65, 0x6c,
    0x6c, 0x6f, 0x20, 0x66, 0x72, 0x6f, 0x6d, 0x20, 0x74, 0x65, 0x73, 0x74, 0x70, 0x72, 0x6f, 0x67,
    0x0a,
];

/// Where the test programs are linked and entered.
const LOAD_ADDR: u64 = 0x20_0000;

/// A minimal ELF64 executable: one PT_LOAD of `code` at `LOAD_ADDR`.
pub fn elf(code: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let phoff = 64u64;
    let data_off = 0x1000u64;
    // e_ident
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&phoff.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    // program header
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // RWX
    f.extend_from_slice(&data_off.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.resize(data_off as usize, 0);
    f.extend_from_slice(code);
    f
}

/// One test of a `harness = false` test binary: its name and body.
pub type Test = (&'static str, fn());

/// Run `tests` (those whose name contains a command-line filter, or all),
/// each caught on its own, print libtest-like lines and exit 1 if any
/// failed. The KVM test binaries use their own `main` because a VMM they
/// start is this same binary (`run_as_vmm_if_asked`).
pub fn run_tests(tests: &[Test]) {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        println!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ntest result: {} passed; {} failed",
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}

/// Kill (SIGKILL) every VMM of `rt`'s VMs and wait for each to go: a
/// failed test must not leave VMM processes behind.
pub fn kill_vmms(rt: &vmctl_runtime::Runtime) {
    for rec in rt.list().unwrap_or_default() {
        let dir = rt.vm_dir(&rec.spec.name);
        if let Some(pid) = dir.read_pid()
            && vmctl_runtime::process::signal_vmm(pid, &dir.path, libc::SIGKILL)
        {
            vmctl_runtime::process::wait_gone(pid, &dir.path, std::time::Duration::from_secs(5));
        }
    }
}
