//! What one mail transaction with an upstream produces: replies, per
//! recipient, and the failures of a session as a whole. Plain data; the
//! socket code is in `upstream.rs`.

use bytes::Bytes;
use smtp_proto::response::parser::ResponseReceiver;

/// One SMTP reply from an upstream, bounded in size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code (0 for a reply postgate made up, see [`Reply::local`]).
    pub code: u16,
    /// The reply rendered on one line: code, enhanced code, text.
    pub text: String,
}

/// Takes one complete reply from the front of `buf` (the octets read from
/// an upstream so far), consuming them: `None` when more input is needed,
/// `Some(Err)` for a reply longer than smtp-proto's bound (4096 octets) or
/// malformed. PURE (fuzzed: `fuzz/fuzz_targets/upstream_reply.rs`).
pub fn next_response(
    rx: &mut ResponseReceiver,
    buf: &mut Vec<u8>,
    what: &'static str,
) -> Option<Result<smtp_proto::Response<String>, SendError>> {
    if buf.is_empty() {
        return None;
    }
    let mut it = buf.iter();
    let parsed = rx.parse(&mut it);
    let consumed = buf.len() - it.len();
    buf.drain(..consumed);
    match parsed {
        Ok(r) => {
            rx.reset();
            Some(Ok(r))
        }
        Err(smtp_proto::Error::NeedsMoreData { .. }) => None,
        Err(smtp_proto::Error::ResponseTooLong) => Some(Err(SendError::Protocol(format!(
            "reply to {what} longer than {} bytes",
            smtp_proto::response::parser::MAX_RESPONSE_LENGTH
        )))),
        Err(e) => Some(Err(SendError::Protocol(format!("reply to {what}: {e:?}")))),
    }
}

impl Reply {
    /// The reply as postgate records it: code, enhanced code and text on
    /// one line, control characters replaced by spaces.
    pub fn from_proto(r: smtp_proto::Response<String>) -> Self {
        let mut text = r.code.to_string();
        if r.esc[0] != 0 {
            text.push_str(&format!(" {}.{}.{}", r.esc[0], r.esc[1], r.esc[2]));
        }
        let message: String = r
            .message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if !message.is_empty() {
            text.push(' ');
            text.push_str(message.trim());
        }
        Reply { code: r.code, text }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Setting up an upstream from its config failed (bad CA file, bad pin).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {name:?}: {what}")]
    Config { name: String, what: String },
}

/// A failure of the connection or session as a whole. Every variant is
/// transient for the message: the queue retries (on the next upstream).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("TLS failure: {0}")]
    Tls(String),
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    #[error("connection failed: {0}")]
    Io(String),
    #[error("bad reply from upstream: {0}")]
    Protocol(String),
    #[error("{stage} refused: {reply}")]
    Refused { stage: &'static str, reply: Reply },
    /// No OAuth token for AUTH XOAUTH2 (the reason, never the token).
    #[error("OAuth: {0}")]
    OAuth(super::oauth::TokenError),
}

/// The replies of one mail transaction: a reply per recipient (in order),
/// and the final reply after the body when DATA was sent.
#[derive(Debug, Clone)]
pub struct TxReplies {
    pub mail: Reply,
    /// Empty when MAIL was refused without pipelining.
    pub rcpt: Vec<Reply>,
    /// `None` when no recipient was accepted (no body was sent).
    pub data: Option<Reply>,
    /// The upstream offered DSN, so the envelope's DSN parameters were
    /// passed on: the upstream, not postgate, now owns success and delay
    /// notifications (RFC 3461 §6.2.1).
    pub dsn_passed: bool,
}

/// One message to send.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The stored bytes (CRLF line ends, not dot-stuffed).
    pub body: &'a Bytes,
    pub smtputf8: bool,
    /// RFC 3461 parameters, passed on when the upstream offers DSN.
    pub dsn: Option<EnvelopeDsn<'a>>,
}

/// The RFC 3461 parameters of an envelope.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeDsn<'a> {
    /// RET: `FULL` or `HDRS`.
    pub ret: Option<&'a str>,
    /// ENVID, xtext-decoded.
    pub envid: Option<&'a str>,
    /// Per recipient, in the order of [`Envelope::recipients`].
    pub recipients: &'a [RecipientDsn<'a>],
}

/// One recipient's RFC 3461 parameters.
#[derive(Debug, Clone, Copy)]
pub struct RecipientDsn<'a> {
    /// NOTIFY as stored (`NEVER` or a comma list).
    pub notify: Option<&'a str>,
    /// ORCPT as stored (`rfc822;address`, xtext-decoded).
    pub orcpt: Option<&'a str>,
}
