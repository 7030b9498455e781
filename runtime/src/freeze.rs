//! Filesystem freeze around a live copy (docs/disks.md, "Consistency
//! levels"): when the guest agent says it can (`"commands"` in its report
//! lists `freeze`), [`Runtime::snapshot_disks`](crate::Runtime) asks it to
//! freeze its filesystems before the VMM quiesces the VM and to thaw them
//! after the VM resumed. The copy is then *filesystem-consistent* — every
//! frozen filesystem is clean on the copy, no journal replay needed —
//! instead of only *crash-consistent*.
//!
//! The agent's replies are hostile input: only a reply with `"ok":true` and
//! a `frozen` list of at most [`MAX_FROZEN`] short strings counts. The
//! agent thaws by itself `thaw_after_s` after it received the freeze (its
//! watchdog, in case vmctl dies), so the level is claimed only when the VM
//! was paused sooner than that after vmctl *sent* the freeze: then the
//! filesystems were frozen at the pause instant, whatever the watchdog did
//! after the VM resumed (a long pause lets the guest's clock jump past it).
//! An agent that does not answer within [`AGENT_WAIT`] costs that long and
//! the copy goes on crash-consistent, saying why. Whatever happens after a
//! freeze was asked — a failed quiesce, a failed copy — the thaw is sent
//! ([`GuestFreeze`]'s `Drop`); the agent also thaws by itself.

use std::time::Duration;

use serde_json::{Value, json};

use crate::api::ApiClient;

/// How long vmctl waits for the agent's answer to `freeze` and to `thaw`
/// ([`agent_wait`]), and the freeze deadline assumed of an agent that
/// does not state its own.
pub const AGENT_WAIT: Duration = Duration::from_secs(10);

/// `VMCTL_AGENT_WAIT_MS` overrides [`AGENT_WAIT`] (100 ms .. 60 s) for
/// slow guests — an emulated nested lab answers in seconds, not ms.
pub const AGENT_WAIT_ENV: &str = "VMCTL_AGENT_WAIT_MS";

/// How long to wait for each agent answer here.
pub fn agent_wait() -> Duration {
    parse_wait(std::env::var(AGENT_WAIT_ENV).ok().as_deref())
}

fn parse_wait(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(AGENT_WAIT, |ms| {
            Duration::from_millis(ms.clamp(100, 60_000))
        })
}

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

/// How long the agent keeps a freeze without a thaw, from its `freeze`
/// reply's `thaw_after_s` (1 s .. 1 h; [`AGENT_WAIT`] if it gives none).
pub fn thaw_after(reply: &Value) -> Duration {
    reply
        .get("thaw_after_s")
        .and_then(Value::as_u64)
        .map_or(AGENT_WAIT, |s| Duration::from_secs(s.clamp(1, 3600)))
}

/// The level reached: `frozen` is what the freeze reply froze, `held` the
/// time from sending the freeze to the VM being paused (`None`: it was not
/// paused), `limit` the agent's own freeze deadline. The thaw's outcome
/// does not change the level (the filesystems were frozen at the pause);
/// an unconfirmed thaw is logged — the agent's watchdog thaws anyway.
pub fn judge(
    frozen: Result<Vec<String>, String>,
    held: Option<Duration>,
    limit: Duration,
    thaw: Result<Value, String>,
) -> Outcome {
    let crash = |note: String| Outcome {
        consistency: Consistency::CrashConsistent,
        frozen: Vec::new(),
        note: Some(note),
    };
    let frozen = match frozen {
        Ok(f) => f,
        Err(note) => return crash(note),
    };
    match thaw.and_then(|t| listed(&t, "thawed")) {
        Ok(t) if t.is_empty() => {
            tracing::info!("the guest agent had thawed by itself before vmctl's thaw")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "guest thaw not confirmed (the agent thaws by itself)")
        }
    }
    let Some(held) = held else {
        return crash("the VM was not paused".into());
    };
    if held >= limit {
        return crash(format!(
            "the pause came {} ms after the freeze was asked, not within the guest agent's {} s freeze deadline: its filesystems may have been thawed by then",
            held.as_millis(),
            limit.as_secs()
        ));
    }
    Outcome {
        consistency: Consistency::FilesystemConsistent,
        frozen,
        note: None,
    }
}

/// What a freeze froze, or why nothing counts.
type Frozen = Result<Vec<String>, String>;

/// A freeze asked of the guest agent, thawed exactly once: by
/// [`GuestFreeze::thaw`], or on drop (an error path).
pub struct GuestFreeze<'a> {
    client: &'a ApiClient,
    /// `None`: no freeze was asked (the note says why).
    frozen: Option<Frozen>,
    note: Option<String>,
    asked: std::time::Instant,
    limit: Duration,
    /// From asking the freeze to the VM paused.
    held: Option<Duration>,
}

impl<'a> GuestFreeze<'a> {
    /// Ask the agent to freeze if its report says it can.
    pub fn begin(client: &'a ApiClient, report: Option<&Value>) -> Self {
        let asked = std::time::Instant::now();
        let mut freeze = GuestFreeze {
            client,
            frozen: None,
            note: None,
            asked,
            limit: AGENT_WAIT,
            held: None,
        };
        if !offers_freeze(report) {
            freeze.note = Some("the guest agent does not offer freeze".into());
            return freeze;
        }
        let frozen = match client.agent(json!({"cmd":"freeze"}), agent_wait()) {
            Ok(reply) => {
                freeze.limit = thaw_after(&reply);
                frozen_from(&reply)
            }
            Err(e) => Err(format!("freeze: {e}")),
        };
        match &frozen {
            Ok(f) => tracing::info!(frozen = ?f, "guest filesystems frozen"),
            Err(e) => {
                tracing::info!(why = %e, "no filesystem freeze: the copy is crash-consistent")
            }
        }
        freeze.frozen = Some(frozen);
        freeze
    }

    /// The VM is paused (quiesced) now.
    pub fn paused(&mut self) {
        self.held = Some(self.asked.elapsed());
    }

    fn send_thaw(&mut self) -> Option<(Frozen, Result<Value, String>)> {
        let frozen = self.frozen.take()?;
        // Sent even when the freeze failed or timed out: the agent may have
        // frozen something after all.
        let thaw = self
            .client
            .agent(json!({"cmd":"thaw"}), agent_wait())
            .map_err(|e| e.to_string());
        Some((frozen, thaw))
    }

    /// Thaw (after the VM resumed) and say what level the copy reached.
    pub fn thaw(mut self) -> Outcome {
        match self.send_thaw() {
            Some((frozen, thaw)) => judge(frozen, self.held, self.limit, thaw),
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
        if let Some((_, Err(e))) = self.send_thaw() {
            tracing::warn!(error = %e, "guest thaw not confirmed (the agent thaws by itself)");
        }
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
    fn the_level_needs_the_pause_within_the_agents_freeze_deadline() {
        let frozen = || Ok(vec!["/data".to_string(), "/".to_string()]);
        let limit = Duration::from_secs(10);
        let soon = Some(Duration::from_millis(40));
        let thawed = || Ok(json!({"id":2,"ok":true,"thawed":["/","/data"]}));
        let ok = judge(frozen(), soon, limit, thawed());
        assert_eq!(ok.consistency, Consistency::FilesystemConsistent);
        assert_eq!(ok.frozen, ["/data", "/"]);
        assert_eq!(ok.note, None);
        // Frozen at the pause: what the thaw says afterwards (the watchdog
        // was first, no answer) does not change that.
        for thaw in [
            Ok(json!({"id":2,"ok":true,"thawed":[]})),
            Err("no reply within 10000 ms".to_string()),
        ] {
            let o = judge(frozen(), soon, limit, thaw);
            assert_eq!(o.consistency, Consistency::FilesystemConsistent);
        }
        // Paused too late: the watchdog may have thawed before the pause.
        let late = judge(frozen(), Some(limit), limit, thawed());
        assert_eq!(late.consistency, Consistency::CrashConsistent);
        assert!(late.note.unwrap().contains("freeze deadline"));
        let unpaused = judge(frozen(), None, limit, thawed());
        assert_eq!(unpaused.consistency, Consistency::CrashConsistent);
        // No freeze: its reason is the note, whatever the thaw says.
        let none = judge(
            Err("the guest agent froze no filesystem".into()),
            soon,
            limit,
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
    fn the_agents_deadline_is_read_and_bounded() {
        assert_eq!(
            thaw_after(&json!({"thaw_after_s":10})),
            Duration::from_secs(10)
        );
        assert_eq!(
            thaw_after(&json!({"thaw_after_s":0})),
            Duration::from_secs(1)
        );
        assert_eq!(
            thaw_after(&json!({"thaw_after_s":u64::MAX})),
            Duration::from_secs(3600)
        );
        assert_eq!(thaw_after(&json!({"thaw_after_s":"10"})), AGENT_WAIT);
        assert_eq!(thaw_after(&json!({})), AGENT_WAIT);
    }

    #[test]
    fn the_wait_can_be_set_within_bounds() {
        assert_eq!(parse_wait(None), AGENT_WAIT);
        assert_eq!(parse_wait(Some("60000")), Duration::from_secs(60));
        assert_eq!(parse_wait(Some("999999")), Duration::from_secs(60));
        assert_eq!(parse_wait(Some("1")), Duration::from_millis(100));
        assert_eq!(parse_wait(Some("ten")), AGENT_WAIT);
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
