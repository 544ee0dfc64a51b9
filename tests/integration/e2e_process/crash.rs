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
    let tag = if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "pg"
    };
    let files = write_node(
        dir,
        &format!("crash-{tag}"),
        &Settings::new(url, up.addr.port()),
    );
    add_user(&files.config).await;
    let node = Serve::start(&files).await;

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
    // Let delivery start (the upstream sees connections), then kill.
    let deadline = Instant::now() + Duration::from_secs(15);
    while up.commands().iter().filter(|c| *c == "MAIL").count() < 2 {
        assert!(Instant::now() < deadline, "delivery never started");
        sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    let before = received_subjects(&up).len();
    node.crash().await;
    assert!(
        before < N,
        "everything was delivered before the kill; the test proves nothing"
    );

    // The upstream now accepts everything, quickly.
    up.set(|b| {
        b.reply_delay = Duration::ZERO;
        b.rcpt_replies.clear();
    });
    let node = Serve::start(&files).await;
    wait_delivered(&up, &accepted, Duration::from_secs(45)).await;
    // At least once: each accepted message arrives, duplicates only for
    // messages whose delivery the kill interrupted.
    let got = received_subjects(&up);
    for s in &accepted {
        let n = got.iter().filter(|g| *g == s).count();
        assert!(n >= 1 && n <= 2, "{s} arrived {n} times");
    }
    drop(node);
}
