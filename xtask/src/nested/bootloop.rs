//! `--boot-loop N`: the same kernel, initrd and command line booted N times
//! inside one L1 under vmctl's VMM and/or QEMU (`-M microvm -accel kvm`),
//! one round at a time (every VM of the round boots at once), interleaved.
//! L1's script prints one marker per VM and boot:
//! `@@BOOT vmm=<vmctl|qemu> vm=<name> n=<i> result=<ok|crash|timeout> secs=<s> ms=<ms> detail=<...>`.

use std::collections::BTreeMap;

use super::check::field;

/// Which VMM(s) boot the guest in the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootVmm {
    Vmctl,
    Qemu,
    Both,
}

impl BootVmm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vmctl" => Some(BootVmm::Vmctl),
            "qemu" => Some(BootVmm::Qemu),
            "both" => Some(BootVmm::Both),
            _ => None,
        }
    }

    /// The names L1's script loops over.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            BootVmm::Vmctl => &["vmctl"],
            BootVmm::Qemu => &["qemu"],
            BootVmm::Both => &["vmctl", "qemu"],
        }
    }
}

/// One `@@BOOT` marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub vmm: String,
    pub vm: String,
    pub n: u32,
    pub result: String,
    pub secs: u32,
    /// Milliseconds from just before the VMM started (10 ms resolution;
    /// older scripts printed only `secs`).
    pub ms: u64,
    pub detail: String,
}

/// Every `@@BOOT` marker in L1's serial log.
pub fn parse(serial: &str) -> Vec<Boot> {
    serial
        .lines()
        .filter_map(|raw| {
            let line = raw.trim_end_matches('\r');
            let rest = &line[line.find("@@BOOT ")? + "@@BOOT ".len()..];
            let detail = rest
                .find(" detail=")
                .map(|i| rest[i + " detail=".len()..].trim().to_string())
                .unwrap_or_default();
            let secs = field(rest, "secs")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Some(Boot {
                vmm: field(rest, "vmm")?.to_string(),
                vm: field(rest, "vm").unwrap_or("-").to_string(),
                n: field(rest, "n")?.parse().ok()?,
                result: field(rest, "result")?.to_string(),
                secs,
                ms: field(rest, "ms")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::from(secs) * 1000),
                detail,
            })
        })
        .collect()
}

/// Per VMM and per `vmm/vm`: (boots, ok, crash, timeout).
pub fn tally(boots: &[Boot]) -> BTreeMap<String, (u32, u32, u32, u32)> {
    let mut t: BTreeMap<String, (u32, u32, u32, u32)> = BTreeMap::new();
    let keys = |b: &Boot| [b.vmm.clone(), format!("{}/{}", b.vmm, b.vm)];
    for (b, key) in boots.iter().flat_map(|b| keys(b).map(|k| (b, k))) {
        let e = t.entry(key).or_default();
        e.0 += 1;
        match b.result.as_str() {
            "ok" => e.1 += 1,
            "crash" => e.2 += 1,
            _ => e.3 += 1,
        }
    }
    t
}

/// The milliseconds of `vmm`'s successful boots, in marker order (the
/// `cargo xtask bench --nested` row).
pub fn ok_ms(boots: &[Boot], vmm: &str) -> Vec<f64> {
    boots
        .iter()
        .filter(|b| b.vmm == vmm && b.result == "ok")
        .map(|b| b.ms as f64)
        .collect()
}

/// The crash-rate table.
pub fn report(boots: &[Boot]) -> String {
    let mut out =
        String::from("boot loop: vmm[/vm]        boots  ok  crash  timeout  crash rate\n");
    for (vmm, (n, ok, crash, timeout)) in tally(boots) {
        let rate = if n == 0 {
            0.0
        } else {
            100.0 * f64::from(crash + timeout) / f64::from(n)
        };
        out.push_str(&format!(
            "           {vmm:<14} {n:>5} {ok:>3} {crash:>6} {timeout:>8}  {rate:>5.1} %\n"
        ));
    }
    for b in boots.iter().filter(|b| b.result != "ok") {
        out.push_str(&format!(
            "  {} {} boot {}: {} after {} s: {}\n",
            b.vmm, b.vm, b.n, b.result, b.secs, b.detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parsed_and_tallied() {
        let serial = "noise\n\
            @@BOOT vmm=vmctl vm=a n=1 result=ok secs=9 ms=9120 detail=\n\
            @@BOOT vmm=qemu vm=a n=1 result=ok secs=8 detail=qemu exit: \r\n\
            @@BOOT vmm=vmctl vm=a n=2 result=crash secs=2 detail={\"reason\":\"crash\",\"detail\":\"vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)\"}\n\
            @@LOG vmctl-2 console.log: [    0.000000] Linux version 6.1\n\
            @@BOOT vmm=qemu vm=a n=2 result=timeout secs=90 detail=qemu exit:\n";
        let boots = parse(serial);
        assert_eq!(boots.len(), 4);
        assert_eq!(boots[2].result, "crash");
        assert_eq!(boots[0].ms, 9120);
        assert_eq!(boots[1].ms, 8000, "secs only: whole seconds");
        assert_eq!(ok_ms(&boots, "vmctl"), [9120.0]);
        assert_eq!(ok_ms(&boots, "qemu"), [8000.0]);
        assert!(boots[2].detail.contains("triple fault"));
        let t = tally(&boots);
        assert_eq!(t["vmctl"], (2, 1, 1, 0));
        assert_eq!(t["qemu"], (2, 1, 0, 1));
        assert_eq!(t["vmctl/a"], (2, 1, 1, 0));
        let r = report(&boots);
        assert!(r.contains("50.0 %"), "{r}");
        assert!(r.contains("vmctl a boot 2: crash after 2 s"), "{r}");
        assert_eq!(BootVmm::parse("both").unwrap().names(), ["vmctl", "qemu"]);
        assert!(BootVmm::parse("firecracker").is_none());
    }
}
