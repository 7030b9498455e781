//! Reading one newline-terminated line with a length bound: `BufRead::
//! read_line` would buffer whatever a peer sends before the newline.

use std::io::{self, BufRead};

/// One read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its newline (a last line without one counts).
    Line(Vec<u8>),
    /// The line exceeded the bound; it was read up to its newline (or the
    /// end of the input) and dropped. Carries how many bytes it had.
    TooLong(usize),
    /// End of input.
    Eof,
}

/// Read the next line of at most `max` bytes (newline excluded). A longer
/// line is consumed and dropped, never held in memory whole.
pub fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Line> {
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(match (any, total > max) {
                (false, _) => Line::Eof,
                (true, true) => Line::TooLong(total),
                (true, false) => Line::Line(out),
            });
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        total = total.saturating_add(chunk.len());
        if total <= max {
            out.extend_from_slice(chunk);
        } else if !out.is_empty() {
            out = Vec::new();
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if total > max {
                Line::TooLong(total)
            } else {
                Line::Line(out)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize) -> Vec<Line> {
        // A tiny buffer, so lines straddle many fill_buf calls.
        let mut r = io::BufReader::with_capacity(3, input);
        let mut out = Vec::new();
        loop {
            match read_line(&mut r, max) {
                Ok(Line::Eof) => return out,
                Ok(l) => out.push(l),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn splits_lines_and_keeps_a_last_unterminated_one() {
        assert_eq!(
            all(b"ab\n\ncdefg\nh", 10),
            vec![
                Line::Line(b"ab".to_vec()),
                Line::Line(Vec::new()),
                Line::Line(b"cdefg".to_vec()),
                Line::Line(b"h".to_vec()),
            ]
        );
        assert_eq!(all(b"", 10), vec![]);
    }

    #[test]
    fn a_too_long_line_is_dropped_and_the_next_one_read() {
        assert_eq!(
            all(b"abcdefgh\nok\nxxxxxx", 5),
            vec![
                Line::TooLong(8),
                Line::Line(b"ok".to_vec()),
                Line::TooLong(6)
            ]
        );
        // Exactly the bound is fine.
        assert_eq!(all(b"abcde\n", 5), vec![Line::Line(b"abcde".to_vec())]);
    }
}
