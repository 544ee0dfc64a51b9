//! Log output that client input cannot forge (issue 12).
//!
//! Usernames from AUTH, HELO names, addresses and upstream replies reach log
//! fields. In the human format a CR, LF or ESC in them would start a new,
//! forged line or drive the operator's terminal; in both formats a long
//! value would flood the log. So every field value, in every format, is
//! capped at [`MAX_FIELD_CHARS`] characters, and:
//!
//! - human format ([`SafeFields`]): a value is written bare only when it is
//!   non-empty printable text without spaces, quotes, backslashes or `=`;
//!   anything else is written in double quotes with `\\`, `\"`, `\n`, `\r`,
//!   `\t` and `\u{..}` escapes (every other control character, and Unicode
//!   line separators and bidirectional overrides). The event message is
//!   escaped the same way, without quotes.
//! - JSON format ([`CappedJson`]): JSON string escaping already keeps each
//!   event on one line; each line is re-read and every string capped.

use std::fmt;
use std::io::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;

/// The longest field value written, in characters; the rest is replaced by
/// `…[+N chars]`.
pub const MAX_FIELD_CHARS: usize = 1024;

/// Characters that are escaped even though Rust may call them printable:
/// line and paragraph separators and the bidirectional controls that can
/// reorder what a terminal or viewer shows (Trojan Source, CVE-2021-42574).
fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn capped(s: &str) -> (&str, usize) {
    match s.char_indices().nth(MAX_FIELD_CHARS) {
        Some((i, _)) => (&s[..i], s[i..].chars().count()),
        None => (s, 0),
    }
}

/// Writes `s` capped, with dangerous characters escaped; inside quotes,
/// `"` and `\` are escaped too.
fn write_escaped(w: &mut dyn fmt::Write, s: &str, quoted: bool) -> fmt::Result {
    let (s, rest) = capped(s);
    if quoted {
        w.write_char('"')?;
    }
    for c in s.chars() {
        match c {
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            '"' | '\\' if quoted => {
                w.write_char('\\')?;
                w.write_char(c)?;
            }
            c if is_dangerous(c) => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    if rest > 0 {
        write!(w, "…[+{rest} chars]")?;
    }
    if quoted {
        w.write_char('"')?;
    }
    Ok(())
}

/// Whether `s` can be written without quotes: it cannot be mistaken for
/// several fields or lines.
fn bare_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !is_dangerous(c) && !matches!(c, '"' | '\\' | '='))
}

/// The human format's field formatter (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct SafeFields;

impl<'a> MakeVisitor<Writer<'a>> for SafeFields {
    type Visitor = SafeVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> SafeVisitor<'a> {
        SafeVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

/// Visitor of [`SafeFields`].
pub struct SafeVisitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl SafeVisitor<'_> {
    fn field(&mut self, field: &Field, value: &str, always_quote: bool) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let first = std::mem::take(&mut self.first);
        self.result = write_field(&mut self.writer, first, name, value, always_quote);
    }
}

fn write_field(
    w: &mut dyn fmt::Write,
    first: bool,
    name: &str,
    value: &str,
    always_quote: bool,
) -> fmt::Result {
    if !first {
        w.write_char(' ')?;
    }
    if name == "message" {
        return write_escaped(w, value, false);
    }
    w.write_str(name.strip_prefix("r#").unwrap_or(name))?;
    w.write_char('=')?;
    write_escaped(w, value, always_quote || !bare_ok(value))
}

impl Visit for SafeVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Strings were always quoted by the default formatter: keep that look.
        let quote = field.name() != "message";
        self.field(field, value, quote);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.field(field, &text, false);
    }
}

impl VisitOutput<fmt::Result> for SafeVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for SafeVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// A [`MakeWriter`] for the JSON format that caps every string of each
/// line at [`MAX_FIELD_CHARS`] characters before passing it on.
#[derive(Clone)]
pub struct CappedJson<W>(pub W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for CappedJson<W> {
    type Writer = CappedLines<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedLines {
            inner: self.0.make_writer(),
            buf: Vec::new(),
        }
    }
}

/// Buffers one event's bytes and writes them as capped JSON lines.
pub struct CappedLines<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

fn cap_json(v: &mut serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => {
            let (head, rest) = capped(s);
            if rest == 0 {
                return false;
            }
            *s = format!("{head}…[+{rest} chars]");
            true
        }
        serde_json::Value::Array(a) => a.iter_mut().fold(false, |c, x| cap_json(x) | c),
        serde_json::Value::Object(o) => o.values_mut().fold(false, |c, x| cap_json(x) | c),
        _ => false,
    }
}

impl<W: Write> CappedLines<W> {
    fn emit(&mut self, line: &[u8]) -> io::Result<()> {
        let long = line.len() > MAX_FIELD_CHARS;
        let mut value = match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if long => v,
            // Short lines cannot hold a long string; not JSON: as is.
            _ => return self.inner.write_all(line),
        };
        if !cap_json(&mut value) {
            return self.inner.write_all(line);
        }
        let mut out = serde_json::to_vec(&value).map_err(io::Error::other)?;
        if line.ends_with(b"\n") {
            out.push(b'\n');
        }
        self.inner.write_all(&out)
    }
}

impl<W: Write> Write for CappedLines<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            self.emit(&line)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.emit(&rest)?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for CappedLines<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
