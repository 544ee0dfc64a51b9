//! What one mail transaction with an upstream produces: replies, per
//! recipient, and the failures of a session as a whole. Plain data; the
//! socket code is in `upstream.rs`.

use bytes::Bytes;

/// One SMTP reply from an upstream, bounded in size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code (0 for a reply postgate made up, see [`Reply::local`]).
    pub code: u16,
    /// The reply rendered on one line: code, enhanced code, text.
    pub text: String,
}

impl Reply {
    pub(crate) fn from_proto(r: smtp_proto::Response<String>) -> Self {
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
}

/// One message to send.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The stored bytes (CRLF line ends, not dot-stuffed).
    pub body: &'a Bytes,
    pub smtputf8: bool,
}
