//! Issue #17 item 4, journaling copies, through the real binary on both
//! backends: every accepted message (SMTP and HTTP API) reaches each
//! matching archive address exactly once, with its envelope in
//! `X-Postgate-Journal-*` headers and the null reverse-path; scoping by
//! user and sender domain holds; an archive that refuses (5xx) gets no DSN
//! sent anywhere, the original is delivered anyway, and the failure is
//! counted (`postgate_journal_failures_total`). Journal copies write no
//! events.

use std::time::Duration;

use super::api_e2e::Api;
use super::events_webhook::reqwest_metrics;
use super::*;

const ALL: &str = "all@archive.example";
const LEGAL: &str = "legal@archive.example";
const REFUSING: &str = "refusing@archive.example";
const OTHER_FROM: &str = "alice@other.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_copies_arrive_once_scoped_and_never_bounce() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        journal(dir.path(), &url).await;
    }
}

/// The journal copies the upstream got for `subject`: (rcpt_to, data).
fn copies_of(up: &UpstreamServer, subject: &str) -> Vec<(Vec<String>, String)> {
    up.received()
        .iter()
        .filter(|r| r.mail_from.is_empty())
        .map(|r| {
            (
                r.rcpt_to.clone(),
                String::from_utf8_lossy(&r.data).to_string(),
            )
        })
        .filter(|(_, d)| d.contains(&format!("\r\nSubject: {subject}\r\n")))
        .collect()
}

async fn journal(dir: &Path, url: &str) {
    let tag = backend_tag(url);
    let mut b = Behavior::new(ServerTls::None);
    b.rcpt_replies
        .insert(REFUSING.into(), "550 5.1.1 no such archive".into());
    let up = UpstreamServer::start(b).await;
    let api_port = free_port();
    let extra = format!(
        r#"
[events]
enabled = true

[api]
enabled = true
address = "127.0.0.1:{api_port}"

[[journal]]
address = "{ALL}"

[[journal]]
address = "{LEGAL}"
users = ["{USER}"]
sender_domains = ["example.com"]

[[journal]]
address = "{REFUSING}"
sender_domains = ["other.example"]
"#
    );
    let mut settings = Settings::new(url, up.addr.port());
    settings.extra = &extra;
    let mut files = write_node(dir, &format!("journal-{tag}"), &settings);
    add_user(&files.config).await;
    cli(&files.config, &["sender", "allow", USER, OTHER_FROM], None).await;
    let node = Serve::start(&mut files).await;

    // SMTP, from example.com: copied to ALL and LEGAL.
    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let smtp = format!("journal-smtp-{tag}");
    c.send("bob@dest.example", &message(&smtp)).await.unwrap();
    // From other.example: copied to ALL and REFUSING (which refuses).
    let scoped = format!("journal-scoped-{tag}");
    c.send_as(OTHER_FROM, "carol@dest.example", &message(&scoped))
        .await
        .unwrap();
    drop(c);
    // The HTTP API: the same intake, the same copies.
    let api = Api {
        port: api_port,
        cacert: dir.join("cert.pem"),
        dir: dir.to_path_buf(),
    };
    let http = format!("journal-http-{tag}");
    let r = api
        .post_json(
            USER,
            PASSWORD,
            &serde_json::json!({
                "from": FROM,
                "to": ["dave@dest.example", "erin@dest.example"],
                "message": message(&http),
            }),
        )
        .await;
    assert_eq!(r.status, 202, "{tag}: {}", r.body);
    let http_id = r.body["id"].as_str().unwrap().to_string();

    wait_delivered(
        &up,
        &[smtp.clone(), scoped.clone(), http.clone()],
        Duration::from_secs(30),
    )
    .await;
    wait_queue_empty(&files.config, Duration::from_secs(30)).await;

    // Each original once, with its own sender.
    for (subject, from) in [(&smtp, FROM), (&scoped, OTHER_FROM), (&http, FROM)] {
        let originals: Vec<_> = up
            .received()
            .into_iter()
            .filter(|r| {
                String::from_utf8_lossy(&r.data).contains(&format!("Subject: {subject}\r\n"))
            })
            .filter(|r| !r.mail_from.is_empty())
            .collect();
        assert_eq!(originals.len(), 1, "{tag}: {subject}");
        assert_eq!(originals[0].mail_from, from, "{tag}: {subject}");
    }

    // Each copy once, to every matching archive, envelope on top.
    let copies = copies_of(&up, &smtp);
    assert_eq!(copies.len(), 1, "{tag}: {copies:?}");
    assert_eq!(copies[0].0, [ALL, LEGAL], "{tag}");
    let data = &copies[0].1;
    assert!(
        data.starts_with("X-Postgate-Journal-Queue-Id: "),
        "{tag}: {data}"
    );
    for line in [
        format!("\r\nX-Postgate-Journal-User: {USER}\r\n"),
        format!("\r\nX-Postgate-Journal-Sender: <{FROM}>\r\n"),
        "\r\nX-Postgate-Journal-Recipient: <bob@dest.example>\r\n".to_string(),
    ] {
        assert!(data.contains(&line), "{tag}: no {line:?} in {data}");
    }
    let http_copy = copies_of(&up, &http);
    assert_eq!(http_copy.len(), 1, "{tag}: {http_copy:?}");
    assert_eq!(http_copy[0].0, [ALL, LEGAL], "{tag}");
    assert!(http_copy[0]
        .1
        .starts_with(&format!("X-Postgate-Journal-Queue-Id: {http_id}\r\n")));
    for rcpt in ["dave@dest.example", "erin@dest.example"] {
        assert!(
            http_copy[0]
                .1
                .contains(&format!("X-Postgate-Journal-Recipient: <{rcpt}>\r\n")),
            "{tag}: {}",
            http_copy[0].1
        );
    }
    // Scoped: not LEGAL (example.com only); REFUSING refused it.
    let scoped_copy = copies_of(&up, &scoped);
    assert_eq!(scoped_copy.len(), 1, "{tag}: {scoped_copy:?}");
    assert_eq!(scoped_copy[0].0, [ALL], "{tag}");
    assert!(scoped_copy[0]
        .1
        .contains(&format!("X-Postgate-Journal-Sender: <{OTHER_FROM}>\r\n")));

    // No DSN to anyone: every null-sender transaction is a journal copy.
    let null_sender = up
        .received()
        .iter()
        .filter(|r| r.mail_from.is_empty())
        .count();
    assert_eq!(null_sender, 3, "{tag}: a DSN went out");
    let metrics = reqwest_metrics(files.http).await;
    for line in [
        "postgate_journal_copies_total 6",
        "postgate_journal_failures_total{result=\"failed\"} 1",
    ] {
        assert!(metrics.contains(line), "{tag}: no {line}:\n{metrics}");
    }

    // Events describe the user's mail only: none names an archive.
    let listed = cli(&files.config, &["events", "list", "--json"], None).await;
    assert!(listed.contains("bob@dest.example"), "{tag}: {listed}");
    assert!(!listed.contains("archive.example"), "{tag}: {listed}");
    drop(node);
}
