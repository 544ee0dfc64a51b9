//! The operations HTTP server on a real socket, with a real store, asked by
//! a real client (curl); /metrics is checked by Prometheus' own promtool.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use postgate::http::{
    self, Admin, AdminError, AdminToken, HttpState, QueueQuery, UpstreamHealth, UpstreamStatus,
};
use postgate::metrics::{AuthResult, Mechanism, Metrics, MetricsOptions, RejectReason, TlsMode};
use postgate::store::Store;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::{self, pg_admin, pg_allow_connections, pg_exec, pg_kick, SqliteWriteLock};

/// A running `http::serve` on 127.0.0.1:0.
struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(state: HttpState) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(http::serve(listener, state, shutdown.clone()));
    Server {
        addr,
        shutdown,
        task,
    }
}

impl Server {
    /// Stops the server and checks that `serve` returns and the port closes.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "port still open after shutdown"
        );
    }
}

/// One curl response.
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// Runs curl (off the async threads) and splits status, headers and body.
async fn curl(method: &str, url: String, token: Option<&str>) -> Reply {
    let method = method.to_string();
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-i", "--max-time", "20", "-X", &method]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd.arg(&url).output().expect("run curl");
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (headers, body) = text.split_once("\r\n\r\n").expect("header/body split");
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        Reply {
            status,
            headers: headers.to_string(),
            body: body.to_string(),
        }
    })
    .await
    .unwrap()
}

async fn get(server: &Server, path: &str) -> Reply {
    curl("GET", format!("http://{}{path}", server.addr), None).await
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(&MetricsOptions::default()))
}

/// Value of the sample `series` (exact text before the value) in `body`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn ops_metrics_are_prometheus_text_and_counters_move() {
    let ts = common::sqlite_store().await;
    let m = metrics();
    let server = start(HttpState::new(m.clone(), ts.store.clone())).await;

    let before = get(&server, "/metrics").await;
    assert_eq!(before.status, 200);
    assert!(
        before.headers.contains("text/plain; version=0.0.4"),
        "{}",
        before.headers
    );
    let failed = "postgate_auth_attempts_total{mechanism=\"plain\",result=\"failed\"}";
    assert_eq!(sample(&before.body, failed), Some(0.0));

    m.auth_attempt(Mechanism::Plain, AuthResult::Failed);
    m.auth_attempt(Mechanism::Plain, AuthResult::Failed);
    m.message_rejected(RejectReason::SenderNotAllowed);
    m.message_queued(Some("alice"), 2, 5000);
    m.listener("submission", TlsMode::Starttls)
        .connection_accepted();

    let after = get(&server, "/metrics").await;
    assert_eq!(sample(&after.body, failed), Some(2.0));
    assert_eq!(
        sample(
            &after.body,
            "postgate_messages_rejected_total{reason=\"sender_not_allowed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&after.body, "postgate_recipients_total"), Some(2.0));
    assert_eq!(
        sample(
            &after.body,
            "postgate_connections_total{listener=\"submission\",tls=\"starttls\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after.body, "postgate_message_size_bytes_count"),
        Some(1.0)
    );

    // Prometheus' own parser and linter (naming conventions, help, types).
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by tests/run.sh");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(after.body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let health = get(&server, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(get(&server, "/nothing").await.status, 404);
    let post = curl("POST", format!("http://{}/metrics", server.addr), None).await;
    assert_eq!(post.status, 405);
    server.stop().await;
}

async fn ready(server: &Server) -> (u16, Value) {
    let r = get(server, "/readyz").await;
    (
        r.status,
        serde_json::from_str(&r.body).expect("readyz answers JSON"),
    )
}

#[tokio::test]
async fn ops_readyz_fails_while_the_store_is_down_and_recovers() {
    for ts in common::all_stores().await {
        let mut state = HttpState::new(metrics(), ts.store.clone());
        state.readiness_timeout = Duration::from_secs(1);
        let server = start(state).await;
        let (status, body) = ready(&server).await;
        assert_eq!(
            (status, body["checks"]["store"].as_str()),
            (200, Some("ok")),
            "{} {body}",
            ts.backend
        );

        if ts.backend == "sqlite" {
            let path = ts.url.trim_start_matches("sqlite://").to_string();
            let lock = SqliteWriteLock::take(&path);
            let (status, body) = ready(&server).await;
            assert_eq!(status, 503, "sqlite locked: {body}");
            assert_eq!(body["status"], "not ready");
            // The liveness probe does not depend on the store.
            assert_eq!(get(&server, "/healthz").await.status, 200);
            lock.release();
            let (status, body) = ready(&server).await;
            assert_eq!(status, 200, "sqlite unlocked: {body}");
        } else {
            let db = ts.url.rsplit('/').next().unwrap().to_string();
            let mut admin = pg_admin().await;

            // 1. The database refuses connections and the pool's are killed.
            pg_allow_connections(&mut admin, &db, false).await;
            let (status, body) = ready(&server).await;
            assert_eq!(status, 503, "connections refused: {body}");
            pg_allow_connections(&mut admin, &db, true).await;
            let (status, body) = ready(&server).await;
            assert_eq!(status, 200, "connections allowed again: {body}");

            // 2. Reachable but read-only: the queue is not writable.
            pg_exec(
                &mut admin,
                &format!("ALTER DATABASE {db} SET default_transaction_read_only = on"),
            )
            .await;
            pg_kick(&mut admin, &db).await;
            let (status, body) = ready(&server).await;
            assert_eq!(status, 503, "read-only: {body}");
            assert!(
                body["checks"]["store"]
                    .as_str()
                    .unwrap()
                    .contains("read-only"),
                "{body}"
            );
            pg_exec(
                &mut admin,
                &format!("ALTER DATABASE {db} RESET default_transaction_read_only"),
            )
            .await;
            pg_kick(&mut admin, &db).await;
            assert_eq!(ready(&server).await.0, 200);

            // 3. The database is dropped, then restored (recreated and migrated).
            pg_exec(&mut admin, &format!("DROP DATABASE {db} WITH (FORCE)")).await;
            let (status, body) = ready(&server).await;
            assert_eq!(status, 503, "dropped: {body}");
            assert!(
                body["checks"]["store"]
                    .as_str()
                    .unwrap()
                    .contains("does not exist"),
                "{body}"
            );
            pg_exec(&mut admin, &format!("CREATE DATABASE {db}")).await;
            postgate::store::open_and_migrate(&ts.url, &Default::default())
                .await
                .unwrap();
            let (status, body) = ready(&server).await;
            assert_eq!(status, 200, "restored: {body}");
        }
        server.stop().await;
    }
}

/// PostgreSQL's readiness probe goes through the enqueue writer (issue 13:
/// a probe on another path said ready while every enqueue failed): while an
/// enqueue group is blocked, here on another transaction's uncommitted row
/// with the same queue id, `/readyz` is 503; once the group commits, 200.
#[tokio::test]
async fn ops_readyz_waits_behind_a_blocked_enqueue_on_postgres() {
    use sqlx::Connection;
    for ts in common::all_stores().await {
        if ts.backend != "postgres" {
            continue;
        }
        let mut state = HttpState::new(metrics(), ts.store.clone());
        state.readiness_timeout = Duration::from_secs(1);
        let server = start(state).await;
        assert_eq!(ready(&server).await.0, 200);

        let m = crate::delivery_queue::message("a@example.com", &["r@x.org"], b"x\r\n", 1);
        let mut other = sqlx::PgConnection::connect(&ts.url).await.unwrap();
        pg_exec(&mut other, "BEGIN").await;
        pg_exec(
            &mut other,
            &format!(
                "INSERT INTO queue_messages (id, sender, size, body, received_at, expires_at)
                 VALUES ('{}', '', 1, '\\x00', 0, 0)",
                m.id
            ),
        )
        .await;
        let store = ts.store.clone();
        let enqueue = tokio::spawn(async move { store.enqueue(&m).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !enqueue.is_finished(),
            "the enqueue waits for the other transaction"
        );
        let (status, body) = ready(&server).await;
        assert_eq!(status, 503, "an enqueue cannot commit now: {body}");

        pg_exec(&mut other, "ROLLBACK").await;
        enqueue
            .await
            .unwrap()
            .expect("the enqueue commits once the row is gone");
        let (status, body) = ready(&server).await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn ops_readyz_ignores_upstreams_which_health_upstreams_reports_and_draining_is_503() {
    let ts = common::sqlite_store().await;
    let usable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let probe = usable.clone();
    let upstreams: Arc<dyn UpstreamHealth> = Arc::new(move || UpstreamStatus {
        usable: probe.load(std::sync::atomic::Ordering::SeqCst),
        configured: 2,
    });
    let mut state = HttpState::new(metrics(), ts.store.clone());
    state.upstreams = Some(upstreams);
    let draining = state.draining.clone();
    let server = start(state).await;

    // No usable upstream: still ready (mail is accepted and queued; issue
    // 13), and /health/upstreams says so.
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"], json!({"store": "ok"}));
    let health = get(&server, "/health/upstreams").await;
    assert_eq!(health.status, 503, "{}", health.body);
    let health: Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(
        (&health["usable"], &health["configured"], &health["status"]),
        (&json!(0), &json!(2), &json!("no usable upstream"))
    );

    usable.store(1, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(ready(&server).await.0, 200);
    assert_eq!(get(&server, "/health/upstreams").await.status, 200);

    draining.cancel();
    let (status, body) = ready(&server).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("draining")));
    // Draining still serves metrics and liveness.
    assert_eq!(get(&server, "/metrics").await.status, 200);
    assert_eq!(get(&server, "/healthz").await.status, 200);
    server.stop().await;
}

/// Records admin calls; answers from a fixed set of queue ids. It stands in
/// for the daemon's implementation (delivery + limits) to test the HTTP layer.
#[derive(Default)]
struct RecordingAdmin {
    calls: Mutex<Vec<String>>,
    store: Option<Arc<dyn Store>>,
}

impl RecordingAdmin {
    fn call(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }
    fn known(id: &str) -> Result<(), AdminError> {
        if id == "0191aa" {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!("message {id}")))
        }
    }
}

#[async_trait]
impl Admin for RecordingAdmin {
    async fn queue_list(&self, query: &QueueQuery) -> Result<Value, AdminError> {
        self.call(format!("list {}", query.limit));
        Ok(json!([{ "id": "0191aa" }]))
    }
    async fn queue_show(&self, id: &str) -> Result<Value, AdminError> {
        self.call(format!("show {id}"));
        Self::known(id)?;
        Ok(json!({ "id": id, "recipients": [] }))
    }
    async fn queue_retry(&self, id: &str) -> Result<Value, AdminError> {
        self.call(format!("retry {id}"));
        Self::known(id)?;
        Ok(json!({ "id": id, "retried": 1 }))
    }
    async fn queue_delete(&self, id: &str) -> Result<Value, AdminError> {
        self.call(format!("delete {id}"));
        Self::known(id)?;
        Ok(json!({ "id": id, "deleted": true }))
    }
    async fn limits_show(&self, subject: Option<&str>) -> Result<Value, AdminError> {
        self.call(format!("limits {subject:?}"));
        // A real store read, so a store outage shows as 503.
        let users = self.store.as_ref().unwrap().user_list().await?;
        Ok(json!({ "subject": subject, "users": users.len() }))
    }
    async fn limits_reset(&self, subject: &str) -> Result<Value, AdminError> {
        self.call(format!("reset {subject}"));
        Ok(json!({ "reset": subject }))
    }
}

#[tokio::test]
async fn ops_admin_needs_the_bearer_token() {
    let ts = common::sqlite_store().await;
    let token = "s3cret-admin-token-0123456789";
    let admin = Arc::new(RecordingAdmin {
        store: Some(ts.store.clone()),
        ..Default::default()
    });

    // No token configured: the admin endpoints do not exist.
    let mut state = HttpState::new(metrics(), ts.store.clone());
    state.admin = Some(admin.clone());
    let server = start(state.clone()).await;
    let r = curl(
        "GET",
        format!("http://{}/admin/queue", server.addr),
        Some(token),
    )
    .await;
    assert_eq!(r.status, 404);
    server.stop().await;
    assert!(admin.calls.lock().unwrap().is_empty());

    // A weak token is refused at configuration time.
    let mut config = http::HttpConfig {
        admin_token: Some(postgate::config::Secret::inline("short")),
        ..Default::default()
    };
    assert!(AdminToken::new("short".to_string()).is_err());
    let build = |config: &http::HttpConfig| {
        HttpState::from_config(
            config,
            state.metrics.clone(),
            ts.store.clone(),
            Some(admin.clone()),
            None,
            CancellationToken::new(),
        )
    };
    assert!(build(&config).is_err());
    config.admin_token = Some(postgate::config::Secret::inline(token));
    let server = start(build(&config).unwrap()).await;
    let url = |p: &str| format!("http://{}{p}", server.addr);

    let r = curl("GET", url("/admin/queue"), None).await;
    assert_eq!(r.status, 401);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.headers
    );
    assert_eq!(
        curl(
            "GET",
            url("/admin/queue"),
            Some("s3cret-admin-token-012345678")
        )
        .await
        .status,
        401
    );
    assert_eq!(
        curl("DELETE", url("/admin/queue/0191aa"), Some("wrong"))
            .await
            .status,
        401
    );
    assert!(
        admin.calls.lock().unwrap().is_empty(),
        "no call without the token"
    );

    let r = curl("GET", url("/admin/queue?limit=10"), Some(token)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()[0]["id"],
        "0191aa"
    );
    let r = curl("GET", url("/admin/queue/0191aa"), Some(token)).await;
    assert_eq!(
        (
            r.status,
            serde_json::from_str::<Value>(&r.body).unwrap()["id"].as_str()
        ),
        (200, Some("0191aa"))
    );
    assert_eq!(
        curl("POST", url("/admin/queue/0191aa/retry"), Some(token))
            .await
            .status,
        200
    );
    assert_eq!(
        curl("DELETE", url("/admin/queue/0191aa"), Some(token))
            .await
            .status,
        200
    );
    assert_eq!(
        curl("GET", url("/admin/queue/ffff"), Some(token))
            .await
            .status,
        404
    );
    assert_eq!(
        curl("PUT", url("/admin/queue/0191aa"), Some(token))
            .await
            .status,
        405
    );
    let r = curl("GET", url("/admin/limits/bob%40example.com"), Some(token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        curl("POST", url("/admin/limits/2001:db8::7/reset"), Some(token))
            .await
            .status,
        200
    );
    assert_eq!(
        *admin.calls.lock().unwrap(),
        vec![
            "list 10",
            "show 0191aa",
            "retry 0191aa",
            "delete 0191aa",
            "show ffff",
            "limits Some(\"bob@example.com\")",
            "reset 2001:db8::7"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn ops_shutdown_closes_idle_and_keepalive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ts = common::sqlite_store().await;
    let server = start(HttpState::new(metrics(), ts.store.clone())).await;
    // One client that never sends a byte, one that keeps its connection alive.
    let idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut keepalive = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    keepalive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = keepalive.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // Both connections were closed by the server.
    let mut keepalive_rest = Vec::new();
    keepalive.read_to_end(&mut keepalive_rest).await.unwrap();
    let mut idle = idle;
    let mut idle_rest = Vec::new();
    idle.read_to_end(&mut idle_rest).await.unwrap();
}
