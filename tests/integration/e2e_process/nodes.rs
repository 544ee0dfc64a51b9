//! Issues #6 and #4: two `postgate serve` processes on one PostgreSQL
//! database share the per-user message rate (limits backend "postgres")
//! and refuse a cached login at the very next attempt once a third
//! process changed the password (each cached login is re-checked against
//! the store; LISTEN/NOTIFY then drops the stale entries).

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_rate_limits_and_auth_invalidation() {
    let Some(url) = common::pg_database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut settings = Settings::new(&url, up.addr.port());
    settings.extra = "[limits]\nbackend = \"postgres\"\nmessages_per_minute = 5\n";
    let mut one = write_node(dir.path(), "node1", &settings);
    let mut two = write_node(dir.path(), "node2", &settings);
    add_user(&one.config).await;
    let _n1 = Serve::start(&mut one).await;
    let _n2 = Serve::start(&mut two).await;

    // 8 messages alternating between the nodes: the shared GCRA counter
    // lets 5 through (burst = the per-minute quota) and refuses 3.
    let (mut c1, code) = Client::login(one.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let (mut c2, code) = Client::login(two.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for i in 0..8 {
        let c = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        let subject = format!("shared-rate-{i}");
        match c.send("bob@dest.example", &message(&subject)).await {
            Ok(()) => ok.push(subject),
            Err((code, text)) => {
                assert!(
                    code == 451 && text.contains("4.7.1"),
                    "message {i}: {code} {text}"
                );
                refused.push(i);
            }
        }
    }
    assert_eq!((ok.len(), refused.len()), (5, 3), "refused: {refused:?}");
    assert_eq!(refused, vec![5, 6, 7]);
    wait_delivered(&up, &ok, Duration::from_secs(30)).await;
    drop((c1, c2));

    // Both nodes have the old password cached (a login succeeded on each;
    // log in once more so the entry is surely in use).
    for port in [one.smtp_port, two.smtp_port] {
        assert_eq!(Client::login(port, USER, PASSWORD).await.1, 235);
    }
    let new_password = "a brand new password";
    cli(
        &one.config,
        &["user", "passwd", USER, "--password-stdin"],
        Some(&format!("{new_password}\n")),
    )
    .await;
    for (name, port) in [("node1", one.smtp_port), ("node2", two.smtp_port)] {
        // The very next login on each node: a cached login is re-checked
        // against the store, so this holds before any NOTIFY arrives.
        assert_eq!(
            Client::login(port, USER, PASSWORD).await.1,
            535,
            "{name} accepts the old password after the change"
        );
        assert_eq!(
            Client::login(port, USER, new_password).await.1,
            235,
            "{name} refuses the new password"
        );
    }
}
