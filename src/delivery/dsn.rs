//! Delivery status notifications (RFC 3464): one `multipart/report` per
//! message for its failed or expired recipients, to the envelope sender,
//! with the original headers. Never for a DSN (RFC 3461 §6.2 / RFC 5321
//! §4.5.5: the null sender gets no notification).

use bytes::Bytes;

use crate::store::{ClaimedMessage, FinalRecipient, NewMessage, NewRecipient};

/// Most header bytes copied from the original message.
const MAX_HEADERS: usize = 64 * 1024;

/// Whether RFC 3461 NOTIFY asks for a failure DSN (absent: yes, RFC 3461 §4.1).
pub fn wants_failure_dsn(notify: Option<&str>) -> bool {
    match notify {
        None => true,
        Some(n) => {
            let upper = n.to_ascii_uppercase();
            !upper.split(',').any(|w| w.trim() == "NEVER")
                && upper.split(',').any(|w| w.trim() == "FAILURE")
        }
    }
}

/// The DSN for `message` (whose stored bytes are `body`) given the final
/// state of its recipients, or `None` when none is due: the message is a
/// DSN or has the null sender, or no failed/expired recipient asked for one.
/// `id` is the new queue id, `now` and `expires_at` Unix ms. The DSN
/// comes from `MAILER-DAEMON@reporting_mta` (see [`build_from`]).
pub fn build(
    message: &ClaimedMessage,
    body: &[u8],
    recipients: &[FinalRecipient],
    reporting_mta: &str,
    id: String,
    now: i64,
    expires_at: i64,
) -> Option<NewMessage> {
    build_from(
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

/// [`build`], with header From `from` (`[delivery] dsn_from`) when given.
/// The envelope sender stays empty either way (RFC 5321 §4.5.5).
#[allow(clippy::too_many_arguments)]
pub fn build_from(
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
    let failed: Vec<&FinalRecipient> = recipients
        .iter()
        .filter(|r| r.status == "failed" || r.status == "expired")
        .filter(|r| wants_failure_dsn(r.notify.as_deref()))
        .collect();
    if failed.is_empty() {
        return None;
    }
    let boundary = format!("{id}/{reporting_mta}");
    let date = rfc5322_date(now);
    let mut out = String::with_capacity(2048);
    let from = from.map_or_else(|| format!("MAILER-DAEMON@{reporting_mta}"), String::from);
    out.push_str(&format!(
        "From: Mail Delivery System <{from}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
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
         Your message (queue id {qid}) could not be delivered to the\r\n\
         following recipients:\r\n\
         \r\n",
        sender = message.sender,
        qid = message.id,
    ));
    for r in &failed {
        let why = if r.status == "expired" {
            "the message stayed in the queue too long"
        } else {
            "permanent failure"
        };
        out.push_str(&format!("<{}>: {why}", r.address));
        if let Some(reply) = &r.last_reply {
            out.push_str(&format!(": {}", one_line(reply)));
        }
        out.push_str("\r\n");
    }
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
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
    }
    for r in &failed {
        out.push_str(&format!("\r\nFinal-Recipient: rfc822; {}\r\n", r.address));
        if let Some(orcpt) = &r.orcpt {
            out.push_str(&format!("Original-Recipient: {}\r\n", one_line(orcpt)));
        }
        out.push_str("Action: failed\r\n");
        out.push_str(&format!("Status: {}\r\n", status_code(r)));
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
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut bytes = out.into_bytes();
    let headers = header_block(body);
    bytes.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
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
    })
}

/// RFC 3463 status of a final recipient: the enhanced code of its last
/// reply when it has one of class 5, else 5.0.0 (failed) or 4.4.7 (expired).
fn status_code(r: &FinalRecipient) -> String {
    let from_reply = r.last_reply.as_deref().and_then(|reply| {
        let code = reply.split_whitespace().nth(1)?;
        let parts: Vec<&str> = code.split('.').collect();
        let ok = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        (ok && (r.status != "failed" || parts[0] == "5")).then(|| code.to_string())
    });
    match (from_reply, r.status.as_str()) {
        (Some(c), "failed") => c,
        (_, "expired") => "4.4.7".into(),
        _ => "5.0.0".into(),
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

/// RFC 5322 §3.3 date-time in UTC for Unix milliseconds.
pub fn rfc5322_date(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day} {month_name} {year} {:02}:{:02}:{:02} +0000",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
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

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(951_782_400_000),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }
}
