//! What a message needs from an upstream's EHLO extensions, decided before
//! a transaction starts. PURE.
//!
//! - RFC 6531 §3.4: a message that needs SMTPUTF8 (the client gave SMTPUTF8
//!   at MAIL and an envelope address or the header section is not ASCII) is
//!   never sent to a server that does not offer SMTPUTF8: the recipients it
//!   concerns fail with 5.6.7 and get a DSN. A recipient whose own address
//!   is non-ASCII fails alone when the rest of the message is ASCII.
//! - RFC 6152 §3: 8-bit content is never sent to a server that offers
//!   neither 8BITMIME nor SMTPUTF8: it fails with 5.6.3 (postgate does not
//!   downgrade, i.e. re-encode MIME parts, because the stored bytes are
//!   DKIM-signed and are the bytes delivered).
//! - RFC 3461 §5: the DSN parameters (RET, ENVID, NOTIFY, ORCPT) are passed
//!   on only to a server that offers DSN; xtext-encoded (RFC 3461 §4).

use super::transaction::{Envelope, Reply};

/// The extensions an upstream offered that matter here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offered {
    pub smtputf8: bool,
    pub eightbitmime: bool,
    pub dsn: bool,
}

/// Per recipient of `env` (in order): `None` if it may be sent to an
/// upstream offering `offered`, else the reply it fails with (5.6.7 or
/// 5.6.3, made up by postgate: code 550 / 554).
pub fn refusals(env: &Envelope<'_>, offered: Offered) -> Vec<Option<Reply>> {
    let headers = super::dsn::header_block(env.body);
    let message_needs_utf8 = env.smtputf8 && (!env.sender.is_ascii() || !headers.is_ascii());
    let eight_bit = !env.body.is_ascii();
    env.recipients
        .iter()
        .map(|r| {
            let needs_utf8 = message_needs_utf8 || (env.smtputf8 && !r.is_ascii());
            if needs_utf8 && !offered.smtputf8 {
                Some(Reply {
                    code: 550,
                    text: "550 5.6.7 the upstream does not offer SMTPUTF8, which this message \
                           needs (RFC 6531 section 3.4); not sent"
                        .into(),
                })
            } else if eight_bit && !offered.eightbitmime && !(env.smtputf8 && offered.smtputf8) {
                Some(Reply {
                    code: 554,
                    text: "554 5.6.3 the upstream does not offer 8BITMIME, which this message's \
                           8-bit content needs (RFC 6152); not sent"
                        .into(),
                })
            } else {
                None
            }
        })
        .collect()
}

/// RFC 3461 §4 xtext: `+` and `=`, controls, space and non-ASCII octets
/// become `+XX`.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// The MAIL parameters RET and ENVID for an upstream that offers DSN
/// (with a leading space each), or nothing.
pub fn mail_dsn_params(env: &Envelope<'_>, offered: Offered) -> String {
    let mut out = String::new();
    if !offered.dsn {
        return out;
    }
    if let Some(d) = &env.dsn {
        if let Some(ret) = d.ret {
            out.push_str(&format!(" RET={ret}"));
        }
        if let Some(envid) = d.envid {
            out.push_str(&format!(" ENVID={}", xtext(envid)));
        }
    }
    out
}

/// The RCPT parameters NOTIFY and ORCPT of recipient `i` for an upstream
/// that offers DSN (with a leading space each), or nothing.
pub fn rcpt_dsn_params(env: &Envelope<'_>, i: usize, offered: Offered) -> String {
    let mut out = String::new();
    let Some(r) = env
        .dsn
        .as_ref()
        .filter(|_| offered.dsn)
        .and_then(|d| d.recipients.get(i))
    else {
        return out;
    };
    if let Some(notify) = r.notify {
        out.push_str(&format!(" NOTIFY={notify}"));
    }
    if let Some(orcpt) = r.orcpt {
        // Stored as `type;address` (xtext-decoded); RFC 3461 §4.2.
        if let Some((kind, addr)) = orcpt.split_once(';') {
            out.push_str(&format!(" ORCPT={kind};{}", xtext(addr)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::transaction::{EnvelopeDsn, RecipientDsn};
    use bytes::Bytes;

    fn env<'a>(
        sender: &'a str,
        rcpts: &'a [String],
        body: &'a Bytes,
        smtputf8: bool,
    ) -> Envelope<'a> {
        Envelope {
            sender,
            recipients: rcpts,
            body,
            smtputf8,
            dsn: None,
        }
    }

    const ALL: Offered = Offered {
        smtputf8: true,
        eightbitmime: true,
        dsn: true,
    };
    const NONE: Offered = Offered {
        smtputf8: false,
        eightbitmime: false,
        dsn: false,
    };

    fn codes(v: &[Option<Reply>]) -> Vec<Option<&str>> {
        v.iter().map(|r| r.as_ref().map(|r| &r.text[..9])).collect()
    }

    #[test]
    fn ascii_mail_goes_anywhere() {
        let rcpts = vec!["b@example.org".to_string()];
        let body = Bytes::from_static(b"Subject: hi\r\n\r\nplain\r\n");
        assert_eq!(
            codes(&refusals(&env("a@x.org", &rcpts, &body, false), NONE)),
            vec![None]
        );
        // SMTPUTF8 given but nothing needs it: sent without it.
        assert_eq!(
            codes(&refusals(&env("a@x.org", &rcpts, &body, true), NONE)),
            vec![None]
        );
    }

    #[test]
    fn utf8_sender_or_headers_fail_every_recipient_with_5_6_7() {
        let rcpts = vec!["b@example.org".to_string(), "c@example.org".to_string()];
        let body = Bytes::from_static(b"Subject: hi\r\n\r\nplain\r\n");
        let r = refusals(&env("j\u{f6}rg@x.org", &rcpts, &body, true), NONE);
        assert_eq!(codes(&r), vec![Some("550 5.6.7"); 2]);
        let utf8_header = Bytes::from("Subject: gr\u{fc}\u{df}e\r\n\r\nplain\r\n");
        let r = refusals(&env("a@x.org", &rcpts, &utf8_header, true), NONE);
        assert_eq!(codes(&r), vec![Some("550 5.6.7"); 2]);
        let r = refusals(&env("a@x.org", &rcpts, &utf8_header, true), ALL);
        assert_eq!(codes(&r), vec![None, None]);
    }

    #[test]
    fn only_the_non_ascii_recipient_fails_when_the_rest_is_ascii() {
        let rcpts = vec![
            "b@example.org".to_string(),
            "\u{e9}l\u{e8}ve@example.org".to_string(),
        ];
        let body = Bytes::from_static(b"Subject: hi\r\n\r\nplain\r\n");
        let offered = Offered {
            eightbitmime: true,
            ..NONE
        };
        let r = refusals(&env("a@x.org", &rcpts, &body, true), offered);
        assert_eq!(codes(&r), vec![None, Some("550 5.6.7")]);
    }

    #[test]
    fn eight_bit_body_needs_8bitmime_or_smtputf8() {
        let rcpts = vec!["b@example.org".to_string()];
        let body = Bytes::from("Subject: hi\r\n\r\ncaf\u{e9}\r\n");
        assert_eq!(
            codes(&refusals(&env("a@x.org", &rcpts, &body, false), NONE)),
            vec![Some("554 5.6.3")]
        );
        let eight = Offered {
            eightbitmime: true,
            ..NONE
        };
        assert_eq!(
            codes(&refusals(&env("a@x.org", &rcpts, &body, false), eight)),
            vec![None]
        );
        let utf8 = Offered {
            smtputf8: true,
            ..NONE
        };
        assert_eq!(
            codes(&refusals(&env("a@x.org", &rcpts, &body, true), utf8)),
            vec![None]
        );
        assert_eq!(
            codes(&refusals(&env("a@x.org", &rcpts, &body, false), utf8)),
            vec![Some("554 5.6.3")]
        );
    }

    #[test]
    fn dsn_parameters_only_to_a_dsn_upstream_and_xtext_encoded() {
        let rcpts = vec!["b@example.org".to_string()];
        let body = Bytes::from_static(b"\r\n");
        let per = [RecipientDsn {
            notify: Some("SUCCESS,DELAY"),
            orcpt: Some("rfc822;b+x=y@example.org"),
        }];
        let mut e = env("a@x.org", &rcpts, &body, false);
        e.dsn = Some(EnvelopeDsn {
            ret: Some("HDRS"),
            envid: Some("id 1+2=3"),
            recipients: &per,
        });
        assert_eq!(mail_dsn_params(&e, ALL), " RET=HDRS ENVID=id+201+2B2+3D3");
        assert_eq!(
            rcpt_dsn_params(&e, 0, ALL),
            " NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx+3Dy@example.org"
        );
        assert_eq!(mail_dsn_params(&e, NONE), "");
        assert_eq!(rcpt_dsn_params(&e, 0, NONE), "");
        assert_eq!(rcpt_dsn_params(&e, 1, ALL), "");
    }
}
