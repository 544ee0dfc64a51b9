//! The upstream SMTP client against a real scripted server: TLS modes,
//! verification, pinning, AUTH, pipelining, per-recipient replies, and bad
//! upstream input (garbage, a 1 MB reply line, slow replies, broken TLS,
//! a connection dropped in DATA) giving clean errors, never a panic.

use std::time::Duration;

use bytes::Bytes;
use postgate::delivery::upstream::{Envelope, SendError, Upstream};
use postgate::delivery::{AuthMechanism, TlsMode};

use crate::upstream_server::{Behavior, CertKind, ServerTls, UpstreamServer};

const BODY: &[u8] =
    b"From: a@example.com\r\nSubject: t\r\n\r\n.leading dot\r\nline\r\n..two dots\r\n";

async fn send_one(server: &UpstreamServer, recipients: &[&str]) -> Result<Vec<String>, SendError> {
    let up = Upstream::new(server.upstream_config("up"), "relay.test").expect("upstream");
    send_with(&up, recipients).await
}

async fn send_with(up: &Upstream, recipients: &[&str]) -> Result<Vec<String>, SendError> {
    let mut conn = up.connect().await?;
    let rcpts: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    let body = Bytes::from_static(BODY);
    let tx = conn
        .send(Envelope {
            sender: "a@example.com",
            recipients: &rcpts,
            body: &body,
            smtputf8: false,
            dsn: None,
        })
        .await?;
    let mut out = vec![tx.mail.text.clone()];
    out.extend(tx.rcpt.iter().map(|r| r.text.clone()));
    out.push(tx.data.map(|d| d.text).unwrap_or_default());
    conn.quit().await;
    Ok(out)
}

#[tokio::test]
async fn starttls_auth_plain_pipelined_with_per_recipient_replies() {
    let mut b = Behavior::new(ServerTls::Starttls);
    b.auth = Some(("relay-user".into(), "s3cret".into()));
    b.rcpt_replies
        .insert("bad@x.org".into(), "550 5.1.1 no such user".into());
    let server = UpstreamServer::start(b).await;
    let replies = send_one(&server, &["good@x.org", "bad@x.org"])
        .await
        .unwrap();
    assert_eq!(replies[1], "250 2.1.5 recipient ok");
    assert_eq!(replies[2], "550 5.1.1 no such user");
    assert_eq!(replies[3], "250 2.0.0 queued as TEST");
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "delivered over TLS");
    assert_eq!(got[0].auth_user.as_deref(), Some("relay-user"));
    assert_eq!(got[0].rcpt_to, ["good@x.org"]);
    assert_eq!(got[0].data, BODY, "dot-stuffing round-trips");
    // Pipelined: MAIL, RCPT, RCPT, DATA went out before any reply was read;
    // the server saw them in that order right after AUTH.
    let cmds = server.commands();
    let mail = cmds.iter().position(|c| c == "MAIL").unwrap();
    assert_eq!(&cmds[mail..mail + 4], ["MAIL", "RCPT", "RCPT", "DATA"]);
    assert_eq!(
        cmds[..mail].iter().filter(|c| *c == "EHLO").count(),
        2,
        "EHLO again after STARTTLS"
    );
}

#[tokio::test]
async fn implicit_tls_with_auth_login_and_no_pipelining() {
    let mut b = Behavior::new(ServerTls::Implicit);
    b.auth = Some(("u".into(), "p".into()));
    b.pipelining = false;
    let server = UpstreamServer::start(b).await;
    let mut cfg = server.upstream_config("up");
    cfg.auth = AuthMechanism::Login;
    let up = Upstream::new(cfg, "relay.test").unwrap();
    let replies = send_with(&up, &["r@x.org"]).await.unwrap();
    assert_eq!(replies[2], "250 2.0.0 queued as TEST");
    let got = server.received();
    assert!(got[0].tls);
    assert_eq!(got[0].auth_user.as_deref(), Some("u"));
}

#[tokio::test]
async fn wrong_password_is_a_refused_auth() {
    let mut b = Behavior::new(ServerTls::Starttls);
    b.auth = Some(("u".into(), "right".into()));
    let server = UpstreamServer::start(b).await;
    let mut cfg = server.upstream_config("up");
    cfg.password = Some(postgate::config::Secret::inline("wrong"));
    let up = Upstream::new(cfg, "relay.test").unwrap();
    let err = send_with(&up, &["r@x.org"]).await.unwrap_err();
    assert!(
        matches!(err, SendError::Refused { stage: "AUTH", .. }),
        "{err}"
    );
    assert!(
        !err.to_string().contains("wrong"),
        "no secret in errors: {err}"
    );
}

#[tokio::test]
async fn tls_is_never_dropped_and_certificates_are_verified() {
    // STARTTLS not offered: refuse to go on in clear.
    let mut b = Behavior::new(ServerTls::Starttls);
    b.offer_starttls = false;
    let server = UpstreamServer::start(b).await;
    let err = send_one(&server, &["r@x.org"]).await.unwrap_err();
    assert!(matches!(err, SendError::Tls(_)), "{err}");
    assert!(
        !server.commands().contains(&"MAIL".to_string()),
        "nothing sent in clear"
    );

    // STARTTLS accepted, then garbage instead of a handshake.
    let mut b = Behavior::new(ServerTls::Starttls);
    b.break_tls = true;
    let server = UpstreamServer::start(b).await;
    let err = send_one(&server, &["r@x.org"]).await.unwrap_err();
    assert!(matches!(err, SendError::Tls(_)), "{err}");

    for kind in [CertKind::WrongHost, CertKind::Expired] {
        for tls in [ServerTls::Starttls, ServerTls::Implicit] {
            let server = UpstreamServer::start_with_cert(Behavior::new(tls), kind).await;
            let err = send_one(&server, &["r@x.org"]).await.unwrap_err();
            assert!(matches!(err, SendError::Tls(_)), "{kind:?} {tls:?}: {err}");
            assert!(server.received().is_empty());
        }
    }

    // Without the CA file the test CA is unknown: verification fails.
    let server = UpstreamServer::start(Behavior::new(ServerTls::Implicit)).await;
    let mut cfg = server.upstream_config("up");
    cfg.ca_file = None;
    let err = send_with(&Upstream::new(cfg, "h").unwrap(), &["r@x.org"])
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Tls(_)), "{err}");
}

#[tokio::test]
async fn spki_pin_must_match() {
    let server = UpstreamServer::start(Behavior::new(ServerTls::Starttls)).await;
    let mut cfg = server.upstream_config("up");
    cfg.spki_pin = Some(server.pki.spki_pin());
    send_with(&Upstream::new(cfg.clone(), "h").unwrap(), &["r@x.org"])
        .await
        .expect("matching pin");
    let other = crate::upstream_server::Pki::new(CertKind::Good);
    cfg.spki_pin = Some(other.spki_pin());
    let err = send_with(&Upstream::new(cfg.clone(), "h").unwrap(), &["r@x.org"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spki_pin"), "{err}");
    cfg.spki_pin = Some("not base64!".into());
    assert!(Upstream::new(cfg, "h").is_err());
}

#[tokio::test]
async fn bad_upstream_input_is_a_clean_error() {
    let cases: Vec<(&str, Behavior)> = vec![
        ("garbage greeting", {
            let mut b = Behavior::new(ServerTls::None);
            b.raw_greeting = Some(b"hello, I am not SMTP\r\n".to_vec());
            b
        }),
        ("1 MB reply line", {
            let mut b = Behavior::new(ServerTls::None);
            let mut line = b"220 ".to_vec();
            line.extend(std::iter::repeat_n(b'x', 1024 * 1024));
            line.extend_from_slice(b"\r\n");
            b.raw_greeting = Some(line);
            b
        }),
        ("endless multi-line reply", {
            let mut b = Behavior::new(ServerTls::None);
            b.raw_greeting = Some(b"220-more\r\n".repeat(100_000));
            b
        }),
        ("binary noise", {
            let mut b = Behavior::new(ServerTls::None);
            b.raw_greeting = Some((0..=255u8).cycle().take(70_000).collect());
            b
        }),
        ("refusing greeting", {
            let mut b = Behavior::new(ServerTls::None);
            b.greeting = "554 5.3.2 go away".into();
            b
        }),
        ("dropped in DATA", {
            let mut b = Behavior::new(ServerTls::None);
            b.drop_during_data = true;
            b
        }),
    ];
    for (what, b) in cases {
        let server = UpstreamServer::start(b).await;
        let started = std::time::Instant::now();
        let err = send_one(&server, &["r@x.org"]).await.unwrap_err();
        assert!(
            matches!(
                err,
                SendError::Protocol(_) | SendError::Io(_) | SendError::Refused { .. }
            ),
            "{what}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what}: took too long"
        );
        assert!(server.received().is_empty(), "{what}");
    }
}

#[tokio::test]
async fn every_read_has_a_timeout() {
    let mut b = Behavior::new(ServerTls::None);
    b.reply_delay = Duration::from_secs(3);
    let server = UpstreamServer::start(b).await;
    let mut cfg = server.upstream_config("up");
    // The greeting is bounded by connect_timeout (connect + greeting), the
    // commands after it by command_timeout.
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.command_timeout = Duration::from_millis(300);
    assert_eq!(cfg.tls, TlsMode::None);
    let started = std::time::Instant::now();
    let err = send_with(&Upstream::new(cfg, "h").unwrap(), &["r@x.org"])
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Timeout("greeting")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Nothing listening: a connect error, quickly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = postgate::delivery::UpstreamConfig::new("gone", "127.0.0.1", port, TlsMode::None);
    let err = send_with(&Upstream::new(cfg, "h").unwrap(), &["r@x.org"])
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Connect(..)), "{err}");
}
