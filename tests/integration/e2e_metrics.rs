//! A whole node (`postgate::run::run`, config as an operator writes it) on
//! each store backend, driven by a real client (Python smtplib over
//! STARTTLS) and read by a real scraper (curl on /metrics, then Prometheus'
//! own `promtool check metrics`): each SMTP event moves exactly its counter.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use postgate::config::Config;
use postgate::run::{Bound, Control};
use postgate::smtp::server::Server;
use tokio::net::TcpListener;

use crate::common;

const USER: &str = "carol";
const PASSWORD: &str = "metrics are counted once";
/// The listener's name in the metrics: its configured address.
const LISTENER: &str = "127.0.0.1:0";
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// One STARTTLS session: a failed AUTH, a good AUTH, one good message, one
/// message with a header From the user may not use, one refused envelope
/// sender. Then a second connection whose TLS handshake is garbage.
const PY: &str = r#"
import os, smtplib, socket, ssl
port = int(os.environ["PORT"])
ctx = ssl.create_default_context(cafile=os.environ["CA"])
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
s.starttls(context=ctx)
s.ehlo("client.test")
s.user, s.password = os.environ["USER_"], "wrong password"
try:
    s.auth("PLAIN", s.auth_plain)
    raise SystemExit("wrong password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.user, s.password = os.environ["USER_"], os.environ["PASS"]
code, resp = s.auth("PLAIN", s.auth_plain)
assert code == 235, (code, resp)
good = b"From: carol@example.com\r\nTo: x@dest.example\r\nSubject: counted\r\n\r\nhello\r\n"
assert s.sendmail("carol@example.com", ["x@dest.example", "y@dest.example"], good) == {}
bad_from = b"From: eve@other.example\r\nTo: x@dest.example\r\nSubject: spoof\r\n\r\nhi\r\n"
try:
    s.sendmail("carol@example.com", ["x@dest.example"], bad_from)
    raise SystemExit("foreign header From accepted")
except smtplib.SMTPDataError as e:
    assert e.smtp_code == 550, e
code, resp = s.mail("eve@other.example")
assert code == 553, (code, resp)
s.rset()
s.quit()

t = socket.create_connection(("127.0.0.1", port), timeout=30)
f = t.makefile("rb")
assert f.readline().startswith(b"220")
t.sendall(b"EHLO client.test\r\n")
while True:
    line = f.readline()
    assert line.startswith(b"250"), line
    if line[3:4] == b" ":
        break
t.sendall(b"STARTTLS\r\n")
assert f.readline().startswith(b"220")
t.sendall(b"this is not a TLS ClientHello\r\n" * 8)
try:
    while t.recv(4096):
        pass
except OSError:
    pass
t.close()
"#;

/// Runs the client script against `port`, trusting `ca`.
async fn client(port: u16, ca: String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("timeout")
            .args(["60", "python3", "-c", PY])
            .env("PORT", port.to_string())
            .env("CA", ca)
            .env("USER_", USER)
            .env("PASS", PASSWORD)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "smtplib script failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await
    .unwrap();
}

/// GET /metrics with curl: the body (status must be 200).
async fn scrape(addr: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .arg(format!("http://{addr}/metrics"))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        assert_eq!(status, "200", "{body}");
        body.to_string()
    })
    .await
    .unwrap()
}

/// The value of the series written exactly as `series` (name and labels).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of every series of metric `name` (all label values).
fn total(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            (rest.is_empty() || rest.starts_with('{')).then_some(())?;
            value.parse::<f64>().ok()
        })
        .sum()
}

fn promtool_accepts(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by tests/run.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The config of the node, as TOML (cheap argon2 so the test is fast);
/// `extra` adds tables at the end.
fn config(store_url: &str, dir: &std::path::Path, extra: &str) -> Config {
    let d = dir.display();
    let text = format!(
        r#"
[server]
hostname = "relay.test"
shutdown_grace = "2s"

[store]
url = "{store_url}"

[tls]
cert = "{d}/cert.pem"
key = "{d}/key.pem"

[[smtp.listener]]
address = "{LISTENER}"
mode = "starttls"

[auth]
max_concurrent_verifications = 2

[auth.hash]
memory_kib = 1024
iterations = 1
parallelism = 1

[http]
address = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"

{extra}
"#
    );
    Config::parse(&text, "e2e_metrics.toml").expect("valid config")
}

/// A node started with [`postgate::run::run`] on sockets bound to port 0.
struct Node {
    smtp_port: u16,
    http: std::net::SocketAddr,
    control: Control,
    task: tokio::task::JoinHandle<Result<(), postgate::run::RunError>>,
    /// Holds the certificate files.
    dir: tempfile::TempDir,
}

impl Node {
    /// Writes a self-signed certificate, creates the user, binds and runs
    /// the node on `store_url`; `extra` adds TOML tables to the config.
    async fn start(store_url: &str, extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) =
            postgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let config = config(store_url, dir.path(), extra);

        let store = postgate::store::open_and_migrate(store_url, &config.store.options())
            .await
            .unwrap();
        postgate::accounts::user_add(&*store, USER, "default", PASSWORD, &config.auth.hash)
            .await
            .unwrap();
        postgate::accounts::sender_allow(&*store, USER, "@example.com")
            .await
            .unwrap();

        let bound = Bound {
            smtp: Server::bind(&config.smtp.listeners).await.unwrap(),
            http: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        };
        let smtp_port = bound.smtp[0].1.local_addr().unwrap().port();
        let http = bound.http.as_ref().unwrap().local_addr().unwrap();
        let control = Control::default();
        let task = tokio::spawn(postgate::run::run(config, bound, control.clone()));
        Node {
            smtp_port,
            http,
            control,
            task,
            dir,
        }
    }

    /// The certificate, for the client to trust.
    fn ca(&self) -> String {
        self.dir.path().join("cert.pem").display().to_string()
    }

    /// Scrapes until no session is open (the server ends a session shortly
    /// after the client hung up) and returns that scrape.
    async fn scrape_idle(&self) -> String {
        let active = format!("postgate_sessions_active{{listener=\"{LISTENER}\"}}");
        let mut body = scrape(self.http).await;
        for _ in 0..100 {
            if sample(&body, &active) == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            body = scrape(self.http).await;
        }
        assert_eq!(sample(&body, &active), Some(0.0), "sessions still open");
        body
    }

    /// Shuts down through `Control`: `run` must return `Ok` and the HTTP
    /// port must be closed.
    async fn stop(self) {
        self.control.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("run() returns after shutdown")
            .unwrap();
        assert!(result.is_ok(), "run() failed: {result:?}");
        assert!(
            tokio::net::TcpStream::connect(self.http).await.is_err(),
            "HTTP still listening after shutdown"
        );
    }
}

async fn scenario(store_url: String, b: &str) {
    let node = Node::start(&store_url, "").await;
    let before = scrape(node.http).await;
    let auth = |result: &str| {
        format!("postgate_auth_attempts_total{{mechanism=\"plain\",result=\"{result}\"}}")
    };
    assert_eq!(sample(&before, &auth("success")), Some(0.0), "{b}");
    assert_eq!(
        total(&before, "postgate_messages_rejected_total"),
        0.0,
        "{b}"
    );

    client(node.smtp_port, node.ca()).await;

    // Both sessions are over: everything is read from that one scrape.
    let after = node.scrape_idle().await;
    assert_eq!(
        sample(
            &after,
            &format!("postgate_connections_total{{listener=\"{LISTENER}\",tls=\"starttls\"}}")
        ),
        Some(2.0),
        "{b}"
    );
    assert_eq!(
        total(&after, "postgate_connections_refused_total"),
        0.0,
        "{b}"
    );
    assert_eq!(
        sample(
            &after,
            &format!("postgate_tls_handshake_failures_total{{listener=\"{LISTENER}\"}}")
        ),
        Some(1.0),
        "{b}"
    );
    assert_eq!(sample(&after, &auth("success")), Some(1.0), "{b}");
    assert_eq!(sample(&after, &auth("failed")), Some(1.0), "{b}");
    assert_eq!(total(&after, "postgate_auth_attempts_total"), 2.0, "{b}");
    // The good message and the one with a foreign header From were both
    // received in full; only the good one was queued.
    assert_eq!(
        sample(&after, "postgate_messages_received_total"),
        Some(2.0),
        "{b}"
    );
    assert_eq!(
        sample(&after, "postgate_messages_queued_total"),
        Some(1.0),
        "{b}"
    );
    assert_eq!(
        sample(&after, "postgate_recipients_total"),
        Some(2.0),
        "{b}"
    );
    assert_eq!(
        sample(&after, "postgate_message_size_bytes_count"),
        Some(1.0),
        "{b}"
    );
    let reason = |r: &str| format!("postgate_messages_rejected_total{{reason=\"{r}\"}}");
    assert_eq!(
        sample(&after, &reason("sender_not_allowed")),
        Some(1.0),
        "{b}"
    );
    assert_eq!(
        sample(&after, &reason("from_not_allowed")),
        Some(1.0),
        "{b}"
    );
    assert_eq!(
        total(&after, "postgate_messages_rejected_total"),
        2.0,
        "{b}: no other refusal counted"
    );
    assert_eq!(
        total(&after, "postgate_rate_limit_rejections_total"),
        0.0,
        "{b}"
    );
    // Store timings: one enqueue, two login lookups, one credential use; no errors.
    let op =
        |o: &str| format!("postgate_store_operation_duration_seconds_count{{operation=\"{o}\"}}");
    assert_eq!(sample(&after, &op("enqueue")), Some(1.0), "{b}");
    assert_eq!(sample(&after, &op("login_lookup")), Some(2.0), "{b}");
    assert_eq!(sample(&after, &op("credential_used")), Some(1.0), "{b}");
    assert_eq!(total(&after, "postgate_store_errors_total"), 0.0, "{b}");

    // The stored size is what the histogram saw (after fixups and signing).
    let stored = stored_sizes(&store_url).await;
    assert_eq!(stored.len(), 1, "{b}: one message in the queue");
    assert_eq!(
        sample(&after, "postgate_message_size_bytes_sum"),
        Some(stored[0] as f64),
        "{b}"
    );

    promtool_accepts(&after);
    node.stop().await;
}

/// The size of every queued message body, read with plain SQL.
async fn stored_sizes(url: &str) -> Vec<u64> {
    use sqlx::Row;
    let sql = "SELECT body FROM queue_messages ORDER BY received_at, id";
    macro_rules! read {
        ($pool:expr) => {{
            let pool = $pool;
            let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows.iter()
                .map(|r| r.get::<Vec<u8>, _>("body").len() as u64)
                .collect()
        }};
    }
    if url.starts_with("sqlite:") {
        read!(sqlx::SqlitePool::connect(url).await.unwrap())
    } else {
        read!(sqlx::PgPool::connect(url).await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_metrics_count_a_scripted_session_on_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("postgate.db").display());
    scenario(sqlite, "sqlite").await;
    if let Some(pg) = common::pg_database_url().await {
        scenario(pg, "postgres").await;
    }
}

/// A raw SMTP connection to the node.
struct Raw {
    r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (r, w) = tcp.into_split();
        Raw {
            r: tokio::io::BufReader::new(r),
            w,
        }
    }

    /// The last line of the next reply.
    async fn reply(&mut self) -> String {
        use tokio::io::AsyncBufReadExt;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        use tokio::io::AsyncWriteExt;
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_metrics_count_connection_refusals_and_open_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
    let node = Node::start(
        &url,
        "[smtp]\nmax_connections_per_ip = 1\n\n[limits]\nip_connections_per_minute = 1\n",
    )
    .await;
    let active = format!("postgate_sessions_active{{listener=\"{LISTENER}\"}}");
    let refused = |r: &str| {
        format!("postgate_connections_refused_total{{listener=\"{LISTENER}\",reason=\"{r}\"}}")
    };

    let mut first = Raw::connect(node.smtp_port).await;
    assert!(first.reply().await.starts_with("220 "));
    // Before STARTTLS, MAIL is refused: a transaction refused for want of AUTH.
    assert!(first.cmd("EHLO client.test").await.starts_with("250 "));
    let r = first.cmd("MAIL FROM:<carol@example.com>").await;
    assert!(r.starts_with("530 "), "{r}");
    let open = scrape(node.http).await;
    assert_eq!(sample(&open, &active), Some(1.0), "one session open");

    // A second connection from the same IP: over the per-IP cap.
    let mut second = Raw::connect(node.smtp_port).await;
    let r = second.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    let during = scrape(node.http).await;
    assert_eq!(sample(&during, &refused("ip_cap")), Some(1.0));
    assert_eq!(
        sample(&during, &active),
        Some(1.0),
        "a refusal is no session"
    );

    assert!(first.cmd("QUIT").await.starts_with("221 "));
    drop((first, second));
    node.scrape_idle().await;

    // A third one: the connection rate (1 per minute; the refused one was
    // not charged) refuses it, counted once as a refusal and once as a
    // rate-limit rejection (by the limiter's SessionLimits adapter).
    let mut third = Raw::connect(node.smtp_port).await;
    let r = third.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    drop(third);
    let after = node.scrape_idle().await;
    assert_eq!(sample(&after, &refused("rate_limited")), Some(1.0));
    assert_eq!(
        sample(
            &after,
            "postgate_rate_limit_rejections_total{limit=\"connections\",scope=\"ip\"}"
        ),
        Some(1.0)
    );
    assert_eq!(total(&after, "postgate_rate_limit_rejections_total"), 1.0);
    assert_eq!(
        sample(
            &after,
            &format!("postgate_connections_total{{listener=\"{LISTENER}\",tls=\"starttls\"}}")
        ),
        Some(3.0),
        "refused connections were accepted first"
    );
    assert_eq!(total(&after, "postgate_connections_refused_total"), 2.0);
    assert_eq!(
        sample(
            &after,
            "postgate_messages_rejected_total{reason=\"auth_required\"}"
        ),
        Some(1.0)
    );
    assert_eq!(total(&after, "postgate_messages_rejected_total"), 1.0);
    assert_eq!(total(&after, "postgate_tls_handshake_failures_total"), 0.0);
    promtool_accepts(&after);
    node.stop().await;
}

/// `curl` against the admin API: (status, body).
fn admin(http: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .arg(format!("http://{http}/admin{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The admin endpoints act on the node's live queue and in-process limiter
/// (the only way to reach `local` limit counters), on both stores.
/// Multi-threaded: curl blocks a thread while the node answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_admin_endpoints_act_on_the_live_queue_and_limits() {
    let mut urls = vec![];
    let dir = tempfile::tempdir().unwrap();
    urls.push(format!(
        "sqlite://{}",
        dir.path().join("admin.db").display()
    ));
    if let Some(pg) = common::pg_database_url().await {
        urls.push(pg);
    }
    for url in urls {
        let node = Node::start(&url, "").await;
        let store = postgate::store::open(&url, &Default::default())
            .await
            .unwrap();
        let id = postgate::store::new_queue_id();
        let now = 1_700_000_000_000_i64;
        store
            .enqueue(&postgate::store::NewMessage {
                id: id.clone(),
                sender: "carol@example.com".into(),
                recipients: vec![postgate::store::NewRecipient {
                    address: "dave@example.net".into(),
                    notify: None,
                    orcpt: None,
                }],
                user_id: None,
                username: Some(USER.into()),
                credential: None,
                body: bytes::Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n"),
                envid: None,
                dsn_ret: None,
                is_dsn: false,
                smtputf8: false,
                received_at: now + 3_600_000_000,
                expires_at: now + 7_200_000_000,
                journal: None,
            })
            .await
            .unwrap();

        let (code, body) = admin(node.http, "GET", "/queue");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&id), "{body}");
        let (code, body) = admin(node.http, "GET", &format!("/queue/{id}"));
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("dave@example.net"), "{body}");
        let (code, body) = admin(node.http, "POST", &format!("/queue/{id}/retry"));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["recipients_due_now"], 1, "{body}");
        let (code, _) = admin(node.http, "DELETE", &format!("/queue/{id}"));
        assert_eq!(code, 200);
        let (code, _) = admin(node.http, "GET", &format!("/queue/{id}"));
        assert_eq!(code, 404, "deleted message is gone");

        // A connection leaves a per-IP counter in the in-process limiter.
        let mut raw = Raw::connect(node.smtp_port).await;
        assert!(raw.reply().await.starts_with("220"));
        let (code, body) = admin(node.http, "GET", "/limits");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("127.0.0.1"), "{body}");
        let (code, body) = admin(node.http, "POST", "/limits/127.0.0.1/reset");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["removed"].as_u64().unwrap_or(0) >= 1, "{body}");
        let (_, body) = admin(node.http, "GET", "/limits");
        assert!(!body.contains("127.0.0.1"), "{body}");
        drop(raw);
        node.stop().await;
    }
}
