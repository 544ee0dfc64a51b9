//! Issue 12 through the real binary over real sockets: the header From
//! bypasses are refused (item 1), DKIM signing follows the login with
//! `header_from = "off"` (item 2), client strings cannot forge log lines in
//! either log format (item 4), server-side refusals do not count towards
//! `max_errors` and a recipient overshoot keeps the transaction (item 5),
//! and quotas are checked at MAIL and charged only for committed messages,
//! on the local and the shared PostgreSQL limits backend (item 6).

use std::time::Duration;

use super::*;

/// A user that may send as `alice@example.com` only.
const SOLO: &str = "solo";

async fn add_solo(config: &Path) {
    cli(config, &["migrate"], None).await;
    cli(
        config,
        &["user", "add", SOLO, "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    )
    .await;
    cli(config, &["sender", "allow", SOLO, FROM], None).await;
}

/// MAIL, RCPT, DATA and `body`: the reply after the data (or the first
/// refusal).
async fn submit(c: &mut Client, body: &str) -> (u16, String) {
    match c.send_as(FROM, "bob@dest.example", body).await {
        Ok(()) => (250, String::new()),
        Err(e) => e,
    }
}

/// Issue 12 item 1 (the four bypasses and a valid From, as a user allowed
/// only alice@example.com) and item 4 (CR, LF and ESC in the AUTH username
/// and in EHLO) on a node logging in the human format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_bypasses_are_refused_and_logs_cannot_be_forged() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut files = write_node(dir.path(), "from", &Settings::new(&url, up.addr.port()));
    add_solo(&files.config).await;
    let node = Serve::start(&mut files).await;

    let (mut c, code) = Client::login(files.smtp_port, SOLO, PASSWORD).await;
    assert_eq!(code, 235);
    for from in [
        "<ceo@example.com> <alice@example.com>",
        "ceo@example.com <alice@example.com>",
        "ceo@example.com: alice@example.com;",
        "<alice@example.com> evil@x",
    ] {
        let body =
            format!("From: {from}\r\nTo: <bob@dest.example>\r\nSubject: bypass\r\n\r\nx\r\n");
        let (code, text) = submit(&mut c, &body).await;
        assert_eq!(code, 550, "{from}: {text}");
        assert!(
            text.starts_with("550 5.7.1 the header From"),
            "{from}: {text}"
        );
        assert!(text.contains("RFC 5322 mailbox-list"), "{from}: {text}");
    }
    let ok = "From: \"Alice (ceo@example.com)\" <alice@example.com>\r\nTo: <bob@dest.example>\r\nSubject: fine\r\n\r\nx\r\n";
    assert_eq!(submit(&mut c, ok).await.0, 250);
    c.cmd("QUIT").await;

    // Log injection: a username and an EHLO name that carry a line break
    // and a terminal escape, each trying to forge an "auth ok" line.
    use base64::Engine;
    let forged = "2026-12-06T13:00:00.000000Z  INFO postgate: auth ok username=admin";
    let user = format!("mallory\r\n{forged}\u{1b}[2J");
    let mut c = Client::connect(files.smtp_port).await;
    let (code, _) = c.cmd("EHLO evil\u{1b}[31mred\u{7}").await;
    assert_eq!(code, 250);
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0x"));
    let (code, _) = c.cmd(&format!("AUTH PLAIN {token}")).await;
    assert_eq!(code, 535);
    c.cmd("QUIT").await;
    node.wait_log("auth failed", Duration::from_secs(10)).await;
    let logs = node.logs();
    assert!(!logs.contains('\u{1b}'), "raw ESC in the log: {logs:?}");
    assert!(!logs.contains('\u{7}'), "raw BEL in the log: {logs:?}");
    assert!(!logs.contains('\r'), "raw CR in the log: {logs:?}");
    assert!(
        !logs.lines().any(|l| l.starts_with("2026-12-06T13:00:00")),
        "a forged line: {logs}"
    );
    let failed = logs.lines().find(|l| l.contains("auth failed")).unwrap();
    assert!(
        failed.contains(&format!(r#"username="mallory\r\n{forged}\u{{1b}}[2J""#)),
        "{failed}"
    );
    let ehlo = logs
        .lines()
        .find(|l| l.contains("helo=") && l.contains("evil"))
        .unwrap_or_else(|| panic!("no ehlo line: {logs}"));
    assert!(ehlo.contains(r#"helo="evil\u{1b}[31mred\u{7}""#), "{ehlo}");
    drop(node);
}

/// Issue 12 item 4 in the JSON format: every line is one JSON object, the
/// username is a JSON string with its CR/LF/ESC escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_cannot_be_forged() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
    let s = Settings::new(&url, 9);
    let mut files = write_node(dir.path(), "json", &s);
    // The template has [log] filter only; format = "json" goes beside it.
    files.template = files.template.replace(
        "[log]\nfilter = \"info\"",
        "[log]\nformat = \"json\"\nfilter = \"info\"",
    );
    files.pick_ports();
    let node = Serve::start(&mut files).await;
    use base64::Engine;
    let user = "mallory\r\n{\"level\":\"INFO\",\"message\":\"auth ok\"}\u{1b}[2J";
    let mut c = Client::connect(files.smtp_port).await;
    c.cmd("EHLO evil\u{1b}[31m").await;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0x"));
    assert_eq!(c.cmd(&format!("AUTH PLAIN {token}")).await.0, 535);
    node.wait_log("auth failed", Duration::from_secs(10)).await;
    let logs = node.logs();
    assert!(!logs.contains('\u{1b}') && !logs.contains('\r'), "{logs:?}");
    let mut failed = None;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_ne!(v["message"], "auth ok", "forged: {line}");
        if v["message"] == "auth failed" {
            failed = Some(v);
        }
    }
    let failed = failed.expect("an auth failed line");
    assert_eq!(failed["username"], user, "{failed}");
    drop(node);
}

/// The value of an unlabelled counter on the node's /metrics.
async fn metric(http: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(http).await.unwrap();
    let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing: {text}"))
}

/// Issue 12 item 2: with `header_from = "off"` a From the login may not
/// use is relayed, but unsigned (and counted); a permitted From is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signs_only_a_from_the_login_may_use() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut s = Settings::new(&url, up.addr.port());
    s.extra = "[dkim]\nheader_from = \"off\"\n";
    let mut files = write_node(dir.path(), "dkim-off", &s);
    add_user(&files.config).await;
    for domain in ["example.com", "other.example"] {
        cli(
            &files.config,
            &[
                "dkim",
                "generate",
                "--domain",
                domain,
                "--selector",
                "ed1",
                "--algorithm",
                "ed25519-sha256",
            ],
            None,
        )
        .await;
    }
    let node = Serve::start(&mut files).await;
    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let own = message("signed-own");
    c.send("bob@dest.example", &own).await.expect("accepted");
    let spoof = "From: Boss <boss@other.example>\r\nTo: <bob@dest.example>\r\nSubject: unsigned-spoof\r\n\r\nx\r\n";
    c.send("bob@dest.example", spoof)
        .await
        .expect("header_from = off: accepted");
    let want = ["signed-own".to_string(), "unsigned-spoof".to_string()];
    wait_delivered(&up, &want, Duration::from_secs(30)).await;
    let got = |subject: &str| {
        let r = up
            .received()
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.data).contains(&format!("Subject: {subject}")))
            .unwrap();
        String::from_utf8_lossy(&r.data).to_string()
    };
    let signed = got("signed-own");
    assert!(
        signed.contains("DKIM-Signature:") && signed.contains("d=example.com"),
        "{signed}"
    );
    let unsigned = got("unsigned-spoof");
    assert!(!unsigned.contains("DKIM-Signature"), "{unsigned}");
    assert_eq!(
        metric(files.http, "postgate_dkim_unsigned_not_permitted_total").await,
        1.0
    );
    drop(node);
}

/// Issue 12 items 5 and 6 on one store URL: limits on the `backend`
/// given, one message a day, three recipients a message, two errors.
async fn quotas_on(dir: &Path, url: &str, backend: &str) {
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let extra = format!("[limits]\nbackend = \"{backend}\"\nmessages_per_day = 1\n");
    let mut s = Settings::new(url, up.addr.port());
    s.extra = &extra;
    let mut files = write_node(dir, &format!("quota-{backend}"), &s);
    files.template = files.template.replacen(
        "[[smtp.listener]]",
        "[smtp]\nmax_recipients = 3\nmax_errors = 2\n\n[[smtp.listener]]",
        1,
    );
    files.pick_ports();
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;
    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235, "{backend}");

    // Refused content costs nothing (and is one client error).
    let (code, text) = submit(&mut c, "From: alice@example.com\r\n\r\nbare\nLF\r\n").await;
    assert_eq!(code, 550, "{backend}: {text}");

    // A pipelined overshoot: 8 RCPTs for a cap of 3, max_errors 2.
    let mut batch = format!("MAIL FROM:<{FROM}>\r\n");
    for i in 0..8 {
        batch.push_str(&format!("RCPT TO:<r{i}@dest.example>\r\n"));
    }
    batch.push_str("DATA\r\n");
    c.send_raw(batch.as_bytes()).await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(c.reply().await.0);
    }
    assert_eq!(
        codes,
        [250, 250, 250, 250, 452, 452, 452, 452, 452, 354],
        "{backend}"
    );
    c.send_raw(format!("{}.\r\n", message("overshoot")).as_bytes())
        .await;
    assert_eq!(
        c.reply().await.0,
        250,
        "{backend}: the first 3 recipients kept"
    );

    // The day's one message is spent: 451 at MAIL, again and again, and
    // never 421 (server-side refusals are not client errors).
    for _ in 0..5 {
        let (code, text) = c.cmd(&format!("MAIL FROM:<{FROM}>")).await;
        assert_eq!(code, 451, "{backend}: {text}");
        assert!(
            text.contains("4.7.1 message quota for user alice exceeded (1 per day)"),
            "{backend}: {text}"
        );
    }
    assert_eq!(c.cmd("NOOP").await.0, 250, "{backend}");
    wait_delivered(&up, &["overshoot".to_string()], Duration::from_secs(30)).await;
    let mut rcpts: Vec<String> = up
        .received()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.data).contains("Subject: overshoot"))
        .flat_map(|r| r.rcpt_to)
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["r0@dest.example", "r1@dest.example", "r2@dest.example"],
        "{backend}"
    );
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_at_mail_and_error_counting_on_local_and_postgres_limits() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("postgate.db").display());
    quotas_on(dir.path(), &sqlite, "local").await;
    match common::pg_database_url().await {
        Some(pg) => quotas_on(dir.path(), &pg, "postgres").await,
        None => eprintln!("PostgreSQL not available: the postgres limits backend is not tested"),
    }
}
