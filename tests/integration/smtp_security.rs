//! The security rules of issue #3, each over a real socket against a real
//! server and store (both backends).

use std::time::Duration;

use crate::common::all_stores;
use crate::smtp_harness::{self as h, expect, Raw};

#[tokio::test]
async fn auth_is_neither_offered_nor_accepted_before_tls() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |_| {}).await;
        let (mut c, greeting) = Raw::connect(srv.starttls(), &srv).await;
        assert_eq!(greeting.code, 220);
        let ehlo = c.cmd("EHLO client.test").await;
        assert!(ehlo.text.lines().any(|l| l == "STARTTLS"), "{ehlo:?}");
        assert!(
            !ehlo.text.contains("AUTH"),
            "AUTH offered in clear: {ehlo:?}"
        );
        expect(&c.login().await, 530, "5.7.0");
        expect(&c.cmd("AUTH LOGIN").await, 530, "5.7.0");
        // After TLS: offered, and accepted.
        let ehlo = c.starttls().await;
        assert!(
            ehlo.text.lines().any(|l| l == "AUTH PLAIN LOGIN"),
            "{ehlo:?}"
        );
        assert!(!ehlo.text.contains("STARTTLS"));
        expect(&c.login().await, 235, "2.7.0");
        srv.stop().await;
    }
}

#[tokio::test]
async fn mail_without_auth_is_refused_no_open_relay() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |_| {}).await;
        let (mut c, _) = Raw::connect(srv.starttls(), &srv).await;
        c.cmd("EHLO client.test").await;
        expect(&c.cmd("MAIL FROM:<bob@example.com>").await, 530, "5.7.0");
        c.starttls().await;
        expect(&c.cmd("MAIL FROM:<bob@example.com>").await, 530, "5.7.0");
        expect(&c.cmd("RCPT TO:<x@dest.example>").await, 503, "5.5.1");
        expect(&c.cmd("DATA").await, 503, "5.5.1");
        // Wrong password: 535 5.7.8, same reply for an unknown user.
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let wrong = c.cmd(&format!("AUTH PLAIN {}", b64("\0bob\0wrong"))).await;
        expect(&wrong, 535, "5.7.8");
        let unknown = c
            .cmd(&format!("AUTH PLAIN {}", b64("\0nobody\0wrong")))
            .await;
        assert_eq!(unknown.text, wrong.text);
        // Authenticated, but not as this sender: 553 5.7.1 naming the rule.
        expect(&c.login().await, 235, "2.7.0");
        let r = c.cmd("MAIL FROM:<ceo@other.example>").await;
        expect(&r, 553, "5.7.1");
        assert!(r.text.contains("@example.com"), "{r:?}");
        expect(&c.cmd("MAIL FROM:<>").await, 553, "5.7.1");
        assert!(h::queued(&srv).await.is_empty());
        srv.stop().await;
    }
}

#[tokio::test]
async fn bytes_pipelined_after_starttls_are_discarded() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |_| {}).await;
        let (mut c, _) = Raw::connect(srv.starttls(), &srv).await;
        c.cmd("EHLO client.test").await;
        // CVE-2011-0411: commands injected in the same packet as STARTTLS.
        c.send(b"STARTTLS\r\nMAIL FROM:<bob@example.com>\r\nRCPT TO:<x@dest.example>\r\n")
            .await;
        expect(&c.reply().await, 220, "2.0.0");
        c.upgrade().await;
        // The first reply in TLS is for our EHLO, not for injected commands.
        let ehlo = c.cmd("EHLO client.test").await;
        assert_eq!(ehlo.code, 250);
        assert!(ehlo.text.starts_with("relay.test"), "{ehlo:?}");
        expect(&c.login().await, 235, "2.7.0");
        // No transaction was started by the injected MAIL.
        expect(&c.cmd("RCPT TO:<x@dest.example>").await, 503, "5.5.1");
        srv.stop().await;
    }
}

const SMUGGLING: &[&[u8]] = &[
    b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r",
];

#[tokio::test]
async fn smuggling_sequences_never_make_two_messages() {
    for ts in all_stores().await {
        // Listener 2 (plain, loopback) normalises; listener 0 refuses.
        let srv = h::start(&ts, |c| c.listeners[2].normalize_line_endings = true).await;
        let mut expected_msgs = 0;
        for (normalize, addr) in [(false, srv.starttls()), (true, srv.plain())] {
            for seq in SMUGGLING {
                let (mut c, _) = Raw::connect(addr, &srv).await;
                if normalize {
                    c.cmd("EHLO client.test").await;
                } else {
                    c.starttls().await;
                }
                expect(&c.login().await, 235, "2.7.0");
                expect(&c.cmd("MAIL FROM:<bob@example.com>").await, 250, "2.1.0");
                expect(&c.cmd("RCPT TO:<x@dest.example>").await, 250, "2.1.5");
                expect(&c.cmd("DATA").await, 354, "2.0.0");
                let mut data = b"Subject: one\r\n\r\nfirst".to_vec();
                data.extend_from_slice(seq);
                data.extend_from_slice(
                    b"MAIL FROM:<bob@example.com>\r\nRCPT TO:<evil@dest.example>\r\nDATA\r\n\
                      Subject: two\r\n\r\nsmuggled\r\n.\r\n",
                );
                c.send(&data).await;
                let r = c.reply().await;
                if normalize {
                    expect(&r, 250, "2.0.0");
                    expected_msgs += 1;
                } else {
                    expect(&r, 550, "5.6.0");
                }
                // Exactly one reply for the whole DATA: nothing else pending.
                expect(&c.cmd("NOOP").await, 250, "2.0.0");
                let q = h::queued(&srv).await;
                assert_eq!(q.len(), expected_msgs, "{seq:?} normalize={normalize}");
                for m in &q {
                    assert_eq!(m.recipients.len(), 1, "smuggled recipient via {seq:?}");
                    let bare = m.body.iter().enumerate().any(|(i, &b)| {
                        (b == b'\n' && (i == 0 || m.body[i - 1] != b'\r'))
                            || (b == b'\r' && m.body.get(i + 1) != Some(&b'\n'))
                    });
                    assert!(!bare, "stored body keeps a bare CR/LF");
                }
            }
        }
        srv.stop().await;
    }
}

#[tokio::test]
async fn long_lines_nul_bytes_and_unknown_commands_get_precise_5xx() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |_| {}).await;
        let (mut c, _) = Raw::connect(srv.starttls(), &srv).await;
        let mut long = vec![b'A'; 100 * 1024];
        long.extend_from_slice(b"\r\n");
        c.send(&long).await;
        expect(&c.reply().await, 500, "5.5.2");
        expect(&c.cmd("NO\0OP").await, 500, "5.5.2");
        expect(&c.cmd("XYZZY").await, 500, "5.5.1");
        expect(
            &c.cmd(&format!("NOOP {}", "x".repeat(600))).await,
            500,
            "5.5.2",
        );
        // The session survives all of that.
        expect(&c.cmd("NOOP").await, 250, "2.0.0");
        expect(&c.cmd("VRFY bob").await, 252, "2.1.5");
        expect(&c.cmd("HELP").await, 214, "2.0.0");
        c.starttls().await;
        c.login().await;
        c.cmd("MAIL FROM:<bob@example.com>").await;
        c.cmd("RCPT TO:<x@dest.example>").await;
        c.cmd("DATA").await;
        // A 999-octet text line is refused after the end of data.
        let body = format!("Subject: x\r\n\r\n{}\r\n.\r\n", "y".repeat(999));
        c.send(body.as_bytes()).await;
        expect(&c.reply().await, 550, "5.6.0");
        assert!(h::queued(&srv).await.is_empty());
        srv.stop().await;
    }
}

#[tokio::test]
async fn size_and_recipient_limits() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |c| {
            c.max_message_size = 2000;
            c.max_recipients = 2;
        })
        .await;
        let (mut c, _) = Raw::connect_tls(srv.implicit(), &srv).await;
        assert!(c.cmd("EHLO client.test").await.text.contains("SIZE 2000"));
        c.login().await;
        expect(
            &c.cmd("MAIL FROM:<bob@example.com> SIZE=5000").await,
            552,
            "5.3.4",
        );
        expect(&c.cmd("MAIL FROM:<bob@example.com>").await, 250, "2.1.0");
        expect(&c.cmd("RCPT TO:<a@dest.example>").await, 250, "2.1.5");
        expect(&c.cmd("RCPT TO:<b@dest.example>").await, 250, "2.1.5");
        expect(&c.cmd("RCPT TO:<c@dest.example>").await, 452, "4.5.3");
        expect(&c.cmd("DATA").await, 354, "2.0.0");
        let big = format!("{}.\r\n", "0123456789012345678\r\n".repeat(200));
        c.send(big.as_bytes()).await;
        expect(&c.reply().await, 552, "5.3.4");
        assert!(h::queued(&srv).await.is_empty(), "nothing stored");
        // BDAT over the limit: the chunk is consumed, then refused.
        c.cmd("MAIL FROM:<bob@example.com>").await;
        c.cmd("RCPT TO:<a@dest.example>").await;
        let mut chunk = b"BDAT 3000 LAST\r\n".to_vec();
        chunk.extend(b"xxxxxxxx\r\n".repeat(300));
        c.send(&chunk).await;
        expect(&c.reply().await, 552, "5.3.4");
        expect(&c.cmd("NOOP").await, 250, "2.0.0");
        // A good BDAT message goes through.
        c.cmd("MAIL FROM:<bob@example.com>").await;
        c.cmd("RCPT TO:<a@dest.example>").await;
        c.send(b"BDAT 9\r\nSubject: ").await;
        expect(&c.reply().await, 250, "2.0.0");
        c.send(b"BDAT 6 LAST\r\nhi\r\n\r\n").await;
        expect(&c.reply().await, 250, "2.0.0");
        let q = h::queued(&srv).await;
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].body, b"Subject: hi\r\n\r\n");
        srv.stop().await;
    }
}

#[tokio::test]
async fn pipelined_transaction_answers_in_order() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |_| {}).await;
        let (mut c, _) = Raw::connect_tls(srv.implicit(), &srv).await;
        c.cmd("EHLO client.test").await;
        c.login().await;
        c.send(
            b"MAIL FROM:<bob@example.com> ENVID=abc RET=HDRS\r\nRCPT TO:<bad>\r\n\
              RCPT TO:<a@dest.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@dest.example\r\nDATA\r\n",
        )
        .await;
        expect(&c.reply().await, 250, "2.1.0");
        expect(&c.reply().await, 501, "5.1.3");
        expect(&c.reply().await, 250, "2.1.5");
        expect(&c.reply().await, 354, "2.0.0");
        c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
        let queued = c.reply().await;
        expect(&queued, 250, "2.0.0");
        expect(&c.reply().await, 221, "2.0.0");
        let q = h::queued(&srv).await;
        assert_eq!(q.len(), 1);
        assert!(queued.text.contains(&q[0].id), "{queued:?}");
        assert_eq!(q[0].envid.as_deref(), Some("abc"));
        assert_eq!(q[0].dsn_ret.as_deref(), Some("HDRS"));
        assert_eq!(
            q[0].recipients,
            [(
                "a@dest.example".to_string(),
                Some("SUCCESS,FAILURE".to_string()),
                Some("rfc822;a@dest.example".to_string())
            )]
        );
        srv.stop().await;
    }
}

#[tokio::test]
async fn idle_client_gets_421_4_4_2_and_error_cap_closes() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |c| {
            c.command_timeout = Duration::from_millis(500);
            c.data_timeout = Duration::from_millis(500);
            c.max_errors = 3;
        })
        .await;
        let (mut c, _) = Raw::connect(srv.starttls(), &srv).await;
        let r = c
            .try_reply(Duration::from_secs(5))
            .await
            .expect("421 on idle");
        expect(&r, 421, "4.4.2");
        assert!(c.closed(Duration::from_secs(2)).await);

        // Stalled in the middle of DATA: the data timeout applies.
        let (mut c, _) = Raw::connect_tls(srv.implicit(), &srv).await;
        c.cmd("EHLO client.test").await;
        c.login().await;
        c.cmd("MAIL FROM:<bob@example.com>").await;
        c.cmd("RCPT TO:<x@dest.example>").await;
        expect(&c.cmd("DATA").await, 354, "2.0.0");
        c.send(b"Subject: half a message\r\n").await;
        let r = c
            .try_reply(Duration::from_secs(5))
            .await
            .expect("421 in DATA");
        expect(&r, 421, "4.4.2");
        assert!(h::queued(&srv).await.is_empty());

        let (mut c, _) = Raw::connect(srv.starttls(), &srv).await;
        for _ in 0..3 {
            expect(&c.cmd("BOGUS").await, 500, "5.5.1");
        }
        expect(&c.cmd("BOGUS").await, 421, "4.7.0");
        assert!(c.closed(Duration::from_secs(2)).await);
        srv.stop().await;
    }
}

#[tokio::test]
async fn connection_caps_and_proxy_header_from_trusted_peer() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |c| {
            c.max_connections_per_ip = 1;
            c.proxy_trusted = vec!["127.0.0.0/8".parse().unwrap()];
            c.listeners[2].proxy_protocol = true;
        })
        .await;
        let (_keep, g) = Raw::connect(srv.starttls(), &srv).await;
        assert_eq!(g.code, 220);
        let (mut second, g) = Raw::connect(srv.starttls(), &srv).await;
        expect(&g, 421, "4.7.0");
        assert!(second.closed(Duration::from_secs(2)).await);

        // Behind a trusted proxy, the cap applies to the real client address.
        let proxied = |src: &str| format!("PROXY TCP4 {src} 127.0.0.1 40000 587\r\n");
        let mut conns = Vec::new();
        for (src, ok) in [
            ("203.0.113.1", true),
            ("203.0.113.2", true),
            ("203.0.113.1", false),
        ] {
            let mut tcp = tokio::net::TcpStream::connect(srv.plain()).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tcp.write_all(proxied(src).as_bytes()).await.unwrap();
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let line = String::from_utf8_lossy(&buf[..n]).to_string();
            assert_eq!(line.starts_with("220 "), ok, "{src}: {line}");
            assert_eq!(line.starts_with("421 4.7.0"), !ok, "{src}: {line}");
            conns.push(tcp);
        }
        srv.stop().await;

        // The global cap counts every listener.
        let srv = h::start(&ts, |c| c.max_connections = 1).await;
        let (_keep, g) = Raw::connect(srv.starttls(), &srv).await;
        assert_eq!(g.code, 220);
        let (mut over, g) = Raw::connect(srv.plain(), &srv).await;
        expect(&g, 421, "4.7.0");
        assert!(over.closed(Duration::from_secs(2)).await);
        srv.stop().await;
    }
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_421_4_3_2() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |_| {}).await;
        let (mut c, _) = Raw::connect(srv.starttls(), &srv).await;
        c.cmd("EHLO client.test").await;
        srv.shutdown.cancel();
        let r = c
            .try_reply(Duration::from_secs(5))
            .await
            .expect("421 at shutdown");
        expect(&r, 421, "4.3.2");
        assert!(c.closed(Duration::from_secs(2)).await);
        let _ = tokio::time::timeout(Duration::from_secs(10), srv.handle).await;
    }
}

/// Limits refusing according to flags, to check where each refusal lands.
#[derive(Default)]
struct Flaky {
    connection: bool,
    auth: bool,
    tarpit: Duration,
    session: bool,
    message: bool,
}

fn refusal(
    scope: postgate::smtp::ports::LimitScope,
    kind: postgate::smtp::ports::LimitKind,
    reason: &str,
) -> postgate::smtp::ports::LimitRefusal {
    postgate::smtp::ports::LimitRefusal {
        scope,
        kind,
        retry_after: Duration::from_secs(42),
        reason: reason.into(),
    }
}

#[async_trait::async_trait]
impl postgate::smtp::ports::SessionLimits for Flaky {
    async fn connection(
        &self,
        _ip: std::net::IpAddr,
    ) -> Result<(), postgate::smtp::ports::LimitRefusal> {
        if self.connection {
            return Err(refusal(
                postgate::smtp::ports::LimitScope::Ip,
                postgate::smtp::ports::LimitKind::Connections,
                "connection rate exceeded",
            ));
        }
        Ok(())
    }
    async fn auth_allowed(
        &self,
        _ip: std::net::IpAddr,
        _u: &str,
    ) -> Result<Duration, postgate::smtp::ports::LimitRefusal> {
        if self.auth {
            return Err(refusal(
                postgate::smtp::ports::LimitScope::Ip,
                postgate::smtp::ports::LimitKind::AuthFailures,
                "too many failed logins",
            ));
        }
        Ok(self.tarpit)
    }
    async fn auth_result(&self, _ip: std::net::IpAddr, _u: &str, _ok: bool) {}
    async fn session_start(
        &self,
        _i: &postgate::auth::Identity,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, postgate::smtp::ports::LimitRefusal> {
        if self.session {
            return Err(refusal(
                postgate::smtp::ports::LimitScope::User,
                postgate::smtp::ports::LimitKind::Sessions,
                "too many concurrent sessions",
            ));
        }
        Ok(Box::new(()))
    }
    async fn mail_allowed(
        &self,
        _i: &postgate::auth::Identity,
    ) -> Result<(), postgate::smtp::ports::LimitRefusal> {
        if self.message {
            return Err(refusal(
                postgate::smtp::ports::LimitScope::User,
                postgate::smtp::ports::LimitKind::Messages,
                "message rate exceeded",
            ));
        }
        Ok(())
    }
    async fn rcpt_allowed(
        &self,
        _i: &postgate::auth::Identity,
        _n: u32,
    ) -> Result<(), postgate::smtp::ports::LimitRefusal> {
        Ok(())
    }
    async fn message_committed(&self, _i: &postgate::auth::Identity, _n: u32) {}
}

#[tokio::test]
async fn limit_refusals_reach_the_client_with_their_codes() {
    use std::sync::Arc;
    let cases: [(Flaky, &str); 4] = [
        (
            Flaky {
                connection: true,
                ..Default::default()
            },
            "connection",
        ),
        (
            Flaky {
                auth: true,
                ..Default::default()
            },
            "auth",
        ),
        (
            Flaky {
                session: true,
                ..Default::default()
            },
            "session",
        ),
        (
            Flaky {
                message: true,
                ..Default::default()
            },
            "message",
        ),
    ];
    for (limits, which) in cases {
        let db = crate::common::sqlite_store().await;
        let srv = h::start_with_limits(&db, Arc::new(limits), |_| {}).await;
        let (mut c, greeting) = Raw::connect_tls(srv.implicit(), &srv).await;
        if which == "connection" {
            expect(&greeting, 421, "4.7.0");
            assert!(greeting.text.contains("try again in 42 s"), "{greeting:?}");
            assert!(c.closed(Duration::from_secs(2)).await);
            srv.stop().await;
            continue;
        }
        c.cmd("EHLO client.test").await;
        let auth = c.login().await;
        match which {
            "auth" => expect(&auth, 454, "4.7.0"),
            "session" => {
                expect(&auth, 421, "4.7.0");
                assert!(c.closed(Duration::from_secs(2)).await);
            }
            _ => {
                expect(&auth, 235, "2.7.0");
                // Checked at MAIL (issue 12), never a 4xx to DATA itself.
                let r = c.cmd("MAIL FROM:<bob@example.com>").await;
                expect(&r, 451, "4.7.1");
                assert!(r.text.contains("message rate exceeded, try again in 42 s"));
            }
        }
        srv.stop().await;
    }
    // Tarpit: the reply to AUTH waits for the delay the limits ask for.
    let db = crate::common::sqlite_store().await;
    let tarpit = Flaky {
        tarpit: Duration::from_millis(600),
        ..Default::default()
    };
    let srv = h::start_with_limits(&db, Arc::new(tarpit), |_| {}).await;
    let (mut c, _) = Raw::connect_tls(srv.implicit(), &srv).await;
    c.cmd("EHLO client.test").await;
    let t = std::time::Instant::now();
    expect(&c.login().await, 235, "2.7.0");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    srv.stop().await;
}
