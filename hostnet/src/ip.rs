//! The `ip` command of iproute2, run with arguments and read as JSON.
//!
//! Why `ip` rather than a netlink crate: iproute2 is the kernel's own
//! reference client (always in step with it), `ip -j` gives a stable JSON
//! view to read back, and every step vmctl takes is a command a user can
//! read in the debug log and run by hand. The Rust netlink crates are
//! async-first (`rtnetlink`) or have their request types reshaped between
//! releases (`netlink-packet-route`), and building a bridge or TAP by hand
//! from nested attributes is more code to get wrong than these few lines.
//! The cost is one process per step, which is negligible next to a VM boot.

use std::net::Ipv4Addr;
use std::process::Command;

use serde::Deserialize;

use crate::HostNetError;

/// Run `ip ARGS...`; its stdout on success.
pub(crate) fn ip(args: &[&str]) -> Result<String, HostNetError> {
    tracing::debug!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| HostNetError::Tool {
            tool: "ip",
            message: format!(
                "cannot run `ip` ({e}): vmctl needs iproute2 for networks (apt-get install iproute2)"
            ),
        })?;
    if !out.status.success() {
        return Err(HostNetError::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One interface as `ip -j -d link show` reports it (only what vmctl reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub ifalias: Option<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LinkInfo {
    #[serde(default)]
    pub info_kind: Option<String>,
    #[serde(default)]
    pub info_data: Option<serde_json::Value>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    pub fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }
}

/// Every interface of the current network namespace.
pub fn links() -> Result<Vec<Link>, HostNetError> {
    let text = ip(&["-j", "-d", "link", "show"])?;
    parse_links(&text)
}

pub(crate) fn parse_links(text: &str) -> Result<Vec<Link>, HostNetError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| HostNetError::Tool {
        tool: "ip",
        message: format!("cannot read `ip -j link` output: {e}"),
    })
}

#[derive(Debug, Clone, Deserialize)]
struct AddrLink {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Clone, Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

/// The IPv4 addresses of `dev` (address, prefix length).
pub fn ipv4_addrs(dev: &str) -> Result<Vec<(Ipv4Addr, u8)>, HostNetError> {
    let text = ip(&["-j", "addr", "show", "dev", dev])?;
    let parsed: Vec<AddrLink> = serde_json::from_str(&text).map_err(|e| HostNetError::Tool {
        tool: "ip",
        message: format!("cannot read `ip -j addr` output: {e}"),
    })?;
    Ok(parsed
        .into_iter()
        .flat_map(|l| l.addr_info)
        .filter(|a| a.family == "inet")
        .filter_map(|a| Some((a.local.parse().ok()?, a.prefixlen)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ip_json() {
        let text = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"]},
            {"ifindex":5,"ifname":"vm123456t abcdef","master":"br","ifalias":"vmctl vm=web nic=0",
             "flags":["BROADCAST","UP"],"linkinfo":{"info_kind":"tun","info_data":{"type":"tap","pi":false,"vnet_hdr":true}}}]"#;
        let l = parse_links(text).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[0].is_up());
        assert_eq!(l[1].master.as_deref(), Some("br"));
        assert_eq!(l[1].kind(), Some("tun"));
        assert!(parse_links("").unwrap().is_empty());
    }
}
