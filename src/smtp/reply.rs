//! SMTP replies, and the ONE place where every error becomes a reply. PURE.
//!
//! Every reply carries an RFC 3463 enhanced status code (RFC 2034), except
//! where the RFCs forbid it: the greeting and the EHLO/HELO response (RFC 2034
//! §3) and the 334 SASL challenge, whose text is base64 (RFC 4954 §4).

use std::fmt::Write as _;

use crate::smtp::command::CommandError;
use crate::smtp::data::DataError;
use crate::smtp::ports::IntakeError;
use crate::smtp::ports::LimitRefusal;
use crate::smtp::sasl::SaslError;

/// One SMTP reply: `code`, enhanced status code (empty when not allowed),
/// text (lines separated by `\n`), and whether to close the connection
/// after sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
    pub close: bool,
}

impl Reply {
    /// A reply with an enhanced status code; `close` false.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: enhanced.to_string(),
            text: text.into(),
            close: false,
        }
    }

    /// The same reply, closing the connection after it is sent.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Whether this is a 4xx or 5xx reply (counted against `max_errors`).
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// The reply as sent: one `CODE-ENH text` line per text line, the last
    /// with a space after the code (RFC 5321 §4.2.1). Control characters in
    /// the text are replaced so a reply can never inject a line.
    pub fn to_wire(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 16);
        let lines: Vec<&str> = self.text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let clean: String = line
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            if self.enhanced.is_empty() {
                let _ = write!(out, "{}{}{}\r\n", self.code, sep, clean);
            } else {
                let _ = write!(out, "{}{}{} {}\r\n", self.code, sep, self.enhanced, clean);
            }
        }
        out
    }

    // --- fixed replies the session uses -----------------------------------

    /// 220 greeting (RFC 5321 §4.3.1; no enhanced code, RFC 2034 §3).
    pub fn greeting(hostname: &str) -> Self {
        Reply::new(220, "", format!("{hostname} ESMTP postgate"))
    }
    /// 221 closing after QUIT.
    pub fn bye(hostname: &str) -> Self {
        Reply::new(221, "2.0.0", format!("{hostname} closing connection")).closing()
    }
    /// 250 response to EHLO/HELO: first line then one capability per line.
    pub fn ehlo(lines: Vec<String>) -> Self {
        Reply::new(250, "", lines.join("\n"))
    }
    /// 250 2.0.0 OK (NOOP, RSET).
    pub fn ok() -> Self {
        Reply::new(250, "2.0.0", "OK")
    }
    /// 250 2.1.0 after MAIL.
    pub fn sender_ok() -> Self {
        Reply::new(250, "2.1.0", "sender OK")
    }
    /// 250 2.1.5 after RCPT.
    pub fn recipient_ok() -> Self {
        Reply::new(250, "2.1.5", "recipient OK")
    }
    /// 354 after DATA.
    pub fn start_data() -> Self {
        Reply::new(354, "2.0.0", "end data with <CR><LF>.<CR><LF>")
    }
    /// 250 2.0.0 after a non-last BDAT chunk (RFC 3030 §2).
    pub fn chunk_ok(octets: usize) -> Self {
        Reply::new(250, "2.0.0", format!("{octets} octets received"))
    }
    /// 250 2.0.0 after the message is committed to the queue.
    pub fn queued(id: &str) -> Self {
        Reply::new(250, "2.0.0", format!("queued as {id}"))
    }
    /// 220 2.0.0 after STARTTLS (RFC 3207 §4).
    pub fn ready_for_tls() -> Self {
        Reply::new(220, "2.0.0", "ready to start TLS")
    }
    /// 334 SASL challenge (text is base64, no enhanced code: RFC 4954 §4).
    pub fn challenge(base64: &str) -> Self {
        Reply::new(334, "", base64.to_string())
    }
    /// 235 2.7.0 after a successful AUTH (RFC 4954 §6).
    pub fn auth_ok() -> Self {
        Reply::new(235, "2.7.0", "authentication succeeded")
    }
    /// 252 2.1.5 for VRFY: we never confirm addresses (RFC 5321 §3.5.3).
    pub fn vrfy() -> Self {
        Reply::new(
            252,
            "2.1.5",
            "cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    /// 214 2.0.0 HELP.
    pub fn help() -> Self {
        Reply::new(
            214,
            "2.0.0",
            "postgate submission: EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT",
        )
    }

    // --- refusals -----------------------------------------------------------

    /// 530 5.7.0: AUTH or MAIL before TLS (RFC 3207 §4; DESIGN "AUTH is refused before TLS").
    pub fn tls_required() -> Self {
        Reply::new(530, "5.7.0", "must issue a STARTTLS command first")
    }
    /// 530 5.7.0: MAIL before AUTH: no open relay (RFC 4954 §6).
    pub fn auth_required() -> Self {
        Reply::new(530, "5.7.0", "authentication required")
    }
    /// 503 5.5.1: command out of sequence.
    pub fn bad_sequence(what: &str) -> Self {
        Reply::new(503, "5.5.1", format!("bad sequence of commands: {what}"))
    }
    /// 502 5.5.1: a known command postgate does not implement.
    pub fn not_implemented(cmd: &str) -> Self {
        Reply::new(502, "5.5.1", format!("{cmd} not implemented"))
    }
    /// 504 5.5.4: SASL mechanism other than PLAIN/LOGIN.
    pub fn unknown_mechanism() -> Self {
        Reply::new(
            504,
            "5.5.4",
            "unrecognized authentication mechanism; use PLAIN or LOGIN",
        )
    }
    /// 535 5.7.8: bad credentials. Never says whether the user exists (RFC 4954 §6).
    pub fn auth_failed() -> Self {
        Reply::new(535, "5.7.8", "authentication credentials invalid")
    }
    /// 454 4.7.0: the credential store could not be consulted (RFC 4954 §6).
    pub fn auth_unavailable() -> Self {
        Reply::new(454, "4.7.0", "temporary authentication failure")
    }
    /// 553 5.7.1: envelope sender not permitted for this user, naming the rule.
    pub fn sender_not_permitted(sender: &str, username: &str, patterns: &[String]) -> Self {
        let allowed = if patterns.is_empty() {
            "the user has no sender permissions".to_string()
        } else {
            let shown: Vec<&str> = patterns.iter().take(5).map(String::as_str).collect();
            let more = if patterns.len() > 5 { ", ..." } else { "" };
            format!("permitted: {}{more}", shown.join(", "))
        };
        Reply::new(
            553,
            "5.7.1",
            format!(
                "sender <{sender}> not permitted: no sender permission of user {username} matches ({allowed})"
            ),
        )
    }
    /// 553 5.7.1: the null sender `<>` is never accepted for submission.
    pub fn null_sender() -> Self {
        Reply::new(553, "5.7.1", "null sender <> not permitted for submission")
    }
    /// 553 5.6.7: a non-ASCII address without SMTPUTF8 (RFC 6531 §3.5).
    pub fn utf8_required() -> Self {
        Reply::new(
            553,
            "5.6.7",
            "non-ASCII address requires the SMTPUTF8 parameter",
        )
    }
    /// 552 5.3.4: message larger than the limit (RFC 1870 §6).
    pub fn too_big(max: usize) -> Self {
        Reply::new(
            552,
            "5.3.4",
            format!("message size exceeds fixed maximum message size of {max} octets"),
        )
    }
    /// 452 4.5.3: too many recipients (RFC 5321 §4.5.3.1.10).
    pub fn too_many_recipients(max: usize) -> Self {
        Reply::new(
            452,
            "4.5.3",
            format!("too many recipients (at most {max} per message)"),
        )
    }
    /// 500 5.5.2: command line longer than allowed (RFC 5321 §4.5.3.1.4).
    pub fn line_too_long(max: usize) -> Self {
        Reply::new(
            500,
            "5.5.2",
            format!("line too long (at most {max} octets)"),
        )
    }
    /// 554 5.5.1: DATA or BDAT LAST with no accepted recipient.
    pub fn no_recipients() -> Self {
        Reply::new(554, "5.5.1", "no valid recipients")
    }
    /// 421 4.7.0: the session made too many errors.
    pub fn too_many_errors() -> Self {
        Reply::new(421, "4.7.0", "too many errors, closing connection").closing()
    }
    /// 452 4.3.1: the node's memory budget for message content is spent
    /// (RFC 3463 §3.4 "mail system full"); the session goes on, the client
    /// tries again later.
    pub fn insufficient_storage() -> Self {
        Reply::new(452, "4.3.1", "insufficient system storage, try again later")
    }
    /// 421 4.4.2: the client was idle longer than the timeout (RFC 5321 §4.5.3.2).
    pub fn timeout() -> Self {
        Reply::new(421, "4.4.2", "timeout exceeded, closing connection").closing()
    }
    /// 421 4.3.2: the server is shutting down.
    pub fn shutting_down() -> Self {
        Reply::new(421, "4.3.2", "service shutting down, closing connection").closing()
    }
    /// 421 4.7.0: global or per-IP connection cap reached.
    pub fn too_many_connections() -> Self {
        Reply::new(421, "4.7.0", "too many connections, try again later").closing()
    }
    /// 421 4.3.0: unexpected internal failure.
    pub fn internal_error() -> Self {
        Reply::new(421, "4.3.0", "internal error, closing connection").closing()
    }

    // --- limits -------------------------------------------------------------

    /// Connection refused by a rate limit: 421 4.7.0 and close.
    pub fn connection_limited(r: &LimitRefusal) -> Self {
        Reply::new(
            421,
            "4.7.0",
            format!("{}, try again in {} s", r.reason, r.retry_after_secs()),
        )
        .closing()
    }
    /// Login refused by a rate limit: 454 4.7.0.
    pub fn auth_limited(r: &LimitRefusal) -> Self {
        Reply::new(
            454,
            "4.7.0",
            format!("{}, try again in {} s", r.reason, r.retry_after_secs()),
        )
    }
    /// Concurrent-session cap: 421 4.7.0 and close.
    pub fn session_limited(r: &LimitRefusal) -> Self {
        Reply::new(
            421,
            "4.7.0",
            format!("{}, try again in {} s", r.reason, r.retry_after_secs()),
        )
        .closing()
    }
    /// Message or recipient rate: 451 4.7.1 (RFC 3463 §3.8).
    pub fn message_limited(r: &LimitRefusal) -> Self {
        Reply::new(
            451,
            "4.7.1",
            format!("{}, try again in {} s", r.reason, r.retry_after_secs()),
        )
    }
}

impl From<&CommandError> for Reply {
    fn from(e: &CommandError) -> Self {
        match e {
            CommandError::Unknown => Reply::new(500, "5.5.1", "unrecognized command"),
            CommandError::LineTooLong { max } => Reply::line_too_long(*max),
            CommandError::Nul => Reply::new(500, "5.5.2", "NUL byte in command line"),
            CommandError::BareCr => Reply::new(500, "5.5.2", "bare CR in command line"),
            CommandError::Syntax(s) => Reply::new(501, "5.5.2", format!("syntax: {s}")),
            CommandError::BadSender => Reply::new(501, "5.1.7", "bad sender address syntax"),
            CommandError::BadRecipient => Reply::new(501, "5.1.3", "bad recipient address syntax"),
            CommandError::BadParameter(p) => {
                Reply::new(501, "5.5.4", format!("invalid parameter {p}"))
            }
            CommandError::UnsupportedParameter(p) => {
                Reply::new(555, "5.5.4", format!("unsupported parameter {p}"))
            }
        }
    }
}

impl From<&DataError> for Reply {
    fn from(e: &DataError) -> Self {
        match e {
            DataError::TooBig { max } => Reply::too_big(*max),
            DataError::MemoryBudget => Reply::insufficient_storage(),
            DataError::BareLf => Reply::new(
                550,
                "5.6.0",
                "bare LF in message data refused; lines must end with CRLF (RFC 5321 §2.3.8)",
            ),
            DataError::BareCr => Reply::new(
                550,
                "5.6.0",
                "bare CR in message data refused; lines must end with CRLF (RFC 5321 §2.3.8)",
            ),
            DataError::LineTooLong { max } => Reply::new(
                550,
                "5.6.0",
                format!("text line longer than {max} octets (RFC 5322 §2.1.1)"),
            ),
        }
    }
}

impl From<&SaslError> for Reply {
    fn from(e: &SaslError) -> Self {
        match e {
            SaslError::Cancelled => Reply::new(501, "5.7.0", "authentication cancelled"),
            SaslError::Base64 => Reply::new(501, "5.5.2", "invalid base64 in SASL response"),
            SaslError::Malformed(what) => {
                Reply::new(501, "5.5.2", format!("malformed SASL response: {what}"))
            }
        }
    }
}

impl From<&IntakeError> for Reply {
    fn from(e: &IntakeError) -> Self {
        match e {
            IntakeError::HeaderFromNotPermitted(text) => Reply::new(550, "5.7.1", text.clone()),
            IntakeError::MalformedHeader(text) => Reply::new(550, "5.6.0", text.clone()),
            IntakeError::SignatureNotPermitted(_) => Reply::new(550, "5.7.1", e.to_string()),
            IntakeError::SigningRefused(text) => Reply::new(550, "5.7.1", text.clone()),
            IntakeError::SigningUnavailable => {
                Reply::new(451, "4.3.0", "cannot sign the message now, try again later")
            }
            IntakeError::QueueUnavailable(_) => {
                Reply::new(451, "4.3.0", "queue unavailable, try again later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_wire_format() {
        assert_eq!(Reply::ok().to_wire(), "250 2.0.0 OK\r\n");
        assert_eq!(
            Reply::ehlo(vec!["mx.example".into(), "PIPELINING".into()]).to_wire(),
            "250-mx.example\r\n250 PIPELINING\r\n"
        );
        assert_eq!(
            Reply::challenge("VXNlcm5hbWU6").to_wire(),
            "334 VXNlcm5hbWU6\r\n"
        );
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::new(550, "5.0.0", "bad\r\n250 fake");
        assert_eq!(r.to_wire(), "550-5.0.0 bad?\r\n550 5.0.0 250 fake\r\n");
        assert!(!Reply::new(550, "5.0.0", "a\rb").to_wire().contains("a\rb"));
    }

    /// Every refusal -> reply mapping, pinned byte for byte: the typed
    /// refusals of the ports and the parsers' errors.
    #[test]
    fn every_refusal_maps_to_its_reply() {
        use crate::smtp::ports::{LimitKind, LimitScope};
        let limit = |scope, kind, ms| LimitRefusal {
            scope,
            kind,
            retry_after: std::time::Duration::from_millis(ms),
            reason: "some limit exceeded".into(),
        };
        let ip_rate = limit(LimitScope::Ip, LimitKind::Connections, 12_000);
        let lockout = limit(LimitScope::User, LimitKind::AuthFailures, 300_000);
        let sessions = limit(LimitScope::User, LimitKind::Sessions, 60_000);
        let quota = limit(LimitScope::Credential, LimitKind::Recipients, 1_001);
        let table: Vec<(Reply, &str)> = vec![
            (
                Reply::connection_limited(&ip_rate),
                "421 4.7.0 some limit exceeded, try again in 12 s\r\n",
            ),
            (
                Reply::auth_limited(&lockout),
                "454 4.7.0 some limit exceeded, try again in 300 s\r\n",
            ),
            (
                Reply::session_limited(&sessions),
                "421 4.7.0 some limit exceeded, try again in 60 s\r\n",
            ),
            (
                Reply::message_limited(&quota),
                "451 4.7.1 some limit exceeded, try again in 2 s\r\n",
            ),
            (
                (&IntakeError::HeaderFromNotPermitted("header From <x@evil.example> not permitted".into())).into(),
                "550 5.7.1 header From <x@evil.example> not permitted\r\n",
            ),
            (
                (&IntakeError::MalformedHeader("header section not terminated".into())).into(),
                "550 5.6.0 header section not terminated\r\n",
            ),
            (
                (&IntakeError::SignatureNotPermitted("From not permitted".into())).into(),
                "550 5.7.1 cannot sign (dkim.require_signature is on): From not permitted\r\n",
            ),
            (
                (&IntakeError::SigningRefused("no DKIM key for example.org".into())).into(),
                "550 5.7.1 no DKIM key for example.org\r\n",
            ),
            (
                (&IntakeError::SigningUnavailable).into(),
                "451 4.3.0 cannot sign the message now, try again later\r\n",
            ),
            (
                (&IntakeError::QueueUnavailable("pool timed out".into())).into(),
                "451 4.3.0 queue unavailable, try again later\r\n",
            ),
            ((&CommandError::Unknown).into(), "500 5.5.1 unrecognized command\r\n"),
            (
                (&CommandError::LineTooLong { max: 512 }).into(),
                "500 5.5.2 line too long (at most 512 octets)\r\n",
            ),
            ((&CommandError::Nul).into(), "500 5.5.2 NUL byte in command line\r\n"),
            ((&CommandError::BareCr).into(), "500 5.5.2 bare CR in command line\r\n"),
            (
                (&CommandError::Syntax("MAIL FROM:<address>")).into(),
                "501 5.5.2 syntax: MAIL FROM:<address>\r\n",
            ),
            ((&CommandError::BadSender).into(), "501 5.1.7 bad sender address syntax\r\n"),
            (
                (&CommandError::BadRecipient).into(),
                "501 5.1.3 bad recipient address syntax\r\n",
            ),
            (
                (&CommandError::BadParameter("SIZE=x".into())).into(),
                "501 5.5.4 invalid parameter SIZE=x\r\n",
            ),
            (
                (&CommandError::UnsupportedParameter("FOO".into())).into(),
                "555 5.5.4 unsupported parameter FOO\r\n",
            ),
            (
                (&DataError::TooBig { max: 10 }).into(),
                "552 5.3.4 message size exceeds fixed maximum message size of 10 octets\r\n",
            ),
            (
                (&DataError::MemoryBudget).into(),
                "452 4.3.1 insufficient system storage, try again later\r\n",
            ),
            (
                (&DataError::BareLf).into(),
                "550 5.6.0 bare LF in message data refused; lines must end with CRLF (RFC 5321 §2.3.8)\r\n",
            ),
            (
                (&DataError::BareCr).into(),
                "550 5.6.0 bare CR in message data refused; lines must end with CRLF (RFC 5321 §2.3.8)\r\n",
            ),
            (
                (&DataError::LineTooLong { max: 998 }).into(),
                "550 5.6.0 text line longer than 998 octets (RFC 5322 §2.1.1)\r\n",
            ),
            ((&SaslError::Cancelled).into(), "501 5.7.0 authentication cancelled\r\n"),
            ((&SaslError::Base64).into(), "501 5.5.2 invalid base64 in SASL response\r\n"),
            (
                (&SaslError::Malformed("no NUL")).into(),
                "501 5.5.2 malformed SASL response: no NUL\r\n",
            ),
        ];
        for (reply, wire) in &table {
            assert_eq!(reply.to_wire(), *wire);
            assert!(reply.is_error());
            assert_eq!(
                reply.enhanced.as_bytes()[0],
                b'0' + (reply.code / 100) as u8
            );
        }
        let closing: Vec<bool> = table.iter().take(4).map(|(r, _)| r.close).collect();
        assert_eq!(closing, [true, false, true, false]);
        assert!(table.iter().skip(4).all(|(r, _)| !r.close));
    }

    #[test]
    fn sender_refusal_names_the_rules() {
        let r = Reply::sender_not_permitted("x@evil.example", "bob", &["@example.com".into()]);
        assert_eq!((r.code, r.enhanced.as_str()), (553, "5.7.1"));
        assert!(r.text.contains("@example.com") && r.text.contains("bob"));
    }
}
