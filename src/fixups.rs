//! Message fixups at acceptance (RFC 6409 §8) and the header From policy. PURE.
//!
//! Everything here works on the header block only and copies the body
//! byte for byte. Time, host name and session facts come in through
//! [`FixupContext`]; nothing reads a clock or a socket.

mod author;
mod mailbox;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::time::rfc5322_date;

pub use author::{check_header_from, header_from_addresses};
pub use mailbox::{parse_mailbox, parse_mailbox_list, Mailbox, MailboxError};

/// Why a message's header block could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixupError {
    /// A line in the header block is neither a field nor a continuation.
    #[error("malformed header block at line {line}: expected \"Name: value\"")]
    Malformed { line: usize },
    /// No From field (RFC 5322 §3.6 requires exactly one).
    #[error("the message has no From header field")]
    NoFrom,
    /// Several From fields (RFC 5322 §3.6 allows one; a second From is a
    /// known way to show one address and have another one verified).
    #[error("the message has {count} From header fields; exactly one is allowed")]
    MultipleFrom { count: usize },
    /// A From that is not exactly an RFC 5322 mailbox-list, or a Sender
    /// that is not exactly one mailbox (RFC 5322 §3.6.2); `reason` names
    /// the rule it breaks.
    #[error("the header {field} {value:?} is not a valid RFC 5322 {expected}: {reason}")]
    BadAuthor {
        /// `From` or `Sender`.
        field: &'static str,
        /// What the grammar asks for: `mailbox-list` or `mailbox`.
        expected: &'static str,
        /// The field value, at most 200 characters.
        value: String,
        reason: MailboxError,
    },
    /// Several Sender fields (RFC 5322 §3.6: at most one).
    #[error("the message has {count} Sender header fields; at most one is allowed")]
    MultipleSender { count: usize },
    /// A mail reader (the mail-parser crate) reads the field differently
    /// from the grammar: what it would show is not what was checked.
    #[error("the header {field} is read differently by mail readers (they would show {shown:?}); write it as a plain RFC 5322 mailbox")]
    ReaderMismatch { field: &'static str, shown: String },
}

/// The header From policy refused the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromPolicyError {
    /// No sender rule of the login permits this header From address.
    #[error("header From <{address}> is not permitted for this login: no sender rule (exact address or @domain) matches it")]
    NotPermitted { address: String },
    /// No sender rule of the login permits this header Sender address.
    #[error("header Sender <{address}> is not permitted for this login: no sender rule (exact address or @domain) matches it")]
    SenderNotPermitted { address: String },
    /// The header From could not be read.
    #[error(transparent)]
    Header(#[from] FixupError),
}

/// The `[fixups]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixupsConfig {
    /// The Received field postgate adds.
    pub received: ReceivedConfig,
    /// Add `Date:` when the message has none (RFC 6409 §8.2). Default true.
    pub add_date: bool,
    /// Add `Message-ID:` when the message has none (RFC 6409 §8.3). Default true.
    pub add_message_id: bool,
    /// Header fields to delete, case-insensitive (e.g. `X-Originating-IP`).
    /// `Received` and `From` are refused by [`FixupsConfig::validate`].
    /// Default empty.
    pub remove_headers: Vec<String>,
}

/// The `[fixups.received]` config sub-section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceivedConfig {
    /// Leave the client's HELO name, IP address and host name out of the
    /// Received field (RFC 5321 §7.6). Default true.
    pub hide_client: bool,
}

impl Default for ReceivedConfig {
    fn default() -> Self {
        ReceivedConfig { hide_client: true }
    }
}

impl Default for FixupsConfig {
    fn default() -> Self {
        FixupsConfig {
            received: ReceivedConfig::default(),
            add_date: true,
            add_message_id: true,
            remove_headers: Vec::new(),
        }
    }
}

impl FixupsConfig {
    /// Checks `remove_headers`: field names only, and never `Received`
    /// (trace fields must stay, RFC 5321 §4.4) or `From`.
    pub fn validate(&self) -> Result<(), String> {
        for name in &self.remove_headers {
            if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
                return Err(format!(
                    "fixups.remove_headers: {name:?} is not a header field name"
                ));
            }
            if name.eq_ignore_ascii_case("received") || name.eq_ignore_ascii_case("from") {
                return Err(format!(
                    "fixups.remove_headers: {name:?} may not be removed"
                ));
            }
        }
        Ok(())
    }
}

/// TLS facts of the session, for the Received field.
#[derive(Debug, Clone, Copy)]
pub struct TlsInfo<'a> {
    /// e.g. `TLSv1.3`.
    pub version: &'a str,
    /// e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: &'a str,
}

/// Everything [`apply`] needs to know about the message's arrival.
#[derive(Debug, Clone)]
pub struct FixupContext<'a> {
    /// Our host name: the `by` of Received and the right side of Message-ID.
    pub hostname: &'a str,
    /// Acceptance time, Unix milliseconds (UTC).
    pub now_ms: i64,
    /// The queue id: the `id` of Received and the left side of Message-ID.
    pub queue_id: &'a str,
    /// Whether the client authenticated (always true for submissions).
    pub authenticated: bool,
    /// TLS in use, if any.
    pub tls: Option<TlsInfo<'a>>,
    /// The transaction used SMTPUTF8 (RFC 6531 §3.7.3 protocol names).
    pub smtputf8: bool,
    /// The client's EHLO argument; only shown when `hide_client` is off.
    pub helo: Option<&'a str>,
    /// The client's address; only shown when `hide_client` is off.
    pub client_ip: Option<IpAddr>,
    /// The client's verified reverse DNS name, if looked up; only shown when `hide_client` is off.
    pub client_host: Option<&'a str>,
    /// Envelope recipients; named in Received only when there is exactly one.
    pub recipients: &'a [String],
    pub config: &'a FixupsConfig,
}

/// One header field of a [`HeaderBlock`].
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// The field name as written (without trailing whitespace).
    pub name: &'a str,
    /// The value after the colon, folding included, final line end excluded.
    pub value: &'a [u8],
    /// The whole field, line end(s) included.
    pub raw: &'a [u8],
}

/// The parsed header block of a message (RFC 5322 §2.2). Lines may end in
/// CRLF or LF; values may hold 8-bit bytes.
#[derive(Debug, Clone)]
pub struct HeaderBlock<'a> {
    pub fields: Vec<Field<'a>>,
    /// Offset just after the last field (where the empty line starts).
    pub header_end: usize,
    /// Offset of the body (after the empty line); `message.len()` if none.
    pub body_start: usize,
    /// Whether an empty line separated header block and body.
    pub has_separator: bool,
}

impl<'a> HeaderBlock<'a> {
    /// Splits `message` into header fields and body.
    pub fn parse(message: &'a [u8]) -> Result<Self, FixupError> {
        let mut pos = 0;
        let mut line_no = 0;
        let mut starts: Vec<(usize, usize, usize)> = Vec::new(); // (start, colon, end)
        while pos < message.len() {
            line_no += 1;
            let end = message[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| pos + i + 1)
                .unwrap_or(message.len());
            let line = &message[pos..end];
            if line == b"\r\n" || line == b"\n" {
                return Ok(Self::finish(message, starts, end, true));
            }
            if matches!(line[0], b' ' | b'\t') {
                // RFC 5322 §2.2.3: a continuation line of the previous field.
                let Some(last) = starts.last_mut() else {
                    return Err(FixupError::Malformed { line: line_no });
                };
                last.2 = end;
            } else {
                let colon = line
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or(FixupError::Malformed { line: line_no })?;
                let name = &line[..colon];
                let trimmed = name.trim_ascii_end();
                if trimmed.is_empty() || !trimmed.iter().all(|b| (33..=126).contains(b)) {
                    return Err(FixupError::Malformed { line: line_no });
                }
                starts.push((pos, pos + colon, end));
            }
            pos = end;
        }
        Ok(Self::finish(message, starts, message.len(), false))
    }

    fn finish(
        message: &'a [u8],
        starts: Vec<(usize, usize, usize)>,
        body_start: usize,
        has_separator: bool,
    ) -> Self {
        let header_end = starts.last().map_or(0, |s| s.2);
        let mut fields = Vec::with_capacity(starts.len());
        for (start, colon, end) in starts {
            let raw = &message[start..end];
            let mut value = &message[colon + 1..end];
            while let Some(v) = value.strip_suffix(b"\n") {
                value = v.strip_suffix(b"\r").unwrap_or(v);
            }
            let name = std::str::from_utf8(message[start..colon].trim_ascii_end()).unwrap_or("");
            fields.push(Field { name, value, raw });
        }
        HeaderBlock {
            fields,
            header_end,
            body_start,
            has_separator,
        }
    }

    /// Whether a field named `name` (case-insensitive) is present.
    pub fn has(&self, name: &str) -> bool {
        self.fields
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The fields named `name`, in order.
    pub fn all(&self, name: &'a str) -> impl Iterator<Item = &Field<'a>> + '_ {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
    }
}

/// Applies the fixups to `message` and returns the new bytes: a Received
/// field on top (RFC 5321 §4.4), the named fields removed, Date and
/// Message-ID appended when missing (RFC 6409 §8.2, §8.3). The body is
/// copied unchanged.
pub fn apply(message: &[u8], ctx: &FixupContext) -> Result<Vec<u8>, FixupError> {
    let block = HeaderBlock::parse(message)?;
    let cfg = ctx.config;
    let mut out = Vec::with_capacity(message.len() + 512);
    out.extend_from_slice(received_header(ctx).as_bytes());
    for f in &block.fields {
        let remove = !f.name.eq_ignore_ascii_case("received")
            && cfg
                .remove_headers
                .iter()
                .any(|r| r.eq_ignore_ascii_case(f.name));
        if remove {
            continue;
        }
        out.extend_from_slice(f.raw);
        if !f.raw.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    if cfg.add_date && !block.has("Date") {
        out.extend_from_slice(format!("Date: {}\r\n", rfc5322_date(ctx.now_ms)).as_bytes());
    }
    if cfg.add_message_id && !block.has("Message-ID") {
        let id = format!(
            "Message-ID: <{}@{}>\r\n",
            clean_token(ctx.queue_id),
            clean_token(ctx.hostname)
        );
        out.extend_from_slice(id.as_bytes());
    }
    if block.has_separator {
        out.extend_from_slice(&message[block.header_end..block.body_start]);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&message[block.body_start..]);
    Ok(out)
}

/// Keeps what may appear in a trace token: printable ASCII (and UTF-8)
/// without spaces, brackets or separators, so no client input can fold,
/// end or forge the field.
fn clean_token(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !c.is_whitespace() && !"()<>[];\\\"".contains(*c))
        .take(255)
        .collect()
}

/// The Received field postgate adds (RFC 5321 §4.4), CRLF-terminated:
/// `by HOST (postgate) with ESMTPSA id QID (using TLSv1.3 with cipher C)
/// for <rcpt>; DATE`. With `received.hide_client` (default) the `from`
/// clause (HELO, reverse DNS, IP) is left out, as RFC 5321 §7.6 allows.
pub fn received_header(ctx: &FixupContext) -> String {
    let mut s = String::from("Received:");
    if !ctx.config.received.hide_client {
        let helo = ctx.helo.map(clean_token).filter(|h| !h.is_empty());
        s.push_str(&format!(" from {}", helo.as_deref().unwrap_or("unknown")));
        let host = ctx.client_host.map(clean_token).filter(|h| !h.is_empty());
        match (host, ctx.client_ip) {
            (Some(h), Some(ip)) => s.push_str(&format!(" ({h} [{ip}])")),
            (None, Some(ip)) => s.push_str(&format!(" ([{ip}])")),
            (Some(h), None) => s.push_str(&format!(" ({h})")),
            (None, None) => {}
        }
        s.push_str("\r\n\t");
    } else {
        s.push(' ');
    }
    // RFC 3848 / RFC 6531 §3.7.3 protocol names.
    let mut with = String::from(if ctx.smtputf8 { "UTF8SMTP" } else { "ESMTP" });
    if ctx.tls.is_some() {
        with.push('S');
    }
    if ctx.authenticated {
        with.push('A');
    }
    s.push_str(&format!(
        "by {} (postgate) with {with} id {}",
        clean_token(ctx.hostname),
        clean_token(ctx.queue_id)
    ));
    if let Some(tls) = ctx.tls {
        s.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            clean_token(tls.version),
            clean_token(tls.cipher)
        ));
    }
    // Naming the recipient of a multi-recipient message would disclose
    // Bcc recipients to the others (RFC 5321 §7.6).
    if let [only] = ctx.recipients {
        let r = clean_token(only);
        if !r.is_empty() {
            s.push_str(&format!("\r\n\tfor <{r}>"));
        }
    }
    s.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(ctx.now_ms)));
    s
}

#[cfg(test)]
#[path = "fixups/author_tests.rs"]
mod author_tests;
#[cfg(test)]
mod tests;
