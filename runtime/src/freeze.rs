//! Filesystem freeze around a live copy (docs/disks.md, "Consistency
//! levels"): when the guest agent says it can (`"commands"` in its report
//! lists `freeze`), [`Runtime::snapshot_disks`](crate::Runtime) asks it to
//! freeze its filesystems before the VMM quiesces the VM and to thaw them
//! after the VM resumed. The copy is then *filesystem-consistent* — every
//! frozen filesystem is clean on the copy, no journal replay needed —
//! instead of only *crash-consistent*.
//!
//! The agent's replies are hostile input: only a reply with `"ok":true` and
//! a `frozen` list of at most [`MAX_FROZEN`] short strings counts, and the
//! level is claimed only when the thaw reply shows the same filesystems
//! were still frozen (not thawed meanwhile by the agent's own watchdog).
//! An agent that does not answer within [`AGENT_WAIT`] costs that long and
//! the copy goes on crash-consistent, saying why. Whatever happens after a
//! freeze was asked — a failed quiesce, a failed copy — the thaw is sent
//! ([`GuestFreeze`]'s `Drop`); the agent also thaws by itself.

use std::time::Duration;

use serde_json::{Value, json};

use crate::api::ApiClient;

/// How long vmctl waits for the agent's answer to `freeze` and to `thaw`.
pub const AGENT_WAIT: Duration = Duration::from_secs(10);

/// Most filesystems taken from one `frozen` list.
pub const MAX_FROZEN: usize = 64;

/// Longest mount point taken from a `frozen` list.
pub const MAX_MOUNT_POINT: usize = 4096;

/// How consistent a copy of a VM's disks is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// The guest agent froze its filesystems around the pause: each one
    /// it names is clean on the copy.
    FilesystemConsistent,
    /// What a power cut at the pause instant would have left: a journal
    /// replay (or fsck) on first use, no lost completed write.
    CrashConsistent,
    /// The VM was not running: the files as it left them.
    Offline,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::FilesystemConsistent => "filesystem-consistent",
            Consistency::CrashConsistent => "crash-consistent",
            Consistency::Offline => "offline",
        }
    }
}

/// The level a live copy reached, and why not better.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub consistency: Consistency,
    /// Mount points (as the guest named them) frozen over the pause.
    pub frozen: Vec<String>,
    /// Why the copy is only crash-consistent.
    pub note: Option<String>,
}

/// Whether the guest's latest report lists `freeze` among its commands.
pub fn offers_freeze(report: Option<&Value>) -> bool {
    report
        .and_then(|r| r.get("commands"))
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c.as_str() == Some("freeze")))
}

/// The mount points a reply lists under `key` when it says `"ok":true`.
fn listed(reply: &Value, key: &str) -> Result<Vec<String>, String> {
    if reply.get("ok") != Some(&Value::Bool(true)) {
        let why = reply
            .get("error")
            .and_then(Value::as_str)
            .map(|e| e.chars().take(200).collect::<String>())
            .unwrap_or_else(|| "no reason given".into());
        return Err(format!("the guest agent refused: {why:?}"));
    }
    let Some(items) = reply.get(key).and_then(Value::as_array) else {
        return Err(format!("the guest agent's reply has no {key:?} list"));
    };
    if items.len() > MAX_FROZEN {
        return Err(format!(
            "the guest agent's {key:?} list has {} entries (at most {MAX_FROZEN} are taken)",
            items.len()
        ));
    }
    items
        .iter()
        .map(|i| match i.as_str() {
            // Printed to the user: no control characters (terminal escapes).
            Some(s)
                if !s.is_empty()
                    && s.len() <= MAX_MOUNT_POINT
                    && !s.chars().any(char::is_control) =>
            {
                Ok(s.to_string())
            }
            _ => Err(format!(
                "the guest agent's {key:?} list holds something that is not a mount point"
            )),
        })
        .collect()
}

/// What a `freeze` reply froze; `Err` says why it does not count.
pub fn frozen_from(reply: &Value) -> Result<Vec<String>, String> {
    let frozen = listed(reply, "frozen")?;
    if frozen.is_empty() {
        return Err("the guest agent froze no filesystem".into());
    }
    Ok(frozen)
}

/// The level reached, from what was frozen and the `thaw` reply: the
/// filesystems must have been frozen until the thaw (the agent thaws by
/// itself after a while, and then its thaw lists nothing).
pub fn judge(frozen: Result<Vec<String>, String>, thaw: Result<Value, String>) -> Outcome {
    let crash = |note: String| Outcome {
        consistency: Consistency::CrashConsistent,
        frozen: Vec::new(),
        note: Some(note),
    };
    let frozen = match frozen {
        Ok(f) => f,
        Err(note) => return crash(note),
    };
    let thawed = match thaw.and_then(|t| listed(&t, "thawed")) {
        Ok(t) => t,
        Err(e) => return crash(format!("the thaw was not confirmed: {e}")),
    };
    let mut a = frozen.clone();
    let mut b = thawed;
    a.sort();
    b.sort();
    if a != b {
        return crash(
            "the guest agent's freeze ended before its thaw (its own deadline): the filesystems may not have been frozen at the pause".into(),
        );
    }
    Outcome {
        consistency: Consistency::FilesystemConsistent,
        frozen,
        note: None,
    }
}

/// A freeze asked of the guest agent, thawed exactly once: by
/// [`GuestFreeze::thaw`], or on drop (an error path).
pub struct GuestFreeze<'a> {
    client: &'a ApiClient,
    /// `None`: no freeze was asked (the note says why).
    frozen: Option<Result<Vec<String>, String>>,
    note: Option<String>,
}

impl<'a> GuestFreeze<'a> {
    /// Ask the agent to freeze if its report says it can.
    pub fn begin(client: &'a ApiClient, report: Option<&Value>) -> Self {
        if !offers_freeze(report) {
            return GuestFreeze {
                client,
                frozen: None,
                note: Some("the guest agent does not offer freeze".into()),
            };
        }
        let frozen = match client.agent(json!({"cmd":"freeze"}), AGENT_WAIT) {
            Ok(reply) => frozen_from(&reply),
            Err(e) => Err(format!("freeze: {e}")),
        };
        match &frozen {
            Ok(f) => tracing::info!(frozen = ?f, "guest filesystems frozen"),
            Err(e) => {
                tracing::info!(why = %e, "no filesystem freeze: the copy is crash-consistent")
            }
        }
        GuestFreeze {
            client,
            frozen: Some(frozen),
            note: None,
        }
    }

    fn send_thaw(&mut self) -> Option<(Result<Vec<String>, String>, Result<Value, String>)> {
        let frozen = self.frozen.take()?;
        // Sent even when the freeze failed or timed out: the agent may have
        // frozen something after all.
        let thaw = self
            .client
            .agent(json!({"cmd":"thaw"}), AGENT_WAIT)
            .map_err(|e| e.to_string());
        if let Err(e) = &thaw {
            tracing::warn!(error = %e, "guest thaw not confirmed (the agent thaws by itself)");
        }
        Some((frozen, thaw))
    }

    /// Thaw (after the VM resumed) and say what level the copy reached.
    pub fn thaw(mut self) -> Outcome {
        match self.send_thaw() {
            Some((frozen, thaw)) => judge(frozen, thaw),
            None => Outcome {
                consistency: Consistency::CrashConsistent,
                frozen: Vec::new(),
                note: self.note.take(),
            },
        }
    }
}

impl Drop for GuestFreeze<'_> {
    fn drop(&mut self) {
        let _ = self.send_thaw();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_is_asked_only_of_an_agent_that_lists_it() {
        assert!(offers_freeze(Some(
            &json!({"agent":"debian-12","commands":["ping","freeze","thaw"]})
        )));
        assert!(!offers_freeze(Some(&json!({"agent":"debian-12","seq":3}))));
        assert!(!offers_freeze(Some(&json!({"commands":"freeze"}))));
        assert!(!offers_freeze(Some(&json!({"commands":[{"freeze":true}]}))));
        assert!(!offers_freeze(None));
    }

    #[test]
    fn a_freeze_counts_only_with_ok_and_a_list_of_mount_points() {
        assert_eq!(
            frozen_from(&json!({"id":1,"ok":true,"frozen":["/data","/"]})),
            Ok(vec!["/data".to_string(), "/".to_string()])
        );
        let no = |v: Value| frozen_from(&v).unwrap_err();
        assert!(no(json!({"id":1,"ok":true,"frozen":[]})).contains("froze no filesystem"));
        assert!(no(json!({"id":1,"ok":false,"error":"busy"})).contains("\"busy\""));
        // An echoed command (a guest tty with echo on) is no reply.
        assert!(no(json!({"id":1,"cmd":"freeze"})).contains("refused"));
        assert!(no(json!({"id":1,"ok":"true","frozen":["/"]})).contains("refused"));
        assert!(no(json!({"id":1,"ok":true,"frozen":"/"})).contains("no \"frozen\" list"));
        assert!(no(json!({"id":1,"ok":true,"frozen":["/",7]})).contains("not a mount point"));
        assert!(no(json!({"id":1,"ok":true,"frozen":[""]})).contains("not a mount point"));
        assert!(
            no(json!({"id":1,"ok":true,"frozen":["/\u{1b}[2J"]})).contains("not a mount point")
        );
        let long = "/".repeat(MAX_MOUNT_POINT + 1);
        assert!(no(json!({"id":1,"ok":true,"frozen":[long]})).contains("not a mount point"));
        let many: Vec<String> = (0..=MAX_FROZEN).map(|i| format!("/m{i}")).collect();
        assert!(no(json!({"id":1,"ok":true,"frozen":many})).contains("entries"));
        let huge_error = "e".repeat(10_000);
        assert!(no(json!({"ok":false,"error":huge_error})).len() < 300);
    }

    #[test]
    fn the_level_needs_the_same_filesystems_thawed() {
        let frozen = || Ok(vec!["/data".to_string(), "/".to_string()]);
        let ok = judge(
            frozen(),
            Ok(json!({"id":2,"ok":true,"thawed":["/","/data"]})),
        );
        assert_eq!(ok.consistency, Consistency::FilesystemConsistent);
        assert_eq!(ok.frozen, ["/data", "/"]);
        assert_eq!(ok.note, None);

        // The watchdog thawed first: the agent's thaw lists nothing.
        let late = judge(frozen(), Ok(json!({"id":2,"ok":true,"thawed":[]})));
        assert_eq!(late.consistency, Consistency::CrashConsistent);
        assert!(late.note.unwrap().contains("own deadline"));
        // No thaw answer.
        let lost = judge(frozen(), Err("no reply within 10000 ms".into()));
        assert_eq!(lost.consistency, Consistency::CrashConsistent);
        assert!(lost.note.unwrap().contains("not confirmed"));
        // No freeze: its reason is the note, whatever the thaw says.
        let none = judge(
            Err("the guest agent froze no filesystem".into()),
            Ok(json!({"id":2,"ok":true,"thawed":[]})),
        );
        assert_eq!(none.consistency, Consistency::CrashConsistent);
        assert_eq!(
            none.note.as_deref(),
            Some("the guest agent froze no filesystem")
        );
        assert!(none.frozen.is_empty());
    }

    #[test]
    fn levels_have_their_documented_names() {
        for (c, s) in [
            (Consistency::FilesystemConsistent, "filesystem-consistent"),
            (Consistency::CrashConsistent, "crash-consistent"),
            (Consistency::Offline, "offline"),
        ] {
            assert_eq!(c.as_str(), s);
            assert_eq!(serde_json::to_value(c).unwrap(), json!(s));
        }
    }
}
