//! Giving back the VMM's start-up code once the VM runs.
//!
//! vmctl is one binary for the CLI and the VMM. Starting a VMM (runtime
//! set-up, serde of `machine.json`, the loaders, ACPI, seccomp compilation)
//! touches code spread over the binary, and the kernel maps file pages 64
//! KiB at a time around each fault ("fault-around"), so a running VMM kept
//! about 2.7 MiB of the binary's text mapped — most of its RSS beyond guest
//! RAM (docs/benchmarks.md) — although its event loop, vCPU loop and device
//! emulation use a fraction of that. After the vCPUs start, [`Trim::apply`]
//! unmaps the binary's clean file-backed pages with `MADV_DONTNEED`: they
//! stay in the page cache (shared with every other vmctl process), and
//! whatever the VMM still runs faults back in on first use.
//!
//! Only mappings of the executable itself with no anonymous (copy-on-write)
//! pages and no write permission are touched — text and read-only data.
//! The RELRO segment (relocated at load, so anonymous) and `.data` are left
//! alone: dropping them would re-read unrelocated bytes from the file.

use std::path::PathBuf;

/// The address ranges to drop, read from `/proc/self/smaps` during set-up
/// (before the seccomp filter, which does not need to allow reading it).
#[derive(Debug, Default)]
pub struct Trim {
    ranges: Vec<(usize, usize)>,
}

impl Trim {
    /// The executable's clean read-only mappings of this process.
    pub fn read() -> Trim {
        let exe = std::fs::read_link("/proc/self/exe").ok();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        Trim {
            ranges: exe
                .map(|e| clean_exe_ranges(&smaps, &e))
                .unwrap_or_default(),
        }
    }

    /// Drop the pages; returns how many bytes of address range were
    /// advised (not all of it was resident).
    pub fn apply(&self) -> usize {
        let mut bytes = 0;
        for &(start, end) in &self.ranges {
            // SAFETY: the range is a whole mapping of our own executable that
            // is read-only and has no anonymous pages, so MADV_DONTNEED only
            // drops page-table entries of page-cache pages; the next access
            // faults the same bytes back in from the file.
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            };
            if rc == 0 {
                bytes += end - start;
            }
        }
        bytes
    }
}

/// Ranges of `smaps` mapping `exe` without write permission and with
/// `Anonymous: 0 kB`.
fn clean_exe_ranges(smaps: &str, exe: &std::path::Path) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = words.next().unwrap_or("");
            let path = words.nth(3).map(PathBuf::from);
            current = (b > a
                && perms.starts_with('r')
                && perms.as_bytes().get(1) == Some(&b'-')
                && path.as_deref() == Some(exe))
            .then_some((a, b));
            continue;
        }
        if first == "Anonymous:"
            && let Some(range) = current.take()
            && words.next() == Some("0")
        {
            out.push(range);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SMAPS: &str = "\
55d0000-55d1000 r--p 00000000 08:01 12 /usr/bin/vmctl
Size:                  4 kB
Anonymous:             0 kB
55d1000-55d3000 r-xp 00001000 08:01 12 /usr/bin/vmctl
Size:                  8 kB
Anonymous:             0 kB
55d3000-55d4000 r--p 00003000 08:01 12 /usr/bin/vmctl
Size:                  4 kB
Anonymous:             4 kB
55d4000-55d5000 rw-p 00004000 08:01 12 /usr/bin/vmctl
Size:                  4 kB
Anonymous:             0 kB
7f00000-7f01000 r-xp 00000000 08:01 99 /usr/lib/libc.so.6
Size:                  4 kB
Anonymous:             0 kB
7f02000-7f03000 rw-p 00000000 00:00 0
Size:                  4 kB
Anonymous:             4 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable() {
        let r = clean_exe_ranges(SMAPS, Path::new("/usr/bin/vmctl"));
        assert_eq!(r, vec![(0x55d0000, 0x55d1000), (0x55d1000, 0x55d3000)]);
        assert!(clean_exe_ranges(SMAPS, Path::new("/other")).is_empty());
        assert!(clean_exe_ranges("garbage\nAnonymous: 0 kB\n", Path::new("/x")).is_empty());
    }

    #[test]
    fn this_test_binary_survives_its_own_trim() {
        let t = Trim::read();
        assert!(!t.ranges.is_empty(), "the test binary's text is found");
        assert!(t.apply() > 0);
        // Code and read-only data fault back in: this keeps running.
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
