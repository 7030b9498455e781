//! The host side: answers requests by calling a [`Backend`], after the
//! [`FenceStore`] admitted every mutating one. `vmctl host-rpc` runs
//! [`Server::serve`] on its stdin and stdout.
//!
//! One request at a time per connection (a coordinator opens one connection
//! per parallel lane). Every line gets exactly one answer line; a bad line is
//! answered and the connection goes on.

use std::io::{self, BufRead, Write};

use serde::Serialize;
use serde_json::Value;
use vmctl_planner::{Backend, HostCapacity};

use crate::fence::{FenceError, FenceStore};
use crate::lines::{Line, read_line};
use crate::protocol::{ErrorKind, Hello, MAX_LINE, Op, PROTOCOL_VERSION, Request, Response};

/// What `hello` reports about this host.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// This vmctl's version.
    pub vmctl_version: String,
    /// This host's name.
    pub host: String,
    /// This host's RAM and CPUs (None when unknown).
    pub capacity: Option<HostCapacity>,
}

/// A server over one backend and the fence of its state directory.
pub struct Server<'a> {
    backend: &'a dyn Backend,
    fence: FenceStore,
    info: ServerInfo,
}

impl<'a> Server<'a> {
    pub fn new(backend: &'a dyn Backend, fence: FenceStore, info: ServerInfo) -> Self {
        Server {
            backend,
            fence,
            info,
        }
    }

    /// Answer every line of `input` on `output` until the input ends.
    /// Returns an error only when `output` or `input` fail.
    pub fn serve(&self, input: impl BufRead, output: impl Write) -> io::Result<()> {
        self.serve_limited(input, output, MAX_LINE)
    }

    /// [`Server::serve`] with another line limit (the fuzz target uses a
    /// small one to reach it).
    pub fn serve_limited(
        &self,
        mut input: impl BufRead,
        mut output: impl Write,
        max_line: usize,
    ) -> io::Result<()> {
        loop {
            let response = match read_line(&mut input, max_line)? {
                Line::Eof => return Ok(()),
                Line::TooLong(n) => {
                    tracing::warn!(bytes = n, "refused a request line over {max_line} bytes");
                    Response::err(
                        None,
                        ErrorKind::BadRequest,
                        format!("request line of {n} bytes is over the limit of {max_line}"),
                    )
                }
                Line::Line(l) => self.handle_line(&l),
            };
            let mut line = response.encode();
            line.push('\n');
            output.write_all(line.as_bytes())?;
            output.flush()?;
        }
    }

    /// The answer to one request line.
    pub fn handle_line(&self, line: &[u8]) -> Response {
        match Request::decode(line) {
            Ok(req) => self.handle(req),
            Err(resp) => {
                if let Err(e) = &resp.result {
                    tracing::warn!(id = ?resp.id, "refused a request: {e}");
                }
                resp
            }
        }
    }

    /// The answer to one parsed request.
    pub fn handle(&self, req: Request) -> Response {
        let id = req.id;
        let op_name = req.op.name();
        // A coordinator announces its token in `hello`: every host it
        // reaches raises its fence at once, so an older coordinator is
        // refused there even before the new one changes anything.
        let announces = matches!(req.op, Op::Hello { .. }) && req.token.is_some();
        let _guard = if req.op.is_mutating() || announces {
            let Some(token) = req.token else {
                return Response::err(
                    Some(id),
                    ErrorKind::BadRequest,
                    format!("{op_name} changes the host and needs a fencing token"),
                );
            };
            match self.fence.admit(token) {
                Ok(g) => Some(g),
                Err(e @ FenceError::Fenced { .. }) => {
                    tracing::warn!(op = op_name, "refused: {e}");
                    return Response::err(Some(id), ErrorKind::Fenced, e.to_string());
                }
                Err(e) => return Response::err(Some(id), ErrorKind::Backend, e.to_string()),
            }
        } else {
            None
        };
        tracing::info!(id, op = op_name, token = ?req.token, "request");
        // A panic in the backend answers this request; the connection lives.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch(req.op)));
        match result {
            Ok(Ok(v)) => Response::ok(id, v),
            Ok(Err(msg)) => {
                tracing::warn!(id, op = op_name, "failed: {msg}");
                Response::err(Some(id), ErrorKind::Backend, msg)
            }
            Err(_) => Response::err(
                Some(id),
                ErrorKind::Backend,
                format!("{op_name} panicked on the host (see its log)"),
            ),
        }
    }

    fn dispatch(&self, op: Op) -> Result<Value, String> {
        let b = self.backend;
        match op {
            Op::Hello { client } => {
                tracing::info!(client, "hello");
                to_value(Hello {
                    protocol: PROTOCOL_VERSION,
                    vmctl_version: self.info.vmctl_version.clone(),
                    host: self.info.host.clone(),
                    capacity: self.info.capacity,
                })
            }
            Op::Observe => b.observe().map_err(|e| e.0).and_then(to_value),
            Op::ObserveVm { name } => b.observe_vm(&name).map_err(|e| e.0).and_then(to_value),
            Op::ObserveNetwork { name } => {
                b.observe_network(&name).map_err(|e| e.0).and_then(to_value)
            }
            Op::Capabilities => to_value(b.capabilities()),
            Op::Create { spec } => unit(b.create(&spec)),
            Op::Start { name } => unit(b.start(&name)),
            Op::Stop { name } => unit(b.stop(&name)),
            Op::Restart { old, new } => unit(b.restart(&old, &new)),
            Op::Destroy {
                name,
                delete_external_disks,
            } => unit(b.destroy(&name, delete_external_disks)),
            Op::HotAddCpu { name, cpus } => unit(b.hot_add_cpu(&name, cpus)),
            Op::HotAddMemory { name, memory_mib } => unit(b.hot_add_memory(&name, memory_mib)),
            Op::ResizeDisk {
                name,
                disk,
                size_bytes,
            } => unit(b.resize_disk(&name, &disk, size_bytes)),
            Op::SetCpuWeight { name, weight } => unit(b.set_cpu_weight(&name, weight)),
            Op::Copy { source, new } => b.copy(&source, &new).map_err(|e| e.0).and_then(to_value),
            Op::CreateNetwork { net } => unit(b.create_network(&net)),
            Op::DestroyNetwork { name } => unit(b.destroy_network(&name)),
            Op::Record { spec, desired } => unit(b.record(&spec, desired)),
        }
    }
}

fn to_value(v: impl Serialize) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot encode the answer: {e}"))
}

fn unit(r: Result<(), vmctl_planner::BackendError>) -> Result<Value, String> {
    r.map(|()| Value::Null).map_err(|e| e.0)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vmctl_planner::{BackendError, Capabilities, CopyReport, Desired, ObservedState};
    use vmctl_spec::{NetworkSpec, VmSpec};

    use super::*;

    /// Records the calls that reached it.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }

    impl Fake {
        fn log(&self, s: &str) -> Result<(), BackendError> {
            if let Ok(mut c) = self.calls.lock() {
                c.push(s.to_string());
            }
            if s.contains("boom") {
                return Err(BackendError::new("no such VM boom"));
            }
            if s.contains("panic") {
                panic!("the fake panics on request");
            }
            Ok(())
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
    }

    impl Backend for Fake {
        fn observe(&self) -> Result<ObservedState, BackendError> {
            Ok(ObservedState::new())
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::all()
        }
        fn create(&self, s: &VmSpec) -> Result<(), BackendError> {
            self.log(&format!("create {}", s.name))
        }
        fn start(&self, n: &str) -> Result<(), BackendError> {
            self.log(&format!("start {n}"))
        }
        fn stop(&self, n: &str) -> Result<(), BackendError> {
            self.log(&format!("stop {n}"))
        }
        fn restart(&self, _: &VmSpec, n: &VmSpec) -> Result<(), BackendError> {
            self.log(&format!("restart {}", n.name))
        }
        fn destroy(&self, n: &str, _: bool) -> Result<(), BackendError> {
            self.log(&format!("destroy {n}"))
        }
        fn hot_add_cpu(&self, n: &str, _: u32) -> Result<(), BackendError> {
            self.log(&format!("hot_add_cpu {n}"))
        }
        fn hot_add_memory(&self, n: &str, _: u64) -> Result<(), BackendError> {
            self.log(&format!("hot_add_memory {n}"))
        }
        fn resize_disk(&self, n: &str, _: &str, _: u64) -> Result<(), BackendError> {
            self.log(&format!("resize_disk {n}"))
        }
        fn set_cpu_weight(&self, n: &str, _: u32) -> Result<(), BackendError> {
            self.log(&format!("set_cpu_weight {n}"))
        }
        fn copy(&self, s: &str, _: &VmSpec) -> Result<CopyReport, BackendError> {
            self.log(&format!("copy {s}"))?;
            Ok(CopyReport::default())
        }
        fn create_network(&self, n: &NetworkSpec) -> Result<(), BackendError> {
            self.log(&format!("create_network {}", n.name))
        }
        fn destroy_network(&self, n: &str) -> Result<(), BackendError> {
            self.log(&format!("destroy_network {n}"))
        }
        fn record(&self, s: &VmSpec, _: Desired) -> Result<(), BackendError> {
            self.log(&format!("record {}", s.name))
        }
    }

    fn info() -> ServerInfo {
        ServerInfo {
            vmctl_version: "9.9.9".into(),
            host: "h1".into(),
            capacity: Some(HostCapacity {
                memory_mib: 24_000,
                cpus: 2,
            }),
        }
    }

    /// Serve `input`, return the answer lines as JSON.
    fn serve(fake: &Fake, dir: &std::path::Path, input: &[u8]) -> Vec<Value> {
        let server = Server::new(fake, FenceStore::new(dir), info());
        let mut out = Vec::new();
        server
            .serve(io::BufReader::new(input), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()
    }

    #[test]
    fn hello_reports_version_host_and_capacity() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = serve(
            &Fake::default(),
            d.path(),
            b"{\"v\":1,\"id\":1,\"op\":\"hello\",\"client\":\"x\"}\n",
        );
        assert_eq!(
            out,
            vec![serde_json::json!({"v":1,"id":1,"ok":{
                "protocol":1,"vmctl_version":"9.9.9","host":"h1",
                "capacity":{"memory_mib":24000,"cpus":2}}})]
        );
    }

    #[test]
    fn every_line_gets_one_answer_and_bad_ones_do_not_end_the_connection() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fake = Fake::default();
        let mut input = Vec::new();
        input.extend_from_slice(b"garbage\n");
        input.extend_from_slice(b"{\"v\":1,\"id\":2,\"op\":\"wipe\"}\n");
        input.extend_from_slice(b"{\"v\":3,\"id\":3,\"op\":\"observe\"}\n");
        // Over the limit: answered, dropped, never buffered whole.
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 1));
        input.push(b'\n');
        input.extend_from_slice(b"{\"v\":1,\"id\":4,\"op\":\"start\",\"name\":\"a\"}\n");
        input.extend_from_slice(
            b"{\"v\":1,\"id\":5,\"token\":1,\"op\":\"start\",\"name\":\"boom\"}\n",
        );
        input.extend_from_slice(
            b"{\"v\":1,\"id\":6,\"token\":1,\"op\":\"stop\",\"name\":\"panic\"}\n",
        );
        input.extend_from_slice(b"{\"v\":1,\"id\":7,\"op\":\"capabilities\"}");
        let out = serve(&fake, d.path(), &input);
        let kinds: Vec<(Value, Value)> = out
            .iter()
            .map(|v| (v["id"].clone(), v["err"]["kind"].clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Value::Null, "bad-request".into()),
                (2.into(), "unsupported".into()),
                (3.into(), "unsupported".into()),
                (Value::Null, "bad-request".into()),
                (4.into(), "bad-request".into()),
                (5.into(), "backend".into()),
                (6.into(), "backend".into()),
                (7.into(), Value::Null),
            ]
        );
        assert_eq!(out[5]["err"]["message"], "no such VM boom");
        assert_eq!(out[7]["ok"]["hot_add_cpu"], true);
        // The tokenless start never reached the backend.
        assert_eq!(fake.calls(), ["start boom", "stop panic"]);
    }

    #[test]
    fn a_lower_token_is_fenced_and_never_reaches_the_backend() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fake = Fake::default();
        let req = |id: u64, token: u64, name: &str| {
            format!(
                "{{\"v\":1,\"id\":{id},\"token\":{token},\"op\":\"stop\",\"name\":\"{name}\"}}\n"
            )
        };
        let input = [
            req(1, 5, "a"),
            req(2, 4, "b"),
            req(3, 5, "c"),
            req(4, 8, "d"),
            req(5, 5, "e"),
            // Read-only calls need no token and are never fenced.
            "{\"v\":1,\"id\":6,\"token\":1,\"op\":\"observe\"}\n".into(),
        ]
        .concat();
        let out = serve(&fake, d.path(), input.as_bytes());
        let kinds: Vec<Value> = out.iter().map(|v| v["err"]["kind"].clone()).collect();
        assert_eq!(
            kinds,
            [
                Value::Null,
                "fenced".into(),
                Value::Null,
                Value::Null,
                "fenced".into(),
                Value::Null
            ]
        );
        assert_eq!(
            out[1]["err"]["message"],
            "token 4 is fenced: this host has seen token 5"
        );
        assert_eq!(fake.calls(), ["stop a", "stop c", "stop d"]);
        assert_eq!(FenceStore::new(d.path()).highest().ok(), Some(8));
    }

    #[test]
    fn a_hello_with_a_token_raises_the_fence_and_a_stale_one_is_refused() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fake = Fake::default();
        let input = [
            "{\"v\":1,\"id\":1,\"token\":9,\"op\":\"hello\"}\n",
            "{\"v\":1,\"id\":2,\"token\":8,\"op\":\"hello\"}\n",
            "{\"v\":1,\"id\":3,\"token\":8,\"op\":\"stop\",\"name\":\"a\"}\n",
            // Without a token, hello is read-only.
            "{\"v\":1,\"id\":4,\"op\":\"hello\"}\n",
        ]
        .concat();
        let out = serve(&fake, d.path(), input.as_bytes());
        let kinds: Vec<Value> = out.iter().map(|v| v["err"]["kind"].clone()).collect();
        assert_eq!(
            kinds,
            [Value::Null, "fenced".into(), "fenced".into(), Value::Null]
        );
        assert_eq!(FenceStore::new(d.path()).highest().ok(), Some(9));
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    }
}
