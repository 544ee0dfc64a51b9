//! RFC 3461/3464 fields of every kind of DSN, one test per field.

use bytes::Bytes;

use super::*;

fn message(ret: Option<&str>) -> ClaimedMessage {
    ClaimedMessage {
        id: "q9".into(),
        sender: "a@example.com".into(),
        user_id: None,
        username: None,
        envid: Some("ENV\r\n-9".into()),
        dsn_ret: ret.map(String::from),
        is_dsn: false,
        smtputf8: false,
        size: 10,
        received_at: 0,
        expires_at: 86_400_000,
        recipients: vec![],
        body: None,
    }
}

fn rcpt(
    status: &str,
    notify: Option<&str>,
    orcpt: Option<&str>,
    reply: Option<&str>,
) -> FinalRecipient {
    FinalRecipient {
        address: "r@x.org".into(),
        notify: notify.map(String::from),
        orcpt: orcpt.map(String::from),
        status: status.into(),
        attempts: 2,
        last_upstream: Some("ses".into()),
        last_reply: reply.map(String::from),
    }
}

const BODY: &[u8] = b"From: a@example.com\r\nSubject: hello\r\n\r\nthe body\r\n";

fn report(kind: Kind, m: &ClaimedMessage, body: &[u8], rs: &[FinalRecipient]) -> Option<String> {
    build_report(
        kind,
        m,
        body,
        rs,
        "relay.test",
        None,
        "d1".into(),
        1_700_000_000_000,
        9,
    )
    .map(|d| String::from_utf8(d.body.to_vec()).unwrap())
}

#[test]
fn notify_keywords_select_each_kind() {
    assert!(wants(None, Kind::Failed));
    assert!(!wants(None, Kind::Delayed), "absent NOTIFY: FAILURE only");
    assert!(!wants(None, Kind::Relayed));
    assert!(wants(Some("SUCCESS"), Kind::Relayed));
    assert!(wants(Some("delay,failure"), Kind::Delayed));
    assert!(!wants(Some("SUCCESS"), Kind::Failed));
    assert!(!wants(Some("NEVER"), Kind::Failed));
    assert!(!wants(Some("NEVER"), Kind::Relayed));
    assert!(!wants(Some("NEVER"), Kind::Delayed));
}

#[test]
fn relayed_dsn_action_status_and_subject() {
    let rs = [rcpt(
        "delivered",
        Some("SUCCESS"),
        None,
        Some("250 2.0.0 queued as X"),
    )];
    let t = report(Kind::Relayed, &message(None), BODY, &rs).expect("dsn");
    assert!(t.contains("Subject: Successful Mail Delivery Report\r\n"));
    assert!(t.contains("Action: relayed\r\nStatus: 2.0.0\r\nRemote-MTA: dns; ses\r\n"));
    assert!(t.contains("Diagnostic-Code: smtp; 250 2.0.0 queued as X\r\n"));
    // Only delivered recipients are reported as relayed.
    let failed = [rcpt("failed", Some("SUCCESS"), None, None)];
    assert!(report(Kind::Relayed, &message(None), BODY, &failed).is_none());
}

#[test]
fn delayed_dsn_action_status_and_will_retry_until() {
    let rs = [rcpt(
        "delayed",
        Some("DELAY"),
        None,
        Some("451 4.3.0 later"),
    )];
    let t = report(Kind::Delayed, &message(None), BODY, &rs).expect("dsn");
    assert!(t.contains("Subject: Delayed Mail (still being retried)\r\n"));
    assert!(t.contains("Action: delayed\r\nStatus: 4.3.0\r\n"));
    assert!(t.contains("Will-Retry-Until: Fri, 2 Jan 1970 00:00:00 +0000\r\n"));
    let no_code = [rcpt(
        "delayed",
        Some("DELAY"),
        None,
        Some("connection refused"),
    )];
    let t = report(Kind::Delayed, &message(None), BODY, &no_code).expect("dsn");
    assert!(t.contains("Status: 4.0.0\r\n"));
    assert!(t.contains("Diagnostic-Code: x-postgate; connection refused\r\n"));
}

#[test]
fn failed_dsn_keeps_its_codes() {
    let rs = [rcpt("failed", None, None, Some("554 5.6.3 no 8BITMIME"))];
    let t = report(Kind::Failed, &message(None), BODY, &rs).expect("dsn");
    assert!(t.contains("Action: failed\r\nStatus: 5.6.3\r\n"));
    assert!(!t.contains("Will-Retry-Until"));
}

#[test]
fn envid_is_echoed_on_one_line() {
    let rs = [rcpt("failed", None, None, None)];
    let t = report(Kind::Failed, &message(None), BODY, &rs).expect("dsn");
    assert!(t.contains("Original-Envelope-Id: ENV  -9\r\n"), "{t}");
    let mut m = message(None);
    m.envid = None;
    let t = report(Kind::Failed, &m, BODY, &rs).expect("dsn");
    assert!(!t.contains("Original-Envelope-Id"));
}

#[test]
fn orcpt_is_echoed_as_original_recipient() {
    let rs = [rcpt(
        "delivered",
        Some("SUCCESS"),
        Some("rfc822;Orig@X.org"),
        None,
    )];
    let t = report(Kind::Relayed, &message(None), BODY, &rs).expect("dsn");
    assert!(
        t.contains("Final-Recipient: rfc822; r@x.org\r\nOriginal-Recipient: rfc822;Orig@X.org\r\n")
    );
    let rs = [rcpt("delivered", Some("SUCCESS"), None, None)];
    let t = report(Kind::Relayed, &message(None), BODY, &rs).expect("dsn");
    assert!(!t.contains("Original-Recipient"));
}

#[test]
fn ret_full_returns_the_whole_message_up_to_the_cap() {
    let rs = [rcpt("failed", None, None, None)];
    let m = message(Some("FULL"));
    let body = Bytes::from_static(BODY);
    let kept = kept_for_dsn(&m, &body, 1 << 20);
    assert_eq!(&kept[..], BODY);
    let t = report(Kind::Failed, &m, &kept, &rs).expect("dsn");
    assert!(t.contains("Content-Type: message/rfc822\r\n\r\nFrom: a@example.com\r\n"));
    assert!(t.contains("the body\r\n"));
    // Over the cap: headers only.
    let kept = kept_for_dsn(&m, &body, 10);
    let t = report(Kind::Failed, &m, &kept, &rs).expect("dsn");
    assert!(t.contains("Content-Type: text/rfc822-headers\r\n"));
    assert!(!t.contains("the body"));
}

#[test]
fn ret_full_is_for_failed_dsns_only() {
    let m = message(Some("FULL"));
    let relayed = [rcpt("delivered", Some("SUCCESS"), None, None)];
    let t = report(Kind::Relayed, &m, BODY, &relayed).expect("dsn");
    assert!(t.contains("Content-Type: text/rfc822-headers\r\n"));
    assert!(!t.contains("the body"));
    let delayed = [rcpt("delayed", Some("DELAY"), None, None)];
    let t = report(Kind::Delayed, &m, BODY, &delayed).expect("dsn");
    assert!(!t.contains("the body"));
}

#[test]
fn ret_hdrs_or_absent_returns_headers_only() {
    let rs = [rcpt("failed", None, None, None)];
    for ret in [Some("HDRS"), None] {
        let m = message(ret);
        let kept = kept_for_dsn(&m, &Bytes::from_static(BODY), 1 << 20);
        let t = report(Kind::Failed, &m, &kept, &rs).expect("dsn");
        assert!(t.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(t.contains("Subject: hello\r\n"));
        assert!(!t.contains("the body"), "{ret:?}");
        // Even given the whole body, only RET=FULL returns it.
        let t = report(Kind::Failed, &m, BODY, &rs).expect("dsn");
        assert!(!t.contains("the body"), "{ret:?}");
    }
}

#[test]
fn internationalised_message_comes_back_as_message_global() {
    let rs = [rcpt("failed", None, None, None)];
    let mut m = message(Some("FULL"));
    m.smtputf8 = true;
    let t = report(Kind::Failed, &m, BODY, &rs).expect("dsn");
    assert!(t.contains("Content-Type: message/global\r\n"));
    m.dsn_ret = None;
    let t = report(Kind::Failed, &m, BODY, &rs).expect("dsn");
    assert!(t.contains("Content-Type: message/global-headers\r\n"));
}

#[test]
fn never_and_null_sender_suppress_every_kind() {
    for (kind, status) in [
        (Kind::Failed, "failed"),
        (Kind::Delayed, "delayed"),
        (Kind::Relayed, "delivered"),
    ] {
        let never = [rcpt(status, Some("NEVER"), None, None)];
        assert!(
            report(kind, &message(None), BODY, &never).is_none(),
            "{kind:?}"
        );
        let all = [rcpt(status, Some("SUCCESS,DELAY,FAILURE"), None, None)];
        assert!(
            report(kind, &message(None), BODY, &all).is_some(),
            "{kind:?}"
        );
        let mut null = message(None);
        null.sender.clear();
        assert!(report(kind, &null, BODY, &all).is_none(), "{kind:?}");
    }
}
