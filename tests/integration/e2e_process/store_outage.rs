//! "A database that goes away", on both backends, under a running
//! `postgate serve`: its PostgreSQL database refuses connections, or its
//! SQLite file is write-locked by another process (past `busy_timeout`).
//! A message ending meanwhile gets a 4xx naming the cause (never a 250 for
//! a message that is not stored), `/readyz` goes 503, and on PostgreSQL a
//! login gets a temporary failure. Once the store is back the same session
//! sends again, and every message accepted before, during (resent) and
//! after the outage is delivered exactly once. No panic.

use std::time::Duration;

use super::*;
use crate::common::{pg_admin, pg_allow_connections, SqliteWriteLock};

/// An outage in progress; [`Outage::end`] brings the store back.
pub(super) enum Outage {
    Postgres {
        admin: sqlx::PgConnection,
        db: String,
    },
    Sqlite(SqliteWriteLock),
}

impl Outage {
    /// Takes the store at `url` away (see the module doc).
    pub(super) async fn begin(url: &str) -> Outage {
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Outage::Sqlite(SqliteWriteLock::take(path));
        }
        let db = url.rsplit('/').next().unwrap().to_string();
        let mut admin = pg_admin().await;
        pg_allow_connections(&mut admin, &db, false).await;
        Outage::Postgres { admin, db }
    }

    /// Brings the store back.
    pub(super) async fn end(self) {
        match self {
            Outage::Sqlite(lock) => lock.release(),
            Outage::Postgres { mut admin, db } => {
                pg_allow_connections(&mut admin, &db, true).await;
            }
        }
    }
}

/// Waits (up to `limit`) for `/readyz` to answer `status`.
async fn wait_ready_status(files: &NodeFiles, status: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while http_status(files.http, "/readyz").await != Some(status) {
        assert!(Instant::now() < deadline, "/readyz never answered {status}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_a_4xx_and_loses_nothing_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let name = if url.starts_with("sqlite") {
            "sq"
        } else {
            "pg"
        };
        let mut files = write_node(dir.path(), name, &Settings::new(&url, up.addr.port()));
        add_user(&files.config).await;
        let node = Serve::start(&mut files).await;

        let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
        assert_eq!(code, 235, "{url}");
        c.send("bob@dest.example", &message("before"))
            .await
            .unwrap_or_else(|e| panic!("{url}: before the outage: {e:?}"));
        wait_delivered(&up, &["before".to_string()], Duration::from_secs(30)).await;

        let outage = Outage::begin(&url).await;
        // SQLite: the enqueue waits out `busy_timeout` (10 s), then fails.
        let refused = c.send("bob@dest.example", &message("during")).await;
        let (code, text) = refused.expect_err("a 250 for a message that could not be stored");
        assert_eq!(code, 451, "{url}: {text}");
        assert!(
            text.contains("4.3.0") && text.contains("try again later"),
            "{url}: {text}"
        );
        if matches!(outage, Outage::Postgres { .. }) {
            // (SQLite readers are not blocked by a writer: logins still work.)
            let (_, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
            assert_eq!(
                code, 454,
                "{url}: a login while the accounts are unreachable"
            );
        }
        wait_ready_status(&files, 503, Duration::from_secs(15)).await;

        // Back: the same session resends the refused message and goes on.
        outage.end().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match c.send("bob@dest.example", &message("during")).await {
                Ok(()) => break,
                Err((451, _)) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(200)).await
                }
                Err(other) => panic!("{url}: after the outage: {other:?}"),
            }
        }
        c.send("bob@dest.example", &message("after"))
            .await
            .unwrap_or_else(|e| panic!("{url}: after the outage: {e:?}"));
        let (_, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
        assert_eq!(code, 235, "{url}: logins work again");
        let all = ["before", "during", "after"].map(String::from);
        wait_delivered(&up, &all, Duration::from_secs(30)).await;
        wait_ready_status(&files, 200, Duration::from_secs(15)).await;
        let mut subjects = received_subjects(&up);
        subjects.sort();
        assert_eq!(subjects, ["after", "before", "during"], "{url}: each once");
        assert!(!node.logs().contains("panicked"), "{}", node.logs());
    }
}
