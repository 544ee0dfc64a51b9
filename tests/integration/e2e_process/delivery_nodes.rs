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
/// Each node reaches the one shared upstream under its own name
/// (`via-NODE`), so the delivery log says which process delivered what.
fn extra(node: &str, upstream_port: u16) -> String {
    format!(
        r#"
[[upstream]]
name = "via-{node}"
host = "127.0.0.1"
port = {upstream_port}
tls = "none"
connect_timeout = "5s"
command_timeout = "10s"
data_timeout = "20s"

[[route]]
upstreams = ["via-{node}"]

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
"#
    )
}

/// The client: `SESSIONS_PER_NODE` sessions per port in threads, message
/// `i` sent by session `i % sessions`; sessions alternate between the
/// nodes, and each message names its node in `X-Submitted-Via`. `sendmail`
/// raises on any refusal, so exit 0 means every message got its 250.
const PY: &str = r#"
import os, smtplib, ssl, sys, threading
ports = [int(p) for p in os.environ["PORTS"].split(",")]
n, per, tag = int(os.environ["N"]), int(os.environ["PER"]), os.environ["TAG"]
ctx = ssl.create_default_context(cafile=os.environ["CA"])
sessions = len(ports) * per
errors = []

def session(k):
    port, via = ports[k % len(ports)], "node%d" % (k % len(ports) + 1)
    try:
        s = smtplib.SMTP("localhost", port, local_hostname="client.e2e", timeout=60)
        s.starttls(context=ctx)
        s.login(os.environ["USER_"], os.environ["PASS"])
        for i in range(k, n, sessions):
            tok = "%s-%04d" % (tag, i)
            msg = ("From: Alice <alice@example.com>\r\nTo: <bob@dest.example>\r\n"
                   "Subject: %s\r\nMessage-ID: <%s@example.com>\r\nX-Submitted-Via: %s\r\n"
                   "\r\nbody of %s\r\n" % (tok, tok, via, tok)).encode()
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

/// One copy of a message the upstream accepted.
struct Copy {
    /// The node it was submitted to (`X-Submitted-Via`).
    via: String,
    /// Its queue id (the `id` of the Received field postgate added).
    queue_id: String,
}

/// Every copy of each token the upstream accepted, and the transactions
/// that are not one of our messages as submitted (wrong envelope, missing
/// Message-ID, or not received with ESMTPSA: TLS and AUTH).
fn copies(up: &UpstreamServer) -> (HashMap<String, Vec<Copy>>, Vec<String>) {
    let mut seen: HashMap<String, Vec<Copy>> = HashMap::new();
    let mut strange = Vec::new();
    for r in up.received() {
        let text = String::from_utf8_lossy(&r.data);
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .map(str::to_string)
        };
        let subject = header("Subject").filter(|s| s.starts_with(TAG));
        let queue_id = text
            .split_once(" (postgate) with ESMTPSA id ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_string);
        let envelope_ok = r.mail_from == FROM && r.rcpt_to == ["bob@dest.example"];
        match (subject, header("X-Submitted-Via"), queue_id) {
            (Some(s), Some(via), Some(queue_id))
                if envelope_ok
                    && header("Message-ID").as_deref() == Some(&format!("<{s}@example.com>")) =>
            {
                seen.entry(s).or_default().push(Copy { via, queue_id })
            }
            _ => strange.push(format!("{} -> {:?}: {text:.400}", r.mail_from, r.rcpt_to)),
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
    // A few milliseconds per upstream reply: delivery falls behind intake,
    // so both nodes claim from a backlog at the same time (SKIP LOCKED
    // under real contention), not just one fresh message each.
    let mut b = Behavior::new(ServerTls::None);
    b.reply_delay = Duration::from_millis(5);
    let up = UpstreamServer::start(b).await;
    let mut nodes = Vec::new();
    for name in ["node1", "node2"] {
        let extra = extra(name, up.addr.port());
        let mut settings = Settings::new(&url, up.addr.port());
        settings.mode = "starttls";
        settings.extra = &extra;
        nodes.push(write_node(dir.path(), name, &settings));
    }
    add_user(&nodes[0].config).await;
    let mut serves = Vec::new();
    for files in &mut nodes {
        serves.push(Serve::start(files).await);
    }
    let logs = || {
        serves
            .iter()
            .map(|s| s.logs())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect to the test database");

    // Both nodes deliver while both still accept.
    let started = Instant::now();
    let ports: Vec<u16> = nodes.iter().map(|n| n.smtp_port).collect();
    submit(&ports, &dir.path().join("cert.pem")).await;
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
            "only {} of {N} messages delivered; queue rows {:?}\n{}",
            seen.len(),
            queue_rows(&pool).await,
            logs()
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
            "queue never emptied: {rows:?} (messages, recipients) rows left\n{}",
            logs()
        );
        sleep(Duration::from_millis(100)).await;
    }
    // Nothing is queued or leased any more; a late copy could only come
    // from an attempt still in flight: give it a moment to show.
    sleep(Duration::from_millis(500)).await;

    // Exactly once at the upstream.
    let (seen, strange) = copies(&up);
    assert!(strange.is_empty(), "unexpected transactions: {strange:?}");
    let missing: Vec<String> = (0..N)
        .map(token)
        .filter(|t| !seen.contains_key(t))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let mut dups: Vec<(&String, usize)> = seen
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(t, c)| (t, c.len()))
        .collect();
    dups.sort();
    assert!(dups.is_empty(), "duplicates (token, copies): {dups:?}");
    assert_eq!(seen.len(), N);

    // The delivery log agrees: one successful attempt per message and no
    // other attempt; it names the process that delivered each message.
    let log: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT message_id, outcome, upstream FROM delivery_log")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(log.len(), N, "delivery log rows");
    let mut by_queue_id = HashMap::new();
    for (id, outcome, upstream) in log {
        assert_eq!(outcome, "delivered", "{id}: {upstream:?}");
        let node = upstream.and_then(|u| u.strip_prefix("via-").map(str::to_string));
        assert!(
            by_queue_id.insert(id.clone(), node).is_none(),
            "{id} logged twice"
        );
    }
    // (submitted to, delivered by) for every message.
    let mut split: HashMap<(String, String), usize> = HashMap::new();
    for (tok, c) in &seen {
        let c = &c[0];
        let by = by_queue_id
            .get(&c.queue_id)
            .unwrap_or_else(|| panic!("{tok} ({}) is not in the delivery log", c.queue_id))
            .clone()
            .unwrap_or_else(|| panic!("{tok}: no upstream in the delivery log"));
        *split.entry((c.via.clone(), by)).or_default() += 1;
    }
    let count = |via: &str, by: &str| {
        split
            .get(&(via.to_string(), by.to_string()))
            .copied()
            .unwrap_or(0)
    };
    eprintln!(
        "two nodes: {N} messages submitted in {:.1} s, all delivered after {:.1} s; \
         (submitted to -> delivered by) 1->1 {}, 1->2 {}, 2->1 {}, 2->2 {}",
        submitted.as_secs_f64(),
        delivered.as_secs_f64(),
        count("node1", "node1"),
        count("node1", "node2"),
        count("node2", "node1"),
        count("node2", "node2"),
    );

    // Each process took messages the other had accepted: they share one
    // queue, not just one database.
    assert!(
        count("node1", "node2") > 0 && count("node2", "node1") > 0,
        "no message crossed between the nodes: {split:?}"
    );

    // Each process's own count (its metrics) matches the log: both worked.
    for name in ["node1", "node2"] {
        let files = nodes.iter().find(|n| n.name == name).unwrap();
        let by_result = attempts_by_result(files.http).await;
        let logged = count("node1", name) + count("node2", name);
        assert!(
            logged > 0,
            "{name} delivered nothing: sharing untested ({split:?})"
        );
        let mut want = HashMap::from([("delivered".to_string(), logged as f64)]);
        for r in ["deferred", "failed"] {
            want.insert(r.to_string(), 0.0);
        }
        assert_eq!(by_result, want, "{name}'s delivery attempts");
    }
    drop(serves);
}
