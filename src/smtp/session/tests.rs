//! Session tests with fake auth, intake and limits; no sockets.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;

use super::*;
use crate::intake::{IntakeError, Submission};
use crate::smtp::ports::AuthOutcome;
use crate::smtp::ports::{LimitKind, LimitRefusal, LimitScope, NoLimits};

struct FakeAuth;

#[async_trait]
impl Authenticator for FakeAuth {
    async fn authenticate(&self, username: &str, password: &str, _ip: IpAddr) -> AuthOutcome {
        match (username, password) {
            ("bob", "pw") => AuthOutcome::Ok(Identity {
                user_id: 7,
                username: "bob".into(),
                credential_id: 3,
                credential_label: "laptop".into(),
                senders: vec!["@example.com".into()],
                limits: Default::default(),
                user_limits: Default::default(),
                normalize_line_endings: None,
                credential_tag: [0; 32],
            }),
            ("down", _) => AuthOutcome::Unavailable,
            _ => AuthOutcome::Failed,
        }
    }
}

#[derive(Default)]
struct FakeIntake {
    got: Mutex<Vec<Submission>>,
    fail: bool,
    rejected: Mutex<Vec<crate::smtp::ports::Rejected>>,
}

#[async_trait]
impl Intake for FakeIntake {
    async fn submit(&self, s: Submission) -> Result<String, IntakeError> {
        if self.fail {
            return Err(IntakeError::QueueUnavailable("down".into()));
        }
        let mut got = self.got.lock().unwrap();
        got.push(s);
        Ok(format!("Q{}", got.len()))
    }

    fn rejected(&self, r: crate::smtp::ports::Rejected) {
        self.rejected.lock().unwrap().push(r);
    }
}

struct RefuseMessages;

#[async_trait]
impl SessionLimits for RefuseMessages {
    async fn connection(&self, _ip: IpAddr) -> Result<(), LimitRefusal> {
        Ok(())
    }
    async fn auth_allowed(&self, _ip: IpAddr, _u: &str) -> Result<Duration, LimitRefusal> {
        Ok(Duration::ZERO)
    }
    async fn auth_result(&self, _ip: IpAddr, _u: &str, _ok: bool) {}
    async fn session_start(
        &self,
        _i: &Identity,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, LimitRefusal> {
        Ok(Box::new(()))
    }
    async fn mail_allowed(&self, _i: &Identity) -> Result<(), LimitRefusal> {
        Err(LimitRefusal {
            scope: LimitScope::User,
            kind: LimitKind::Messages,
            retry_after: Duration::from_secs(30),
            reason: "message rate exceeded".into(),
        })
    }
    async fn rcpt_allowed(&self, _i: &Identity, _n: u32) -> Result<(), LimitRefusal> {
        Ok(())
    }
    async fn message_committed(&self, _i: &Identity, _n: u32) {}
}

fn settings() -> SessionSettings {
    SessionSettings {
        hostname: "relay.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 5,
        starttls_available: true,
        auth_without_tls: false,
        normalize_line_endings: false,
        auth_failure_delay: Duration::ZERO,
        metrics: SessionMetrics::default(),
        trusted: None,
        memory: crate::smtp::budget::MemoryBudget::new(1 << 20),
    }
}

fn tls() -> TlsInfo {
    TlsInfo {
        protocol: "TLSv1_3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

fn session_with(
    settings: SessionSettings,
    intake: Arc<FakeIntake>,
    limits: Arc<dyn SessionLimits>,
    tls: Option<TlsInfo>,
) -> Session {
    Session::new(
        "s1".into(),
        Arc::new(settings),
        Ports {
            authenticator: Arc::new(FakeAuth),
            intake,
            limits,
        },
        "192.0.2.1".parse().unwrap(),
        tls,
    )
}

fn tls_session() -> (Session, Arc<FakeIntake>) {
    let intake = Arc::new(FakeIntake::default());
    let s = session_with(settings(), intake.clone(), Arc::new(NoLimits), Some(tls()));
    (s, intake)
}

/// Feeds `input` and returns every reply, in order.
async fn feed(s: &mut Session, input: &[u8]) -> Vec<Reply> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(r) = s.advance(&mut buf).await {
        let close = r.close;
        out.push(r);
        if close || s.starttls {
            break;
        }
    }
    out
}

async fn codes(s: &mut Session, input: &str) -> Vec<(u16, String)> {
    feed(s, input.as_bytes())
        .await
        .into_iter()
        .map(|r| (r.code, r.enhanced))
        .collect()
}

fn c(code: u16, enh: &str) -> (u16, String) {
    (code, enh.to_string())
}

fn plain(user: &str, pw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pw}"))
}

async fn login(s: &mut Session) {
    let r = feed(
        s,
        format!("EHLO c.test\r\nAUTH PLAIN {}\r\n", plain("bob", "pw")).as_bytes(),
    )
    .await;
    assert_eq!(r[1].code, 235, "{r:?}");
}

#[tokio::test]
async fn ehlo_offers_starttls_before_tls_and_auth_only_after() {
    let intake = Arc::new(FakeIntake::default());
    let mut s = session_with(settings(), intake, Arc::new(NoLimits), None);
    let r = feed(&mut s, b"EHLO c.test\r\n").await;
    let text = &r[0].text;
    for cap in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "STARTTLS",
    ] {
        assert!(text.lines().any(|l| l == cap), "{cap} missing: {text}");
    }
    assert!(!text.contains("AUTH"), "AUTH offered before TLS: {text}");
    // AUTH before TLS: refused even though not offered (RFC 3207 §4).
    assert_eq!(
        codes(&mut s, &format!("AUTH PLAIN {}\r\n", plain("bob", "pw"))).await,
        [c(530, "5.7.0")]
    );
    assert_eq!(
        codes(&mut s, "MAIL FROM:<a@example.com>\r\n").await,
        [c(530, "5.7.0")]
    );
    assert_eq!(codes(&mut s, "STARTTLS\r\n").await, [c(220, "2.0.0")]);
    assert!(s.take_starttls());
    s.on_tls(tls());
    // Back to the state before EHLO (RFC 3207 §4.2).
    assert_eq!(
        codes(&mut s, "MAIL FROM:<a@example.com>\r\n").await,
        [c(503, "5.5.1")]
    );
    let r = feed(&mut s, b"EHLO c.test\r\n").await;
    assert!(r[0].text.lines().any(|l| l == "AUTH PLAIN LOGIN"));
    assert!(!r[0].text.contains("STARTTLS"));
    assert_eq!(codes(&mut s, "STARTTLS\r\n").await, [c(503, "5.5.1")]);
}

#[tokio::test]
async fn starttls_stops_processing_pipelined_input() {
    let intake = Arc::new(FakeIntake::default());
    let mut s = session_with(settings(), intake, Arc::new(NoLimits), None);
    let mut buf = BytesMut::from(&b"EHLO a\r\nSTARTTLS\r\nMAIL FROM:<x@example.com>\r\n"[..]);
    assert_eq!(s.advance(&mut buf).await.unwrap().code, 250);
    assert_eq!(s.advance(&mut buf).await.unwrap().code, 220);
    assert!(s.take_starttls());
    // The server discards `buf` here; the injected MAIL is never seen.
    assert_eq!(&buf[..], b"MAIL FROM:<x@example.com>\r\n");
}

#[tokio::test]
async fn mail_without_auth_is_refused() {
    let (mut s, _) = tls_session();
    assert_eq!(
        codes(
            &mut s,
            "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n"
        )
        .await,
        [
            c(250, ""),
            c(530, "5.7.0"),
            c(503, "5.5.1"),
            c(503, "5.5.1")
        ]
    );
}

#[tokio::test]
async fn full_transaction_pipelined_reaches_intake_exactly() {
    let (mut s, intake) = tls_session();
    login(&mut s).await;
    let r = codes(
        &mut s,
        "MAIL FROM:<Bob@Example.com> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=e1\r\n\
         RCPT TO:<x@y.example> NOTIFY=FAILURE\r\nRCPT TO:<z@y.example>\r\nDATA\r\n\
         Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        r,
        [
            c(250, "2.1.0"),
            c(250, "2.1.5"),
            c(250, "2.1.5"),
            c(354, "2.0.0"),
            c(250, "2.0.0"),
            c(221, "2.0.0")
        ]
    );
    let got = intake.got.lock().unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.sender, "Bob@Example.com");
    assert_eq!(m.recipients.len(), 2);
    assert_eq!(m.recipients[0].notify.as_deref(), Some("FAILURE"));
    assert_eq!(&m.body[..], b"Subject: hi\r\n\r\n.dot\r\n");
    assert_eq!(m.identity.credential_label, "laptop");
    assert_eq!(m.client.auth_mechanism, "PLAIN");
    assert_eq!(m.client.tls, Some(tls()));
    assert_eq!(
        (m.ret.as_deref(), m.envid.as_deref(), m.body_type),
        (Some("HDRS"), Some("e1"), Some("8BITMIME"))
    );
}

#[tokio::test]
async fn sender_rules() {
    let (mut s, _) = tls_session();
    login(&mut s).await;
    let r = feed(&mut s, b"MAIL FROM:<ceo@other.example>\r\n").await;
    assert_eq!((r[0].code, r[0].enhanced.as_str()), (553, "5.7.1"));
    assert!(r[0].text.contains("@example.com"), "{}", r[0].text);
    assert_eq!(codes(&mut s, "MAIL FROM:<>\r\n").await, [c(553, "5.7.1")]);
    assert_eq!(
        codes(&mut s, "MAIL FROM:<a@sub.example.com>\r\n").await,
        [c(553, "5.7.1")]
    );
    assert_eq!(
        codes(&mut s, "MAIL FROM:<ü@example.com>\r\n").await,
        [c(553, "5.6.7")]
    );
    assert_eq!(
        codes(&mut s, "MAIL FROM:<ü@example.com> SMTPUTF8\r\n").await,
        [c(250, "2.1.0")]
    );
}

#[tokio::test]
async fn size_limits_at_mail_and_while_reading() {
    let (mut s, intake) = tls_session();
    login(&mut s).await;
    assert_eq!(
        codes(&mut s, "MAIL FROM:<a@example.com> SIZE=1001\r\n").await,
        [c(552, "5.3.4")]
    );
    let big = format!(
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n{}\r\n.\r\nNOOP\r\n",
        "0123456789\r\n".repeat(100)
    );
    assert_eq!(
        codes(&mut s, &big).await,
        [
            c(250, "2.1.0"),
            c(250, "2.1.5"),
            c(354, "2.0.0"),
            c(552, "5.3.4"),
            c(250, "2.0.0")
        ]
    );
    assert!(intake.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn recipient_cap() {
    let (mut s, intake) = tls_session();
    login(&mut s).await;
    let r = codes(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<1@y.example>\r\nRCPT TO:<2@y.example>\r\n\
         RCPT TO:<3@y.example>\r\nRCPT TO:<4@y.example>\r\n",
    )
    .await;
    assert_eq!(r.last().unwrap(), &c(452, "4.5.3"));
    // The refused RCPT is reported for its `rejected` event, with the rule.
    let rejected = intake.rejected.lock().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let e = &rejected[0];
    assert_eq!(
        (e.sender.as_str(), e.recipients.as_slice(), e.rule.as_str()),
        (
            "a@example.com",
            &["4@y.example".to_string()][..],
            "max_recipients"
        )
    );
    assert!(e.reply.starts_with("452 4.5.3 "), "{}", e.reply);
}

#[tokio::test]
async fn refusals_at_mail_and_of_the_content_are_reported_with_their_rule() {
    let (mut s, intake) = tls_session();
    login(&mut s).await;
    let r = codes(
        &mut s,
        "MAIL FROM:<x@evil.example>\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<r@y.example>\r\n\
         DATA\r\nbare\nLF\r\n.\r\n",
    )
    .await;
    assert_eq!(
        r,
        [
            c(553, "5.7.1"),
            c(250, "2.1.0"),
            c(250, "2.1.5"),
            c(354, "2.0.0"),
            c(550, "5.6.0")
        ]
    );
    let rejected = intake.rejected.lock().unwrap();
    let got: Vec<(&str, &str, usize)> = rejected
        .iter()
        .map(|e| (e.rule.as_str(), e.sender.as_str(), e.recipients.len()))
        .collect();
    assert_eq!(
        got,
        [
            ("sender", "x@evil.example", 0),
            ("bare_line_ending", "a@example.com", 1)
        ]
    );
    assert!(rejected.iter().all(|e| e.username == "bob"), "{rejected:?}");
}

#[tokio::test]
async fn smuggling_makes_one_refused_message_or_one_normalised_message() {
    let payload = "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n\
                   one\r\n\n.\nMAIL FROM:<a@example.com>\r\nRCPT TO:<evil@y.example>\r\nDATA\r\ntwo\r\n.\r\n";
    for (normalize, expect) in [(false, c(550, "5.6.0")), (true, c(250, "2.0.0"))] {
        let intake = Arc::new(FakeIntake::default());
        let mut st = settings();
        st.normalize_line_endings = normalize;
        let mut s = session_with(st, intake.clone(), Arc::new(NoLimits), Some(tls()));
        login(&mut s).await;
        let r = codes(&mut s, payload).await;
        assert_eq!(
            r,
            [c(250, "2.1.0"), c(250, "2.1.5"), c(354, "2.0.0"), expect]
        );
        let got = intake.got.lock().unwrap();
        assert!(got.len() <= 1);
        for m in got.iter() {
            assert_eq!(m.recipients.len(), 1, "smuggled recipient");
            assert!(!m.body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        }
    }
}

#[tokio::test]
async fn bdat_chunks_and_refused_chunk_is_consumed() {
    let (mut s, intake) = tls_session();
    login(&mut s).await;
    // A BDAT without a transaction: the chunk is read (not run as commands).
    assert_eq!(
        codes(&mut s, "BDAT 6\r\nQUIT\r\nNOOP\r\n").await,
        [c(503, "5.5.1"), c(250, "2.0.0")]
    );
    let r = codes(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@y.example>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\nd\r\n",
    )
    .await;
    assert_eq!(
        r,
        [
            c(250, "2.1.0"),
            c(250, "2.1.5"),
            c(250, "2.0.0"),
            c(250, "2.0.0")
        ]
    );
    assert_eq!(&intake.got.lock().unwrap()[0].body[..], b"ab\r\ncd\r\n");
}

/// Checks passwords as slowly as a store would: one argon2 verification
/// (100 ms) per credential; "carol" has three, unknown users get one dummy.
struct SlowAuth;

#[async_trait]
impl Authenticator for SlowAuth {
    async fn authenticate(&self, username: &str, password: &str, ip: IpAddr) -> AuthOutcome {
        let credentials = if username == "carol" { 3 } else { 1 };
        tokio::time::sleep(Duration::from_millis(100) * credentials).await;
        match (username, password) {
            ("carol", "pw3") => FakeAuth.authenticate("bob", "pw", ip).await,
            _ => AuthOutcome::Failed,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failed_auth_is_answered_at_one_deadline_whatever_was_checked() {
    let mut st = settings();
    st.auth_failure_delay = Duration::from_secs(1);
    let mut s = Session::new(
        "s1".into(),
        Arc::new(st),
        Ports {
            authenticator: Arc::new(SlowAuth),
            intake: Arc::new(FakeIntake::default()),
            limits: Arc::new(NoLimits),
        },
        "192.0.2.1".parse().unwrap(),
        Some(tls()),
    );
    feed(&mut s, b"EHLO c\r\n").await;
    let mut answered = Vec::new();
    for (user, pw) in [("nobody", "x"), ("carol", "wrong"), ("carol", "pw3")] {
        let started = tokio::time::Instant::now();
        let r = feed(
            &mut s,
            format!("AUTH PLAIN {}\r\n", plain(user, pw)).as_bytes(),
        )
        .await;
        answered.push((r[0].code, started.elapsed().as_millis()));
    }
    // Unknown user (one check) and a user with three credentials (three
    // checks) fail at the same moment; a success is not delayed.
    assert_eq!(answered, [(535, 1000), (535, 1000), (235, 300)]);
}

#[tokio::test]
async fn auth_login_cancel_bad_base64_and_wrong_password() {
    let mut st = settings();
    st.max_errors = 50;
    let intake = Arc::new(FakeIntake::default());
    let mut s = session_with(st, intake, Arc::new(NoLimits), Some(tls()));
    let b = |x: &str| base64::engine::general_purpose::STANDARD.encode(x);
    assert_eq!(codes(&mut s, "AUTH PLAIN\r\n").await, [c(503, "5.5.1")]);
    feed(&mut s, b"EHLO c\r\n").await;
    assert_eq!(
        codes(&mut s, "AUTH LOGIN\r\n*\r\n").await,
        [c(334, ""), c(501, "5.7.0")]
    );
    assert_eq!(codes(&mut s, "AUTH PLAIN !!!\r\n").await, [c(501, "5.5.2")]);
    assert_eq!(codes(&mut s, "AUTH CRAM-MD5\r\n").await, [c(504, "5.5.4")]);
    let wrong = format!("AUTH LOGIN\r\n{}\r\n{}\r\n", b("bob"), b("nope"));
    let r = feed(&mut s, wrong.as_bytes()).await;
    assert_eq!(
        r.iter().map(|r| r.code).collect::<Vec<_>>(),
        [334, 334, 535]
    );
    assert_eq!(r[2].enhanced, "5.7.8");
    let unknown = feed(
        &mut s,
        format!("AUTH PLAIN {}\r\n", plain("nobody", "pw")).as_bytes(),
    )
    .await;
    assert_eq!(
        unknown[0].to_wire(),
        r[2].to_wire(),
        "no hint whether the user exists"
    );
    assert_eq!(
        codes(&mut s, &format!("AUTH PLAIN {}\r\n", plain("down", "x"))).await,
        [c(454, "4.7.0")]
    );
    let ok = format!("AUTH LOGIN {}\r\n{}\r\n", b("bob"), b("pw"));
    assert_eq!(codes(&mut s, &ok).await, [c(334, ""), c(235, "2.7.0")]);
    assert_eq!(
        codes(&mut s, &format!("AUTH PLAIN {}\r\n", plain("bob", "pw"))).await,
        [c(503, "5.5.1")]
    );
}

#[tokio::test]
async fn rate_limited_message_and_store_failure() {
    let intake = Arc::new(FakeIntake::default());
    let mut s = session_with(settings(), intake, Arc::new(RefuseMessages), Some(tls()));
    login(&mut s).await;
    let r = feed(
        &mut s,
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n",
    )
    .await;
    // Refused at MAIL (issue 12); RCPT and DATA then lack a transaction.
    assert_eq!((r[0].code, r[0].enhanced.as_str()), (451, "4.7.1"));
    assert!(r[0].text.contains("try again in 30 s"));
    assert_eq!((r[1].code, r[2].code), (503, 503));

    let intake = Arc::new(FakeIntake {
        fail: true,
        ..Default::default()
    });
    let mut s = session_with(settings(), intake, Arc::new(NoLimits), Some(tls()));
    login(&mut s).await;
    let r = codes(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@y.example>\r\nDATA\r\nx\r\n.\r\n",
    )
    .await;
    assert_eq!(r.last().unwrap(), &c(451, "4.3.0"));
}

#[tokio::test]
async fn small_commands_and_errors() {
    let (mut s, _) = tls_session();
    assert_eq!(
        codes(
            &mut s,
            "NOOP\r\nVRFY bob\r\nHELP\r\nRSET\r\nEXPN x\r\nFOO\r\nNO\0OP\r\n"
        )
        .await,
        [
            c(250, "2.0.0"),
            c(252, "2.1.5"),
            c(214, "2.0.0"),
            c(250, "2.0.0"),
            c(502, "5.5.1"),
            c(500, "5.5.1"),
            c(500, "5.5.2")
        ]
    );
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(100_000));
    assert_eq!(
        codes(&mut s, &long).await,
        [c(500, "5.5.2"), c(250, "2.0.0")]
    );
    assert_eq!(
        codes(&mut s, "DATA\r\nDATA\r\n").await,
        [c(503, "5.5.1"), c(421, "4.7.0")],
        "error cap reached"
    );
}

#[tokio::test]
async fn quit_closes() {
    let (mut s, _) = tls_session();
    let r = feed(&mut s, b"QUIT\r\nNOOP\r\n").await;
    assert_eq!(r.len(), 1);
    assert!(r[0].close);
}

#[tokio::test]
async fn loopback_plain_listener_may_allow_auth() {
    let intake = Arc::new(FakeIntake::default());
    let mut st = settings();
    st.auth_without_tls = true;
    st.starttls_available = false;
    let mut s = session_with(st, intake, Arc::new(NoLimits), None);
    let r = feed(&mut s, b"EHLO c\r\n").await;
    assert!(r[0].text.contains("AUTH PLAIN LOGIN") && !r[0].text.contains("STARTTLS"));
    login(&mut s).await;
}

/// Locks out user `eve` at AUTH and refuses the first RCPT on a recipient quota.
#[derive(Default)]
struct Strict {
    rcpt_checks: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl SessionLimits for Strict {
    async fn connection(&self, _ip: IpAddr) -> Result<(), LimitRefusal> {
        Ok(())
    }
    async fn auth_allowed(&self, _ip: IpAddr, u: &str) -> Result<Duration, LimitRefusal> {
        if u != "eve" {
            return Ok(Duration::ZERO);
        }
        Err(LimitRefusal {
            scope: LimitScope::User,
            kind: LimitKind::AuthFailures,
            retry_after: Duration::from_secs(60),
            reason: "too many failed logins for user eve".into(),
        })
    }
    async fn auth_result(&self, _ip: IpAddr, _u: &str, _ok: bool) {}
    async fn session_start(
        &self,
        _i: &Identity,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, LimitRefusal> {
        Ok(Box::new(()))
    }
    async fn mail_allowed(&self, _i: &Identity) -> Result<(), LimitRefusal> {
        Ok(())
    }
    async fn rcpt_allowed(&self, _i: &Identity, _n: u32) -> Result<(), LimitRefusal> {
        use std::sync::atomic::Ordering;
        if self.rcpt_checks.fetch_add(1, Ordering::Relaxed) > 0 {
            return Ok(());
        }
        Err(LimitRefusal {
            scope: LimitScope::Credential,
            kind: LimitKind::Recipients,
            retry_after: Duration::from_secs(30),
            reason: "recipient quota for credential laptop of user bob exceeded (1 per day)".into(),
        })
    }
    async fn message_committed(&self, _i: &Identity, _n: u32) {}
}

#[tokio::test]
async fn every_auth_outcome_and_refusal_is_counted_once() {
    use crate::metrics::{Metrics, MetricsOptions};
    let metrics = Arc::new(Metrics::new(&MetricsOptions::default()));
    let mut st = settings();
    st.max_errors = 50;
    st.metrics = SessionMetrics::new(metrics.clone());
    let b = |x: &str| base64::engine::general_purpose::STANDARD.encode(x);

    let intake = Arc::new(FakeIntake::default());
    let mut s = session_with(st.clone(), intake, Arc::new(Strict::default()), Some(tls()));
    let script = format!(
        "EHLO c\r\nAUTH PLAIN {eve}\r\nAUTH PLAIN {down}\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN !!!\r\n\
         AUTH LOGIN {bob}\r\n{wrong}\r\nAUTH PLAIN {ok}\r\n\
         MAIL FROM:<>\r\nMAIL FROM:<a@example.com> SIZE=5000\r\nMAIL FROM:<a@other.example>\r\n\
         MAIL FROM:<a@example.com>\r\nRCPT TO:<0@y.example>\r\nRCPT TO:<1@y.example>\r\n\
         RCPT TO:<2@y.example>\r\nRCPT TO:<3@y.example>\r\nRCPT TO:<4@y.example>\r\nDATA\r\n",
        eve = plain("eve", "x"),
        down = plain("down", "x"),
        bob = b("bob"),
        wrong = b("nope"),
        ok = plain("bob", "pw"),
    );
    let r: Vec<u16> = codes(&mut s, &script).await.iter().map(|c| c.0).collect();
    assert_eq!(
        r,
        [
            250, 454, 454, 334, 501, 501, 334, 535, 235, 553, 552, 553, 250, 451, 250, 250, 250,
            452, 354
        ]
    );

    let intake = Arc::new(FakeIntake::default());
    let mut s = session_with(st, intake, Arc::new(NoLimits), Some(tls()));
    login(&mut s).await;
    let txn = "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@y.example>\r\n";
    let r = codes(
        &mut s,
        &format!(
            "{txn}DATA\r\nbare\nLF\r\n.\r\n{txn}DATA\r\n{}\r\n.\r\n\
             {txn}DATA\r\n{}.\r\n{txn}BDAT 3 LAST\r\nok\n",
            "x".repeat(999),
            "0123456789\r\n".repeat(100)
        ),
    )
    .await;
    let r: Vec<u16> = r.iter().map(|c| c.0).collect();
    assert_eq!(
        r,
        [250, 250, 354, 550, 250, 250, 354, 550, 250, 250, 354, 552, 250, 250, 550]
    );
    let r = codes(&mut s, &format!("{txn}DATA\r\nfine\r\n.\r\n")).await;
    assert_eq!(r.last().unwrap().0, 250);

    let text = metrics.render();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    let auth = |m: &str, r: &str| {
        value(&format!(
            "postgate_auth_attempts_total{{mechanism=\"{m}\",result=\"{r}\"}}"
        ))
    };
    assert_eq!(auth("plain", "locked_out"), 1.0);
    assert_eq!(auth("plain", "error"), 2.0, "store down and bad base64");
    assert_eq!(auth("login", "error"), 1.0, "cancelled");
    assert_eq!(auth("login", "failed"), 1.0);
    assert_eq!(auth("plain", "success"), 2.0);
    assert_eq!(auth("plain", "failed") + auth("login", "success"), 0.0);
    let rejected = |r: &str| {
        value(&format!(
            "postgate_messages_rejected_total{{reason=\"{r}\"}}"
        ))
    };
    assert_eq!(
        rejected("sender_not_allowed"),
        2.0,
        "null and foreign sender"
    );
    assert_eq!(rejected("too_large"), 2.0, "declared and actual size");
    assert_eq!(rejected("too_many_recipients"), 1.0);
    assert_eq!(rejected("rate_limited"), 1.0);
    assert_eq!(rejected("bare_line_ending"), 2.0, "DATA and BDAT");
    assert_eq!(rejected("line_too_long"), 1.0);
    assert_eq!(rejected("auth_required"), 0.0);
    // Every end of data; the fake intake queues but counts nothing (the
    // real intake counts queued messages, with their stored size).
    assert_eq!(value("postgate_messages_received_total"), 5.0);
    assert_eq!(value("postgate_messages_queued_total"), 0.0);
    // Rate-limit refusals are the SessionLimits implementation's to count.
    assert!(
        !text.contains("postgate_rate_limit_rejections_total{"),
        "{text}"
    );
}

/// Issue 12 item 5: a store outage answers 451 to every message, and
/// neither that nor 452 for excess recipients counts towards max_errors.
#[tokio::test]
async fn server_side_refusals_do_not_count_as_client_errors() {
    let intake = Arc::new(FakeIntake {
        fail: true,
        ..Default::default()
    });
    let mut s = session_with(settings(), intake, Arc::new(NoLimits), Some(tls()));
    login(&mut s).await;
    let txn = "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@y.example>\r\nDATA\r\nx\r\n.\r\n";
    // max_errors is 5: ten 451s in a row, the session goes on.
    let r = codes(&mut s, &txn.repeat(10)).await;
    assert_eq!(r.len(), 40);
    assert!(r.iter().all(|(c, _)| *c != 421), "{r:?}");
    assert_eq!(r.iter().filter(|(c, _)| *c == 451).count(), 10, "{r:?}");
    assert_eq!(codes(&mut s, "NOOP\r\n").await, [c(250, "2.0.0")]);
}

/// RFC 5321 §4.5.3.1.10: a client pipelining more RCPTs than
/// max_recipients + max_errors keeps its transaction with the first
/// max_recipients recipients.
#[tokio::test]
async fn pipelined_recipient_overshoot_keeps_the_transaction() {
    let (mut s, intake) = tls_session();
    login(&mut s).await;
    let mut script = String::from("MAIL FROM:<a@example.com>\r\n");
    for i in 0..20 {
        script.push_str(&format!("RCPT TO:<r{i}@y.example>\r\n"));
    }
    script.push_str("DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
    let r = codes(&mut s, &script).await;
    let mut want = vec![c(250, "2.1.0")];
    want.extend(std::iter::repeat_n(c(250, "2.1.5"), 3));
    want.extend(std::iter::repeat_n(c(452, "4.5.3"), 17));
    want.push(c(354, "2.0.0"));
    want.push(c(250, "2.0.0"));
    assert_eq!(r, want);
    let got = intake.got.lock().unwrap();
    let rcpts: Vec<&str> = got[0]
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["r0@y.example", "r1@y.example", "r2@y.example"]);
}

/// Records what the session asks of the limits; refuses MAIL when
/// `refuse_mail`, and RCPTs past `rcpt_quota` recipients.
#[derive(Default)]
struct Quotas {
    refuse_mail: std::sync::atomic::AtomicBool,
    rcpt_quota: u32,
    mail_checks: std::sync::atomic::AtomicUsize,
    committed: Mutex<Vec<u32>>,
}

#[async_trait]
impl SessionLimits for Quotas {
    async fn connection(&self, _ip: IpAddr) -> Result<(), LimitRefusal> {
        Ok(())
    }
    async fn auth_allowed(&self, _ip: IpAddr, _u: &str) -> Result<Duration, LimitRefusal> {
        Ok(Duration::ZERO)
    }
    async fn auth_result(&self, _ip: IpAddr, _u: &str, _ok: bool) {}
    async fn session_start(
        &self,
        _i: &Identity,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, LimitRefusal> {
        Ok(Box::new(()))
    }
    async fn mail_allowed(&self, _i: &Identity) -> Result<(), LimitRefusal> {
        use std::sync::atomic::Ordering;
        self.mail_checks.fetch_add(1, Ordering::Relaxed);
        if self.refuse_mail.load(Ordering::Relaxed) {
            return Err(LimitRefusal {
                scope: LimitScope::User,
                kind: LimitKind::Messages,
                retry_after: Duration::from_secs(60),
                reason: "message quota for user bob exceeded (1 per day)".into(),
            });
        }
        Ok(())
    }
    async fn rcpt_allowed(&self, _i: &Identity, n: u32) -> Result<(), LimitRefusal> {
        if n > self.rcpt_quota {
            return Err(LimitRefusal {
                scope: LimitScope::User,
                kind: LimitKind::Recipients,
                retry_after: Duration::from_secs(60),
                reason: "recipient quota for user bob exceeded".into(),
            });
        }
        Ok(())
    }
    async fn message_committed(&self, _i: &Identity, n: u32) {
        self.committed.lock().unwrap().push(n);
    }
}

/// Issue 12 item 6: quotas are checked at MAIL and RCPT (4xx there), DATA
/// never gets a 4xx from them, and only committed messages are charged.
#[tokio::test]
async fn quotas_are_checked_at_mail_and_rcpt_and_charged_on_commit() {
    use std::sync::atomic::Ordering;
    let limits = Arc::new(Quotas {
        rcpt_quota: 2,
        ..Default::default()
    });
    let intake = Arc::new(FakeIntake::default());
    let mut s = session_with(settings(), intake.clone(), limits.clone(), Some(tls()));
    login(&mut s).await;
    let r = codes(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<1@y.example>\r\nRCPT TO:<2@y.example>\r\n\
         RCPT TO:<3@y.example>\r\nDATA\r\nx\r\n.\r\n",
    )
    .await;
    assert_eq!(
        r,
        [
            c(250, "2.1.0"),
            c(250, "2.1.5"),
            c(250, "2.1.5"),
            c(451, "4.7.1"),
            c(354, "2.0.0"),
            c(250, "2.0.0")
        ]
    );
    assert_eq!(*limits.committed.lock().unwrap(), [2]);
    assert_eq!(limits.mail_checks.load(Ordering::Relaxed), 1);

    // Refused content (bare LF) and an empty transaction cost nothing.
    let r = codes(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<1@y.example>\r\nDATA\r\nbare\nLF\r\n.\r\n\
         MAIL FROM:<a@example.com>\r\nRSET\r\n",
    )
    .await;
    assert_eq!(r[3], c(550, "5.6.0"));
    assert_eq!(*limits.committed.lock().unwrap(), [2]);

    // Quota spent: 451 at MAIL, and DATA is never answered with a 4xx.
    limits.refuse_mail.store(true, Ordering::Relaxed);
    let r = feed(
        &mut s,
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<1@y.example>\r\nDATA\r\n",
    )
    .await;
    assert_eq!((r[0].code, r[0].enhanced.as_str()), (451, "4.7.1"));
    assert!(r[0].text.contains("message quota for user bob"), "{r:?}");
    assert_eq!((r[1].code, r[2].code), (503, 503));

    // The store is down: nothing charged.
    let limits = Arc::new(Quotas {
        rcpt_quota: 10,
        ..Default::default()
    });
    let failing = Arc::new(FakeIntake {
        fail: true,
        ..Default::default()
    });
    let mut s = session_with(settings(), failing, limits.clone(), Some(tls()));
    login(&mut s).await;
    let r = codes(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<1@y.example>\r\nDATA\r\nx\r\n.\r\n",
    )
    .await;
    assert_eq!(r.last().unwrap(), &c(451, "4.3.0"));
    assert!(limits.committed.lock().unwrap().is_empty());
    assert_eq!(intake.got.lock().unwrap().len(), 1);
}
