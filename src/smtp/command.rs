//! Command lines: framing and parsing. PURE (bytes in, commands out).
//!
//! Framing ([`LineFramer`]) takes complete lines out of the input buffer
//! with a hard cap, so a client can never make a session buffer more than
//! [`MAX_AUTH_LINE`] octets of command text. Parsing ([`parse`]) checks the
//! caps and bytes smtp-proto does not check (NUL, bare CR, the 512-octet
//! command line of RFC 5321 §4.5.3.1.4), then uses smtp-proto's fuzzed
//! `Request::parse` and turns its borrowed result into an owned [`Command`].

use bytes::{Bytes, BytesMut};
use smtp_proto::{Error as ProtoError, Request};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 §4: AUTH command and SASL response lines may be up to 12288 octets.
pub const MAX_AUTH_LINE: usize = 12288;

/// Why a command line was refused; [`crate::smtp::reply`] maps each to a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unrecognized command")]
    Unknown,
    #[error("line longer than {max} octets")]
    LineTooLong { max: usize },
    #[error("NUL byte in command")]
    Nul,
    #[error("bare CR in command")]
    BareCr,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad sender address")]
    BadSender,
    #[error("bad recipient address")]
    BadRecipient,
    #[error("invalid parameter {0}")]
    BadParameter(String),
    #[error("unsupported parameter {0}")]
    UnsupportedParameter(String),
}

/// Splits the input into lines ending in LF, never holding more than `max`
/// octets of an incomplete line: a longer line is discarded up to its LF and
/// reported once as [`CommandError::LineTooLong`].
#[derive(Debug, Default)]
pub struct LineFramer {
    discarding: bool,
}

impl LineFramer {
    /// The next complete line (with its line ending) from the front of `buf`,
    /// `Some(Err(LineTooLong))` once for an over-long line, or `None` when
    /// more input is needed. Consumes what it returns or discards.
    pub fn next_line(
        &mut self,
        buf: &mut BytesMut,
        max: usize,
    ) -> Option<Result<Bytes, CommandError>> {
        let lf = buf.iter().position(|&b| b == b'\n');
        if self.discarding {
            return match lf {
                Some(pos) => {
                    let _ = buf.split_to(pos + 1);
                    self.discarding = false;
                    Some(Err(CommandError::LineTooLong { max }))
                }
                None => {
                    buf.clear();
                    None
                }
            };
        }
        match lf {
            Some(pos) if pos < max => Some(Ok(buf.split_to(pos + 1).freeze())),
            Some(pos) => {
                let _ = buf.split_to(pos + 1);
                Some(Err(CommandError::LineTooLong { max }))
            }
            None if buf.len() >= max => {
                buf.clear();
                self.discarding = true;
                None
            }
            None => None,
        }
    }

    /// Forgets a partially discarded line (after STARTTLS).
    pub fn reset(&mut self) {
        self.discarding = false;
    }
}

/// The message body type of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

impl BodyType {
    /// The parameter value as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
        }
    }
}

/// MAIL FROM and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailParams {
    /// The reverse-path without brackets; empty for `<>`.
    pub address: String,
    /// RFC 1870 SIZE, when given and non-zero.
    pub size: Option<usize>,
    pub body: Option<BodyType>,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3461 RET (`FULL` or `HDRS`).
    pub ret: Option<String>,
    /// RFC 3461 ENVID (xtext-decoded).
    pub envid: Option<String>,
}

/// RCPT TO and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptParams {
    pub address: String,
    /// RFC 3461 NOTIFY, normalised (`NEVER` or a comma list of SUCCESS, FAILURE, DELAY).
    pub notify: Option<String>,
    /// RFC 3461 ORCPT as `rfc822;address`.
    pub orcpt: Option<String>,
}

/// SASL mechanisms as named in AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    Other,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailParams),
    Rcpt(RcptParams),
    Data,
    Bdat {
        size: usize,
        last: bool,
    },
    Auth {
        mechanism: Mechanism,
        initial: Option<String>,
    },
    StartTls,
    Rset,
    Noop,
    Vrfy,
    Help,
    Quit,
    /// A known command postgate does not offer (EXPN, ETRN, ATRN, BURL, LHLO).
    NotImplemented(&'static str),
}

/// Strips the line ending; checks NUL and bare CR.
pub fn strip_line(line: &[u8]) -> Result<&[u8], CommandError> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    if body.contains(&0) {
        return Err(CommandError::Nul);
    }
    if body.contains(&b'\r') {
        return Err(CommandError::BareCr);
    }
    Ok(body)
}

/// Parses one framed command line (with its line ending).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let body = strip_line(line)?;
    let is_auth = body.len() >= 4 && body[..4].eq_ignore_ascii_case(b"AUTH");
    if !is_auth && body.len() + 2 > MAX_COMMAND_LINE {
        return Err(CommandError::LineTooLong {
            max: MAX_COMMAND_LINE,
        });
    }
    let mut framed = Vec::with_capacity(body.len() + 2);
    framed.extend_from_slice(body);
    framed.extend_from_slice(b"\r\n");
    let request = Request::parse(&mut framed.iter()).map_err(map_proto)?;
    convert(request)
}

fn map_proto(e: ProtoError) -> CommandError {
    match e {
        ProtoError::UnknownCommand => CommandError::Unknown,
        ProtoError::InvalidSenderAddress => CommandError::BadSender,
        ProtoError::InvalidRecipientAddress => CommandError::BadRecipient,
        ProtoError::SyntaxError { syntax } => CommandError::Syntax(syntax),
        ProtoError::InvalidParameter { param } => CommandError::BadParameter(param.to_string()),
        ProtoError::UnsupportedParameter { param } => CommandError::UnsupportedParameter(param),
        ProtoError::ResponseTooLong => CommandError::LineTooLong {
            max: MAX_COMMAND_LINE,
        },
        ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
            CommandError::Syntax("incomplete command")
        }
    }
}

fn convert(request: Request<std::borrow::Cow<'_, str>>) -> Result<Command, CommandError> {
    use smtp_proto::*;
    Ok(match request {
        Request::Ehlo { host } => Command::Ehlo(host.into_owned()),
        Request::Helo { host } => Command::Helo(host.into_owned()),
        Request::Lhlo { .. } => Command::NotImplemented("LHLO"),
        Request::Mail { from } => {
            let unsupported = [
                (from.trans_id.is_some(), "TRANSID"),
                (from.by != 0, "BY"),
                (from.solicit.is_some(), "SOLICIT"),
                (from.mtrk.is_some(), "MTRK"),
                (from.hold_for != 0 || from.hold_until != 0, "FUTURERELEASE"),
                (from.mt_priority != 0, "MT-PRIORITY"),
                (from.flags & MAIL_REQUIRETLS != 0, "REQUIRETLS"),
                (from.flags & MAIL_CONPERM != 0, "CONPERM"),
                (from.flags & MAIL_BODY_BINARYMIME != 0, "BODY=BINARYMIME"),
            ];
            if let Some((_, name)) = unsupported.iter().find(|(set, _)| *set) {
                return Err(CommandError::UnsupportedParameter(name.to_string()));
            }
            let address = from.address.into_owned();
            check_address(&address, true).map_err(|_| CommandError::BadSender)?;
            Command::Mail(MailParams {
                address,
                size: (from.size > 0).then_some(from.size),
                body: if from.flags & MAIL_BODY_8BITMIME != 0 {
                    Some(BodyType::EightBitMime)
                } else if from.flags & MAIL_BODY_7BIT != 0 {
                    Some(BodyType::SevenBit)
                } else {
                    None
                },
                smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
                ret: if from.flags & MAIL_RET_FULL != 0 {
                    Some("FULL".into())
                } else if from.flags & MAIL_RET_HDRS != 0 {
                    Some("HDRS".into())
                } else {
                    None
                },
                envid: from.env_id.map(|e| e.into_owned()),
            })
        }
        Request::Rcpt { to } => {
            if to.flags & (RCPT_CONNEG | RCPT_RRVS_REJECT | RCPT_RRVS_CONTINUE) != 0 || to.rrvs != 0
            {
                return Err(CommandError::UnsupportedParameter("RRVS/CONNEG".into()));
            }
            let address = to.address.into_owned();
            check_address(&address, false).map_err(|_| CommandError::BadRecipient)?;
            let notify = if to.flags & RCPT_NOTIFY_NEVER != 0 {
                Some("NEVER".to_string())
            } else {
                let parts: Vec<&str> = [
                    (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
                    (RCPT_NOTIFY_FAILURE, "FAILURE"),
                    (RCPT_NOTIFY_DELAY, "DELAY"),
                ]
                .iter()
                .filter(|(f, _)| to.flags & f != 0)
                .map(|(_, n)| *n)
                .collect();
                (!parts.is_empty()).then(|| parts.join(","))
            };
            Command::Rcpt(RcptParams {
                address,
                notify,
                orcpt: to.orcpt.map(|o| format!("rfc822;{o}")),
            })
        }
        Request::Bdat {
            chunk_size,
            is_last,
        } => Command::Bdat {
            size: chunk_size,
            last: is_last,
        },
        Request::Auth {
            mechanism,
            initial_response,
        } => Command::Auth {
            mechanism: match mechanism {
                AUTH_PLAIN => Mechanism::Plain,
                AUTH_LOGIN => Mechanism::Login,
                _ => Mechanism::Other,
            },
            initial: (!initial_response.is_empty()).then(|| initial_response.into_owned()),
        },
        Request::Noop { .. } => Command::Noop,
        Request::Vrfy { .. } => Command::Vrfy,
        Request::Expn { .. } => Command::NotImplemented("EXPN"),
        Request::Help { .. } => Command::Help,
        Request::Etrn { .. } => Command::NotImplemented("ETRN"),
        Request::Atrn { .. } => Command::NotImplemented("ATRN"),
        Request::Burl { .. } => Command::NotImplemented("BURL"),
        Request::StartTls => Command::StartTls,
        Request::Data => Command::Data,
        Request::Rset => Command::Rset,
        Request::Quit => Command::Quit,
    })
}

/// RFC 5321 §4.5.3.1: a path is at most 256 octets (254 for the address);
/// a mailbox is `local@domain` with a non-empty domain. `<>` only for MAIL.
fn check_address(address: &str, null_ok: bool) -> Result<(), ()> {
    if address.is_empty() {
        return if null_ok { Ok(()) } else { Err(()) };
    }
    if address.len() > 254 || address.chars().any(|c| c.is_control() || c == ' ') {
        return Err(());
    }
    match address.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        parse(s.as_bytes())
    }

    #[test]
    fn parses_core_commands() {
        assert_eq!(
            p("EHLO client.example\r\n"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(p("ehlo x\n"), Ok(Command::Ehlo("x".into())));
        assert_eq!(p("QUIT\r\n"), Ok(Command::Quit));
        assert_eq!(p("STARTTLS\r\n"), Ok(Command::StartTls));
        assert_eq!(
            p("BDAT 100 LAST\r\n"),
            Ok(Command::Bdat {
                size: 100,
                last: true
            })
        );
        assert_eq!(
            p("BDAT 7\r\n"),
            Ok(Command::Bdat {
                size: 7,
                last: false
            })
        );
        assert_eq!(p("EXPN list\r\n"), Ok(Command::NotImplemented("EXPN")));
        assert_eq!(p("VRFY bob\r\n"), Ok(Command::Vrfy));
        assert_eq!(
            p("AUTH PLAIN AGJvYgBwdw==\r\n"),
            Ok(Command::Auth {
                mechanism: Mechanism::Plain,
                initial: Some("AGJvYgBwdw==".into())
            })
        );
        assert_eq!(
            p("AUTH LOGIN\r\n"),
            Ok(Command::Auth {
                mechanism: Mechanism::Login,
                initial: None
            })
        );
        assert_eq!(p("FOO bar\r\n"), Err(CommandError::Unknown));
    }

    #[test]
    fn parses_mail_and_rcpt_parameters() {
        let Ok(Command::Mail(m)) =
            p("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc\r\n")
        else {
            panic!()
        };
        assert_eq!(m.address, "a@example.com");
        assert_eq!(m.size, Some(1000));
        assert_eq!(m.body, Some(BodyType::EightBitMime));
        assert!(m.smtputf8);
        assert_eq!(m.ret.as_deref(), Some("HDRS"));
        assert_eq!(m.envid.as_deref(), Some("abc"));
        let Ok(Command::Mail(null)) = p("MAIL FROM:<>\r\n") else {
            panic!()
        };
        assert_eq!(null.address, "");
        let Ok(Command::Rcpt(r)) =
            p("RCPT TO:<b@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.org\r\n")
        else {
            panic!()
        };
        assert_eq!(r.address, "b@example.org");
        assert_eq!(r.notify.as_deref(), Some("FAILURE,DELAY"));
        assert_eq!(r.orcpt.as_deref(), Some("rfc822;b@example.org"));
        assert!(p("RCPT TO:<>\r\n").is_err());
        assert!(p("RCPT TO:<nodomain>\r\n").is_err());
        assert!(matches!(
            p("MAIL FROM:<a@b.example> REQUIRETLS\r\n"),
            Err(CommandError::UnsupportedParameter(_))
        ));
        assert!(p("MAIL FROM:<a@b.example> SIZE=abc\r\n").is_err());
        assert!(p("MAIL FROM:a@b.example\r\n").is_err());
    }

    #[test]
    fn refuses_nul_bare_cr_and_long_lines() {
        assert_eq!(p("NOOP\0\r\n"), Err(CommandError::Nul));
        assert_eq!(p("NO\rOP\r\n"), Err(CommandError::BareCr));
        let long = format!("NOOP {}\r\n", "x".repeat(600));
        assert_eq!(p(&long), Err(CommandError::LineTooLong { max: 512 }));
        // AUTH lines may be longer (RFC 4954 §4).
        let auth = format!("AUTH PLAIN {}\r\n", "A".repeat(1000));
        assert!(matches!(p(&auth), Ok(Command::Auth { .. })));
    }

    #[test]
    fn framer_caps_lines_and_resynchronises() {
        let mut f = LineFramer::default();
        let mut buf = BytesMut::from(&b"NOOP\r\nQUIT"[..]);
        assert_eq!(
            f.next_line(&mut buf, 512).unwrap().unwrap(),
            &b"NOOP\r\n"[..]
        );
        assert!(f.next_line(&mut buf, 512).is_none());
        assert_eq!(&buf[..], b"QUIT");

        let mut buf = BytesMut::from(&vec![b'x'; 100_000][..]);
        assert!(f.next_line(&mut buf, 512).is_none());
        assert!(buf.is_empty(), "over-long partial line is not kept");
        buf.extend_from_slice(b"yyy\r\nNOOP\r\n");
        assert_eq!(
            f.next_line(&mut buf, 512).unwrap(),
            Err(CommandError::LineTooLong { max: 512 })
        );
        assert_eq!(
            f.next_line(&mut buf, 512).unwrap().unwrap(),
            &b"NOOP\r\n"[..]
        );

        let mut buf = BytesMut::from(format!("{}\r\nNOOP\r\n", "z".repeat(600)).as_bytes());
        assert!(f.next_line(&mut buf, 512).unwrap().is_err());
        assert_eq!(
            f.next_line(&mut buf, 512).unwrap().unwrap(),
            &b"NOOP\r\n"[..]
        );
    }

    /// Random bytes never panic the framer or the parser.
    #[test]
    fn random_lines_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4954);
        let words: [&[u8]; 12] = [
            b"MAIL FROM:<",
            b"RCPT TO:<",
            b"a@b.c",
            b">",
            b" SIZE=",
            b"BDAT ",
            b"AUTH ",
            b"\r\n",
            b"\n",
            b"\0",
            b"\xff",
            b"99999999999999999999",
        ];
        let mut f = LineFramer::default();
        let mut buf = BytesMut::new();
        for _ in 0..5000 {
            for _ in 0..rng.gen_range(1..6) {
                buf.extend_from_slice(words[rng.gen_range(0..words.len())]);
            }
            while let Some(line) = f.next_line(&mut buf, 64) {
                if let Ok(l) = line {
                    let _ = parse(&l);
                }
            }
            assert!(buf.len() < 64 + 32);
        }
    }
}
