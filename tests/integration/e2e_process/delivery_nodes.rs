//! Issue #4: "Two postgate processes sharing one PostgreSQL deliver 1,000
//! messages with no duplicate and no loss." Two `postgate serve` processes
//! on one database, each with its own STARTTLS submission listener, one
//! shared upstream. 1,000 messages go in through both nodes at once (Python
//! smtplib: STARTTLS, certificate verified, AUTH); every one must reach the
//! upstream exactly once, both nodes must have delivered some (else the
//! sharing is untested), and the queue tables must end empty.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// Messages submitted (and to be delivered).
const N: usize = 1000;
/// Concurrent SMTP sessions per node.
const SESSIONS_PER_NODE: usize = 5;
/// Subject and Message-ID token prefix.
const TAG: &str = "twonodes";

/// Both nodes compete for every claim: small batches, quick polling, and a
/// lease far beyond a batch's delivery time, so that a duplicate can only
/// come from a claim bug, not from a lease that expired on a busy machine.
/// No per-user message quotas: 1,000 messages from one user in seconds.
const EXTRA: &str = r#"
[queue]
workers = 2
batch = 4
lease = "60s"
retry_initial = "1s"
retry_max = "2s"
retry_jitter = 0.0
poll_interval = "100ms"

[limits]
messages_per_minute = 0
messages_per_hour = 0
messages_per_day = 0
"#;

/// The client: `SESSIONS_PER_NODE` sessions per port in threads, message
/// `i` sent by session `i % sessions`; sessions alternate between the
/// nodes. `sendmail` raises on any refusal, so exit 0 means every message
/// got its 250.
const PY: &str = r#"
import os, smtplib, ssl, sys, threading
ports = [int(p) for p in os.environ["PORTS"].split(",")]
n, per, tag = int(os.environ["N"]), int(os.environ["PER"]), os.environ["TAG"]
ctx = ssl.create_default_context(cafile=os.environ["CA"])
sessions = len(ports) * per
errors = []

def session(k):
    port = ports[k % len(ports)]
    try:
        s = smtplib.SMTP("localhost", port, local_hostname="client.e2e", timeout=60)
        s.starttls(context=ctx)
        s.login(os.environ["USER_"], os.environ["PASS"])
        for i in range(k, n, sessions):
            tok = "%s-%04d" % (tag, i)
            msg = ("From: Alice <alice@example.com>\r\nTo: <bob@dest.example>\r\n"
                   "Subject: %s\r\nMessage-ID: <%s@example.com>\r\n\r\nbody of %s\r\n"
                   % (tok, tok, tok)).encode()
            refused = s.sendmail("alice@example.com", ["bob@dest.example"], msg)
            assert refused == {}, (tok, refused)
        s.quit()
    except Exception as e:
        errors.append("session %d (port %d): %r" % (k, port, e))

threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    sys.exit("\n".join(errors))
"#;

/// The token of message `i` (its Subject, and its Message-ID's left part).
fn token(i: usize) -> String {
    format!("{TAG}-{i:04}")
}

/// Submits the `N` messages through `ports` concurrently, trusting `ca`.
async fn submit(ports: &[u16], ca: &Path) {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let out = timeout(
        Duration::from_secs(120),
        Command::new("python3")
            .args(["-c", PY])
            .env("PORTS", ports.join(","))
            .env("N", N.to_string())
            .env("PER", SESSIONS_PER_NODE.to_string())
            .env("TAG", TAG)
            .env("CA", ca)
            .env("USER_", USER)
            .env("PASS", PASSWORD)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("submission client timed out")
    .expect("run python3");
    assert!(
        out.status.success(),
        "submission failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many copies of each token the upstream accepted, and the
/// transactions that carried no token of ours (or a wrong envelope).
fn copies(up: &UpstreamServer) -> (HashMap<String, usize>, Vec<String>) {
    let mut seen = HashMap::new();
    let mut strange = Vec::new();
    for r in up.received() {
        let text = String::from_utf8_lossy(&r.data);
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .filter(|s| s.starts_with(TAG));
        let envelope_ok = r.mail_from == FROM && r.rcpt_to == ["bob@dest.example"];
        match subject {
            Some(s) if envelope_ok && text.contains(&format!("Message-ID: <{s}@example.com>")) => {
                *seen.entry(s.to_string()).or_default() += 1
            }
            _ => strange.push(format!("{} -> {:?}: {text:.300}", r.mail_from, r.rcpt_to)),
        }
    }
    (seen, strange)
}

/// Rows left in the queue tables: (messages, recipients).
async fn queue_rows(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM queue_messages), (SELECT count(*) FROM queue_recipients)",
    )
    .fetch_one(pool)
    .await
    .expect("count queue rows")
}

/// The node's `postgate_delivery_attempts_total` by result (all upstreams),
/// scraped with curl.
async fn attempts_by_result(http: SocketAddr) -> HashMap<String, f64> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .arg(format!("http://{http}/metrics"))
        .output()
        .await
        .expect("run curl");
    assert!(
        out.status.success(),
        "scraping {http} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8(out.stdout).unwrap();
    let mut by = HashMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("postgate_delivery_attempts_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("a sample line");
        let result = labels
            .split(',')
            .find_map(|l| l.strip_prefix("result=\""))
            .and_then(|v| v.strip_suffix('"'))
            .expect("a result label");
        *by.entry(result.to_string()).or_default() += value.parse::<f64>().expect("a number");
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_deliver_1000_messages_exactly_once() {
    let Some(url) = common::pg_database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut settings = Settings::new(&url, up.addr.port());
    settings.mode = "starttls";
    settings.extra = EXTRA;
    let mut one = write_node(dir.path(), "node1", &settings);
    let mut two = write_node(dir.path(), "node2", &settings);
    add_user(&one.config).await;
    let n1 = Serve::start(&mut one).await;
    let n2 = Serve::start(&mut two).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect to the test database");

    // Both nodes deliver while both still accept: every claim is contested.
    let started = Instant::now();
    submit(
        &[one.smtp_port, two.smtp_port],
        &dir.path().join("cert.pem"),
    )
    .await;
    let submitted = started.elapsed();

    // Every token at the upstream, then nothing left in the queue.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (seen, _) = copies(&up);
        if seen.len() == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {N} messages delivered; queue rows {:?}\nnode1: {}\nnode2: {}",
            seen.len(),
            queue_rows(&pool).await,
            n1.logs(),
            n2.logs()
        );
        sleep(Duration::from_millis(100)).await;
    }
    let delivered = started.elapsed();
    loop {
        let rows = queue_rows(&pool).await;
        if rows == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue never emptied: {rows:?} (messages, recipients) rows left"
        );
        sleep(Duration::from_millis(100)).await;
    }
    // Nothing is queued or leased any more; a late copy could only come
    // from an attempt still in flight: give it a moment to show.
    sleep(Duration::from_millis(500)).await;

    let (seen, strange) = copies(&up);
    assert!(strange.is_empty(), "unexpected transactions: {strange:?}");
    let missing: Vec<String> = (0..N)
        .map(token)
        .filter(|t| !seen.contains_key(t))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let mut dups: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    dups.sort();
    assert!(dups.is_empty(), "duplicates (token, copies): {dups:?}");
    assert_eq!(seen.len(), N);

    // The delivery log agrees: one successful attempt per message, no other.
    let log: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT outcome, count(*), count(DISTINCT message_id) FROM delivery_log
         GROUP BY outcome ORDER BY outcome",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(log, vec![("delivered".to_string(), N as i64, N as i64)]);

    // Both processes delivered, and between them each message once.
    let m1 = attempts_by_result(one.http).await;
    let m2 = attempts_by_result(two.http).await;
    let d1 = m1.get("delivered").copied().unwrap_or(0.0);
    let d2 = m2.get("delivered").copied().unwrap_or(0.0);
    eprintln!(
        "two nodes: {N} messages submitted in {:.1} s, all delivered after {:.1} s; \
         node1 delivered {d1}, node2 {d2}",
        submitted.as_secs_f64(),
        delivered.as_secs_f64()
    );
    assert_eq!(d1 + d2, N as f64, "node1 {m1:?}, node2 {m2:?}");
    assert!(
        d1 > 0.0 && d2 > 0.0,
        "one node did all the work (node1 {d1}, node2 {d2}): sharing untested"
    );
    for (name, m) in [("node1", &m1), ("node2", &m2)] {
        assert!(
            m.iter().all(|(r, n)| r == "delivered" || *n == 0.0),
            "{name} had other attempts: {m:?}"
        );
    }
    drop((n1, n2));
}
