//! Whether this process may change the network: CAP_NET_ADMIN in its
//! effective set (root normally has it; a root shell with capabilities
//! dropped does not, and a user can be given it with `setcap`).

/// CAP_NET_ADMIN's bit in the capability sets.
const CAP_NET_ADMIN: u32 = 12;

/// The effective capability set of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// True when this process holds CAP_NET_ADMIN.
pub fn has_net_admin() -> bool {
    effective_caps().is_some_and(|c| c & (1 << CAP_NET_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ff_ffff_ffff));
        assert!(parse_cap_eff(s).is_some_and(|c| c & (1 << CAP_NET_ADMIN) != 0));
        let none = "CapEff:\t0000000000000000\n";
        assert_eq!(parse_cap_eff(none), Some(0));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
