//! Issues #4 and #6: the operator's CLI against the store of a running
//! `postgate serve` (the live store), as an operator would use it:
//! `queue list|show|retry|delete` on both backends, `limits show|reset` on
//! the shared PostgreSQL limiter, and a clear refusal of `limits` when the
//! counters live in the serving process.

use std::time::Duration;

use super::*;

/// Runs a CLI command that may fail: (exit success, stdout, stderr).
pub(super) async fn cli_output(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = timeout(
        Duration::from_secs(60),
        Command::new(bin())
            .arg("-c")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("CLI command timed out")
    .expect("spawn postgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The queue ids `postgate queue list` prints (first column; the header
/// and the summary line are not ids).
pub(super) async fn queue_ids(config: &Path) -> Vec<String> {
    cli(config, &["queue", "list"], None)
        .await
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// Deferred messages stay put for an hour unless the operator acts.
const SLOW_RETRY_QUEUE: &str = r#"
[queue]
workers = 2
retry_initial = "1h"
retry_max = "1h"
retry_jitter = 0.0
poll_interval = "100ms"
circuit_failures = 1000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_work_against_the_live_store() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        let mut beh = Behavior::new(ServerTls::None);
        beh.rcpt_default = "451 4.3.0 try again later".into();
        let up = UpstreamServer::start(beh).await;
        let mut settings = Settings::new(&url, up.addr.port());
        settings.extra = SLOW_RETRY_QUEUE;
        let name = if url.starts_with("sqlite") {
            "sq"
        } else {
            "pg"
        };
        let mut files = write_node(dir.path(), name, &settings);
        add_user(&files.config).await;
        let _serve = Serve::start(&mut files).await;
        let config = files.config.clone();

        let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
        assert_eq!(code, 235, "{url}");
        for subject in ["kept", "dropped"] {
            c.send("bob@dest.example", &message(subject))
                .await
                .unwrap_or_else(|e| panic!("{url}: {subject}: {e:?}"));
        }
        drop(c);

        // Both are attempted once, deferred, and listed with the reply.
        let deadline = Instant::now() + Duration::from_secs(30);
        let ids = loop {
            let ids = queue_ids(&config).await;
            let mut shown = Vec::new();
            for id in &ids {
                shown.push(cli(&config, &["queue", "show", id], None).await);
            }
            if ids.len() == 2 && shown.iter().all(|s| s.contains("attempts=1")) {
                for s in &shown {
                    assert!(s.contains("bob@dest.example"), "{url}: {s}");
                    assert!(s.contains("sender:    alice@example.com"), "{url}: {s}");
                    assert!(s.contains("451 4.3.0 try again later"), "{url}: {s}");
                    assert!(s.contains("deferred"), "{url}: the log line: {s}");
                }
                break ids;
            }
            assert!(
                Instant::now() < deadline,
                "{url}: never deferred: {shown:?}"
            );
            sleep(Duration::from_millis(200)).await;
        };
        // Oldest first: the first one sent is "kept".
        let (kept, dropped) = (&ids[0], &ids[1]);

        up.set(|b| b.rcpt_default = "250 2.1.5 ok".into());
        let out = cli(&config, &["queue", "retry", kept], None).await;
        assert_eq!(
            out.trim(),
            format!("1 recipient(s) of {kept} due now"),
            "{url}"
        );
        wait_delivered(&up, &["kept".to_string()], Duration::from_secs(30)).await;

        let out = cli(&config, &["queue", "delete", dropped], None).await;
        assert_eq!(out.trim(), format!("deleted {dropped}"), "{url}");
        wait_queue_empty(&config, Duration::from_secs(30)).await;
        for args in [["queue", "show"], ["queue", "retry"], ["queue", "delete"]] {
            let (ok, _, err) = cli_output(&config, &[args[0], args[1], dropped]).await;
            assert!(!ok, "{url}: {args:?} of a deleted message succeeded");
            assert!(
                err.contains("not found") && err.contains(dropped.as_str()),
                "{url}: {args:?}: {err}"
            );
        }
        assert_eq!(
            received_subjects(&up),
            ["kept"],
            "{url}: the deleted message never went out"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_commands_show_and_reset_a_lockout_on_the_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;

    // With the in-process limiter and no admin token the CLI cannot reach
    // the counters: it says how to make it possible instead of printing an
    // empty table. (With a token: operator_queue.rs.)
    let sqlite = format!("sqlite://{}", dir.path().join("local.db").display());
    let local = write_node(dir.path(), "local", &Settings::new(&sqlite, up.addr.port()));
    let (ok, _, err) = cli_output(&local.config, &["limits", "show"]).await;
    assert!(!ok);
    assert!(
        err.contains("limits.backend is \"local\"") && err.contains("http.admin_token"),
        "{err}"
    );

    let Some(url) = common::pg_database_url().await else {
        return;
    };
    let mut settings = Settings::new(&url, up.addr.port());
    settings.extra = "[limits]\nbackend = \"postgres\"\nauth_lockout_per_user = 3\n";
    let mut files = write_node(dir.path(), "shared", &settings);
    add_user(&files.config).await;
    let _serve = Serve::start(&mut files).await;
    let config = files.config.clone();

    for _ in 0..3 {
        let (_, code) = Client::login(files.smtp_port, USER, "wrong password").await;
        assert_eq!(code, 535);
    }
    let (_, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 454, "locked out: even the right password is refused");

    let shown = cli(&config, &["limits", "show"], None).await;
    assert!(shown.starts_with("SUBJECT"), "{shown}");
    let line = shown
        .lines()
        .find(|l| l.starts_with(&format!("user:{USER} ")))
        .unwrap_or_else(|| panic!("no counter of user:{USER}: {shown}"));
    assert!(line.contains("/3"), "the lockout threshold: {line}");
    assert!(shown.contains("127.0.0.1"), "the IP's failures: {shown}");

    let out = cli(&config, &["limits", "reset", USER], None).await;
    assert!(
        out.starts_with("removed ") && !out.starts_with("removed 0 "),
        "{out}"
    );
    let shown = cli(&config, &["limits", "show"], None).await;
    assert!(!shown.contains(&format!("user:{USER} ")), "{shown}");
    let (_, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235, "the reset lifts the lockout at once");

    let (ok, _, err) = cli_output(&config, &["limits", "reset", " "]).await;
    assert!(!ok, "an empty target resets nothing and says so");
    assert!(
        err.contains("reset needs an IP address, a username"),
        "{err}"
    );
}
