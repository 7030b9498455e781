//! `nat #true`: masquerade a network's subnet to the host's other
//! interfaces with nftables, and let it be forwarded. Off by default and
//! never enabled by a test (the machines that run them must not route lab
//! traffic out). One nftables table per network, named after its bridge, so
//! removing the network removes exactly its rules.
//!
//! Turning NAT on also sets `net.ipv4.ip_forward=1` for the namespace; vmctl
//! does not turn it off again (other software may rely on it).

use std::io::Write;
use std::process::{Command, Stdio};

use vmctl_spec::NetworkSpec;

use crate::HostNetError;

fn table(bridge: &str) -> String {
    format!("vmctl_{bridge}")
}

fn nft(script: &str) -> Result<(), HostNetError> {
    tracing::debug!("nft -f - <<< {script}");
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HostNetError::Tool {
            tool: "nft",
            message: format!(
                "cannot run `nft` ({e}): `nat #true` needs nftables (apt-get install nftables)"
            ),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(HostNetError::Command {
            command: "nft -f -".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Masquerade `net`'s subnet leaving through any interface but its bridge.
pub(crate) fn enable(net: &NetworkSpec, bridge: &str) -> Result<(), HostNetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")?;
    // Re-created whole, so a changed subnet leaves no stale rule.
    let _ = nft(&format!("delete table ip {}\n", table(bridge)));
    nft(&ruleset(net, bridge))
}

/// The network's nftables table: masquerade what leaves the subnet through
/// any other interface; forward from the bridge, and replies back to it.
fn ruleset(net: &NetworkSpec, bridge: &str) -> String {
    let t = table(bridge);
    let s = net.subnet;
    format!(
        "table ip {t} {{\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; \
         ip saddr {s} oifname != \"{bridge}\" masquerade; }}\n\
         \tchain forward {{ type filter hook forward priority filter; \
         iifname \"{bridge}\" accept; oifname \"{bridge}\" ct state established,related accept; }}\n\
         }}\n"
    )
}

/// Remove the network's table if it is there.
pub(crate) fn disable(bridge: &str) -> Result<(), HostNetError> {
    match nft(&format!("delete table ip {}\n", table(bridge))) {
        Err(HostNetError::Command { stderr, .. }) if stderr.contains("No such file") => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_only_the_subnet_leaving_elsewhere() {
        let net = NetworkSpec {
            nat: true,
            ..NetworkSpec::new("lab", "10.20.0.0/24".parse().expect("subnet"))
        };
        let r = ruleset(&net, "vm123456babcdef");
        assert!(r.starts_with("table ip vmctl_vm123456babcdef {"), "{r}");
        assert!(
            r.contains("ip saddr 10.20.0.0/24 oifname != \"vm123456babcdef\" masquerade;"),
            "{r}"
        );
        assert!(r.contains("ct state established,related accept"), "{r}");
    }
}
