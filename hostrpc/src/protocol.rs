//! The wire format: one JSON object per line, each way.
//!
//! A request is `{"v":1,"id":N,"token":T,"op":"NAME",...op fields}` (`token`
//! only on mutating ops); its answer is `{"v":1,"id":N,"ok":VALUE}` or
//! `{"v":1,"id":N,"err":{"kind":"fenced|unsupported|backend|bad-request",
//! "message":"..."}}`. A request whose `id` could not be read is answered with
//! `"id":null`. The first exchange of a connection is `hello`.
//!
//! Everything here is written for input from the network: a line is parsed
//! into a JSON value first (serde_json bounds its nesting), then checked field
//! by field, and every failure becomes an answer, never a panic.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vmctl_planner::{Capabilities, CopyReport, HostCapacity, ObservedNetwork, ObservedState};
use vmctl_planner::{Desired, ObservedVm};
use vmctl_spec::{NetworkSpec, VmSpec};

/// The protocol version this build speaks (the `v` of every line).
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side accepts, newline excluded. An observed
/// state of hundreds of VMs is far below it.
pub const MAX_LINE: usize = 16 << 20;

/// One operation with its arguments: the planner's `Backend` trait, plus
/// `hello`.
// One Op exists per request in flight; boxing the specs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// First call of a connection: the server answers [`Hello`].
    Hello {
        /// The client's vmctl version (informational).
        #[serde(default)]
        client: String,
    },
    Observe,
    ObserveVm {
        name: String,
    },
    ObserveNetwork {
        name: String,
    },
    Capabilities,
    Create {
        spec: VmSpec,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Restart {
        old: VmSpec,
        new: VmSpec,
    },
    Destroy {
        name: String,
        delete_external_disks: bool,
    },
    HotAddCpu {
        name: String,
        cpus: u32,
    },
    HotAddMemory {
        name: String,
        memory_mib: u64,
    },
    ResizeDisk {
        name: String,
        disk: String,
        size_bytes: u64,
    },
    SetCpuWeight {
        name: String,
        weight: u32,
    },
    Copy {
        source: String,
        new: VmSpec,
    },
    CreateNetwork {
        net: NetworkSpec,
    },
    DestroyNetwork {
        name: String,
    },
    Record {
        spec: VmSpec,
        desired: Desired,
    },
}

/// Every op name, as it appears in `"op"`.
pub const OP_NAMES: &[&str] = &[
    "hello",
    "observe",
    "observe_vm",
    "observe_network",
    "capabilities",
    "create",
    "start",
    "stop",
    "restart",
    "destroy",
    "hot_add_cpu",
    "hot_add_memory",
    "resize_disk",
    "set_cpu_weight",
    "copy",
    "create_network",
    "destroy_network",
    "record",
];

impl Op {
    /// The `"op"` string.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "hello",
            Op::Observe => "observe",
            Op::ObserveVm { .. } => "observe_vm",
            Op::ObserveNetwork { .. } => "observe_network",
            Op::Capabilities => "capabilities",
            Op::Create { .. } => "create",
            Op::Start { .. } => "start",
            Op::Stop { .. } => "stop",
            Op::Restart { .. } => "restart",
            Op::Destroy { .. } => "destroy",
            Op::HotAddCpu { .. } => "hot_add_cpu",
            Op::HotAddMemory { .. } => "hot_add_memory",
            Op::ResizeDisk { .. } => "resize_disk",
            Op::SetCpuWeight { .. } => "set_cpu_weight",
            Op::Copy { .. } => "copy",
            Op::CreateNetwork { .. } => "create_network",
            Op::DestroyNetwork { .. } => "destroy_network",
            Op::Record { .. } => "record",
        }
    }

    /// Changes the host: must carry a fencing token.
    pub fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Op::Hello { .. }
                | Op::Observe
                | Op::ObserveVm { .. }
                | Op::ObserveNetwork { .. }
                | Op::Capabilities
        )
    }
}

/// One request line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    /// The caller's fencing token (required on mutating ops).
    pub token: Option<u64>,
    pub op: Op,
}

/// What `hello` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The server's protocol version.
    pub protocol: u32,
    /// The server's vmctl version.
    pub vmctl_version: String,
    /// The server's host name.
    pub host: String,
    /// The host's RAM and CPUs (None when unknown).
    pub capacity: Option<HostCapacity>,
}

/// The kind of a refused or failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The token is lower than one this host has seen.
    Fenced,
    /// Unknown op or protocol version.
    Unsupported,
    /// The backend failed the operation.
    Backend,
    /// The line is not a valid request.
    BadRequest,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Fenced => "fenced",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Backend => "backend",
            ErrorKind::BadRequest => "bad-request",
        }
    }

    /// From the wire; a kind a newer server invented reads as `backend`.
    fn parse(s: &str) -> ErrorKind {
        match s {
            "fenced" => ErrorKind::Fenced,
            "unsupported" => ErrorKind::Unsupported,
            "bad-request" => ErrorKind::BadRequest,
            _ => ErrorKind::Backend,
        }
    }
}

/// An `err` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct RpcError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            kind,
            message: message.into(),
        }
    }
}

/// One answer line.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The request's id; `None` when the request's id was unreadable.
    pub id: Option<u64>,
    pub result: Result<Value, RpcError>,
}

/// Why an answer line could not be read (client side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a response object: {0}")]
    Shape(&'static str),
    #[error("protocol version {0} (this vmctl speaks {PROTOCOL_VERSION})")]
    Version(u64),
}

impl Request {
    /// The request as one line (no newline).
    pub fn encode(&self) -> String {
        let mut obj = match serde_json::to_value(&self.op) {
            Ok(Value::Object(m)) => m,
            // An internally tagged enum always serialises to an object.
            _ => Map::new(),
        };
        obj.insert("v".into(), PROTOCOL_VERSION.into());
        obj.insert("id".into(), self.id.into());
        if let Some(t) = self.token {
            obj.insert("token".into(), t.into());
        }
        Value::Object(obj).to_string()
    }

    /// Parse one request line. On failure, the answer to send (carrying the
    /// request's id when it could be read).
    pub fn decode(line: &[u8]) -> Result<Request, Response> {
        let fail = |id, kind, msg: String| Response {
            id,
            result: Err(RpcError::new(kind, msg)),
        };
        let value: Value = serde_json::from_slice(line)
            .map_err(|e| fail(None, ErrorKind::BadRequest, format!("not JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(fail(
                None,
                ErrorKind::BadRequest,
                "a request is a JSON object".into(),
            ));
        };
        let id = match obj.get("id") {
            Some(v) => v.as_u64().ok_or_else(|| {
                fail(
                    None,
                    ErrorKind::BadRequest,
                    "\"id\" must be an unsigned integer".into(),
                )
            })?,
            None => return Err(fail(None, ErrorKind::BadRequest, "no \"id\"".into())),
        };
        let some = Some(id);
        match obj.get("v").map(|v| v.as_u64()) {
            Some(Some(v)) if v == u64::from(PROTOCOL_VERSION) => {}
            Some(Some(v)) => {
                return Err(fail(
                    some,
                    ErrorKind::Unsupported,
                    format!(
                        "protocol version {v} is not supported (this host speaks {PROTOCOL_VERSION})"
                    ),
                ));
            }
            Some(None) => {
                return Err(fail(
                    some,
                    ErrorKind::BadRequest,
                    "\"v\" must be an unsigned integer".into(),
                ));
            }
            None => return Err(fail(some, ErrorKind::BadRequest, "no \"v\"".into())),
        }
        let token = match obj.get("token") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                fail(
                    some,
                    ErrorKind::BadRequest,
                    "\"token\" must be an unsigned integer".into(),
                )
            })?),
        };
        let op_name = match obj.get("op") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(fail(
                    some,
                    ErrorKind::BadRequest,
                    "\"op\" must be a string".into(),
                ));
            }
        };
        if !OP_NAMES.contains(&op_name.as_str()) {
            let mut shown: String = op_name.chars().take(64).collect();
            if shown.len() < op_name.len() {
                shown.push('…');
            }
            return Err(fail(
                some,
                ErrorKind::Unsupported,
                format!("unknown op {shown:?}"),
            ));
        }
        let op: Op = serde_json::from_value(Value::Object(obj)).map_err(|e| {
            fail(
                some,
                ErrorKind::BadRequest,
                format!("bad arguments for {op_name}: {e}"),
            )
        })?;
        Ok(Request { id, token, op })
    }
}

impl Response {
    pub fn ok(id: u64, value: Value) -> Self {
        Response {
            id: Some(id),
            result: Ok(value),
        }
    }

    pub fn err(id: Option<u64>, kind: ErrorKind, message: impl Into<String>) -> Self {
        Response {
            id,
            result: Err(RpcError::new(kind, message)),
        }
    }

    /// The answer as one line (no newline).
    pub fn encode(&self) -> String {
        let mut obj = Map::new();
        obj.insert("v".into(), PROTOCOL_VERSION.into());
        obj.insert("id".into(), self.id.map_or(Value::Null, Value::from));
        match &self.result {
            Ok(v) => {
                obj.insert("ok".into(), v.clone());
            }
            Err(e) => {
                let mut err = Map::new();
                err.insert("kind".into(), e.kind.as_str().into());
                err.insert("message".into(), e.message.clone().into());
                obj.insert("err".into(), Value::Object(err));
            }
        }
        Value::Object(obj).to_string()
    }

    /// Parse one answer line.
    pub fn decode(line: &[u8]) -> Result<Response, DecodeError> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(DecodeError::Shape("not an object"));
        };
        match obj.get("v").and_then(Value::as_u64) {
            Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
            Some(v) => return Err(DecodeError::Version(v)),
            None => return Err(DecodeError::Shape("no \"v\"")),
        }
        let id = match obj.get("id") {
            Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or(DecodeError::Shape("bad \"id\""))?),
            None => return Err(DecodeError::Shape("no \"id\"")),
        };
        let result = if let Some(ok) = obj.remove("ok") {
            Ok(ok)
        } else if let Some(Value::Object(err)) = obj.remove("err") {
            let kind = err
                .get("kind")
                .and_then(Value::as_str)
                .map_or(ErrorKind::Backend, ErrorKind::parse);
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            Err(RpcError { kind, message })
        } else {
            return Err(DecodeError::Shape("neither \"ok\" nor \"err\""));
        };
        Ok(Response { id, result })
    }
}

/// The `ok` value of each op, typed: what the client expects back.
pub mod answer {
    use super::*;

    pub type Hello = super::Hello;
    pub type Observe = ObservedState;
    pub type ObserveVm = Option<ObservedVm>;
    pub type ObserveNetwork = Option<ObservedNetwork>;
    pub type Capabilities = super::Capabilities;
    pub type Copy = CopyReport;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        let loaded = vmctl_spec::parse_str(
            "t.kdl",
            "vm \"a\" {\n    os \"diag\"\n    memory \"64MiB\"\n}\n",
            std::path::Path::new("/tmp"),
            4,
        )
        .expect("parse");
        loaded.state.vms[0].clone()
    }

    fn every_op() -> Vec<Op> {
        let s = spec();
        let subnet: vmctl_spec::net::Ipv4Subnet = match "10.0.0.0/24".parse() {
            Ok(s) => s,
            Err(e) => panic!("subnet: {e:?}"),
        };
        let net = NetworkSpec::new("lan", subnet);
        vec![
            Op::Hello {
                client: "0.1.0".into(),
            },
            Op::Observe,
            Op::ObserveVm { name: "a".into() },
            Op::ObserveNetwork { name: "n".into() },
            Op::Capabilities,
            Op::Create { spec: s.clone() },
            Op::Start { name: "a".into() },
            Op::Stop { name: "a".into() },
            Op::Restart {
                old: s.clone(),
                new: s.clone(),
            },
            Op::Destroy {
                name: "a".into(),
                delete_external_disks: true,
            },
            Op::HotAddCpu {
                name: "a".into(),
                cpus: 3,
            },
            Op::HotAddMemory {
                name: "a".into(),
                memory_mib: 512,
            },
            Op::ResizeDisk {
                name: "a".into(),
                disk: "root".into(),
                size_bytes: 1 << 30,
            },
            Op::SetCpuWeight {
                name: "a".into(),
                weight: 200,
            },
            Op::Copy {
                source: "a".into(),
                new: s.clone(),
            },
            Op::CreateNetwork { net },
            Op::DestroyNetwork { name: "n".into() },
            Op::Record {
                spec: s,
                desired: Desired::Stopped,
            },
        ]
    }

    #[test]
    fn every_op_round_trips_and_is_named_in_op_names() {
        let ops = every_op();
        assert_eq!(ops.len(), OP_NAMES.len());
        for (i, op) in ops.into_iter().enumerate() {
            assert_eq!(op.name(), OP_NAMES[i]);
            let req = Request {
                id: i as u64,
                token: op.is_mutating().then_some(7),
                op,
            };
            let line = req.encode();
            assert!(!line.contains('\n'));
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            assert_eq!(v["v"], 1);
            assert_eq!(v["op"], req.op.name());
            assert_eq!(Request::decode(line.as_bytes()), Ok(req));
        }
    }

    #[test]
    fn read_only_ops_are_exactly_the_observations() {
        let ro: Vec<&str> = every_op()
            .iter()
            .filter(|o| !o.is_mutating())
            .map(Op::name)
            .collect();
        assert_eq!(
            ro,
            [
                "hello",
                "observe",
                "observe_vm",
                "observe_network",
                "capabilities"
            ]
        );
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::ok(3, Value::Null),
            Response::ok(4, serde_json::json!({"a": [1, 2]})),
            Response::err(Some(5), ErrorKind::Fenced, "token 3 < 9"),
            Response::err(None, ErrorKind::BadRequest, "not JSON"),
        ] {
            let line = r.encode();
            assert_eq!(Response::decode(line.as_bytes()), Ok(r));
        }
        // `ok: null` is a success, not a missing field.
        let line = r#"{"v":1,"id":1,"ok":null}"#;
        assert_eq!(
            Response::decode(line.as_bytes()),
            Ok(Response::ok(1, Value::Null))
        );
    }

    fn refused(line: &str) -> Response {
        match Request::decode(line.as_bytes()) {
            Ok(r) => panic!("{line} was accepted as {r:?}"),
            Err(resp) => resp,
        }
    }

    fn kind(r: &Response) -> ErrorKind {
        match &r.result {
            Err(e) => e.kind,
            Ok(v) => panic!("expected an error, got {v}"),
        }
    }

    #[test]
    fn bad_lines_are_answered_not_panicked_on() {
        for (line, want_id, want) in [
            ("", None, ErrorKind::BadRequest),
            ("not json", None, ErrorKind::BadRequest),
            ("[1,2]", None, ErrorKind::BadRequest),
            (r#"{"v":1,"op":"observe"}"#, None, ErrorKind::BadRequest),
            (
                r#"{"v":1,"id":-1,"op":"observe"}"#,
                None,
                ErrorKind::BadRequest,
            ),
            (r#"{"id":2,"op":"observe"}"#, Some(2), ErrorKind::BadRequest),
            (
                r#"{"v":"1","id":2,"op":"observe"}"#,
                Some(2),
                ErrorKind::BadRequest,
            ),
            (r#"{"v":1,"id":2}"#, Some(2), ErrorKind::BadRequest),
            (r#"{"v":1,"id":2,"op":7}"#, Some(2), ErrorKind::BadRequest),
            (
                r#"{"v":1,"id":2,"op":"start"}"#,
                Some(2),
                ErrorKind::BadRequest,
            ),
            (
                r#"{"v":1,"id":2,"op":"start","name":5}"#,
                Some(2),
                ErrorKind::BadRequest,
            ),
            (
                r#"{"v":1,"id":2,"token":"x","op":"start","name":"a"}"#,
                Some(2),
                ErrorKind::BadRequest,
            ),
            (
                r#"{"v":1,"id":2,"op":"create","spec":{"name":"a"}}"#,
                Some(2),
                ErrorKind::BadRequest,
            ),
        ] {
            let r = refused(line);
            assert_eq!(r.id, want_id, "{line}");
            assert_eq!(kind(&r), want, "{line}");
        }
        // Deep nesting is refused by serde_json's recursion limit.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(kind(&refused(&deep)), ErrorKind::BadRequest);
    }

    #[test]
    fn unknown_op_and_version_are_unsupported() {
        let r = refused(r#"{"v":1,"id":9,"op":"format_disk","name":"a"}"#);
        assert_eq!((r.id, kind(&r)), (Some(9), ErrorKind::Unsupported));
        let r = refused(r#"{"v":2,"id":9,"op":"hello"}"#);
        assert_eq!((r.id, kind(&r)), (Some(9), ErrorKind::Unsupported));
        let Err(e) = &r.result else { unreachable!() };
        assert!(e.message.contains("version 2"), "{}", e.message);
        // A long unknown name is not echoed whole.
        let long = format!(r#"{{"v":1,"id":1,"op":"{}"}}"#, "x".repeat(10_000));
        let Err(e) = refused(&long).result else {
            unreachable!()
        };
        assert!(e.message.len() < 200, "{}", e.message.len());
    }

    #[test]
    fn answers_from_another_version_or_shape_are_refused() {
        for (line, want) in [
            (r#"{"v":2,"id":1,"ok":null}"#, DecodeError::Version(2)),
            (r#"{"id":1,"ok":null}"#, DecodeError::Shape("no \"v\"")),
            (r#"{"v":1,"ok":null}"#, DecodeError::Shape("no \"id\"")),
            (
                r#"{"v":1,"id":1}"#,
                DecodeError::Shape("neither \"ok\" nor \"err\""),
            ),
        ] {
            assert_eq!(Response::decode(line.as_bytes()), Err(want), "{line}");
        }
        assert!(matches!(Response::decode(b"{"), Err(DecodeError::Json(_))));
        // An error kind from a newer server reads as a backend error.
        let r = Response::decode(br#"{"v":1,"id":1,"err":{"kind":"new","message":"m"}}"#);
        assert_eq!(
            r.map(|r| r.result),
            Ok(Err(RpcError::new(ErrorKind::Backend, "m")))
        );
    }
}
