//! Issue #4, crash safety: a node SIGKILLed with messages queued and some in
//! delivery loses nothing it acknowledged with 250; after a restart on the
//! same store every such message reaches the upstream (at least once).

use std::time::Duration;

use super::*;

const N: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        crash_and_restart(dir.path(), &url).await;
    }
}

async fn crash_and_restart(dir: &Path, url: &str) {
    // Slow, and refusing every other recipient with 4xx: at the kill some
    // messages are deferred, some are mid-transaction at the upstream.
    let mut b = Behavior::new(ServerTls::None);
    b.reply_delay = Duration::from_millis(300);
    for i in (0..N).step_by(2) {
        b.rcpt_replies.insert(
            format!("r{i}@dest.example"),
            "451 4.3.0 try again later".into(),
        );
    }
    let up = UpstreamServer::start(b).await;
    let tag = backend_tag(url);
    let mut files = write_node(
        dir,
        &format!("crash-{tag}"),
        &Settings::new(url, up.addr.port()),
    );
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;

    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let mut accepted = Vec::new();
    for i in 0..N {
        let subject = format!("crash-{tag}-{i}");
        c.send(&format!("r{i}@dest.example"), &message(&subject))
            .await
            .unwrap_or_else(|e| panic!("message {i} refused: {e:?}"));
        accepted.push(subject);
    }
    // Kill once some messages are delivered, others are mid-transaction
    // at the slow upstream and the rest are deferred or waiting.
    let deadline = Instant::now() + Duration::from_secs(20);
    while received_subjects(&up).is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing delivered before the kill"
        );
        sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    let before = received_subjects(&up).len();
    let mails = up.commands().iter().filter(|c| *c == "MAIL").count();
    node.crash().await;
    eprintln!("{tag}: killed with {before}/{N} delivered, {mails} MAIL commands seen");
    assert!(
        before < N,
        "everything was delivered before the kill; the test proves nothing"
    );

    // The upstream now accepts everything, quickly.
    up.set(|b| {
        b.reply_delay = Duration::ZERO;
        b.rcpt_replies.clear();
    });
    let node = Serve::start(&mut files).await;
    wait_delivered(&up, &accepted, Duration::from_secs(45)).await;
    // At least once: each accepted message arrives, duplicates only for
    // messages whose delivery the kill interrupted.
    let got = received_subjects(&up);
    eprintln!("{tag}: after restart {} copies of {N} messages", got.len());
    for s in &accepted {
        let n = got.iter().filter(|g| *g == s).count();
        assert!((1..=2).contains(&n), "{s} arrived {n} times");
    }
    wait_queue_empty(&files.config, Duration::from_secs(20)).await;
    drop(node);
}

/// Delivered messages are recorded as soon as their own attempt is over,
/// not when the slowest message of the same claim is done: a SIGKILL while
/// one message of a claim crawls through a slow upstream must not send the
/// other, long since delivered, message again (issue #4: a duplicate only
/// if the process dies between the upstream's 250 and recording it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_does_not_resend_a_message_delivered_long_before() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        no_late_duplicate(dir.path(), &url).await;
    }
}

async fn no_late_duplicate(dir: &Path, url: &str) {
    let fast = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut b = Behavior::new(ServerTls::None);
    b.reply_delay = Duration::from_secs(3);
    let slow = UpstreamServer::start(b).await;
    let tag = backend_tag(url);
    // One worker, polling rarely: both messages land in one claim.
    let extra = format!(
        r#"
[[upstream]]
name = "slow"
host = "127.0.0.1"
port = {}
tls = "none"
command_timeout = "10s"

[[route]]
sender_domain = "slow.example"
upstreams = ["slow"]

[[route]]
upstreams = ["test-upstream"]

[queue]
workers = 1
batch = 4
lease = "3s"
retry_initial = "1s"
retry_max = "2s"
poll_interval = "2s"
"#,
        slow.addr.port()
    );
    let mut settings = Settings::new(url, fast.addr.port());
    settings.extra = &extra;
    let mut files = write_node(dir, &format!("late-{tag}"), &settings);
    add_user(&files.config).await;
    cli(
        &files.config,
        &["sender", "allow", USER, "@slow.example"],
        None,
    )
    .await;
    let node = Serve::start(&mut files).await;

    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let slow_subject = format!("late-{tag}-slow");
    let fast_subject = format!("late-{tag}-fast");
    let slow_body = message(&slow_subject).replace(FROM, "alice@slow.example");
    c.send_as("alice@slow.example", "bob@dest.example", &slow_body)
        .await
        .expect("accepted");
    c.send("bob@dest.example", &message(&fast_subject))
        .await
        .expect("accepted");
    wait_delivered(
        &fast,
        std::slice::from_ref(&fast_subject),
        Duration::from_secs(20),
    )
    .await;
    // Long enough for the outcome's commit; the slow message is still
    // talking to its upstream (3 s per reply).
    sleep(Duration::from_millis(1500)).await;
    assert!(
        received_subjects(&slow).is_empty(),
        "slow upstream was fast"
    );
    node.crash().await;

    slow.set(|b| b.reply_delay = Duration::ZERO);
    let node = Serve::start(&mut files).await;
    wait_delivered(
        &slow,
        std::slice::from_ref(&slow_subject),
        Duration::from_secs(45),
    )
    .await;
    // The fast message would have been reclaimed with the slow one.
    sleep(Duration::from_secs(2)).await;
    let copies = received_subjects(&fast)
        .iter()
        .filter(|s| **s == fast_subject)
        .count();
    assert_eq!(
        copies, 1,
        "{tag}: delivered, recorded long before the kill, sent again"
    );
    drop(node);
}

/// Issue #13 item 4: a crash repeats at most one message per upstream
/// connection. With a backlog draining as fast as the upstream takes it
/// over 2 connections, SIGKILL the node three times: at most 3 × 2 messages
/// arrive twice. (Before, a connection went on to its next message while
/// the last one's outcome waited 20 ms for company plus its commit: about
/// a dozen messages per kill.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_repeats_at_most_one_message_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        bounded_duplicates(dir.path(), &url).await;
    }
}

/// Upstream connections of the node of [`bounded_duplicates`].
const CONNECTIONS: usize = 2;
/// Messages in the backlog.
const BACKLOG: usize = 600;
/// SIGKILLs while it drains.
const KILLS: usize = 3;
/// The backlog is submitted as fast as the node takes it.
const LIFTED: &str = "[limits]
messages_per_minute = 1000000
messages_per_hour = 10000000
messages_per_day = 100000000
recipients_per_day = 100000000
";

async fn bounded_duplicates(dir: &Path, url: &str) {
    // The upstream turns every session away while the backlog builds up.
    let mut b = Behavior::new(ServerTls::None);
    b.greeting = "421 4.3.2 not now".into();
    let up = UpstreamServer::start(b).await;
    let tag = backend_tag(url);
    let upstream_extra = format!("max_connections = {CONNECTIONS}");
    let mut settings = Settings::new(url, up.addr.port());
    settings.upstream_extra = &upstream_extra;
    settings.extra = LIFTED;
    let mut files = write_node(dir, &format!("bound-{tag}"), &settings);
    add_user(&files.config).await;
    let mut node = Serve::start(&mut files).await;

    let mut clients = Vec::new();
    for t in 0..4 {
        let port = files.smtp_port;
        let tag = tag.to_string();
        clients.push(tokio::spawn(async move {
            let (mut c, code) = Client::login(port, USER, PASSWORD).await;
            assert_eq!(code, 235);
            let mut accepted = Vec::new();
            for i in (t..BACKLOG).step_by(4) {
                let subject = format!("bound-{tag}-{i}");
                c.send("bob@dest.example", &message(&subject))
                    .await
                    .unwrap_or_else(|e| panic!("{subject} refused: {e:?}"));
                accepted.push(subject);
            }
            accepted
        }));
    }
    let mut accepted = Vec::new();
    for c in clients {
        accepted.extend(c.await.unwrap());
    }
    assert!(received_subjects(&up).is_empty(), "{tag}: delivered early");

    // The backlog drains; kill whenever another 40 messages arrived.
    up.set(|b| b.greeting = "220 upstream.test ESMTP ready".into());
    for kill in 0..KILLS {
        let base = received_subjects(&up).len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while received_subjects(&up).len() < base + 40 {
            assert!(
                Instant::now() < deadline,
                "{tag}: delivery stalled before kill {kill}\n{}",
                node.logs()
            );
            sleep(Duration::from_millis(5)).await;
        }
        node.crash().await;
        let at_kill = received_subjects(&up).len();
        assert!(
            at_kill < BACKLOG,
            "{tag}: the backlog was gone at kill {kill}: the test proves nothing"
        );
        node = Serve::start(&mut files).await;
    }
    wait_delivered(&up, &accepted, Duration::from_secs(90)).await;
    wait_queue_empty(&files.config, Duration::from_secs(30)).await;
    let got = received_subjects(&up);
    let mut copies = std::collections::HashMap::new();
    for s in &got {
        *copies.entry(s.as_str()).or_insert(0usize) += 1;
    }
    let repeated: usize = copies.values().map(|n| n - 1).sum();
    eprintln!(
        "{tag}: {} arrivals of {} messages, {repeated} duplicates after {KILLS} kills (bound {})",
        got.len(),
        accepted.len(),
        KILLS * CONNECTIONS
    );
    assert!(
        repeated <= KILLS * CONNECTIONS,
        "{tag}: {repeated} duplicates after {KILLS} kills with {CONNECTIONS} upstream connections"
    );
    drop(node);
}
