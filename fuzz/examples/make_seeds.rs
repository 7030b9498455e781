//! Writes the seed corpora in fuzz/corpus/ from real inputs: the example
//! KDL files, the request lines of docs/control-socket.md, and virtio-blk
//! requests laid out the way Linux's driver lays them out (header, data,
//! status; one indirect table). Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::path::{Path, PathBuf};

use vmctl_fuzz::seeds::{F_INDIRECT, Image, blk_header, chain, write_all};
use vmctl_fuzz::{HIGH_BASE, TX_RINGS, ring_layout};
use vmctl_runtime::devices::virtio::block::request::{T_FLUSH, T_GET_ID, T_IN, T_OUT};

const SIZE: u16 = 8;
const HDR: u64 = 0x100;
const STATUS: u64 = 0x110;
const DATA: u64 = 0x200;
const INDIRECT: u64 = 0x140;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
/// A request: its name, header and buffers `(address, length, device-writable)`.
type Request = (&'static str, Vec<u8>, Vec<(u64, u32, bool)>);

/// One virtio-blk request per chain, each alone in the ring, plus all of
/// them in one ring: (name, memory image).
fn blk_images() -> Vec<(String, Vec<u8>)> {
    let (desc, avail, _) = ring_layout(SIZE);
    let requests: Vec<Request> = vec![
        (
            "in",
            blk_header(T_IN, 1),
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        ),
        (
            "out",
            blk_header(T_OUT, 2),
            vec![(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
        ),
        (
            "flush",
            blk_header(T_FLUSH, 0),
            vec![(HDR, 16, false), (STATUS, 1, true)],
        ),
        (
            "get-id",
            blk_header(T_GET_ID, 0),
            vec![(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        ),
        (
            "in-high-memory",
            blk_header(T_IN, 15),
            vec![(HDR, 16, false), (HIGH_BASE, 512, true), (STATUS, 1, true)],
        ),
        (
            "unsupported",
            blk_header(0x7f, 0),
            vec![(HDR, 16, false), (STATUS, 1, true)],
        ),
    ];
    let mut out = Vec::new();
    for (name, header, bufs) in &requests {
        let mut img = Image::new();
        chain(&mut img, desc, 0, bufs);
        img.avail(avail, &[0]);
        img.put(HDR, header);
        img.put(DATA, &[0x5a; 16]);
        out.push((name.to_string(), img.0));
    }
    // An indirect table holding an IN request.
    let mut img = Image::new();
    img.desc(desc, 0, INDIRECT, 48, F_INDIRECT, 0);
    chain(
        &mut img,
        INDIRECT,
        0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    img.avail(avail, &[0]);
    img.put(HDR, &blk_header(T_IN, 3));
    out.push(("indirect-in".to_string(), img.0));
    // IN, OUT (header and data in one descriptor) and FLUSH in one ring.
    let mut img = Image::new();
    chain(
        &mut img,
        desc,
        0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    chain(
        &mut img,
        desc,
        3,
        &[(0x400, 16 + 512, false), (STATUS + 1, 1, true)],
    );
    img.put(0x400, &blk_header(T_OUT, 4));
    chain(
        &mut img,
        desc,
        5,
        &[(0x420 + 512, 16, false), (STATUS + 2, 1, true)],
    );
    img.put(0x420 + 512, &blk_header(T_FLUSH, 0));
    img.avail(avail, &[0, 3, 5]);
    img.put(HDR, &blk_header(T_IN, 0));
    out.push(("ring-of-three".to_string(), img.0));
    out
}

fn seed_dir(root: &Path, target: &str) -> Result<PathBuf> {
    let dir = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn main() -> Result<()> {
    let root = std::env::current_dir()?;
    if !root.join("fuzz/Cargo.toml").is_file() {
        return Err("run from the repository root".into());
    }

    // KDL: every example file, valid and invalid.
    let dir = seed_dir(&root, "kdl_resolve")?;
    for sub in ["examples", "examples/invalid"] {
        for entry in std::fs::read_dir(root.join(sub))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "kdl") {
                let name = path.file_name().ok_or("file name")?;
                let prefix = if sub.ends_with("invalid") {
                    "invalid-"
                } else {
                    ""
                };
                std::fs::copy(
                    &path,
                    dir.join(format!("{prefix}{}", name.to_string_lossy())),
                )?;
            }
        }
    }

    // Control socket: each request line of the protocol doc, all of them on
    // one connection, and the malformed kinds.
    let dir = seed_dir(&root, "control_socket")?;
    let doc = std::fs::read_to_string(root.join("docs/control-socket.md"))?;
    let mut lines: Vec<String> = Vec::new();
    for part in doc.split('`') {
        if part.starts_with("{\"verb\"")
            && serde_json::from_str::<serde_json::Value>(part).is_ok()
            && !lines.iter().any(|l| l == part)
        {
            lines.push(part.to_string());
        }
    }
    if lines.is_empty() {
        return Err("no request lines found in docs/control-socket.md".into());
    }
    for (i, l) in lines.iter().enumerate() {
        write_all(
            &dir.join(format!("request-{i:02}")),
            format!("{l}\n").as_bytes(),
        )?;
    }
    write_all(&dir.join("session"), (lines.join("\n") + "\n").as_bytes())?;
    write_all(&dir.join("not-json"), b"status\n{\"verb\":\"status\"}\n")?;
    write_all(&dir.join("unknown-verb"), b"{\"verb\":\"explode\"}\r\n\n")?;
    write_all(
        &dir.join("not-utf8"),
        b"{\"verb\":\"st\xffatus\"}\n{\"verb\":\"pause\"}\n",
    )?;
    let long = format!(
        "{{\"verb\":\"status\",\"pad\":\"{}\"}}\n{{\"verb\":\"shutdown\"}}\n",
        "x".repeat(300)
    );
    write_all(&dir.join("too-long"), long.as_bytes())?;

    // host-rpc: one request of every op, a session with tokens rising,
    // falling and missing, and the malformed kinds (docs/scale-out.md).
    let dir = seed_dir(&root, "hostrpc_server")?;
    let spec = vmctl_spec::parse_str(
        "seed.kdl",
        "vm \"db\" {\n    os \"diag\"\n    memory \"64MiB\"\n}\n",
        &root,
        2,
    )
    .map_err(|e| format!("{e:?}"))?
    .state
    .vms
    .remove(0);
    let net =
        vmctl_spec::NetworkSpec::new("lab", "10.20.0.0/24".parse().map_err(|e| format!("{e:?}"))?);
    use vmctl_hostrpc::{Op, Request};
    let ops = vec![
        Op::Hello {
            client: "0.1.0".into(),
        },
        Op::Observe,
        Op::ObserveVm { name: "db".into() },
        Op::ObserveNetwork { name: "lab".into() },
        Op::Capabilities,
        Op::Create { spec: spec.clone() },
        Op::Start { name: "db".into() },
        Op::Stop { name: "db".into() },
        Op::Restart {
            old: spec.clone(),
            new: spec.clone(),
        },
        Op::Destroy {
            name: "db".into(),
            delete_external_disks: false,
        },
        Op::HotAddCpu {
            name: "db".into(),
            cpus: 2,
        },
        Op::HotAddMemory {
            name: "db".into(),
            memory_mib: 128,
        },
        Op::ResizeDisk {
            name: "db".into(),
            disk: "root".into(),
            size_bytes: 1 << 30,
        },
        Op::SetCpuWeight {
            name: "db".into(),
            weight: 200,
        },
        Op::Copy {
            source: "db".into(),
            new: spec.clone(),
        },
        Op::CreateNetwork { net },
        Op::DestroyNetwork { name: "lab".into() },
        Op::Record {
            spec,
            desired: vmctl_spec::state::Desired::Running,
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let token = op.is_mutating().then_some(5);
        let name = op.name();
        let line = Request {
            id: i as u64 + 1,
            token,
            op,
        }
        .encode();
        write_all(
            &dir.join(format!("op-{name}")),
            format!("{line}\n").as_bytes(),
        )?;
    }
    let stop = |id: u64, token: Option<u64>| {
        Request {
            id,
            token,
            op: Op::Stop { name: "db".into() },
        }
        .encode()
    };
    let session = [
        Request {
            id: 1,
            token: None,
            op: Op::Hello {
                client: String::new(),
            },
        }
        .encode(),
        stop(2, Some(5)),
        stop(3, Some(3)),
        stop(4, None),
        stop(5, Some(5)),
        stop(6, Some(9)),
        stop(7, Some(5)),
        Request {
            id: 8,
            token: Some(1),
            op: Op::Observe,
        }
        .encode(),
    ]
    .join("\n");
    write_all(&dir.join("session"), format!("{session}\n").as_bytes())?;
    write_all(
        &dir.join("not-json"),
        b"observe\n\n[1]\n{\"v\":1,\"op\":\"observe\"}\n",
    )?;
    write_all(
        &dir.join("unknown-op-and-version"),
        b"{\"v\":1,\"id\":1,\"op\":\"wipe\"}\n{\"v\":2,\"id\":2,\"op\":\"hello\"}\n",
    )?;
    let long = format!(
        "{{\"v\":1,\"id\":1,\"op\":\"observe\",\"pad\":\"{}\"}}\n{}\n",
        "x".repeat(600),
        stop(2, Some(7))
    );
    write_all(&dir.join("too-long"), long.as_bytes())?;

    // virtio-blk, virtqueue and virtio-mmio: the same requests.
    let blk = seed_dir(&root, "virtio_blk")?;
    let vq = seed_dir(&root, "virtqueue")?;
    let mmio = seed_dir(&root, "virtio_mmio")?;
    let (desc, avail, used) = ring_layout(SIZE);
    for (name, image) in blk_images() {
        for read_only in [false, true] {
            if read_only && name != "out" && name != "in" {
                continue;
            }
            let mut input = vec![u8::from(read_only), SIZE.trailing_zeros() as u8];
            input.extend_from_slice(&image);
            let suffix = if read_only { "-read-only" } else { "" };
            write_all(&blk.join(format!("{name}{suffix}")), &input)?;
        }

        let mut input = vec![0u8];
        input.extend_from_slice(&SIZE.to_le_bytes());
        for a in [desc, avail, used] {
            input.extend_from_slice(&(a as u32).to_le_bytes());
        }
        input.extend_from_slice(&image);
        write_all(&vq.join(&name), &input)?;

        // Handshake with a queue of SIZE (op 4, log2 size), notify (op 5),
        // read the interrupt status (op 1), acknowledge it (op 0).
        let mut input = vec![4u8];
        input.extend_from_slice(&[4, 0]);
        input.extend_from_slice(&u32::from(SIZE.trailing_zeros() as u8).to_le_bytes());
        input.extend_from_slice(&[5, 0, 0, 0, 0, 0]);
        input.extend_from_slice(&[1, 0x18, 0, 0, 0, 0]);
        input.extend_from_slice(&[0, 0x19, 1, 0, 0, 0]);
        input.extend_from_slice(&image);
        write_all(&mmio.join(&name), &input)?;
    }
    // virtio-net: Linux's layout (one RX buffer per chain; TX header and
    // frame in two descriptors), two frames waiting on the TAP.
    let net = seed_dir(&root, "virtio_net")?;
    for (name, frames) in net_seeds() {
        let (rx_desc, rx_avail, _) = ring_layout(SIZE);
        let (tx_desc, tx_avail, _) = ring_layout(SIZE);
        let (tx_desc, tx_avail) = (TX_RINGS + tx_desc, TX_RINGS + tx_avail);
        let mut img = Image::new();
        for i in 0..4u16 {
            chain(
                &mut img,
                rx_desc,
                i,
                &[(0x2000 + u64::from(i) * 0x800, 1526, true)],
            );
        }
        img.avail(rx_avail, &[0, 1, 2, 3]);
        chain(
            &mut img,
            tx_desc,
            0,
            &[(0x8000, 12, false), (0x8100, 60, false)],
        );
        img.avail(tx_avail, &[0]);
        img.put(0x8100, &ethernet_frame(60));
        let mut input = vec![
            0u8,
            SIZE.trailing_zeros() as u8,
            SIZE.trailing_zeros() as u8,
        ];
        input.push(frames.len() as u8);
        for f in &frames {
            input.extend_from_slice(&(f.len() as u16).to_le_bytes());
            input.extend_from_slice(f);
        }
        input.extend_from_slice(&img.0);
        write_all(&net.join(name), &input)?;
    }
    println!("seeds written under fuzz/corpus/");
    Ok(())
}

/// A broadcast Ethernet frame of `len` bytes (header, then a pattern).
fn ethernet_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend((14..len).map(|i| i as u8));
    f
}

/// The TAP frames of each virtio-net seed, with the 12-byte header the
/// kernel puts in front.
fn net_seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let with_hdr = |hdr: [u8; 12], len: usize| [hdr.to_vec(), ethernet_frame(len)].concat();
    vec![
        (
            "rx-and-tx",
            vec![with_hdr([0; 12], 60), with_hdr([0; 12], 98)],
        ),
        (
            "gso-and-runt",
            vec![
                with_hdr([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 60),
                vec![0; 20],
            ],
        ),
        (
            "big",
            vec![with_hdr([0; 12], 1514), with_hdr([0; 12], 1600)],
        ),
    ]
}
