//! Delivery status notifications (RFC 3464, requested per RFC 3461): one
//! `multipart/report` to the envelope sender per message and kind:
//! - **failed**: failed or expired recipients (NOTIFY absent or FAILURE),
//!   when the message is finished;
//! - **delayed**: recipients with NOTIFY=DELAY still queued after
//!   `[queue] delay_warning` (one warning per recipient);
//! - **relayed**: recipients with NOTIFY=SUCCESS accepted by an upstream
//!   that does not offer DSN (RFC 3461 §6.2.1.1 "relayed"); an upstream that
//!   offers DSN gets the parameters passed on and owns the notification.
//!
//! NOTIFY=NEVER suppresses all three. ENVID comes back as
//! Original-Envelope-Id, ORCPT as Original-Recipient. RET=FULL returns the
//! whole message in a failed DSN when the caller kept it ([`kept_for_dsn`]:
//! up to `[queue] dsn_return_max`); otherwise, and in delayed and relayed
//! DSNs, the header section is returned (RFC 3461 §4.3).
//! Never for a DSN (RFC 3461 §6.2 / RFC 5321 §4.5.5: the null sender gets
//! no notification). PURE.

use bytes::Bytes;

use crate::message::{ClaimedMessage, FinalRecipient, NewMessage, NewRecipient};
use crate::time::rfc5322_date;

/// Most header bytes copied from the original message.
const MAX_HEADERS: usize = 64 * 1024;

/// Which notification a DSN is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Action: failed (RFC 3464 §2.3.3); for `failed` / `expired` recipients.
    Failed,
    /// Action: delayed; for recipients still queued (status `delayed`).
    Delayed,
    /// Action: relayed; for recipients delivered to an upstream without
    /// DSN support (status `delivered`).
    Relayed,
}

impl Kind {
    /// The RFC 3461 NOTIFY keyword that asks for this kind.
    fn keyword(self) -> &'static str {
        match self {
            Kind::Failed => "FAILURE",
            Kind::Delayed => "DELAY",
            Kind::Relayed => "SUCCESS",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Delayed => "delayed",
            Kind::Relayed => "relayed",
        }
    }

    fn concerns(self, r: &FinalRecipient) -> bool {
        match self {
            Kind::Failed => r.status == "failed" || r.status == "expired",
            Kind::Delayed => r.status == "delayed",
            Kind::Relayed => r.status == "delivered",
        }
    }
}

/// Whether RFC 3461 NOTIFY asks for notifications of `kind`. Absent NOTIFY
/// means FAILURE only (RFC 3461 §4.1 lets the MTA choose between FAILURE
/// and FAILURE,DELAY; postgate sends delay warnings only when asked).
pub fn wants(notify: Option<&str>, kind: Kind) -> bool {
    match notify {
        None => kind == Kind::Failed,
        Some(n) => {
            let upper = n.to_ascii_uppercase();
            let mut words = upper.split(',').map(str::trim);
            !upper.split(',').any(|w| w.trim() == "NEVER") && words.any(|w| w == kind.keyword())
        }
    }
}

/// Whether RFC 3461 NOTIFY asks for a failure DSN (absent: yes, RFC 3461 §4.1).
pub fn wants_failure_dsn(notify: Option<&str>) -> bool {
    wants(notify, Kind::Failed)
}

/// What of `body` a DSN about `message` may return, to keep until the DSN
/// is built: the whole message for RET=FULL when it is at most
/// `return_max` octets, else a copy of its header section.
pub fn kept_for_dsn(message: &ClaimedMessage, body: &Bytes, return_max: u64) -> Bytes {
    if message.dsn_ret.as_deref() == Some("FULL") && body.len() as u64 <= return_max {
        body.clone()
    } else {
        Bytes::copy_from_slice(header_block(body))
    }
}

/// The failure DSN for `message` (whose stored bytes, or what
/// [`kept_for_dsn`] kept of them, are `body`) given the final state of its
/// recipients, or `None` when none is due: the message is a DSN or has the
/// null sender, or no failed/expired recipient asked for one. `id` is the
/// new queue id, `now` and `expires_at` Unix ms. The DSN comes from
/// `MAILER-DAEMON@reporting_mta`; see [`build_report`] for another From.
pub fn build(
    message: &ClaimedMessage,
    body: &[u8],
    recipients: &[FinalRecipient],
    reporting_mta: &str,
    id: String,
    now: i64,
    expires_at: i64,
) -> Option<NewMessage> {
    build_report(
        Kind::Failed,
        message,
        body,
        recipients,
        reporting_mta,
        None,
        id,
        now,
        expires_at,
    )
}

/// The DSN of `kind` for the `recipients` of `message` that it concerns
/// (by status, see [`Kind`]) and that asked for it (NOTIFY), or `None`
/// when there are none or the message is a DSN or has the null sender.
/// Its header From is `from` (`[delivery] dsn_from`) when given, else
/// `MAILER-DAEMON@reporting_mta`; the envelope sender stays empty either
/// way (RFC 5321 §4.5.5). Other arguments as for [`build`].
#[allow(clippy::too_many_arguments)]
pub fn build_report(
    kind: Kind,
    message: &ClaimedMessage,
    body: &[u8],
    recipients: &[FinalRecipient],
    reporting_mta: &str,
    from: Option<&str>,
    id: String,
    now: i64,
    expires_at: i64,
) -> Option<NewMessage> {
    if message.is_dsn || message.sender.is_empty() {
        return None;
    }
    let listed: Vec<&FinalRecipient> = recipients
        .iter()
        .filter(|r| kind.concerns(r))
        .filter(|r| wants(r.notify.as_deref(), kind))
        .collect();
    if listed.is_empty() {
        return None;
    }
    let boundary = format!("{id}/{reporting_mta}");
    let date = rfc5322_date(now);
    let mut out = String::with_capacity(2048);
    let from = from.map_or_else(|| format!("MAILER-DAEMON@{reporting_mta}"), String::from);
    let head = Head {
        kind,
        message,
        reporting_mta,
        boundary: &boundary,
        date: &date,
    };
    head.write_notification(&mut out, &listed, &from, &id);
    head.write_status(&mut out, &listed);
    let bytes = head.with_returned(out, body);
    Some(NewMessage {
        id,
        sender: String::new(),
        recipients: vec![NewRecipient {
            address: message.sender.clone(),
            notify: None,
            orcpt: None,
        }],
        user_id: None,
        username: None,
        credential: None,
        body: Bytes::from(bytes),
        envid: None,
        dsn_ret: None,
        is_dsn: true,
        smtputf8: message.smtputf8,
        received_at: now,
        expires_at,
        journal: None,
    })
}

/// What every part of one DSN being written shares.
#[derive(Clone, Copy)]
struct Head<'a> {
    kind: Kind,
    message: &'a ClaimedMessage,
    reporting_mta: &'a str,
    boundary: &'a str,
    date: &'a str,
}

impl Head<'_> {
    /// The header and the human-readable part (RFC 3464 §2.1) naming each
    /// listed recipient and why.
    fn write_notification(
        &self,
        out: &mut String,
        listed: &[&FinalRecipient],
        from: &str,
        id: &str,
    ) {
        let Head {
            kind,
            message,
            reporting_mta,
            boundary,
            date,
        } = *self;
        let (subject, intro) = match kind {
            Kind::Failed => (
                "Undelivered Mail Returned to Sender",
                "could not be delivered to the\r\nfollowing recipients",
            ),
            Kind::Delayed => (
                "Delayed Mail (still being retried)",
                "has not been delivered yet to the\r\nfollowing recipients; \
                 delivery is still being attempted",
            ),
            Kind::Relayed => (
                "Successful Mail Delivery Report",
                "was relayed to the following\r\nrecipients (the next system \
                 does not report delivery)",
            ),
        };
        out.push_str(&format!(
            "From: Mail Delivery System <{from}>\r\n\
             To: <{sender}>\r\n\
             Subject: {subject}\r\n\
             Date: {date}\r\n\
             Message-ID: <{id}@{reporting_mta}>\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\
             \tboundary=\"{boundary}\"\r\n\
             \r\n\
             This is a MIME-encapsulated message.\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             \r\n\
             This is the mail system at {reporting_mta}.\r\n\
             \r\n\
             Your message (queue id {qid}) {intro}:\r\n\
             \r\n",
            sender = message.sender,
            qid = message.id,
        ));
        for r in listed {
            let why = match (kind, r.status.as_str()) {
                (Kind::Failed, "expired") => "the message stayed in the queue too long",
                (Kind::Failed, _) => "permanent failure",
                (Kind::Delayed, _) => "delayed",
                (Kind::Relayed, _) => "relayed",
            };
            out.push_str(&format!("<{}>: {why}", r.address));
            if let Some(reply) = &r.last_reply {
                out.push_str(&format!(": {}", one_line(reply)));
            }
            out.push_str("\r\n");
        }
    }

    /// The machine-readable part (RFC 3464 §2.2, §2.3).
    fn write_status(&self, out: &mut String, listed: &[&FinalRecipient]) {
        let Head {
            kind,
            message,
            reporting_mta,
            boundary,
            date,
        } = *self;
        // RFC 3464 §2.2: per-message fields, then a block per recipient.
        out.push_str(&format!(
            "\r\n--{boundary}\r\n\
             Content-Type: message/delivery-status\r\n\
             \r\n\
             Reporting-MTA: dns; {reporting_mta}\r\n\
             X-Postgate-Queue-ID: {qid}\r\n\
             Arrival-Date: {arrival}\r\n",
            qid = message.id,
            arrival = rfc5322_date(message.received_at),
        ));
        if let Some(envid) = &message.envid {
            // RFC 3464 §2.2.1: the ENVID as given (RFC 3461 §4.4).
            out.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
        }
        for r in listed {
            out.push_str(&format!("\r\nFinal-Recipient: rfc822; {}\r\n", r.address));
            if let Some(orcpt) = &r.orcpt {
                // RFC 3464 §2.3.1: address-type ";" the ORCPT address.
                out.push_str(&format!("Original-Recipient: {}\r\n", one_line(orcpt)));
            }
            out.push_str(&format!("Action: {}\r\n", kind.action()));
            out.push_str(&format!("Status: {}\r\n", status_code(r, kind)));
            if let Some(up) = &r.last_upstream {
                out.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(up)));
            }
            if let Some(reply) = &r.last_reply {
                if reply.len() >= 3 && reply.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
                    out.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", one_line(reply)));
                } else {
                    out.push_str(&format!(
                        "Diagnostic-Code: x-postgate; {}\r\n",
                        one_line(reply)
                    ));
                }
            }
            out.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
            if kind == Kind::Delayed {
                out.push_str(&format!(
                    "Will-Retry-Until: {}\r\n",
                    rfc5322_date(message.expires_at)
                ));
            }
        }
    }

    /// `out` followed by the returned part (the message or its headers)
    /// and the closing boundary.
    fn with_returned(&self, mut out: String, body: &[u8]) -> Vec<u8> {
        let Head {
            kind,
            message,
            boundary,
            ..
        } = *self;
        // RFC 3461 §4.3: RET=FULL asks for the whole message in a *failed*
        // DSN; the other kinds return the headers. RFC 3462 §2 / RFC 6533 §6:
        // message/global for an internationalised message.
        let headers = header_block(body);
        let full = kind == Kind::Failed
            && message.dsn_ret.as_deref() == Some("FULL")
            && headers.len() < body.len();
        let part_type = match (full, message.smtputf8) {
            (true, false) => "message/rfc822",
            (true, true) => "message/global",
            (false, false) => "text/rfc822-headers",
            (false, true) => "message/global-headers",
        };
        out.push_str(&format!(
            "\r\n--{boundary}\r\nContent-Type: {part_type}\r\n\r\n"
        ));
        let mut bytes = out.into_bytes();
        let returned = if full { body } else { headers };
        bytes.extend_from_slice(returned);
        if !returned.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        bytes
    }
}

/// RFC 3463 status of a listed recipient: the enhanced code of its last
/// reply when it has the class of `kind` (5 failed, 4 delayed, 2 relayed),
/// else 5.0.0 (failed), 4.4.7 (expired), 4.0.0 (delayed) or 2.0.0.
fn status_code(r: &FinalRecipient, kind: Kind) -> String {
    let class = match (kind, r.status.as_str()) {
        (Kind::Failed, "expired") => None,
        (Kind::Failed, _) => Some("5"),
        (Kind::Delayed, _) => Some("4"),
        (Kind::Relayed, _) => Some("2"),
    };
    let from_reply = r.last_reply.as_deref().and_then(|reply| {
        let code = reply.split_whitespace().nth(1)?;
        let parts: Vec<&str> = code.split('.').collect();
        let ok = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        (ok && class == Some(parts[0])).then(|| code.to_string())
    });
    match (from_reply, kind, r.status.as_str()) {
        (Some(c), _, _) => c,
        (None, Kind::Failed, "expired") => "4.4.7".into(),
        (None, Kind::Failed, _) => "5.0.0".into(),
        (None, Kind::Delayed, _) => "4.0.0".into(),
        (None, Kind::Relayed, _) => "2.0.0".into(),
    }
}

/// The header section of `body` (up to the first empty line), bounded.
pub fn header_block(body: &[u8]) -> &[u8] {
    let limit = &body[..body.len().min(MAX_HEADERS)];
    if let Some(i) = limit.windows(4).position(|w| w == b"\r\n\r\n") {
        return &limit[..i + 2];
    }
    if let Some(i) = limit.windows(2).position(|w| w == b"\n\n") {
        return &limit[..i + 1];
    }
    limit
}

fn one_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.chars().take(900).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender: &str, is_dsn: bool) -> ClaimedMessage {
        ClaimedMessage {
            id: "q1".into(),
            sender: sender.into(),
            user_id: None,
            username: None,
            envid: Some("ENV-1".into()),
            dsn_ret: None,
            is_dsn,
            smtputf8: false,
            size: 10,
            received_at: 0,
            expires_at: 1,
            recipients: vec![],
            body: None,
        }
    }

    fn rcpt(addr: &str, status: &str, notify: Option<&str>, reply: Option<&str>) -> FinalRecipient {
        FinalRecipient {
            address: addr.into(),
            notify: notify.map(String::from),
            orcpt: None,
            status: status.into(),
            attempts: 1,
            last_upstream: Some("ses".into()),
            last_reply: reply.map(String::from),
        }
    }

    const BODY: &[u8] = b"From: a@example.com\r\nSubject: hello\r\n\r\nsecret body\r\n";

    #[test]
    fn dsn_lists_only_failed_recipients_with_original_headers() {
        let rs = vec![
            rcpt("ok@x.org", "delivered", None, Some("250 2.0.0 ok")),
            rcpt("bad@x.org", "failed", None, Some("550 5.1.1 no such user")),
            rcpt(
                "late@x.org",
                "expired",
                Some("FAILURE,DELAY"),
                Some("451 4.3.0 later"),
            ),
        ];
        let d = build(
            &message("a@example.com", false),
            BODY,
            &rs,
            "relay.test",
            "d1".into(),
            1_700_000_000_000,
            9,
        )
        .expect("dsn");
        assert!(d.is_dsn);
        assert_eq!(d.sender, "");
        assert_eq!(d.recipients[0].address, "a@example.com");
        let text = String::from_utf8(d.body.to_vec()).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text
            .contains("Final-Recipient: rfc822; bad@x.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains(
            "Final-Recipient: rfc822; late@x.org\r\nAction: failed\r\nStatus: 4.4.7\r\n"
        ));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
        assert!(text.contains("Original-Envelope-Id: ENV-1"));
        assert!(!text.contains("ok@x.org"));
        assert!(text.contains("Subject: hello\r\n"));
        assert!(
            !text.contains("secret body"),
            "only the headers are returned"
        );
        assert!(text.contains("Date: Tue, 14 Nov 2023 22:13:20 +0000"));
        assert!(text.ends_with("--\r\n"));
    }

    #[test]
    fn no_dsn_for_a_dsn_or_null_sender_or_never() {
        let rs = vec![rcpt("bad@x.org", "failed", None, None)];
        assert!(build(&message("a@b.c", true), BODY, &rs, "h", "d".into(), 0, 1).is_none());
        assert!(build(&message("", false), BODY, &rs, "h", "d".into(), 0, 1).is_none());
        let never = vec![rcpt("bad@x.org", "failed", Some("NEVER"), None)];
        assert!(build(
            &message("a@b.c", false),
            BODY,
            &never,
            "h",
            "d".into(),
            0,
            1
        )
        .is_none());
        let success_only = vec![rcpt("bad@x.org", "failed", Some("SUCCESS"), None)];
        assert!(build(
            &message("a@b.c", false),
            BODY,
            &success_only,
            "h",
            "d".into(),
            0,
            1
        )
        .is_none());
        let delivered = vec![rcpt("ok@x.org", "delivered", None, None)];
        assert!(build(
            &message("a@b.c", false),
            BODY,
            &delivered,
            "h",
            "d".into(),
            0,
            1
        )
        .is_none());
    }

    #[test]
    fn notify_parsing() {
        assert!(wants_failure_dsn(None));
        assert!(wants_failure_dsn(Some("failure")));
        assert!(wants_failure_dsn(Some("SUCCESS,FAILURE")));
        assert!(!wants_failure_dsn(Some("NEVER")));
        assert!(!wants_failure_dsn(Some("DELAY")));
    }

    #[test]
    fn header_block_stops_at_the_blank_line() {
        assert_eq!(
            header_block(BODY),
            b"From: a@example.com\r\nSubject: hello\r\n"
        );
        assert_eq!(header_block(b"A: b\n\nbody"), b"A: b\n");
        assert_eq!(header_block(b"no blank line"), b"no blank line");
    }
}

#[cfg(test)]
#[path = "dsn_tests.rs"]
mod report_tests;
