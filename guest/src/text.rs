//! A fixed-capacity text buffer with decimal, hex and JSON-string writers.
//! diag does its own formatting instead of `core::fmt`: it is small, it needs
//! no allocator, and it keeps precompiled (SSE-using) `core` code out of the
//! image. Output that does not fit is cut off and `overflowed` is set.

pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Text<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            overflowed: false,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn byte(&mut self, b: u8) -> &mut Self {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
        self
    }

    pub fn bytes(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            self.byte(b);
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Unsigned decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            if let Some(d) = digits.get_mut(n) {
                *d = b'0' + (v % 10) as u8;
            }
            n += 1;
            v /= 10;
            if v == 0 || n >= digits.len() {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            let d = digits.get(n).copied().unwrap_or(b'?');
            self.byte(d);
        }
        self
    }

    /// Lower-case hex, exactly `width` nibbles (at most 16).
    pub fn hex(&mut self, v: u64, width: u32) -> &mut Self {
        let width = width.clamp(1, 16);
        let mut i = width;
        while i > 0 {
            i -= 1;
            let nibble = ((v >> (i * 4)) & 0xf) as u8;
            self.byte(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
        self
    }

    /// `0x`-prefixed hex without leading zeros.
    pub fn hex0x(&mut self, v: u64) -> &mut Self {
        let mut width = 1;
        while width < 16 && (v >> (width * 4)) != 0 {
            width += 1;
        }
        self.str("0x").hex(v, width)
    }

    /// A JSON string literal of `s`, quotes included. Bytes outside printable
    /// ASCII become `\u00XX` (so any byte string gives valid JSON).
    pub fn json_str(&mut self, s: &[u8]) -> &mut Self {
        self.byte(b'"');
        for &b in s {
            match b {
                b'"' => {
                    self.str("\\\"");
                }
                b'\\' => {
                    self.str("\\\\");
                }
                b'\n' => {
                    self.str("\\n");
                }
                b'\r' => {
                    self.str("\\r");
                }
                b'\t' => {
                    self.str("\\t");
                }
                0x20..=0x7e => {
                    self.byte(b);
                }
                _ => {
                    self.str("\\u00").hex(u64::from(b), 2);
                }
            }
        }
        self.byte(b'"')
    }

    /// Text for the console: printable ASCII kept, anything else as `?`.
    pub fn printable(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            self.byte(if (0x20..=0x7e).contains(&b) { b } else { b'?' });
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<const N: usize>(t: &Text<N>) -> String {
        String::from_utf8(t.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn decimal() {
        let mut t = Text::<64>::new();
        t.dec(0)
            .byte(b' ')
            .dec(7)
            .byte(b' ')
            .dec(1234567890)
            .byte(b' ')
            .dec(u64::MAX);
        assert_eq!(s(&t), "0 7 1234567890 18446744073709551615");
    }

    #[test]
    fn hexes() {
        let mut t = Text::<64>::new();
        t.hex(0xabc, 4)
            .byte(b' ')
            .hex(u64::MAX, 16)
            .byte(b' ')
            .hex0x(0)
            .byte(b' ')
            .hex0x(0xd000_0000);
        assert_eq!(s(&t), "0abc ffffffffffffffff 0x0 0xd0000000");
    }

    #[test]
    fn json_escapes_parse_back() {
        let raw: Vec<u8> = (0u8..=255).collect();
        let mut t = Text::<4096>::new();
        t.json_str(&raw);
        assert!(!t.overflowed());
        let parsed: String = serde_json_lite_parse(&s(&t));
        let expect: String = raw.iter().map(|&b| b as char).collect();
        assert_eq!(parsed, expect);
    }

    /// Decodes the subset of JSON string syntax `json_str` produces.
    fn serde_json_lite_parse(lit: &str) -> String {
        let inner = lit.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
        let mut out = String::new();
        let mut it = inner.chars();
        while let Some(c) = it.next() {
            if c != '\\' {
                assert!((' '..='~').contains(&c) && c != '"');
                out.push(c);
                continue;
            }
            match it.next().unwrap() {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = it.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                }
                other => panic!("bad escape {other}"),
            }
        }
        out
    }

    #[test]
    fn overflow_is_cut_not_panic() {
        let mut t = Text::<4>::new();
        t.str("hello");
        assert_eq!(s(&t), "hell");
        assert!(t.overflowed());
        t.clear();
        assert!(t.is_empty() && !t.overflowed());
    }
}
