//! The real `postgate` binary driven as an operator drives it: configs
//! written to a temp dir, accounts and DKIM keys made with the CLI, `serve`
//! started as a child process and stopped with real signals (SIGKILL,
//! SIGTERM, SIGHUP). Mail goes in through a small SMTP client over TCP and
//! comes out at the scriptable test upstream (common/upstream.rs).
//!
//! Every child process is killed when its guard drops, so a failing test
//! never leaves a server running. Every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use crate::common;
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

/// The binary under test: `POSTGATE_TEST_BIN` when set (a private copy,
/// since the shared target dir's binary may be rebuilt from another
/// checkout meanwhile), else the one cargo built.
fn bin() -> String {
    std::env::var("POSTGATE_TEST_BIN").unwrap_or_else(|_| BIN.into())
}

/// The binary cargo built (prefer [`bin`]).
const BIN: &str = env!("CARGO_BIN_EXE_postgate");
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";
const FROM: &str = "alice@example.com";
/// Bound on one SMTP reply from the node.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (bound, read, released), below the
/// ephemeral range (32768+) so outgoing connections never take it
/// meanwhile. Another process may still bind it first: [`Serve::start`]
/// then moves the node to new ports.
fn free_port() -> u16 {
    loop {
        let port = 20000 + (uuid::Uuid::new_v4().as_u128() % 12000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Store URLs to run a test on: a fresh SQLite file in `dir`, and a fresh
/// PostgreSQL database unless PostgreSQL is skipped.
async fn store_urls(dir: &Path) -> Vec<String> {
    let mut v = vec![format!("sqlite://{}", dir.join("postgate.db").display())];
    if let Some(pg) = common::pg_database_url().await {
        v.push(pg);
    }
    v
}

/// What differs between the nodes of the tests.
struct Settings<'a> {
    store_url: &'a str,
    upstream_port: u16,
    /// Extra TOML appended at the end (whole tables).
    extra: &'a str,
    /// Extra keys of the `[[upstream]]` table.
    upstream_extra: &'a str,
    /// "plain" or "starttls".
    mode: &'a str,
    grace: &'a str,
}

impl<'a> Settings<'a> {
    fn new(store_url: &'a str, upstream_port: u16) -> Self {
        Settings {
            store_url,
            upstream_port,
            extra: "",
            upstream_extra: "",
            mode: "plain",
            grace: "3s",
        }
    }
}

/// A node's files: its config (with fixed free ports) and its logs.
struct NodeFiles {
    dir: PathBuf,
    config: PathBuf,
    smtp_port: u16,
    http: SocketAddr,
    name: String,
    /// The config with `@SMTP_PORT@` and `@HTTP@` still to fill in.
    template: String,
}

impl NodeFiles {
    /// Picks new free ports and rewrites the config file.
    fn pick_ports(&mut self) {
        self.smtp_port = free_port();
        self.http = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = self
            .template
            .replace("@SMTP_PORT@", &self.smtp_port.to_string())
            .replace("@HTTP@", &self.http.to_string());
        std::fs::write(&self.config, text).unwrap();
    }
}

/// A short name of the backend `url` names, for file names and messages:
/// `sqlite` or `pg`.
fn backend_tag(url: &str) -> &'static str {
    if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "pg"
    }
}

/// Writes `dir/NAME.toml` for `s`, with a self-signed certificate in
/// `dir/cert.pem` + `dir/key.pem` (made once per dir).
fn write_node(dir: &Path, name: &str, s: &Settings) -> NodeFiles {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        let (c, k) = postgate::tls::self_signed(&["localhost".into()]).expect("cert");
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
    }
    let mut template = format!(
        r#"
[server]
hostname = "relay.test"
shutdown_grace = "{grace}"

[store]
url = "{url}"
max_connections = 4

[tls]
cert = "{cert}"
key = "{key}"

[[smtp.listener]]
address = "127.0.0.1:@SMTP_PORT@"
mode = "{mode}"

[auth]
max_concurrent_verifications = 2

[auth.hash]
memory_kib = 1024
iterations = 1
parallelism = 1

[http]
address = "@HTTP@"

[[upstream]]
name = "test-upstream"
host = "127.0.0.1"
port = {up}
tls = "none"
connect_timeout = "5s"
command_timeout = "10s"
data_timeout = "20s"
{upstream_extra}

[log]
filter = "info"

{extra}
"#,
        grace = s.grace,
        url = s.store_url,
        cert = cert.display(),
        key = key.display(),
        mode = s.mode,
        up = s.upstream_port,
        extra = s.extra,
        upstream_extra = s.upstream_extra,
    );
    if !s.extra.contains("[queue]") {
        template.push_str(QUEUE);
    }
    let mut files = NodeFiles {
        dir: dir.to_path_buf(),
        config: dir.join(format!("{name}.toml")),
        smtp_port: 0,
        http: "127.0.0.1:0".parse().unwrap(),
        name: name.to_string(),
        template,
    };
    files.pick_ports();
    files
}

/// Quick retries and short leases, so crash recovery fits in a test.
const QUEUE: &str = r#"
[queue]
workers = 2
batch = 4
lease = "5s"
retry_initial = "1s"
retry_max = "2s"
retry_jitter = 0.0
poll_interval = "100ms"
circuit_failures = 1000
circuit_cooldown = "1s"
"#;

/// Runs a CLI command against `config`; returns stdout (it must succeed).
async fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(bin());
    cmd.arg("-c").arg(config).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn postgate");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("CLI command timed out")
        .unwrap();
    assert!(
        out.status.success(),
        "postgate {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates the user and lets it send as @example.com.
async fn add_user(config: &Path) {
    // Management commands never create a store (issue #14): migrate first.
    cli(config, &["migrate"], None).await;
    cli(
        config,
        &["user", "add", USER, "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    )
    .await;
    cli(config, &["sender", "allow", USER, "@example.com"], None).await;
}

/// A running `postgate serve`; SIGKILLed when dropped.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Serve {
    /// Starts `serve -c` on `files` and waits until the SMTP port greets;
    /// when another process took one of its ports meanwhile, moves the
    /// node to new ports and tries again.
    async fn start(files: &mut NodeFiles) -> Serve {
        for _ in 0..5 {
            match Serve::try_start(files).await {
                Ok(serve) => return serve,
                Err(logs) if logs.contains("Address already in use") => files.pick_ports(),
                Err(logs) => panic!("serve exited at start: {logs}"),
            }
        }
        panic!("no free ports for serve after 5 tries");
    }

    /// Starts once: the running node, or its logs if it exited at start.
    async fn try_start(files: &NodeFiles) -> Result<Serve, String> {
        let log = files.dir.join(format!(
            "{}-{}.log",
            files.name,
            uuid::Uuid::new_v4().simple()
        ));
        let err = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .arg("-c")
            .arg(&files.config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(err.try_clone().unwrap())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn postgate serve");
        let mut serve = Serve { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = serve.child.try_wait().unwrap() {
                return Err(format!("({status}) {}", serve.logs()));
            }
            if let Ok(Ok(mut s)) = timeout(
                Duration::from_secs(2),
                TcpStream::connect(("127.0.0.1", files.smtp_port)),
            )
            .await
            {
                let mut b = [0u8; 3];
                if matches!(
                    timeout(Duration::from_secs(5), s.read_exact(&mut b)).await,
                    Ok(Ok(_))
                ) && &b == b"220"
                {
                    return Ok(serve);
                }
            }
            assert!(
                Instant::now() < deadline,
                "serve never greeted: {}",
                serve.logs()
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own live child.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// SIGKILL and reap.
    async fn crash(mut self) {
        self.signal(libc::SIGKILL);
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (up to `limit`).
    async fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}: {}",
                self.logs()
            );
            sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A minimal SMTP client (no TLS: the `plain` loopback listener).
struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Client {
    /// Connects and reads the greeting (must be 220).
    async fn connect(port: u16) -> Client {
        let s = timeout(
            Duration::from_secs(10),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .expect("connect timed out")
        .expect("connect");
        let (r, w) = s.into_split();
        let mut c = Client {
            r: BufReader::new(r),
            w,
        };
        let (code, text) = c.reply().await;
        assert_eq!(code, 220, "{text}");
        c
    }

    /// Connects, EHLO, AUTH PLAIN as `user`: the AUTH reply code.
    async fn login(port: u16, user: &str, password: &str) -> (Client, u16) {
        use base64::Engine;
        let mut c = Client::connect(port).await;
        let (code, text) = c.cmd("EHLO client.e2e").await;
        assert_eq!(code, 250, "{text}");
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let (code, _) = c.cmd(&format!("AUTH PLAIN {token}")).await;
        (c, code)
    }

    /// Reads one (possibly multi-line) reply: code and full text.
    async fn reply(&mut self) -> (u16, String) {
        self.try_reply().await.expect("connection closed")
    }

    /// Like [`Client::reply`], `None` when the connection closed first.
    async fn try_reply(&mut self) -> Option<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = timeout(REPLY_TIMEOUT, self.r.read_line(&mut line))
                .await
                .expect("reply timed out")
                .ok()?;
            if n == 0 {
                return None;
            }
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Some((line.get(..3)?.parse().ok()?, text));
            }
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.expect("write");
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// One transaction; Ok on 250 after the data, else the first refusal
    /// (the transaction is reset).
    async fn send(&mut self, rcpt: &str, body: &str) -> Result<(), (u16, String)> {
        self.send_as(FROM, rcpt, body).await
    }

    /// [`Client::send`] with envelope sender `from`.
    async fn send_as(&mut self, from: &str, rcpt: &str, body: &str) -> Result<(), (u16, String)> {
        let steps = [format!("MAIL FROM:<{from}>"), format!("RCPT TO:<{rcpt}>")];
        for s in steps {
            let (code, text) = self.cmd(&s).await;
            if code != 250 {
                self.cmd("RSET").await;
                return Err((code, text));
            }
        }
        let (code, text) = self.cmd("DATA").await;
        if code != 354 {
            self.cmd("RSET").await;
            return Err((code, text));
        }
        self.send_raw(format!("{body}.\r\n").as_bytes()).await;
        match self.reply().await {
            (250, _) => Ok(()),
            other => Err(other),
        }
    }
}

/// A message body with a unique subject (CRLF lines, no final dot).
fn message(subject: &str) -> String {
    format!(
        "From: Alice <{FROM}>\r\nTo: <bob@dest.example>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    )
}

/// Subjects of everything the upstream accepted.
fn received_subjects(up: &UpstreamServer) -> Vec<String> {
    up.received()
        .iter()
        .filter_map(|r| {
            let text = String::from_utf8_lossy(&r.data);
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

/// Waits until the upstream has accepted every subject of `want`.
async fn wait_delivered(up: &UpstreamServer, want: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = received_subjects(up);
        let missing: Vec<&String> = want.iter().filter(|s| !got.contains(s)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never delivered: {missing:?} (got {got:?})"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `postgate queue list` shows no message (every outcome was
/// recorded: nothing is left leased or pending).
async fn wait_queue_empty(config: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let list = cli(config, &["queue", "list", "--json"], None).await;
        let doc: serde_json::Value = serde_json::from_str(&list).expect("queue list --json");
        if doc["summary"]["messages"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "queue never emptied:\n{list}");
        sleep(Duration::from_millis(300)).await;
    }
}

/// GET `path` on the HTTP server: the status code.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

mod api_e2e;
mod crash;
mod delivery_nodes;
mod disk_full;
mod dkim_e2e;
mod events_webhook;
mod health;
mod journal_e2e;
mod nodes;
mod oauth_e2e;
mod operator_cli;
mod operator_queue;
mod outcome_outage;
mod session_security;
mod signals;
mod store_outage;
mod store_pools;
