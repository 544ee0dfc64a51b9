//! PURE: what a `POST /v1/messages` request says: the credentials in its
//! `Authorization` header and the envelope and message in its body (JSON
//! or `multipart/form-data`). Every address goes through the SMTP command
//! parser, so the API accepts exactly the addresses MAIL and RCPT accept.

use base64::Engine;
use serde::Deserialize;

use crate::smtp::command::{self, Command};

/// Who the client says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Basic` (RFC 7617): the SMTP username and password.
    Basic { username: String, password: String },
    /// `Authorization: Bearer` (RFC 6750): an API token.
    Bearer(String),
}

/// Why a request cannot be read; sent as `400` (or `413`, `415`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("{0}")]
    Syntax(String),
    #[error("unsupported content type {0:?}: use application/json or multipart/form-data")]
    ContentType(String),
    #[error("request body larger than {0} octets")]
    TooLarge(usize),
}

fn syntax(text: impl Into<String>) -> BadRequest {
    BadRequest::Syntax(text.into())
}

/// The credentials of an `Authorization` header value; `None` when the
/// scheme is neither Basic nor Bearer or the value is malformed.
pub fn credentials(header: &[u8]) -> Option<Credentials> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, value) = text.split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("Basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (username, password) = decoded.split_once(':')?;
        return Some(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    if scheme.eq_ignore_ascii_case("Bearer") && !value.is_empty() {
        return Some(Credentials::Bearer(value.to_string()));
    }
    None
}

/// A submission as the client sent it, before any policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Envelope sender, as MAIL FROM would give it.
    pub from: String,
    /// Envelope recipients, duplicates removed (as RCPT does), in order.
    pub to: Vec<String>,
    /// The raw RFC 5322 message, line endings as sent.
    pub message: Vec<u8>,
    /// Some address is not ASCII (RFC 6531: the message needs SMTPUTF8).
    pub smtputf8: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    from: String,
    to: Vec<String>,
    message: Option<String>,
    message_base64: Option<String>,
}

/// Parses a request body of media type `content_type`.
pub fn envelope(content_type: &str, body: &[u8]) -> Result<Envelope, BadRequest> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (from, to, message) = match media.as_str() {
        "application/json" => {
            let j: JsonBody =
                serde_json::from_slice(body).map_err(|e| syntax(format!("JSON body: {e}")))?;
            let message = match (j.message, j.message_base64) {
                (Some(m), None) => m.into_bytes(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| syntax(format!("message_base64: {e}")))?,
                _ => {
                    return Err(syntax(
                        "give exactly one of \"message\" and \"message_base64\"",
                    ))
                }
            };
            (j.from, j.to, message)
        }
        "multipart/form-data" => {
            let boundary = parameter(content_type, "boundary")
                .ok_or_else(|| syntax("multipart/form-data without a boundary"))?;
            let mut from = None;
            let mut to = Vec::new();
            let mut message = None;
            for part in multipart(body, &boundary)? {
                let text = || {
                    std::str::from_utf8(part.data)
                        .map(|s| s.trim().to_string())
                        .map_err(|_| syntax(format!("field {:?} is not UTF-8", part.name)))
                };
                match part.name.as_str() {
                    "from" if from.is_none() => from = Some(text()?),
                    "to" => to.extend(
                        text()?
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty()),
                    ),
                    "message" if message.is_none() => message = Some(part.data.to_vec()),
                    other => return Err(syntax(format!("unexpected or repeated field {other:?}"))),
                }
            }
            (
                from.ok_or_else(|| syntax("field \"from\" is missing"))?,
                to,
                message.ok_or_else(|| syntax("field \"message\" is missing"))?,
            )
        }
        _ => return Err(BadRequest::ContentType(media)),
    };
    if to.is_empty() {
        return Err(syntax("no recipients (\"to\" is empty)"));
    }
    let smtputf8 = !from.is_ascii() || to.iter().any(|t| !t.is_ascii());
    let from = mailbox("from", &from, true, smtputf8)?;
    let mut rcpts: Vec<String> = Vec::with_capacity(to.len());
    for t in &to {
        let a = mailbox("to", t, false, smtputf8)?;
        if !rcpts.contains(&a) {
            rcpts.push(a);
        }
    }
    Ok(Envelope {
        from,
        to: rcpts,
        message,
        smtputf8,
    })
}

/// `address` checked as MAIL FROM (`sender`) or RCPT TO would check it.
fn mailbox(field: &str, address: &str, sender: bool, utf8: bool) -> Result<String, BadRequest> {
    let bad = |why: &str| syntax(format!("{field}: {why}: {address:?}"));
    if address.is_empty() {
        return Err(bad("empty address"));
    }
    // Only the address itself goes into the command line: nothing that
    // could close the path or add a parameter.
    if address
        .chars()
        .any(|c| matches!(c, '<' | '>' | ' ' | '\t' | '\r' | '\n' | '\0'))
    {
        return Err(bad("not an address"));
    }
    let ext = if utf8 && sender { " SMTPUTF8" } else { "" };
    let line = if sender {
        format!("MAIL FROM:<{address}>{ext}\r\n")
    } else {
        format!("RCPT TO:<{address}>\r\n")
    };
    match command::parse(line.as_bytes()) {
        Ok(Command::Mail(m)) => Ok(m.address),
        Ok(Command::Rcpt(r)) => Ok(r.address),
        Ok(_) => Err(bad("not an address")),
        Err(e) => Err(bad(&e.to_string())),
    }
}

/// The value of parameter `name` of a header value such as
/// `multipart/form-data; boundary="x"`.
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// One part of a `multipart/form-data` body (RFC 7578).
#[derive(Debug)]
struct Part<'a> {
    name: String,
    data: &'a [u8],
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The next `delimiter` from `from` that is a whole delimiter line: followed
/// by CRLF (next part) or `--` (the end), RFC 2046 §5.1.1. A line that only
/// starts like one is content.
fn delimiter_at(body: &[u8], delimiter: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let hit = find(body, delimiter, at)?;
        let after = &body[hit + delimiter.len()..];
        if after.starts_with(b"\r\n") || after.starts_with(b"--") {
            return Some(hit);
        }
        at = hit + 1;
    }
}

/// Splits a `multipart/form-data` body at `boundary` (RFC 2046 §5.1.1).
fn multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, BadRequest> {
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(syntax("multipart boundary must be 1 to 70 characters"));
    }
    let first = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    let mut at = if body.starts_with(first.as_bytes()) {
        first.len()
    } else {
        find(body, delimiter.as_bytes(), 0)
            .ok_or_else(|| syntax("multipart body without its boundary"))?
            + delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let Some(rest) = rest.strip_prefix(b"\r\n") else {
            return Err(syntax("multipart boundary not followed by CRLF"));
        };
        let start = body.len() - rest.len();
        let head_end = find(body, b"\r\n\r\n", start)
            .ok_or_else(|| syntax("multipart part without a header end"))?;
        let head = std::str::from_utf8(&body[start..head_end])
            .map_err(|_| syntax("multipart part header is not UTF-8"))?;
        let name = head
            .split("\r\n")
            .find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then(|| parameter(v, "name"))
                    .flatten()
            })
            .ok_or_else(|| syntax("multipart part without Content-Disposition name"))?;
        let data_start = head_end + 4;
        let end = delimiter_at(body, delimiter.as_bytes(), data_start)
            .ok_or_else(|| syntax("multipart body not closed by its boundary"))?;
        parts.push(Part {
            name,
            data: &body[data_start..end],
        });
        if parts.len() > 1000 {
            return Err(syntax("too many multipart parts"));
        }
        at = end + delimiter.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_schemes() {
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            credentials(format!("Basic {basic}").as_bytes()),
            Some(Credentials::Basic {
                username: "alice".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(
            credentials(b"bearer pgt_abc"),
            Some(Credentials::Bearer("pgt_abc".into()))
        );
        assert_eq!(credentials(b"Basic !!!"), None);
        assert_eq!(credentials(b"Digest x"), None);
        assert_eq!(credentials(b"Bearer"), None);
    }

    #[test]
    fn json_body() {
        let e = envelope(
            "application/json; charset=utf-8",
            br#"{"from":"a@example.com","to":["b@x.org","b@x.org","c@x.org"],"message":"Subject: hi\n\nbody\n"}"#,
        )
        .unwrap();
        assert_eq!(e.from, "a@example.com");
        assert_eq!(e.to, vec!["b@x.org", "c@x.org"]);
        assert_eq!(e.message, b"Subject: hi\n\nbody\n");
        assert!(!e.smtputf8);
        let e = envelope(
            "application/json",
            br#"{"from":"a@example.com","to":["b@x.org"],"message_base64":"U3ViamVjdDogaGkNCg0KeA0K"}"#,
        )
        .unwrap();
        assert_eq!(e.message, b"Subject: hi\r\n\r\nx\r\n");
    }

    #[test]
    fn bad_json_bodies_are_refused_precisely() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "JSON body"),
            (br#"{"from":"a@x","to":[],"message":"x"}"#, "no recipients"),
            (br#"{"from":"a@x","to":["b@x"]}"#, "exactly one"),
            (
                br#"{"from":"a@x","to":["b@x"],"message":"x","bcc":1}"#,
                "unknown field",
            ),
            (
                br#"{"from":"a@x> SIZE=1","to":["b@x"],"message":"x"}"#,
                "from: not an address",
            ),
            (
                br#"{"from":"a@x","to":["b@x\r\nDATA"],"message":"x"}"#,
                "to: not an address",
            ),
            (br#"{"from":"","to":["b@x"],"message":"x"}"#, "from: empty"),
            (br#"{"from":"a@x","to":["nodomain"],"message":"x"}"#, "to:"),
        ];
        for (body, want) in cases {
            let e = envelope("application/json", body).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(body));
        }
        assert_eq!(
            envelope("text/plain", b"x").unwrap_err(),
            BadRequest::ContentType("text/plain".into())
        );
    }

    #[test]
    fn multipart_body() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"from\"\r\n\r\na@example.com\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nb@x.org, c@x.org\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nd@x.org\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"message\"; filename=\"m.eml\"\r\nContent-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\n--XyZ is not a boundary here\r\n\r\n--XyZ--\r\n";
        let e = envelope("multipart/form-data; boundary=\"XyZ\"", body).unwrap();
        assert_eq!(e.from, "a@example.com");
        assert_eq!(e.to, vec!["b@x.org", "c@x.org", "d@x.org"]);
        assert_eq!(
            e.message,
            b"Subject: hi\r\n\r\n--XyZ is not a boundary here\r\n"
        );
        let unclosed = b"--XyZ\r\nContent-Disposition: form-data; name=\"from\"\r\n\r\na@x";
        assert!(envelope("multipart/form-data; boundary=XyZ", unclosed)
            .unwrap_err()
            .to_string()
            .contains("not closed"));
        assert!(envelope("multipart/form-data", body)
            .unwrap_err()
            .to_string()
            .contains("boundary"));
    }
}
