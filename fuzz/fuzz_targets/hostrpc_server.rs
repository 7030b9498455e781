//! The host-rpc server's request loop (`vmctl_hostrpc::Server::
//! serve_limited`, what `vmctl host-rpc` runs on the bytes a coordinator
//! sends over ssh) fed any bytes, with a small line limit so that limit is
//! reached, in front of an in-memory backend and a real fence directory.
//! Properties: every line (an unterminated last one too) gets exactly one
//! answer line, in order, each a valid protocol answer; a line over the
//! limit gets `bad-request` with `id` null and the next line is served;
//! any other line gets what `Request::decode` says, or, for a request,
//! `fenced` when its token is below the highest seen so far, `bad-request`
//! for a mutating op without a token, else `ok` — and exactly the admitted
//! mutating requests reach the backend (docs/scale-out.md).
//!
//! Input: the bytes a coordinator sends.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use vmctl_hostrpc::{ErrorKind, FenceStore, Op, Request, Response, Server, ServerInfo};
use vmctl_planner::{Backend, BackendError, Capabilities, CopyReport, Desired, ObservedState};
use vmctl_spec::{NetworkSpec, VmSpec};

/// The line limit in the target (16 MiB on the real connection).
const MAX_LINE: usize = 512;

/// Counts the mutating calls that reached it; all succeed.
#[derive(Default)]
struct Counting {
    mutations: AtomicU64,
}

impl Counting {
    fn hit(&self) -> Result<(), BackendError> {
        self.mutations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Backend for Counting {
    fn observe(&self) -> Result<ObservedState, BackendError> {
        Ok(ObservedState::new())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }
    fn create(&self, _: &VmSpec) -> Result<(), BackendError> {
        self.hit()
    }
    fn start(&self, _: &str) -> Result<(), BackendError> {
        self.hit()
    }
    fn stop(&self, _: &str) -> Result<(), BackendError> {
        self.hit()
    }
    fn restart(&self, _: &VmSpec, _: &VmSpec) -> Result<(), BackendError> {
        self.hit()
    }
    fn destroy(&self, _: &str, _: bool) -> Result<(), BackendError> {
        self.hit()
    }
    fn hot_add_cpu(&self, _: &str, _: u32) -> Result<(), BackendError> {
        self.hit()
    }
    fn hot_add_memory(&self, _: &str, _: u64) -> Result<(), BackendError> {
        self.hit()
    }
    fn resize_disk(&self, _: &str, _: &str, _: u64) -> Result<(), BackendError> {
        self.hit()
    }
    fn set_cpu_weight(&self, _: &str, _: u32) -> Result<(), BackendError> {
        self.hit()
    }
    fn copy(&self, _: &str, _: &VmSpec) -> Result<CopyReport, BackendError> {
        self.hit().map(|()| CopyReport::default())
    }
    fn create_network(&self, _: &NetworkSpec) -> Result<(), BackendError> {
        self.hit()
    }
    fn destroy_network(&self, _: &str) -> Result<(), BackendError> {
        self.hit()
    }
    fn record(&self, _: &VmSpec, _: Desired) -> Result<(), BackendError> {
        self.hit()
    }
}

/// This process's fence directory (the fence file is removed before each
/// input).
fn fence_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("vmctl-fuzz-hostrpc-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fence dir");
        d
    })
}

/// (id, error kind or None for ok) per answer.
type Expect = (Option<u64>, Option<ErrorKind>);

/// What the rules say `input` gets, and how many mutations are admitted.
fn model(input: &[u8]) -> (Vec<Expect>, u64) {
    let mut out = Vec::new();
    let mut highest = 0u64;
    let mut admitted = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = tail;
        if line.len() > MAX_LINE {
            out.push((None, Some(ErrorKind::BadRequest)));
            continue;
        }
        out.push(match Request::decode(line) {
            Err(resp) => (resp.id, resp.result.err().map(|e| e.kind)),
            // A hello with a token announces it: fenced if lower, else
            // it raises the fence (no backend call).
            Ok(req) if matches!(req.op, Op::Hello { .. }) && req.token.is_some() => {
                match req.token {
                    Some(t) if t < highest => (Some(req.id), Some(ErrorKind::Fenced)),
                    Some(t) => {
                        highest = t;
                        (Some(req.id), None)
                    }
                    None => (Some(req.id), None),
                }
            }
            Ok(req) if !req.op.is_mutating() => (Some(req.id), None),
            Ok(req) => match req.token {
                None => (Some(req.id), Some(ErrorKind::BadRequest)),
                Some(t) if t < highest => (Some(req.id), Some(ErrorKind::Fenced)),
                Some(t) => {
                    highest = t;
                    admitted += 1;
                    (Some(req.id), None)
                }
            },
        });
    }
    (out, admitted)
}

fuzz_target!(|data: &[u8]| {
    let dir = fence_dir();
    let fence = FenceStore::new(dir);
    let _ = std::fs::remove_file(fence.path());
    let backend = Counting::default();
    let info = ServerInfo {
        vmctl_version: "0.0.0".into(),
        host: "fuzz".into(),
        capacity: None,
    };
    let server = Server::new(&backend, fence, info);
    let mut out = Vec::new();
    server
        .serve_limited(data, &mut out, MAX_LINE)
        .expect("serving from memory cannot fail");
    assert!(
        out.is_empty() || out.ends_with(b"\n"),
        "an answer line is cut"
    );
    let got: Vec<Expect> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r = Response::decode(l).expect("an answer line is a valid answer");
            (r.id, r.result.err().map(|e| e.kind))
        })
        .collect();
    let (want, admitted) = model(data);
    assert_eq!(got, want, "answers differ from the rules");
    assert_eq!(
        backend.mutations.load(Ordering::Relaxed),
        admitted,
        "mutations reaching the backend"
    );
});
