//! Issue 12 items 10 and 11, on both backends, through the real upstream
//! test server: what an upstream without SMTPUTF8 / 8BITMIME is never sent
//! (5.6.7 / 5.6.3 and a DSN instead), and RFC 3461 DSNs whole: SUCCESS
//! ("relayed" from an upstream without DSN; parameters passed on to one
//! with DSN), DELAY (one warning per recipient), NEVER, RET, ENVID, ORCPT.

use std::time::Duration;

use bytes::Bytes;
use postgate::delivery::now_ms;
use postgate::store::Store;

use crate::common::all_stores;
use crate::delivery_flow::{config, new_message, wait_for, Running};
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

async fn queue_len(store: &dyn Store) -> usize {
    store.queue_list(10_000).await.unwrap().len()
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

#[tokio::test]
async fn utf8_mail_to_an_upstream_without_smtputf8_fails_with_5_6_7_and_a_dsn() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.offer_smtputf8 = false;
        let server = UpstreamServer::start(beh).await;
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up")], vec![]),
        );
        // SMTPUTF8 at MAIL, one non-ASCII recipient: only that one fails.
        let mut m = new_message("s@example.com", &["ascii@x.org", "j\u{f6}rg@x.org"], "hi");
        m.smtputf8 = true;
        t.store.enqueue(&m).await.unwrap();
        wait_for(30, "message and DSN", async || server.received().len() == 2).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stop().await;
        let got = server.received();
        assert_eq!(got.len(), 2, "{b}: the message and one DSN");
        assert_eq!(
            got[0].rcpt_to,
            ["ascii@x.org"],
            "{b}: the UTF-8 recipient is never sent"
        );
        assert!(
            !got[0].mail_line.contains("SMTPUTF8"),
            "{b}: {}",
            got[0].mail_line
        );
        let dsn = &got[1];
        assert_eq!(dsn.mail_from, "", "{b}");
        assert_eq!(dsn.rcpt_to, ["s@example.com"], "{b}");
        let d = text(&dsn.data);
        assert!(
            d.contains(
                "Final-Recipient: rfc822; j\u{f6}rg@x.org\r\nAction: failed\r\nStatus: 5.6.7\r\n"
            ),
            "{b}: {d}"
        );
        assert!(d.contains("Diagnostic-Code: smtp; 550 5.6.7"), "{b}: {d}");
        assert!(!d.contains("Final-Recipient: rfc822; ascii@x.org"), "{b}");
        let rcpt_commands = server.commands().iter().filter(|c| *c == "RCPT").count();
        assert_eq!(
            rcpt_commands, 2,
            "{b}: RCPT for ascii@x.org and the DSN only"
        );
    }
}

#[tokio::test]
async fn eight_bit_mail_to_an_upstream_without_8bitmime_fails_with_5_6_3_and_a_dsn() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.offer_8bitmime = false;
        beh.offer_smtputf8 = false;
        let server = UpstreamServer::start(beh).await;
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up")], vec![]),
        );
        let eight = new_message("s@example.com", &["r@x.org"], "caf\u{e9} cr\u{e8}me");
        let seven = new_message("s@example.com", &["r2@x.org"], "plain ascii");
        t.store.enqueue(&eight).await.unwrap();
        t.store.enqueue(&seven).await.unwrap();
        wait_for(30, "7-bit message and DSN", async || {
            server.received().len() == 2
        })
        .await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stop().await;
        let got = server.received();
        assert_eq!(got.len(), 2, "{b}: the 7-bit message and one DSN");
        let sent: Vec<&str> = got
            .iter()
            .flat_map(|r| r.rcpt_to.iter().map(String::as_str))
            .collect();
        assert!(sent.contains(&"r2@x.org"), "{b}: the 7-bit message goes");
        assert!(
            !sent.contains(&"r@x.org"),
            "{b}: the 8-bit message is never sent"
        );
        assert!(
            got.iter().all(|r| r.data.is_ascii()),
            "{b}: no 8-bit octet went out"
        );
        let dsn = got.iter().find(|r| r.mail_from.is_empty()).expect("a DSN");
        let d = text(&dsn.data);
        assert!(
            d.contains("Final-Recipient: rfc822; r@x.org\r\nAction: failed\r\nStatus: 5.6.3\r\n"),
            "{b}: {d}"
        );
    }
}

#[tokio::test]
async fn notify_success_to_an_upstream_without_dsn_gets_a_relayed_dsn_with_envid_and_orcpt() {
    for t in all_stores().await {
        let b = t.backend;
        let server = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up")], vec![]),
        );
        let mut m = new_message(
            "s@example.com",
            &["a@x.org", "b@x.org", "c@x.org"],
            "the body text",
        );
        m.envid = Some("ENV-7".into());
        m.dsn_ret = Some("FULL".into());
        m.recipients[0].notify = Some("SUCCESS,FAILURE".into());
        m.recipients[0].orcpt = Some("rfc822;orig@x.org".into());
        m.recipients[1].notify = Some("NEVER".into());
        // c@x.org: no NOTIFY, i.e. FAILURE only: no success notice.
        t.store.enqueue(&m).await.unwrap();
        wait_for(30, "message and DSN", async || server.received().len() == 2).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stop().await;
        let got = server.received();
        assert_eq!(got.len(), 2, "{b}: the message and one DSN");
        assert_eq!(got[0].rcpt_to, ["a@x.org", "b@x.org", "c@x.org"], "{b}");
        assert!(
            got[0].rcpt_lines.iter().all(|l| !l.contains("NOTIFY")),
            "{b}: no DSN parameters to an upstream without DSN"
        );
        let dsn = &got[1];
        assert_eq!(
            (dsn.mail_from.as_str(), dsn.rcpt_to.as_slice()),
            ("", &["s@example.com".to_string()][..]),
            "{b}"
        );
        let d = text(&dsn.data);
        assert!(
            d.contains("Subject: Successful Mail Delivery Report"),
            "{b}: {d}"
        );
        assert!(d.contains("Original-Envelope-Id: ENV-7\r\n"), "{b}: {d}");
        assert!(
            d.contains("Final-Recipient: rfc822; a@x.org\r\nOriginal-Recipient: rfc822;orig@x.org\r\nAction: relayed\r\nStatus: 2.0.0\r\n"),
            "{b}: {d}"
        );
        assert!(
            !d.contains("rfc822; b@x.org") && !d.contains("rfc822; c@x.org"),
            "{b}: only SUCCESS asked"
        );
        // RFC 3461 §4.3: RET=FULL is for failed DSNs; a success notice
        // returns the headers.
        assert!(
            d.contains("Content-Type: text/rfc822-headers\r\n"),
            "{b}: {d}"
        );
        assert!(d.contains("Message-ID: <m@test>"), "{b}: original headers");
        assert!(
            !d.contains("the body text"),
            "{b}: no body in a success notice"
        );
    }
}

#[tokio::test]
async fn an_upstream_offering_dsn_gets_the_parameters_and_postgate_sends_no_success_dsn() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.offer_dsn = true;
        let server = UpstreamServer::start(beh).await;
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up")], vec![]),
        );
        let mut m = new_message("s@example.com", &["a@x.org"], "body");
        m.envid = Some("id 1+2".into());
        m.dsn_ret = Some("HDRS".into());
        m.recipients[0].notify = Some("SUCCESS".into());
        m.recipients[0].orcpt = Some("rfc822;o+x@x.org".into());
        t.store.enqueue(&m).await.unwrap();
        wait_for(30, "message", async || !server.received().is_empty()).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        run.stop().await;
        let got = server.received();
        assert_eq!(got.len(), 1, "{b}: no DSN from postgate");
        assert!(
            got[0].mail_line.ends_with(" RET=HDRS ENVID=id+201+2B2"),
            "{b}: {}",
            got[0].mail_line
        );
        assert_eq!(
            got[0].rcpt_lines,
            ["RCPT TO:<a@x.org> NOTIFY=SUCCESS ORCPT=rfc822;o+2Bx@x.org"],
            "{b}"
        );
    }
}

#[tokio::test]
async fn notify_delay_gets_one_delay_warning_per_recipient() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        for r in ["slow@x.org", "quiet@x.org"] {
            beh.rcpt_replies
                .insert(r.into(), "451 4.2.0 mailbox busy".into());
        }
        let server = UpstreamServer::start(beh).await;
        let mut cfg = config(vec![server.upstream_config("up")], vec![]);
        cfg.queue.delay_warning = Duration::from_millis(500);
        cfg.queue.retry_initial = Duration::from_millis(100);
        cfg.queue.retry_max = Duration::from_millis(200);
        let run = Running::start(t.store.clone(), cfg);
        let mut m = new_message("s@example.com", &["slow@x.org", "quiet@x.org"], "body");
        m.received_at = now_ms() - 1_000;
        m.envid = Some("E-DELAY".into());
        m.recipients[0].notify = Some("DELAY,FAILURE".into());
        m.recipients[1].notify = Some("FAILURE".into());
        t.store.enqueue(&m).await.unwrap();
        wait_for(30, "delay warning", async || !server.received().is_empty()).await;
        // Several more attempts: still one warning.
        let rcpts = |s: &UpstreamServer| s.commands().iter().filter(|c| *c == "RCPT").count();
        let before = rcpts(&server);
        wait_for(30, "more attempts", async || rcpts(&server) >= before + 6).await;
        let got = server.received();
        assert_eq!(got.len(), 1, "{b}: one delay warning only");
        let d = text(&got[0].data);
        assert_eq!(got[0].rcpt_to, ["s@example.com"], "{b}");
        assert!(
            d.contains("Subject: Delayed Mail (still being retried)"),
            "{b}: {d}"
        );
        assert!(
            d.contains(
                "Final-Recipient: rfc822; slow@x.org\r\nAction: delayed\r\nStatus: 4.2.0\r\n"
            ),
            "{b}: {d}"
        );
        assert!(d.contains("Will-Retry-Until: "), "{b}: {d}");
        assert!(d.contains("Original-Envelope-Id: E-DELAY"), "{b}: {d}");
        assert!(!d.contains("quiet@x.org"), "{b}: no DELAY asked: {d}");
        assert!(
            d.contains("Content-Type: text/rfc822-headers"),
            "{b}: headers only without RET"
        );
        // Then it goes through: delivered, no further notice.
        server.set(|beh| beh.rcpt_replies.clear());
        wait_for(30, "delivery", async || server.received().len() >= 2).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stop().await;
        assert_eq!(
            server.received().len(),
            2,
            "{b}: the message, no more notices"
        );
    }
}

#[tokio::test]
async fn ret_full_above_the_cap_returns_headers_only() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.rcpt_replies
            .insert("bad@x.org".into(), "550 5.1.1 no such user".into());
        let server = UpstreamServer::start(beh).await;
        let mut cfg = config(vec![server.upstream_config("up")], vec![]);
        cfg.queue.dsn_return_max = 200;
        let run = Running::start(t.store.clone(), cfg);
        let mut small = new_message("s@example.com", &["bad@x.org"], "small body");
        small.dsn_ret = Some("FULL".into());
        let mut big = new_message("t@example.com", &["bad@x.org"], &"big body ".repeat(40));
        big.dsn_ret = Some("FULL".into());
        big.body = Bytes::from(big.body.to_vec());
        t.store.enqueue(&small).await.unwrap();
        t.store.enqueue(&big).await.unwrap();
        wait_for(30, "two DSNs", async || server.received().len() == 2).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        run.stop().await;
        for r in server.received() {
            let d = text(&r.data);
            if r.rcpt_to == ["s@example.com"] {
                assert!(
                    d.contains("Content-Type: message/rfc822") && d.contains("small body"),
                    "{b}: {d}"
                );
            } else {
                assert!(d.contains("Content-Type: text/rfc822-headers"), "{b}: {d}");
                assert!(!d.contains("big body"), "{b}: over the cap: headers only");
            }
        }
    }
}
