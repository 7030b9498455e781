//! The control socket's request loop (`vmctl_runtime::api::server::
//! serve_lines`, what every connection to `api.sock` runs) fed any bytes,
//! with a small line limit so that limit is reached. Properties: every
//! non-blank line gets exactly one response line, in order; a line that is
//! a request is handed to the VMM (and survives a serialise → parse round
//! trip) and gets the VMM's answer; any other line — not JSON, not a
//! request, not UTF-8 — gets `{"ok":false,"error":"bad request: ..."}`; a
//! line longer than the limit gets that too and ends the connection
//! (docs/control-socket.md, "Framing").
//!
//! Input: the bytes a client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmctl_runtime::api::server::serve_lines;
use vmctl_runtime::api::{Request, Response};

/// The line limit in the target (64 KiB on the real socket).
const MAX_LINE: u64 = 256;

#[derive(Debug, PartialEq)]
enum Expect {
    /// The n-th request handed to the VMM (from 1).
    Answered(u64),
    BadRequest,
}

/// What the framing rules say `input` gets.
fn model(input: &[u8]) -> Vec<Expect> {
    let mut expected = Vec::new();
    let mut rest = input;
    let mut handed = 0;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        if line.len() as u64 > MAX_LINE {
            expected.push(Expect::BadRequest);
            break;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            expected.push(Expect::BadRequest);
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        if serde_json::from_str::<Request>(text.trim()).is_ok() {
            handed += 1;
            expected.push(Expect::Answered(handed));
        } else {
            expected.push(Expect::BadRequest);
        }
    }
    expected
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let mut handed = 0u64;
    serve_lines(data, &mut out, MAX_LINE, |request, _written| {
        let json = serde_json::to_string(&request).expect("a request serialises");
        let back: Request = serde_json::from_str(&json).expect("a serialised request parses");
        assert_eq!(back, request, "request round trip through {json}");
        handed += 1;
        Some(Response::ok(handed))
    });
    assert!(
        out.is_empty() || out.ends_with(b"\n"),
        "a response line is cut"
    );
    let got: Vec<Expect> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r: Response = serde_json::from_slice(l).expect("a response line is JSON");
            if r.ok {
                Expect::Answered(r.result.and_then(|v| v.as_u64()).expect("the answer"))
            } else {
                let e = r.error.unwrap_or_default();
                assert!(e.starts_with("bad request"), "unexpected error {e:?}");
                Expect::BadRequest
            }
        })
        .collect();
    assert_eq!(got, model(data), "responses differ from the framing rules");
});
