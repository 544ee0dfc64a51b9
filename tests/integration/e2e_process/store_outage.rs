//! "A database that goes away": the PostgreSQL database of a running
//! `postgate serve` refuses connections for a while. Submissions get a 4xx
//! naming the cause (never a 250 for a message that is not stored), logins
//! a temporary failure, `/readyz` goes 503; once the database is back the
//! same session sends, and every message accepted before, during (retried)
//! and after the outage is delivered. No panic.

use std::time::Duration;

use super::*;
use crate::common::{pg_admin, pg_exec, pg_kick};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_4xx_and_loses_nothing() {
    let Some(url) = common::pg_database_url().await else {
        return;
    };
    let db = url.rsplit('/').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut files = write_node(dir.path(), "outage", &Settings::new(&url, up.addr.port()));
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;

    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    c.send("bob@dest.example", &message("before"))
        .await
        .expect("before the outage");
    wait_delivered(&up, &["before".to_string()], Duration::from_secs(30)).await;

    // The database goes away: no new connections, existing ones killed.
    let mut admin = pg_admin().await;
    pg_exec(
        &mut admin,
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
    )
    .await;
    pg_kick(&mut admin, &db).await;

    let refused = c.send("bob@dest.example", &message("during")).await;
    let (code, text) = refused.expect_err("a 250 for a message that could not be stored");
    assert_eq!(code, 451, "{text}");
    assert!(
        text.contains("4.3.0") && text.contains("try again later"),
        "{text}"
    );
    let (_, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert!(
        code == 454,
        "a login while the accounts are unreachable: {code}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_status(files.http, "/readyz").await != Some(503) {
        assert!(Instant::now() < deadline, "/readyz stayed ready");
        sleep(Duration::from_millis(100)).await;
    }

    // Back: the same session retries the refused message and goes on.
    pg_exec(
        &mut admin,
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.send("bob@dest.example", &message("during")).await {
            Ok(()) => break,
            Err((451, _)) if Instant::now() < deadline => sleep(Duration::from_millis(200)).await,
            Err(other) => panic!("after the outage: {other:?}"),
        }
    }
    c.send("bob@dest.example", &message("after"))
        .await
        .expect("after the outage");
    let (_, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235, "logins work again");
    wait_delivered(
        &up,
        &[
            "before".to_string(),
            "during".to_string(),
            "after".to_string(),
        ],
        Duration::from_secs(30),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_status(files.http, "/readyz").await != Some(200) {
        assert!(Instant::now() < deadline, "/readyz never ready again");
        sleep(Duration::from_millis(100)).await;
    }
    let mut subjects = received_subjects(&up);
    subjects.sort();
    assert_eq!(subjects, ["after", "before", "during"], "each exactly once");
    assert!(!node.logs().contains("panicked"), "{}", node.logs());
}
