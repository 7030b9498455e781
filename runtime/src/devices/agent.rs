//! The host→guest half of the agent channel on COM2 (docs/runtime.md, "The
//! agent channel"): the control socket's `agent` request sends one command
//! line to the guest and waits for the guest's reply line carrying the same
//! `id`, while the guest's report lines keep flowing to `status.guest`.
//!
//! Why it lives apart from the UART: the command is started by the VMM's
//! main loop, the reply arrives on whichever vCPU thread transmits it, and
//! the timeout is enforced by the main loop again. [`AgentLink`] is the one
//! place the three meet. It is bounded: one command outstanding at a time
//! (a second one is refused, not queued), a command line of at most
//! [`MAX_COMMAND_LINE`] bytes, a reply line of at most [`MAX_REPLY_LINE`]
//! bytes, and a deadline. The guest's reply is hostile input: only a JSON
//! object whose top-level `id` is the outstanding command's id answers it;
//! any other line with a top-level `id` (late, forged, unknown) is dropped,
//! never taken as a report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// Longest command line sent to the guest, newline included.
pub const MAX_COMMAND_LINE: usize = 4096;

/// Longest reply line accepted from the guest (a longer one answers the
/// command with an error instead of its content).
pub const MAX_REPLY_LINE: usize = 16 * 1024;

/// Longest time one command may wait for its reply.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a command got no reply from the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("the agent command must be a JSON object with a string \"cmd\"")]
    NotACommand,
    #[error("the agent command is {0} bytes as a line; at most {MAX_COMMAND_LINE} are sent")]
    TooLong(usize),
    #[error("another agent command (id {0}) is waiting for its reply")]
    Busy(u64),
    #[error("the guest did not answer agent command {id} within {ms} ms")]
    Timeout { id: u64, ms: u128 },
    #[error("the guest's reply to agent command {0} is longer than {MAX_REPLY_LINE} bytes")]
    ReplyTooLong(u64),
    #[error("agent command {id} got no reply: {why}")]
    Ended { id: u64, why: String },
}

/// Called once with the guest's reply object or why there is none.
pub type Answer = Box<dyn FnOnce(Result<Value, AgentError>) + Send>;

struct Outstanding {
    id: u64,
    started: Instant,
    deadline: Instant,
    answer: Answer,
}

#[derive(Default)]
struct LinkState {
    last_id: u64,
    outstanding: Option<Outstanding>,
}

/// The command waiting for its reply, shared by the main loop (start,
/// timeout) and COM2's output (reply). Outlives a guest reset.
#[derive(Clone, Default)]
pub struct AgentLink(Arc<Mutex<LinkState>>);

impl AgentLink {
    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `command` as outstanding and return the line to send to
    /// the guest. On error `answer` is called with it at once.
    pub fn begin(&self, command: &Value, timeout: Duration, answer: Answer) -> Option<Vec<u8>> {
        let mut st = self.state();
        if let Some(o) = &st.outstanding {
            let busy = o.id;
            drop(st);
            answer(Err(AgentError::Busy(busy)));
            return None;
        }
        let id = st.last_id + 1;
        let line = match command_line(id, command) {
            Ok(line) => line,
            Err(e) => {
                drop(st);
                answer(Err(e));
                return None;
            }
        };
        st.last_id = id;
        let started = Instant::now();
        st.outstanding = Some(Outstanding {
            id,
            started,
            deadline: started + timeout.min(MAX_TIMEOUT),
            answer,
        });
        Some(line)
    }

    /// When the outstanding command times out, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.state().outstanding.as_ref().map(|o| o.deadline)
    }

    /// Answer the outstanding command with a timeout if its deadline passed.
    pub fn expire(&self, now: Instant) {
        let mut st = self.state();
        if st.outstanding.as_ref().is_none_or(|o| now < o.deadline) {
            return;
        }
        if let Some(o) = st.outstanding.take() {
            drop(st);
            let ms = o.deadline.saturating_duration_since(o.started).as_millis();
            tracing::warn!(id = o.id, ms, "agent command timed out");
            (o.answer)(Err(AgentError::Timeout { id: o.id, ms }));
        }
    }

    /// End the outstanding command without a reply (guest reset, shutdown).
    pub fn fail(&self, why: &str) {
        let taken = self.state().outstanding.take();
        if let Some(o) = taken {
            (o.answer)(Err(AgentError::Ended {
                id: o.id,
                why: why.into(),
            }));
        }
    }

    /// A line the guest sent whose object has a top-level `id` (a reply,
    /// never a report): answers the outstanding command if the id is its,
    /// else is dropped. `line_len` is the line's length in bytes.
    pub fn reply(&self, obj: Map<String, Value>, line_len: usize) {
        let id = obj.get("id").and_then(Value::as_u64);
        let mut st = self.state();
        let matches = id.is_some() && st.outstanding.as_ref().map(|o| o.id) == id;
        let taken = if matches { st.outstanding.take() } else { None };
        drop(st);
        let Some(o) = taken else {
            tracing::debug!(?id, "agent reply to no outstanding command dropped");
            return;
        };
        if line_len > MAX_REPLY_LINE {
            (o.answer)(Err(AgentError::ReplyTooLong(o.id)));
        } else {
            (o.answer)(Ok(Value::Object(obj)));
        }
    }
}

/// The line sent to the guest for command `id`: `{"id":N,` then the
/// command's other fields (any `id` the caller gave is replaced), then `\n`.
pub fn command_line(id: u64, command: &Value) -> Result<Vec<u8>, AgentError> {
    let Value::Object(fields) = command else {
        return Err(AgentError::NotACommand);
    };
    if !fields.get("cmd").is_some_and(Value::is_string) {
        return Err(AgentError::NotACommand);
    }
    let rest: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| k.as_str() != "id")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // serde_json escapes control characters: the line has no newline but
    // its last byte. `id` goes first (simple guest parsers rely on it);
    // `rest` holds at least `cmd`, so it serializes as `{"…`.
    let body = serde_json::to_vec(&Value::Object(rest)).map_err(|_| AgentError::NotACommand)?;
    let mut line = format!("{{\"id\":{id},").into_bytes();
    line.extend_from_slice(body.get(1..).unwrap_or_default());
    line.push(b'\n');
    if line.len() > MAX_COMMAND_LINE {
        return Err(AgentError::TooLong(line.len()));
    }
    Ok(line)
}

/// Whether a parsed agent line is a reply (it has a top-level `id`) rather
/// than a report. Reports never carry one.
pub fn is_reply(obj: &Map<String, Value>) -> bool {
    obj.contains_key("id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::mpsc;

    fn answer() -> (Answer, mpsc::Receiver<Result<Value, AgentError>>) {
        let (tx, rx) = mpsc::channel();
        (
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            rx,
        )
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn the_command_line_gets_the_vmm_id_first_and_one_newline() {
        let line = command_line(7, &json!({"id":99,"cmd":"ping","nonce":"a\nb"})).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"id\":7,\"cmd\":\"ping\",\"nonce\":\"a\\nb\"}\n"
        );
        assert_eq!(
            command_line(1, &json!(["ping"])),
            Err(AgentError::NotACommand)
        );
        assert_eq!(
            command_line(1, &json!({"cmd":3})),
            Err(AgentError::NotACommand)
        );
        let long = "x".repeat(MAX_COMMAND_LINE);
        assert!(matches!(
            command_line(1, &json!({"cmd":"ping","pad":long})),
            Err(AgentError::TooLong(_))
        ));
    }

    #[test]
    fn a_reply_is_routed_by_id_and_others_are_dropped() {
        let link = AgentLink::default();
        let (a, rx) = answer();
        let line = link
            .begin(&json!({"cmd":"ping"}), Duration::from_secs(5), a)
            .unwrap();
        assert!(line.starts_with(b"{\"id\":1,"));
        // Wrong id, a string id, a report: nothing answered.
        link.reply(obj(json!({"id":2,"ok":true})), 12);
        link.reply(obj(json!({"id":"1","ok":true})), 12);
        assert!(rx.try_recv().is_err());
        assert!(link.deadline().is_some());
        link.reply(obj(json!({"id":1,"ok":true,"seq":4})), 24);
        assert_eq!(
            rx.try_recv().unwrap(),
            Ok(json!({"id":1,"ok":true,"seq":4}))
        );
        assert!(link.deadline().is_none(), "nothing outstanding");
        // A duplicate of the same reply is dropped.
        link.reply(obj(json!({"id":1,"ok":true})), 12);
        // The next command gets the next id.
        let (a, _rx) = answer();
        let line = link
            .begin(&json!({"cmd":"ping"}), Duration::from_secs(5), a)
            .unwrap();
        assert!(line.starts_with(b"{\"id\":2,"));
    }

    #[test]
    fn one_command_at_a_time() {
        let link = AgentLink::default();
        let (a, _rx) = answer();
        link.begin(&json!({"cmd":"freeze"}), Duration::from_secs(5), a)
            .unwrap();
        let (b, rx) = answer();
        assert!(
            link.begin(&json!({"cmd":"ping"}), Duration::from_secs(5), b)
                .is_none()
        );
        assert_eq!(rx.try_recv().unwrap(), Err(AgentError::Busy(1)));
    }

    #[test]
    fn a_bad_command_is_answered_at_once_and_takes_no_slot() {
        let link = AgentLink::default();
        let (a, rx) = answer();
        assert!(
            link.begin(&json!("ping"), Duration::from_secs(5), a)
                .is_none()
        );
        assert_eq!(rx.try_recv().unwrap(), Err(AgentError::NotACommand));
        assert!(link.deadline().is_none());
    }

    #[test]
    fn the_deadline_answers_with_a_timeout_and_a_late_reply_is_dropped() {
        let link = AgentLink::default();
        let (a, rx) = answer();
        link.begin(&json!({"cmd":"ping"}), Duration::from_millis(250), a)
            .unwrap();
        let deadline = link.deadline().unwrap();
        link.expire(deadline - Duration::from_millis(1));
        assert!(rx.try_recv().is_err(), "not yet");
        link.expire(deadline);
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(AgentError::Timeout { id: 1, ms: 250 })
        );
        link.reply(obj(json!({"id":1,"ok":true})), 12);
        assert!(rx.try_recv().is_err(), "answered once");
    }

    #[test]
    fn the_timeout_is_capped() {
        let link = AgentLink::default();
        let (a, _rx) = answer();
        let before = Instant::now();
        link.begin(&json!({"cmd":"ping"}), Duration::from_secs(3600), a)
            .unwrap();
        assert!(link.deadline().unwrap() <= Instant::now() + MAX_TIMEOUT);
        assert!(link.deadline().unwrap() >= before + MAX_TIMEOUT);
    }

    #[test]
    fn an_over_long_reply_and_a_reset_end_the_command_with_an_error() {
        let link = AgentLink::default();
        let (a, rx) = answer();
        link.begin(&json!({"cmd":"ping"}), Duration::from_secs(5), a)
            .unwrap();
        link.reply(obj(json!({"id":1})), MAX_REPLY_LINE + 1);
        assert_eq!(rx.try_recv().unwrap(), Err(AgentError::ReplyTooLong(1)));
        let (a, rx) = answer();
        link.begin(&json!({"cmd":"ping"}), Duration::from_secs(5), a)
            .unwrap();
        link.fail("the guest reset");
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(AgentError::Ended {
                id: 2,
                why: "the guest reset".into()
            })
        );
    }
}
