//! How apply progress reaches the user: indicatif spinners on a TTY, one plain
//! line per event otherwise, or one JSON object per event with `--json`.
//! The engine calls [`Reporter::event`] from worker threads.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use vmctl_planner::{Event, SkipReason};

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spinners (stdout is a terminal).
    Progress,
    /// One line per event.
    Plain,
    /// One JSON object per line.
    Json,
    /// Nothing (the caller reports).
    Quiet,
}

impl Mode {
    /// `--json` wins; otherwise spinners on a terminal, plain lines elsewhere.
    pub fn detect(json: bool) -> Self {
        if json {
            Mode::Json
        } else if std::io::stdout().is_terminal() {
            Mode::Progress
        } else {
            Mode::Plain
        }
    }
}

/// Renders engine events; cheap to share between threads.
pub struct Reporter {
    mode: Mode,
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    started: Instant,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn skip_text(r: &SkipReason) -> String {
    match r {
        SkipReason::AlreadyDone => "already done".to_string(),
        SkipReason::DependencyFailed(id) => format!("{id} failed"),
        SkipReason::Refused => "refused".to_string(),
    }
}

impl Reporter {
    pub fn new(mode: Mode) -> Self {
        Reporter {
            mode,
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// Print one JSON document as a line (json mode only).
    pub fn json_line(&self, mut value: Value) {
        if self.mode != Mode::Json {
            return;
        }
        if let Some(obj) = value.as_object_mut() {
            obj.insert("format_version".into(), json!(vmctl_spec::FORMAT_VERSION));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    /// Print a line of text (plain and progress modes).
    pub fn line(&self, text: &str) {
        match self.mode {
            Mode::Plain => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Mode::Progress => {
                let _ = self.multi.println(text);
            }
            Mode::Json | Mode::Quiet => {}
        }
    }

    fn bar(&self, id: &str, msg: String) {
        let pb = self.multi.add(ProgressBar::new_spinner());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            pb.set_style(style);
        }
        pb.set_message(msg);
        pb.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(id.to_string(), pb);
        }
    }

    fn finish_bar(&self, id: &str, msg: String) {
        let pb = self.bars.lock().ok().and_then(|mut b| b.remove(id));
        match pb {
            Some(pb) => {
                // The message carries the duration; drop the live timer.
                if let Ok(style) = ProgressStyle::with_template("  {msg}") {
                    pb.set_style(style);
                }
                pb.finish_with_message(msg)
            }
            None => {
                let _ = self.multi.println(msg);
            }
        }
    }

    /// An action a killed apply left open that a plan with nothing to do
    /// shows is done ([`crate::reconcile::settle`]).
    pub fn settled(&self, entry: &vmctl_planner::JournalEntry) {
        match self.mode {
            Mode::Json => self.json_line(json!({"event":"interrupted","action":entry.action,"vm":entry.vm,"kind":entry.kind.label(),"already_done":true,"ts_ms":self.started.elapsed().as_millis() as u64})),
            _ => self.line(&format!(
                "{}: {} was interrupted by a killed apply; it is already done",
                entry.vm,
                entry.kind.label()
            )),
        }
    }

    /// The engine's callback.
    pub fn event(&self, e: &Event<'_>) {
        let ts = self.started.elapsed().as_millis() as u64;
        match e {
            Event::Interrupted { entry } => {
                let text = format!(
                    "{}: {} was interrupted by a killed apply; finishing it now",
                    entry.vm, entry.kind.label()
                );
                match self.mode {
                    Mode::Json => self.json_line(json!({"event":"interrupted","action":entry.action,"vm":entry.vm,"kind":entry.kind.label(),"ts_ms":ts})),
                    _ => self.line(&text),
                }
            }
            Event::Started { action } => match self.mode {
                Mode::Json => self.json_line(json!({"event":"started","action":action.id,"vm":action.vm,"resource":action.resource,"kind":action.kind.label(),"ts_ms":ts})),
                Mode::Progress => self.bar(&action.id, format!("{}: {}", who(action), action.kind.label())),
                Mode::Plain => self.line(&format!("{}: {} started", who(action), action.kind.label())),
                Mode::Quiet => {}
            },
            Event::Finished { action, duration, copy } => {
                let mut text = format!("{}: {} done ({})", who(action), action.kind.label(), secs(*duration));
                if let Some(c) = copy {
                    text.push_str(&copy_note(c, action.source.as_deref()));
                }
                match self.mode {
                    Mode::Json => {
                        let mut line = json!({"event":"finished","action":action.id,"vm":action.vm,"resource":action.resource,"kind":action.kind.label(),"duration_ms":duration.as_millis() as u64,"ts_ms":ts});
                        if let Some(c) = copy {
                            line["copy"] = json!({"live":c.live,"paused_us":c.paused_us,"methods":c.methods,"consistency":c.consistency,"consistency_note":c.consistency_note});
                        }
                        self.json_line(line)
                    }
                    Mode::Progress => self.finish_bar(&action.id, format!("✓ {text}")),
                    Mode::Plain => self.line(&text),
                    Mode::Quiet => {}
                }
            }
            Event::Failed { action, error, duration } => {
                let text = format!("{}: {} FAILED after {}: {error}", who(action), action.kind.label(), secs(*duration));
                match self.mode {
                    Mode::Json => self.json_line(json!({"event":"failed","action":action.id,"vm":action.vm,"resource":action.resource,"kind":action.kind.label(),"error":error.to_string(),"duration_ms":duration.as_millis() as u64,"ts_ms":ts})),
                    Mode::Progress => self.finish_bar(&action.id, format!("✗ {text}")),
                    Mode::Plain => self.line(&text),
                    Mode::Quiet => {}
                }
            }
            Event::Skipped { action, reason } => {
                let text = format!("{}: {} skipped ({})", who(action), action.kind.label(), skip_text(reason));
                match self.mode {
                    Mode::Json => self.json_line(json!({"event":"skipped","action":action.id,"vm":action.vm,"resource":action.resource,"kind":action.kind.label(),"reason":skip_text(reason),"ts_ms":ts})),
                    Mode::Progress => self.finish_bar(&action.id, format!("- {text}")),
                    Mode::Plain => self.line(&text),
                    Mode::Quiet => {}
                }
            }
        }
    }
}

/// How progress lines name an action's subject: `db`, or `network lab`.
fn who(a: &vmctl_planner::Action) -> String {
    if a.is_network() {
        format!("network {}", a.vm)
    } else {
        a.vm.clone()
    }
}

/// `; source web paused 3.2 ms (reflink)` for a live copy, `; source
/// stopped` otherwise.
fn copy_note(c: &vmctl_planner::CopyReport, source: Option<&str>) -> String {
    let source = source.unwrap_or("?");
    let methods = if c.methods.is_empty() {
        "no disks".to_string()
    } else {
        c.methods.join(", ")
    };
    let level = match (c.consistency.as_str(), &c.consistency_note) {
        ("", _) => String::new(),
        (level, Some(why)) => format!("; {level}: {why}"),
        (level, None) => format!("; {level}"),
    };
    match c.paused_us {
        Some(us) => format!(
            "; source {source} paused {:.1} ms, not stopped ({methods}){level}",
            us as f64 / 1000.0
        ),
        None => format!("; source {source} not running ({methods})"),
    }
}
