//! `--net-bench`: TCP throughput under vmctl's virtio-net against QEMU's in
//! the same L1. The same two guests run under vmctl and, from live copies
//! of their disks, under QEMU microvm twice — its virtio-net as it comes
//! (`qemu`: checksum/TSO offloads, mergeable RX buffers, event index) and
//! with those off (`qemu-plain`: close to what vmctl's device offers) — all
//! at once; L1's script runs iperf3 (`-f m`, one stream) over three paths,
//! a VM to L1 (`vm-host`), L1 to a VM (`host-vm`) and VM to VM (`vm-vm`),
//! interleaving the VMMs run by run, and prints one marker per run:
//! `@@NETBENCH vmm=<vmctl|qemu|qemu-plain> path=<path> n=<i> mbits=<f>`.
//! Under TCG the absolute figures mean little; the ratios are the result.

use std::collections::BTreeMap;

use super::check::field;

use crate::bench::stats::{Stats, ratio};

/// One `@@NETBENCH` marker.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub vmm: String,
    pub path: String,
    pub mbits: f64,
}

/// Every `@@NETBENCH` marker in L1's serial log (a run that failed prints
/// `mbits=` empty and is left out).
pub fn parse(serial: &str) -> Vec<Sample> {
    serial
        .lines()
        .filter_map(|raw| {
            let line = raw.trim_end_matches('\r');
            let rest = &line[line.find("@@NETBENCH ")? + "@@NETBENCH ".len()..];
            Some(Sample {
                vmm: field(rest, "vmm")?.to_string(),
                path: field(rest, "path")?.to_string(),
                mbits: field(rest, "mbits")?.parse().ok()?,
            })
        })
        .collect()
}

/// Per path: vmctl's and QEMU's Mbit/s.
pub struct Row {
    pub path: String,
    pub vmctl: Option<Stats>,
    pub qemu: Option<Stats>,
    pub qemu_plain: Option<Stats>,
}

pub fn rows(samples: &[Sample]) -> Vec<Row> {
    let mut by: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for s in samples {
        by.entry((&s.path, &s.vmm)).or_default().push(s.mbits);
    }
    let stat = |path: &str, vmm: &str| Stats::of(by.get(&(path, vmm))?);
    ["vm-host", "host-vm", "vm-vm"]
        .iter()
        .map(|p| Row {
            path: p.to_string(),
            vmctl: stat(p, "vmctl"),
            qemu: stat(p, "qemu"),
            qemu_plain: stat(p, "qemu-plain"),
        })
        .collect()
}

/// The table printed at the end, and the JSON kept beside the serial log.
pub fn report(rows: &[Row]) -> (String, serde_json::Value) {
    let cell = |s: &Option<Stats>| s.as_ref().map_or("—".into(), |s| s.cell(0));
    let mut text = String::from(
        "| path | vmctl Mbit/s | QEMU microvm Mbit/s | vmctl / QEMU | QEMU, offloads off | vmctl / that |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    let r2 = |x: Option<f64>| x.map_or("—".into(), |x| format!("{x:.2}"));
    for r in rows {
        let ratio_qemu = ratio(r.vmctl.as_ref(), r.qemu.as_ref());
        let ratio_plain = ratio(r.vmctl.as_ref(), r.qemu_plain.as_ref());
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.path,
            cell(&r.vmctl),
            cell(&r.qemu),
            r2(ratio_qemu),
            cell(&r.qemu_plain),
            r2(ratio_plain),
        ));
        json.push(serde_json::json!({
            "path": r.path, "vmctl": r.vmctl, "qemu": r.qemu, "qemu_plain": r.qemu_plain,
            "ratio": ratio_qemu, "ratio_plain": ratio_plain,
        }));
    }
    (
        text,
        serde_json::json!({"format_version": "1", "unit": "Mbit/s", "rows": json}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_become_medians_and_ratios() {
        let serial = "noise\r\n@@NETBENCH vmm=vmctl path=vm-vm n=1 mbits=100.5\r\n\
                      @@NETBENCH vmm=vmctl path=vm-vm n=2 mbits=300\n\
                      @@NETBENCH vmm=vmctl path=vm-vm n=3 mbits=200\n\
                      @@NETBENCH vmm=qemu path=vm-vm n=1 mbits=400\n\
                      @@NETBENCH vmm=qemu path=vm-host n=1 mbits=\n";
        let s = parse(serial);
        assert_eq!(s.len(), 4);
        let r = rows(&s);
        assert_eq!(r[2].path, "vm-vm");
        let v = r[2].vmctl.as_ref().unwrap();
        assert_eq!((v.median, v.min, v.max), (200.0, 100.5, 300.0));
        assert_eq!(r[2].qemu.as_ref().unwrap().median, 400.0);
        assert!(r[0].qemu.is_none());
        let (text, json) = report(&r);
        assert!(
            text.contains("| vm-vm | 200 (100–300) | 400 | 0.50 |"),
            "{text}"
        );
        assert!(text.contains("| vm-host | — | — | — |"), "{text}");
        assert_eq!(json["rows"][2]["ratio"], 0.5);
    }
}
