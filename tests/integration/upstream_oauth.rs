//! AUTH XOAUTH2 towards upstreams against a real token endpoint (HTTPS,
//! checking secrets and JWT signatures) and the real upstream test server
//! (accepting only live tokens it issued): every provider kind, bad token
//! endpoint answers, the 535 rules, client certificates (mutual TLS),
//! metrics, and `postgate upstream test` through the real binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use postgate::delivery::oauth::{OAuthConfig, Provider};
use postgate::delivery::upstream::{Envelope, SendError, Upstream};
use postgate::delivery::{AuthMechanism, UpstreamConfig};
use postgate::secret::Secret;

use crate::token_server::{Client, Mode, TokenServer};
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

pub const SECRET: &str = "s3cr3t-client-value";

/// An `[upstream.oauth]` of `provider` with nothing set.
pub fn oauth(provider: Provider, tokens: &TokenServer) -> OAuthConfig {
    OAuthConfig {
        provider,
        tenant: None,
        client_id: None,
        client_secret: None,
        client_certificate: None,
        client_key: None,
        service_account_key: None,
        token_url: Some(tokens.url()),
        scope: None,
        ca_file: Some(tokens.ca_file()),
        timeout: Duration::from_secs(5),
        null_sender_mailbox: None,
    }
}

pub fn microsoft_secret(tokens: &TokenServer) -> OAuthConfig {
    let mut o = oauth(Provider::Microsoft, tokens);
    o.tenant = Some("tenant-1".into());
    o.client_id = Some("app-1".into());
    o.client_secret = Some(Secret::inline(SECRET));
    o
}

/// A self-signed RSA certificate and its key as PEM files in `dir`; the DER certificate.
pub fn rsa_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
    let params = rcgen::CertificateParams::new(vec![format!("{name}.example")]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, cert.der().to_vec())
}

/// A Google service account key file in `dir`; the registered client.
pub fn service_account(dir: &Path, email: &str) -> (PathBuf, Client) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": key.serialize_pem(),
        "client_email": email,
        "client_id": "1234",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let path = dir.join("sa.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let client = Client::ServiceAccount {
        email: email.into(),
        public_key: key.public_key_raw().to_vec(),
    };
    (path, client)
}

pub fn google(tokens: &TokenServer, key_file: &Path) -> OAuthConfig {
    let mut o = oauth(Provider::Google, tokens);
    o.service_account_key = Some(file_secret(key_file));
    o
}

fn file_secret(path: &Path) -> Secret {
    let text = format!("k = {{ file = {:?} }}", path.display().to_string());
    #[derive(serde::Deserialize)]
    struct K {
        k: Secret,
    }
    toml::from_str::<K>(&text).unwrap().k
}

/// An upstream server that requires XOAUTH2 with tokens of `tokens`.
pub async fn xoauth2_server(tokens: &TokenServer) -> UpstreamServer {
    let mut b = Behavior::new(ServerTls::Starttls);
    b.xoauth2 = Some(tokens.checker());
    UpstreamServer::start(b).await
}

pub fn xoauth2_config(server: &UpstreamServer, o: OAuthConfig, username: &str) -> UpstreamConfig {
    let mut cfg = server.upstream_config("m365");
    cfg.auth = AuthMechanism::Xoauth2;
    cfg.username = Some(username.into());
    cfg.oauth = Some(o);
    cfg
}

async fn send(up: &Upstream, sender: &str) -> Result<String, SendError> {
    let mut conn = up.connect_for(sender).await?;
    let rcpts = vec!["r@x.org".to_string()];
    let body = Bytes::from_static(b"Subject: t\r\n\r\nhi\r\n");
    let tx = conn
        .send(Envelope {
            sender,
            recipients: &rcpts,
            body: &body,
            smtputf8: false,
            dsn: None,
        })
        .await?;
    conn.quit().await;
    Ok(tx.data.map(|d| d.text).unwrap_or_default())
}

#[tokio::test]
async fn microsoft_client_secret_delivers_with_the_default_scope() {
    let tokens = TokenServer::start(
        vec![Client::Secret {
            id: "app-1".into(),
            secret: SECRET.into(),
        }],
        Duration::from_secs(60),
    )
    .await;
    let server = xoauth2_server(&tokens).await;
    let up = Upstream::new(
        xoauth2_config(&server, microsoft_secret(&tokens), "relay@example.com"),
        "relay.test",
    )
    .unwrap();
    assert_eq!(
        send(&up, "a@example.com").await.unwrap(),
        "250 2.0.0 queued as TEST"
    );
    assert_eq!(
        send(&up, "a@example.com").await.unwrap(),
        "250 2.0.0 queued as TEST"
    );
    assert_eq!(
        tokens.requests(),
        1,
        "the second session used the cached token"
    );
    assert_eq!(tokens.scopes(), ["https://outlook.office365.com/.default"]);
    let got = server.received();
    assert_eq!(got[0].auth_user.as_deref(), Some("relay@example.com"));
    assert!(got[0].tls);
}

#[tokio::test]
async fn microsoft_certificate_assertion_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = rsa_certificate(dir.path(), "app");
    let tokens = TokenServer::start(
        vec![Client::Certificate {
            id: "app-2".into(),
            cert_der: der,
        }],
        Duration::from_secs(60),
    )
    .await;
    let server = xoauth2_server(&tokens).await;
    let mut o = oauth(Provider::Microsoft, &tokens);
    o.tenant = Some("tenant-1".into());
    o.client_id = Some("app-2".into());
    o.client_certificate = Some(cert);
    o.client_key = Some(key);
    let up = Upstream::new(
        xoauth2_config(&server, o, "relay@example.com"),
        "relay.test",
    )
    .unwrap();
    assert_eq!(
        send(&up, "a@example.com").await.unwrap(),
        "250 2.0.0 queued as TEST"
    );
    assert_eq!(tokens.refusals(), Vec::<String>::new());
    assert_eq!(tokens.issued(), 1);

    // Another certificate (not the registered one) is refused by the endpoint.
    let (cert2, key2, _) = rsa_certificate(dir.path(), "other");
    let mut o = oauth(Provider::Microsoft, &tokens);
    o.tenant = Some("tenant-1".into());
    o.client_id = Some("app-2".into());
    o.client_certificate = Some(cert2);
    o.client_key = Some(key2);
    let up = Upstream::new(
        xoauth2_config(&server, o, "relay@example.com"),
        "relay.test",
    )
    .unwrap();
    let e = send(&up, "a@example.com").await.unwrap_err().to_string();
    assert!(
        e.contains("refused the request: HTTP 401: invalid_client"),
        "{e}"
    );
    assert_eq!(tokens.refusals(), ["bad signature"]);
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn google_service_account_impersonates_each_sender() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, client) = service_account(dir.path(), "relay@proj.iam.gserviceaccount.com");
    let tokens = TokenServer::start(vec![client], Duration::from_secs(60)).await;
    let server = xoauth2_server(&tokens).await;
    let up = Upstream::new(
        xoauth2_config(&server, google(&tokens, &key_file), "{sender}"),
        "relay.test",
    )
    .unwrap();
    send(&up, "alice@example.com").await.unwrap();
    send(&up, "bob@example.com").await.unwrap();
    send(&up, "alice@example.com").await.unwrap();
    assert_eq!(tokens.issued(), 2, "one token per mailbox, cached");
    let users: Vec<_> = server
        .received()
        .iter()
        .map(|r| r.auth_user.clone().unwrap())
        .collect();
    assert_eq!(
        users,
        ["alice@example.com", "bob@example.com", "alice@example.com"]
    );
    // The null sender has no mailbox unless one is configured.
    let e = send(&up, "").await.unwrap_err().to_string();
    assert!(e.contains("null_sender_mailbox"), "{e}");
}

#[tokio::test]
async fn generic_client_credentials_deliver() {
    let tokens = TokenServer::start(
        vec![Client::Secret {
            id: "gen".into(),
            secret: SECRET.into(),
        }],
        Duration::from_secs(60),
    )
    .await;
    let server = xoauth2_server(&tokens).await;
    let mut o = oauth(Provider::Generic, &tokens);
    o.client_id = Some("gen".into());
    o.client_secret = Some(Secret::inline(SECRET));
    o.scope = Some("smtp.send".into());
    let up = Upstream::new(xoauth2_config(&server, o, "svc"), "relay.test").unwrap();
    send(&up, "a@example.com").await.unwrap();
    assert_eq!(tokens.scopes(), ["smtp.send"]);
    assert_eq!(server.received()[0].auth_user.as_deref(), Some("svc"));
}

#[tokio::test]
async fn bad_token_endpoint_answers_are_clear_transient_errors_without_secrets() {
    let tokens = TokenServer::start(
        vec![Client::Secret {
            id: "app-1".into(),
            secret: SECRET.into(),
        }],
        Duration::from_secs(60),
    )
    .await;
    let server = xoauth2_server(&tokens).await;
    let cases = [
        (Mode::Garbage, "HTTP 200 but the body is not a JSON object"),
        (
            Mode::ErrorJson,
            "HTTP 400: unauthorized_client: AADSTS700016",
        ),
        (
            Mode::Redirect,
            "redirect to https://elsewhere.example/token",
        ),
        (Mode::NoExpiry, "no expires_in"),
        (Mode::Down, "token endpoint unavailable"),
        (
            Mode::Slow(Duration::from_secs(3)),
            "unavailable: no answer within 1s",
        ),
    ];
    for (mode, want) in cases {
        tokens.set_mode(mode.clone());
        // A new upstream each time: no cached token, no remembered failure.
        let mut o = microsoft_secret(&tokens);
        o.timeout = Duration::from_secs(1);
        let up = Upstream::new(
            xoauth2_config(&server, o, "relay@example.com"),
            "relay.test",
        )
        .unwrap();
        let e = send(&up, "a@example.com").await.unwrap_err();
        assert!(matches!(e, SendError::OAuth(_)), "{mode:?}: {e:?}");
        let text = e.to_string();
        assert!(text.contains(want), "{mode:?}: {text}");
        assert!(
            !text.contains(SECRET) && !text.contains("zz-token"),
            "{mode:?}: {text}"
        );
    }
    assert!(server.received().is_empty());
    assert!(
        !server.commands().contains(&"AUTH".to_string()),
        "no AUTH without a token"
    );
    // A wrong client secret: refused, the secret not echoed.
    tokens.set_mode(Mode::Normal);
    let mut o = microsoft_secret(&tokens);
    o.client_secret = Some(Secret::inline("wrong-secret-value"));
    let up = Upstream::new(
        xoauth2_config(&server, o, "relay@example.com"),
        "relay.test",
    )
    .unwrap();
    let text = send(&up, "a@example.com").await.unwrap_err().to_string();
    assert!(text.contains("HTTP 401: invalid_client"), "{text}");
    assert!(!text.contains("wrong-secret-value"), "{text}");
}

#[tokio::test]
async fn a_fresh_token_refused_with_535_is_not_refreshed_again() {
    let tokens = TokenServer::start(
        vec![Client::Secret {
            id: "app-1".into(),
            secret: SECRET.into(),
        }],
        Duration::from_secs(60),
    )
    .await;
    // The upstream trusts another endpoint: every token from ours is refused.
    let other = TokenServer::start(vec![], Duration::from_secs(60)).await;
    let server = xoauth2_server(&other).await;
    let up = Upstream::new(
        xoauth2_config(&server, microsoft_secret(&tokens), "relay@example.com"),
        "relay.test",
    )
    .unwrap();
    let e = send(&up, "a@example.com").await.unwrap_err();
    match &e {
        SendError::Refused { stage, reply } => {
            assert_eq!((*stage, reply.code), ("AUTH", 535), "{e}");
            assert!(reply.text.contains("5.7.3"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        tokens.requests(),
        1,
        "a token fetched just now is not refetched"
    );
    assert_eq!(server.auth_refusals(), 1);
}

#[tokio::test]
async fn client_certificate_upstream_refuses_without_and_accepts_with() {
    let dir = tempfile::tempdir().unwrap();
    let server = UpstreamServer::start_mtls(Behavior::new(ServerTls::Starttls)).await;
    let without = Upstream::new(server.upstream_config("mtls"), "relay.test").unwrap();
    let e = send(&without, "a@example.com").await.unwrap_err();
    assert!(
        matches!(e, SendError::Tls(_) | SendError::Io(_)),
        "refused without a certificate: {e:?}"
    );
    assert!(server.received().is_empty());

    let (cert, key) = server.pki.client_identity(dir.path());
    let mut cfg = server.upstream_config("mtls");
    cfg.client_certificate = Some(cert.clone());
    cfg.client_key = Some(key);
    cfg.check_credentials().unwrap();
    let with = Upstream::new(cfg.clone(), "relay.test").unwrap();
    assert_eq!(
        send(&with, "a@example.com").await.unwrap(),
        "250 2.0.0 queued as TEST"
    );
    assert_eq!(server.received().len(), 1);

    // A key that is not the certificate's: refused at check-config and start.
    let (_, other_key, _) = rsa_certificate(dir.path(), "stranger");
    cfg.client_key = Some(other_key.clone());
    let e = cfg.check_credentials().unwrap_err();
    assert!(e.contains("does not match the certificate"), "{e}");
    assert!(e.contains(&other_key.display().to_string()), "{e}");
    assert!(Upstream::new(cfg, "relay.test").is_err());
}

#[tokio::test]
async fn check_credentials_refuses_bad_oauth_input() {
    let tokens = TokenServer::start(vec![], Duration::from_secs(60)).await;
    let server = xoauth2_server(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, _, _) = rsa_certificate(dir.path(), "a");
    let (_, key_b, _) = rsa_certificate(dir.path(), "b");
    let mut o = oauth(Provider::Microsoft, &tokens);
    o.tenant = Some("t".into());
    o.client_id = Some("c".into());
    o.client_certificate = Some(cert);
    o.client_key = Some(key_b);
    let e = xoauth2_config(&server, o, "u")
        .check_credentials()
        .unwrap_err();
    assert!(e.contains("does not match the certificate"), "{e}");

    let bad = dir.path().join("sa-bad.json");
    std::fs::write(&bad, "this is not json").unwrap();
    let e = xoauth2_config(&server, google(&tokens, &bad), "{sender}")
        .check_credentials()
        .unwrap_err();
    assert!(e.contains("service_account_key: not JSON"), "{e}");
    std::fs::write(&bad, r#"{"type":"service_account","client_email":"x@y"}"#).unwrap();
    let e = xoauth2_config(&server, google(&tokens, &bad), "{sender}")
        .check_credentials()
        .unwrap_err();
    assert!(e.contains("no \"private_key\""), "{e}");

    let mut cfg = xoauth2_config(&server, microsoft_secret(&tokens), "u");
    cfg.password = Some(Secret::inline("p"));
    assert!(cfg
        .check_credentials()
        .unwrap_err()
        .contains("password does not apply"));
    let mut cfg = server.upstream_config("x");
    cfg.username = Some("{sender}".into());
    cfg.password = Some(Secret::inline("p"));
    assert!(cfg
        .check_credentials()
        .unwrap_err()
        .contains("needs auth = \"xoauth2\""));
}

#[tokio::test]
async fn token_requests_and_expiry_are_metrics() {
    let tokens = TokenServer::start(
        vec![Client::Secret {
            id: "app-1".into(),
            secret: SECRET.into(),
        }],
        Duration::from_secs(600),
    )
    .await;
    let server = xoauth2_server(&tokens).await;
    let metrics = postgate::metrics::Metrics::new(&Default::default());
    let cfg = xoauth2_config(&server, microsoft_secret(&tokens), "relay@example.com");
    let up = Upstream::with_metrics(cfg.clone(), "relay.test", &metrics).unwrap();
    send(&up, "a@example.com").await.unwrap();
    tokens.set_mode(Mode::ErrorJson);
    let up2 = Upstream::with_metrics(cfg, "relay.test", &metrics).unwrap();
    send(&up2, "a@example.com").await.unwrap_err();
    let text = metrics.render();
    assert!(
        text.contains(
            r#"postgate_upstream_oauth_token_requests_total{result="ok",upstream="m365"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"postgate_upstream_oauth_token_requests_total{result="refused",upstream="m365"} 1"#
        ),
        "{text}"
    );
    let expiry: f64 = text
        .lines()
        .find(|l| {
            l.starts_with(
                "postgate_upstream_oauth_token_expiry_timestamp_seconds{upstream=\"m365\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((expiry - now - 600.0).abs() < 10.0, "{expiry} vs {now}");
    assert!(!text.contains("zz-token"), "no token in metrics");
}

/// A config file for the real binary with upstream `m365`.
fn cli_config(dir: &Path, server: &UpstreamServer, o: &OAuthConfig, username: &str) -> PathBuf {
    let mut text = format!(
        "[server]\nhostname = \"relay.test\"\n[store]\nurl = \"sqlite://{}/q.db\"\n\n[[upstream]]\nname = \"m365\"\nhost = \"127.0.0.1\"\nport = {}\nca_file = {:?}\ntls_server_name = \"localhost\"\nauth = \"xoauth2\"\nusername = {:?}\n[upstream.oauth]\nprovider = \"microsoft\"\ntenant = \"tenant-1\"\nclient_id = \"app-1\"\ntoken_url = {:?}\nca_file = {:?}\n",
        dir.display(),
        server.addr.port(),
        server.pki.ca_file.display().to_string(),
        username,
        o.token_url.clone().unwrap(),
        o.ca_file.as_ref().unwrap().display().to_string(),
    );
    text.push_str(&format!(
        "client_secret = {:?}\n",
        o.client_secret.as_ref().unwrap().expose()
    ));
    let path = dir.join("postgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postgate"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn upstream_test_passes_and_names_the_failed_step() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(
        vec![Client::Secret {
            id: "app-1".into(),
            secret: SECRET.into(),
        }],
        Duration::from_secs(60),
    )
    .await;
    let mut b = Behavior::new(ServerTls::Starttls);
    b.xoauth2 = Some(tokens.checker());
    b.rcpt_replies
        .insert("nobody@x.org".into(), "550 5.1.1 no such user".into());
    let server = UpstreamServer::start(b).await;
    let o = microsoft_secret(&tokens);
    let config = cli_config(dir.path(), &server, &o, "relay@example.com");
    let cfg = config.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &cfg,
            &[
                "upstream",
                "test",
                "m365",
                "--from",
                "a@example.com",
                "--to",
                "r@x.org",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    for step in [
        "connect", "greeting", "EHLO", "STARTTLS", "TLS", "token", "AUTH", "MAIL", "RCPT", "RSET",
        "QUIT",
    ] {
        assert!(
            out.contains(&format!("  {step:<9} ok")),
            "{step} missing:\n{out}"
        );
    }
    assert!(out.contains("certificate verified for localhost"), "{out}");
    assert!(out.contains("235 2.7.0"), "{out}");
    assert!(
        !out.contains("zz-token") && !out.contains(SECRET),
        "no token or secret:\n{out}"
    );
    assert!(server.received().is_empty(), "nothing sent");
    assert_eq!(
        server
            .commands()
            .iter()
            .filter(|c| *c == "RSET" || *c == "QUIT")
            .count(),
        2
    );

    // A refused recipient: exit 1 naming RCPT.
    let cfg = config.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &cfg,
            &[
                "upstream",
                "test",
                "m365",
                "--from",
                "a@example.com",
                "--to",
                "nobody@x.org",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("RCPT      FAIL refused: 550 5.1.1"), "{out}");
    assert!(err.contains("RCPT failed"), "{err}");

    // The token endpoint refuses the app: exit 1 naming the token step.
    let mut bad = o.clone();
    bad.client_secret = Some(Secret::inline("not-the-secret"));
    let config = cli_config(dir.path(), &server, &bad, "relay@example.com");
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(&config, &["upstream", "test", "m365"]))
            .await
            .unwrap();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("token     FAIL"), "{out}");
    assert!(
        err.contains("token failed: OAuth: token endpoint refused the request: HTTP 401"),
        "{err}"
    );
    assert!(!out.contains("not-the-secret") && !err.contains("not-the-secret"));

    // "{sender}" needs --from.
    let config = cli_config(dir.path(), &server, &o, "{sender}");
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run_cli(&config, &["upstream", "test", "m365"]))
            .await
            .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--from is required"), "{err}");
}
