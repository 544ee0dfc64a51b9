//! Issue #16 item 3: on PostgreSQL, delivery has a connection pool of its
//! own (`[store] delivery_connections`), so its claims and outcome commits
//! (which an upstream connection waits for before its next message, issue
//! #13) never queue behind submissions for one of the sessions' connections.
//! Seen from PostgreSQL: the node's sessions are named `postgate` and
//! `postgate-delivery` in `pg_stat_activity`, and the queue's claim and
//! outcome statements run only on the latter.

use super::*;

/// `(application_name, last statement)` of every other session on the
/// database of `url`.
async fn sessions(url: &str) -> Vec<(String, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_as(
        "SELECT application_name, query FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_claims_and_records_on_its_own_postgres_pool() {
    let Some(url) = common::pg_database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut settings = Settings::new(&url, up.addr.port());
    settings.extra = "[queue]\nworkers = 2\npoll_interval = \"50ms\"\n";
    let mut files = write_node(dir.path(), "node", &settings);
    add_user(&files.config).await;
    let _serve = Serve::start(&mut files).await;

    let (mut client, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    let subjects: Vec<String> = (0..5).map(|i| format!("own-pool-{i}")).collect();
    for s in &subjects {
        client.send("bob@dest.example", &message(s)).await.unwrap();
    }
    wait_delivered(&up, &subjects, Duration::from_secs(30)).await;

    // A claim is `BEGIN; SET LOCAL enable_sort = off`, `WITH due AS ...`,
    // `COMMIT`; an outcome commit is one `WITH o AS (SELECT * FROM unnest(...`.
    let is_queue_work = |q: &str| {
        q.contains("enable_sort") || q.contains("WITH due AS") || q.contains("unnest($1::BIGINT[]")
    };
    // The claim loops poll every 50 ms: within seconds every delivery
    // connection has run something.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = sessions(&url).await;
        let delivery: Vec<&(String, String)> = all
            .iter()
            .filter(|(a, _)| a == "postgate-delivery")
            .collect();
        let shared: Vec<&(String, String)> = all.iter().filter(|(a, _)| a == "postgate").collect();
        assert!(
            shared.iter().all(|(_, q)| !is_queue_work(q)),
            "a claim or outcome ran on the sessions' pool: {all:?}"
        );
        let delivery_ran = delivery
            .iter()
            .any(|(_, q)| is_queue_work(q) || q == "COMMIT");
        if !shared.is_empty() && delivery_ran {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `postgate` and `postgate-delivery` sessions, or no claim on the latter: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
