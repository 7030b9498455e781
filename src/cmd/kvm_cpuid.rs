//! `vmctl __kvm-cpuid`: print this host's `KVM_GET_SUPPORTED_CPUID`, one JSON
//! object per line (hidden; how the CPUID test fixtures of a real KVM are
//! captured, e.g. inside the nested lab's L1).

use std::io::Write;
use std::process::ExitCode;

use miette::{IntoDiagnostic, Result};

pub fn run() -> Result<ExitCode> {
    let entries = vmctl_runtime::arch::x86_64::cpuid::supported()
        .map_err(|e| miette::miette!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let mut out = std::io::stdout().lock();
    for e in &entries {
        let line = serde_json::to_string(e).into_diagnostic()?;
        writeln!(out, "{line}").into_diagnostic()?;
    }
    Ok(ExitCode::SUCCESS)
}
