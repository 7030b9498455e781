//! Commands from the VMM on COM2 (docs/runtime.md, "The agent channel"):
//! the VMM writes `{"id":N,"cmd":"…",…}` lines into COM2's receive FIFO
//! and waits for a reply line with the same `id`. diag assembles lines
//! from the polled UART ([`LineBuf`]), picks out the few fields it needs
//! ([`parse`]) and writes its reply with [`write_reply`]. diag has no
//! filesystem: its `freeze` and `thaw` say so (`"frozen":[]`) rather than
//! pretend.
//!
//! The parser is deliberately small: the VMM always puts `"id"` first, so
//! the id is read from the line's `{"id":` prefix; `cmd` and `nonce` are
//! plain strings without escapes (a `nonce` with anything else is
//! refused). Input is bounded by [`MAX_LINE`]; a longer line is dropped.

use crate::text::Text;

/// Longest command line diag reads (newline excluded).
pub const MAX_LINE: usize = 256;

/// Longest nonce echoed back.
pub const MAX_NONCE: usize = 64;

/// The commands diag answers, as its report lists them.
pub const COMMANDS: &str = "[\"ping\",\"freeze\",\"thaw\"]";

/// One line being received.
pub struct LineBuf {
    buf: [u8; MAX_LINE],
    len: usize,
    overflowed: bool,
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuf {
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_LINE],
            len: 0,
            overflowed: false,
        }
    }

    /// Adds a received byte; true when it completed a line that fits
    /// (read it with [`LineBuf::line`], then [`LineBuf::clear`]).
    pub fn push(&mut self, b: u8) -> bool {
        if b == b'\n' {
            if self.overflowed {
                self.clear();
                return false;
            }
            return true;
        }
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
        false
    }

    /// The completed line, `\r` and surrounding blanks trimmed.
    pub fn line(&self) -> &[u8] {
        trim(self.buf.get(..self.len).unwrap_or(&[]))
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !first.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !last.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    s
}

/// What a command asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Ping,
    Freeze,
    Thaw,
    Unknown,
}

/// A parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command<'a> {
    pub id: u64,
    pub cmd: Cmd,
    /// `Some(Err(()))`: a nonce diag will not echo (too long, escapes).
    pub nonce: Option<Result<&'a [u8], ()>>,
}

/// A command line, or `None` if it is not one (no `{"id":N,` prefix or no
/// string `cmd`).
pub fn parse(line: &[u8]) -> Option<Command<'_>> {
    let rest = line.strip_prefix(b"{\"id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut id: u64 = 0;
    for &d in rest.get(..digits)? {
        id = id * 10 + u64::from(d - b'0');
    }
    if rest.get(digits) != Some(&b',') && rest.get(digits) != Some(&b'}') {
        return None;
    }
    let cmd = match string_field(line, b"\"cmd\":")? {
        Ok(b"ping") => Cmd::Ping,
        Ok(b"freeze") => Cmd::Freeze,
        Ok(b"thaw") => Cmd::Thaw,
        _ => Cmd::Unknown,
    };
    let nonce = string_field(line, b"\"nonce\":");
    Some(Command { id, cmd, nonce })
}

/// The value of string field `key` (`"key":`, optional blanks, then a
/// string without escapes of at most [`MAX_NONCE`] bytes). `None` if the
/// key is absent, `Some(Err(()))` if its value is not such a string.
fn string_field<'a>(line: &'a [u8], key: &[u8]) -> Option<Result<&'a [u8], ()>> {
    let at = line.windows(key.len()).position(|w| w == key)?;
    let mut v = line.get(at + key.len()..)?;
    while let [b' ', rest @ ..] = v {
        v = rest;
    }
    let Some(inner) = v.strip_prefix(b"\"") else {
        return Some(Err(()));
    };
    let Some(end) = inner.iter().position(|&b| b == b'"') else {
        return Some(Err(()));
    };
    let value = inner.get(..end)?;
    if value.len() > MAX_NONCE
        || value
            .iter()
            .any(|&b| b == b'\\' || !(0x20..0x7f).contains(&b))
    {
        return Some(Err(()));
    }
    Some(Ok(value))
}

/// What diag puts in a reply besides the command's own fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The seq of the last report sent.
    pub seq: u64,
    pub cpus: u32,
    /// Commands answered so far, this one included.
    pub handled: u64,
}

/// The reply line (no newline) to `c`.
pub fn write_reply<const N: usize>(c: &Command<'_>, ctx: &Context, out: &mut Text<N>) {
    out.str("{\"id\":").dec(c.id);
    if let Some(Err(())) = c.nonce {
        out.str(",\"ok\":false,\"error\":\"nonce: a string of at most 64 printable ASCII bytes without escapes\"}");
        return;
    }
    match c.cmd {
        Cmd::Unknown => {
            out.str(",\"ok\":false,\"error\":\"unknown command\"}");
            return;
        }
        Cmd::Ping => {
            out.str(",\"ok\":true");
        }
        // Honest: diag has no filesystem, so nothing is (or was) frozen.
        Cmd::Freeze => {
            out.str(",\"ok\":true,\"frozen\":[],\"note\":\"diag has no filesystem\"");
        }
        Cmd::Thaw => {
            out.str(",\"ok\":true,\"thawed\":[]");
        }
    }
    out.str(",\"agent\":\"diag\"");
    if let Some(Ok(n)) = c.nonce {
        out.str(",\"nonce\":").json_str(n);
    }
    out.str(",\"seq\":").dec(ctx.seq);
    out.str(",\"cpus\":").dec(u64::from(ctx.cpus));
    out.str(",\"handled\":").dec(ctx.handled);
    out.byte(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(buf: &mut LineBuf, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if buf.push(b) {
                lines.push(buf.line().to_vec());
                buf.clear();
            }
        }
        lines
    }

    fn reply(line: &[u8], ctx: Context) -> String {
        let c = parse(line).unwrap();
        let mut t = Text::<512>::new();
        write_reply(&c, &ctx, &mut t);
        assert!(!t.overflowed());
        String::from_utf8(t.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn lines_are_assembled_and_over_long_ones_dropped() {
        let mut b = LineBuf::new();
        let mut input = b"\n{\"id\":1,\"cmd\":\"ping\"}\r\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 5]);
        input.extend(b"\n{\"id\":2,\"cmd\":\"thaw\"}\n");
        let lines = feed(&mut b, &input);
        assert_eq!(
            lines,
            vec![
                b"".to_vec(),
                b"{\"id\":1,\"cmd\":\"ping\"}".to_vec(),
                b"{\"id\":2,\"cmd\":\"thaw\"}".to_vec()
            ]
        );
    }

    #[test]
    fn commands_parse_from_what_the_vmm_sends() {
        assert_eq!(
            parse(b"{\"id\":42,\"cmd\":\"ping\",\"nonce\":\"n-1\"}"),
            Some(Command {
                id: 42,
                cmd: Cmd::Ping,
                nonce: Some(Ok(b"n-1"))
            })
        );
        assert_eq!(
            parse(b"{\"id\":3,\"cmd\":\"freeze\"}").unwrap().cmd,
            Cmd::Freeze
        );
        assert_eq!(
            parse(b"{\"id\":3,\"cmd\":\"reboot\"}").unwrap().cmd,
            Cmd::Unknown
        );
        assert_eq!(parse(b"{\"id\":3,\"cmd\":7}").unwrap().cmd, Cmd::Unknown);
        // Not commands.
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(b"{\"cmd\":\"ping\",\"id\":1}"), None);
        assert_eq!(parse(b"{\"id\":-1,\"cmd\":\"ping\"}"), None);
        assert_eq!(
            parse(b"{\"id\":99999999999999999999,\"cmd\":\"ping\"}"),
            None
        );
        assert_eq!(parse(b"{\"id\":1x,\"cmd\":\"ping\"}"), None);
        assert_eq!(parse(b"{\"id\":1}"), None);
    }

    #[test]
    fn replies_are_json_with_what_diag_knows() {
        let ctx = Context {
            seq: 5,
            cpus: 2,
            handled: 1,
        };
        assert_eq!(
            reply(b"{\"id\":9,\"cmd\":\"ping\",\"nonce\":\"abc\"}", ctx),
            r#"{"id":9,"ok":true,"agent":"diag","nonce":"abc","seq":5,"cpus":2,"handled":1}"#
        );
        assert_eq!(
            reply(b"{\"id\":10,\"cmd\":\"freeze\"}", ctx),
            r#"{"id":10,"ok":true,"frozen":[],"note":"diag has no filesystem","agent":"diag","seq":5,"cpus":2,"handled":1}"#
        );
        assert_eq!(
            reply(b"{\"id\":11,\"cmd\":\"thaw\"}", ctx),
            r#"{"id":11,"ok":true,"thawed":[],"agent":"diag","seq":5,"cpus":2,"handled":1}"#
        );
        assert_eq!(
            reply(b"{\"id\":12,\"cmd\":\"halt\"}", ctx),
            r#"{"id":12,"ok":false,"error":"unknown command"}"#
        );
        let r = reply(b"{\"id\":13,\"cmd\":\"ping\",\"nonce\":\"a\\\"b\"}", ctx);
        assert!(
            r.starts_with(r#"{"id":13,"ok":false,"error":"nonce"#),
            "{r}"
        );
        let long = format!(
            "{{\"id\":14,\"cmd\":\"ping\",\"nonce\":\"{}\"}}",
            "n".repeat(65)
        );
        assert!(reply(long.as_bytes(), ctx).contains("\"ok\":false"));
    }
}
