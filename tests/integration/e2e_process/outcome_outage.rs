//! Outcomes when the store goes away while deliveries are in flight
//! (issue 13, item 4), on both backends, under a running `postgate serve`:
//! PostgreSQL refuses connections, or another process holds SQLite's write
//! lock. The upstream is slow (every reply delayed) and has one connection,
//! so messages are still being delivered when the store goes.
//!
//! - The store stays away longer than the old retry window (about 6 s) and
//!   than the lease: every outcome is kept, recorded once the store is
//!   back, and no message is delivered twice.
//! - Meanwhile the connection waits for its outcome: it does not carry
//!   another message while the one it delivered is unrecorded, so what a
//!   crash could repeat stays at one message per connection.

use std::collections::HashMap;
use std::time::Duration;

use super::store_outage::Outage;
use super::*;

/// Four workers, so several claims are in delivery at once.
const QUEUE_4: &str = r#"
[queue]
workers = 4
batch = 4
lease = "5s"
retry_initial = "1s"
retry_max = "2s"
retry_jitter = 0.0
poll_interval = "100ms"
circuit_failures = 1000
circuit_cooldown = "1s"
"#;

/// How many times the upstream received each subject.
fn counts(up: &UpstreamServer) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for s in received_subjects(up) {
        *seen.entry(s).or_insert(0) += 1;
    }
    seen
}

/// A slow upstream with one connection, a node on `url`, `n` messages
/// submitted: the node, its files, the upstream and the subjects.
async fn loaded_node(
    dir: &Path,
    url: &str,
    name: &str,
    n: usize,
) -> (Serve, NodeFiles, UpstreamServer, Vec<String>) {
    let mut behavior = Behavior::new(ServerTls::None);
    behavior.reply_delay = Duration::from_millis(150);
    let up = UpstreamServer::start(behavior).await;
    let mut settings = Settings::new(url, up.addr.port());
    settings.upstream_extra = "max_connections = 1";
    settings.extra = QUEUE_4;
    let mut files = write_node(dir, name, &settings);
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;
    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235, "{url}");
    let subjects: Vec<String> = (0..n).map(|i| format!("{name}-{i}")).collect();
    for s in &subjects {
        c.send("bob@dest.example", &message(s))
            .await
            .unwrap_or_else(|e| panic!("{url}: {s}: {e:?}"));
    }
    (node, files, up, subjects)
}

/// Outcome commits on `metrics` (a node's /metrics) that took longer than
/// the largest bucket, 2.5 s.
fn slow_outcome_commits(metrics: &str) -> u64 {
    let value = |needle: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.contains("operation=\"record_outcome\"") && l.contains(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let count = value("postgate_store_operation_duration_seconds_count");
    let within = value("le=\"2.5\"");
    count.saturating_sub(within)
}

/// Waits (30 s at most) until every outcome is recorded: the queue is empty.
async fn queue_empties(files: &NodeFiles, node: &Serve, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids = super::operator_cli::queue_ids(&files.config).await;
        let Some(id) = ids.first() else {
            return;
        };
        if Instant::now() > deadline {
            let list = cli(&files.config, &["queue", "list"], None).await;
            let shown = cli(&files.config, &["queue", "show", id], None).await;
            panic!(
                "{url}: queue never emptied:\n{list}\n{shown}\n{}",
                node.logs()
            );
        }
        sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_outlive_a_store_outage_and_nothing_is_sent_twice_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        let name = if url.starts_with("sqlite") {
            "sq"
        } else {
            "pg"
        };
        let (node, files, up, subjects) = loaded_node(dir.path(), &url, name, 12).await;
        // Deliveries must be under way when the store goes (else there is
        // no outcome to keep): the upstream has taken a first message, whose
        // 250 is still 150 ms away and whose outcome is not recorded yet.
        let deadline = Instant::now() + Duration::from_secs(30);
        while received_subjects(&up).is_empty() {
            assert!(Instant::now() < deadline, "{url}: nothing delivered");
            sleep(Duration::from_millis(5)).await;
        }
        let before = received_subjects(&up).len();
        assert!(
            before < subjects.len(),
            "{url}: all delivered before the outage"
        );
        let outage = Outage::begin(&url).await;
        // Longer than the old give-up (5 tries, about 6 s) and the lease (5 s).
        sleep(Duration::from_secs(12)).await;
        let during = received_subjects(&up).len() - before;
        outage.end().await;
        // The connection waits for its outcome: at most the message on it
        // when the store went, and one more if that one's outcome was
        // committed before the outage took hold. (Outcomes did wait for the
        // store: the log line checked below.)
        assert!(
            during <= 2,
            "{url}: {during} messages delivered over one connection with the store away\n{}",
            node.logs()
        );
        wait_delivered(&up, &subjects, Duration::from_secs(60)).await;
        queue_empties(&files, &node, &url).await;
        // A dropped outcome shows as a second delivery once its lease expires.
        sleep(Duration::from_secs(6)).await;
        let twice: Vec<_> = counts(&up).into_iter().filter(|(_, n)| *n > 1).collect();
        assert!(
            twice.is_empty(),
            "{url}: sent twice: {twice:?}\n{}",
            node.logs()
        );
        // An outcome was kept across the outage: it failed and was retried
        // (the log line), or it waited for the store's lock past the end of
        // the outage (SQLite's busy handler: a commit slower than 2.5 s).
        let metrics = super::events_webhook::reqwest_metrics(files.http).await;
        assert!(
            node.logs().contains("recorded after the store came back")
                || slow_outcome_commits(&metrics) > 0,
            "{url}: no outcome waited for the store\n{}",
            node.logs()
        );
        assert!(!node.logs().contains("panicked"), "{}", node.logs());
    }
}
