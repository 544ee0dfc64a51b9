//! Issue #14: bulk queue control and `limits` on the local backend,
//! against a running `postgate serve`, as an operator would use them:
//! `queue list` filters and summary, `queue hold|release|retry|delete`
//! over a filter with confirmation, held messages never delivered until
//! released (both backends); `limits show|reset` reaching the in-process
//! counters through the node's admin endpoint.

use std::time::Duration;

use super::operator_cli::{cli_output, queue_ids};
use super::*;

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

/// `queue list --json ARGS`: the listed ids, their states and the summary.
async fn list_json(config: &Path, args: &[&str]) -> (Vec<(String, String)>, serde_json::Value) {
    let mut all = vec!["queue", "list", "--json"];
    all.extend_from_slice(args);
    let out = cli(config, &all, None).await;
    let doc: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {out}"));
    let ids = doc["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (ids, doc["summary"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_wait_and_bulk_commands_act_on_a_filter() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        let mut beh = Behavior::new(ServerTls::None);
        beh.rcpt_default = "451 4.3.0 try again later".into();
        let up = UpstreamServer::start(beh).await;
        let mut settings = Settings::new(&url, up.addr.port());
        settings.extra = SLOW_RETRY_QUEUE;
        let name = if url.starts_with("sqlite") {
            "hq"
        } else {
            "hp"
        };
        let mut files = write_node(dir.path(), name, &settings);
        add_user(&files.config).await;
        let serve = Serve::start(&mut files).await;
        let config = files.config.clone();

        let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
        assert_eq!(code, 235, "{url}");
        for (rcpt, subject) in [
            ("bob@dest.example", "to-dest-1"),
            ("bob@dest.example", "to-dest-2"),
            ("carol@other.example", "to-other"),
        ] {
            c.send(rcpt, &message(subject))
                .await
                .unwrap_or_else(|e| panic!("{url}: {subject}: {e:?}"));
        }
        drop(c);

        // All three are tried once and deferred.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ids, _) = list_json(&config, &["--state", "deferred"]).await;
            if ids.len() == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url}: never all deferred: {ids:?}"
            );
            sleep(Duration::from_millis(200)).await;
        }
        // The log fields docs/operations.md lists; times as RFC 3339.
        let logs = serve.logs();
        let queued = logs
            .lines()
            .find(|l| l.contains(" queued") && l.contains("queue_id"))
            .unwrap_or_else(|| panic!("{url}: no queued line: {logs}"));
        for field in [
            "user=alice",
            "credential=default",
            "sender=alice@example.com",
            "rcpts=1",
            "size=",
        ] {
            assert!(queued.contains(field), "{url}: {field} missing: {queued}");
        }
        let deferred = logs
            .lines()
            .find(|l| l.contains("deferred") && l.contains("next_attempt_at="))
            .unwrap_or_else(|| panic!("{url}: no deferred line: {logs}"));
        let at = deferred.split("next_attempt_at=").nth(1).unwrap();
        let at = &at[..at.find(' ').unwrap_or(at.len())];
        assert!(
            at.len() == 20 && at.as_bytes()[10] == b'T' && at.ends_with('Z'),
            "{url}: next_attempt_at is not RFC 3339: {deferred}"
        );

        let (other, summary) = list_json(&config, &["--recipient", "@OTHER.example"]).await;
        assert_eq!(other.len(), 1, "{url}: {other:?}");
        assert_eq!(summary["messages"], 1, "{url}: {summary}");
        let (by_sender, _) = list_json(
            &config,
            &["--sender", "alice@example.com", "--user", "Alice"],
        )
        .await;
        assert_eq!(by_sender.len(), 3, "{url}");
        let (none, _) = list_json(&config, &["--sender", "@elsewhere.example"]).await;
        assert!(none.is_empty(), "{url}: {none:?}");
        let (old, _) = list_json(&config, &["--older-than", "1h"]).await;
        assert!(old.is_empty(), "{url}: nothing is an hour old: {old:?}");
        let table = cli(&config, &["queue", "list", "--limit", "1"], None).await;
        assert!(
            table
                .lines()
                .last()
                .unwrap()
                .starts_with("3 message(s), 3 recipient(s) pending:")
                && table.contains("deferred 3")
                && table.contains("(first 1 shown"),
            "{url}: the summary line: {table}"
        );

        // Several messages without --yes and without a terminal: refused.
        let (ok, out, err) =
            cli_output(&config, &["queue", "hold", "--recipient", "@dest.example"]).await;
        assert!(!ok && out.is_empty(), "{url}: {out}");
        assert!(
            err.contains("2 message(s) match") && err.contains("--yes"),
            "{url}: {err}"
        );
        assert!(
            list_json(&config, &["--state", "held"]).await.0.is_empty(),
            "{url}"
        );
        // No target at all: an error, not "everything".
        let (ok, _, err) = cli_output(&config, &["queue", "delete"]).await;
        assert!(!ok && err.contains("--all"), "{url}: {err}");

        let out = cli(
            &config,
            &["queue", "hold", "--recipient", "@dest.example", "--yes"],
            None,
        )
        .await;
        assert_eq!(out.trim(), "hold: 2 message(s)", "{url}");
        let (held, _) = list_json(&config, &["--state", "held"]).await;
        assert_eq!(held.len(), 2, "{url}");
        let shown = cli(&config, &["queue", "show", &held[0].0], None).await;
        assert!(shown.contains("state:     held"), "{url}: {shown}");

        // Everything due now and the upstream accepting: only the message
        // that is not held goes out.
        up.set(|b| b.rcpt_default = "250 2.1.5 ok".into());
        let out = cli(&config, &["queue", "retry", "--all", "--yes"], None).await;
        assert_eq!(out.trim(), "retry: 3 message(s)", "{url}");
        wait_delivered(&up, &["to-other".to_string()], Duration::from_secs(30)).await;
        sleep(Duration::from_secs(2)).await;
        assert_eq!(
            received_subjects(&up),
            ["to-other"],
            "{url}: held mail went out"
        );
        let (still, _) = list_json(&config, &["--state", "held"]).await;
        assert_eq!(still.len(), 2, "{url}: {still:?}");

        // Release one by id, delete the other by filter.
        let out = cli(&config, &["queue", "release", &held[0].0], None).await;
        assert_eq!(
            out.trim(),
            format!("released {} (1 recipient(s))", held[0].0),
            "{url}"
        );
        // The released one is delivered (it was due); the other stays held.
        wait_for_count(&config, 1).await;
        assert_eq!(queue_ids(&config).await, [held[1].0.clone()], "{url}");
        let got = received_subjects(&up);
        assert_eq!(got.len(), 2, "{url}: released mail delivered: {got:?}");
        let out = cli(&config, &["queue", "delete", "--state", "held", "-y"], None).await;
        assert_eq!(out.trim(), "delete: 1 message(s)", "{url}");
        wait_queue_empty(&config, Duration::from_secs(30)).await;
        let out = cli(&config, &["queue", "delete", "--all", "--yes"], None).await;
        assert_eq!(out.trim(), "no message matches: nothing to delete", "{url}");
        assert_eq!(
            received_subjects(&up).len(),
            2,
            "{url}: the deleted one never went out"
        );
    }
}

/// Waits until `queue list` shows exactly `n` messages.
async fn wait_for_count(config: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids = queue_ids(config).await;
        if ids.len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "queue never had {n}: {ids:?}");
        sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_commands_reach_the_local_backend_through_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    for url in store_urls(dir.path()).await {
        let mut settings = Settings::new(&url, up.addr.port());
        settings.extra = "[limits]\nbackend = \"local\"\nauth_lockout_per_user = 3\n";
        let name = if url.starts_with("sqlite") {
            "lq"
        } else {
            "lp"
        };
        let mut files = write_node(dir.path(), name, &settings);
        files.template = files.template.replace(
            "[http]\n",
            "[http]\nadmin_token = \"local-limits-admin-token\"\n",
        );
        files.pick_ports();
        add_user(&files.config).await;
        let _serve = Serve::start(&mut files).await;
        let config = files.config.clone();

        for _ in 0..3 {
            let (_, code) = Client::login(files.smtp_port, USER, "wrong password").await;
            assert_eq!(code, 535, "{url}");
        }
        let (_, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
        assert_eq!(code, 454, "{url}: locked out");

        let shown = cli(&config, &["limits", "show"], None).await;
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(&format!("user:{USER} "))),
            "{url}: {shown}"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&cli(&config, &["limits", "show", "--json"], None).await).unwrap();
        let lockout = doc["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["subject"] == format!("user:{USER}") && c["kind"] == "lockout")
            .unwrap_or_else(|| panic!("{url}: no lockout: {doc}"));
        assert!(
            lockout["clear_at"].as_str().unwrap().ends_with('Z'),
            "{lockout}"
        );

        let (ok, _, err) = cli_output(&config, &["limits", "reset", "no-such-thing"]).await;
        assert!(!ok, "{url}: an unknown name is not \"removed 0\"");
        assert!(
            err.contains("is neither an IP address, a CIDR network, a user"),
            "{url}: {err}"
        );
        let out = cli(&config, &["limits", "reset", "10.0.0.0/8"], None).await;
        assert_eq!(out.trim(), "removed 0 counter(s) of 10.0.0.0/8", "{url}");
        let out = cli(&config, &["limits", "reset", "127.0.0.0/8"], None).await;
        assert!(
            !out.starts_with("removed 0 "),
            "{url}: the IP's failures: {out}"
        );
        let out = cli(&config, &["limits", "reset", USER], None).await;
        assert!(!out.starts_with("removed 0 "), "{url}: {out}");
        let (_, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
        assert_eq!(
            code, 235,
            "{url}: the reset lifted the lockout in the running node"
        );
    }
}
