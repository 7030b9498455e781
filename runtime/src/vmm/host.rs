//! What the host can give: a VM is refused up front (with a clear message)
//! when its RAM cannot be backed, instead of being killed by the OOM killer
//! later. Guest RAM is mapped lazily, so the mmap itself rarely fails.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error(
        "the VM needs {need_mib} MiB of RAM but the host can give only {have_mib} MiB ({source_})"
    )]
    NotEnoughMemory {
        need_mib: u64,
        have_mib: u64,
        source_: &'static str,
    },
}

/// Fields of /proc/meminfo in KiB.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// How many MiB a new VM may use: MemAvailable + SwapFree, or the commit
/// headroom under strict overcommit (mode 2).
pub fn available_mib(meminfo: &str, overcommit_mode: &str) -> Option<(u64, &'static str)> {
    if overcommit_mode.trim() == "2" {
        let limit = meminfo_kib(meminfo, "CommitLimit")?;
        let used = meminfo_kib(meminfo, "Committed_AS")?;
        return Some((
            limit.saturating_sub(used) >> 10,
            "strict overcommit: CommitLimit - Committed_AS",
        ));
    }
    let avail = meminfo_kib(meminfo, "MemAvailable")?;
    let swap = meminfo_kib(meminfo, "SwapFree").unwrap_or(0);
    Some(((avail + swap) >> 10, "MemAvailable + SwapFree"))
}

/// The host's RAM in MiB (`MemTotal`), for plan-time checks: a VM bigger
/// than this can never start here.
pub fn total_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_kib(&meminfo, "MemTotal").map(|k| k >> 10)
}

/// Refuse `memory_mib` the host cannot back.
pub fn check_memory(memory_mib: u64) -> Result<(), HostError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
    match available_mib(&meminfo, &mode) {
        Some((have_mib, source_)) if memory_mib > have_mib => Err(HostError::NotEnoughMemory {
            need_mib: memory_mib,
            have_mib,
            source_,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24000000 kB\nMemAvailable:   20480000 kB\nSwapFree:        1024 kB\nCommitLimit:    12000000 kB\nCommitted_AS:    2000000 kB\n";

    #[test]
    fn available_memory_by_overcommit_mode() {
        assert_eq!(
            available_mib(MEMINFO, "0\n"),
            Some((20001, "MemAvailable + SwapFree"))
        );
        assert_eq!(available_mib(MEMINFO, "2\n").map(|x| x.0), Some(9765));
        assert_eq!(available_mib("", "0"), None);
    }
}
