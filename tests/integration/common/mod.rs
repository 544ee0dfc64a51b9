//! Shared test setup: real stores on both backends.
//!
//! PostgreSQL: the test command (`tests/run.sh`) starts a throwaway cluster
//! and exports `POSTGATE_TEST_PG_URL` (a server URL; each test gets a fresh
//! database of its own). Without it, PostgreSQL tests fail loudly unless
//! `POSTGATE_TEST_SKIP_PG=1` is set for a quick local run.
#![allow(dead_code)]

use std::sync::Arc;

use postgate::store::{self, Store, StoreOptions};

/// A store under test plus what keeps it alive (temp dir for SQLite).
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub url: String,
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh, migrated SQLite store in a temp dir.
pub async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
    let store = store::open_and_migrate(&url, &StoreOptions::default())
        .await
        .expect("open sqlite");
    TestStore {
        store,
        url,
        backend: "sqlite",
        _dir: Some(dir),
    }
}

/// A fresh, migrated PostgreSQL database, or `None` when skipping PostgreSQL.
pub async fn pg_store() -> Option<TestStore> {
    let url = pg_database_url().await?;
    let store = store::open_and_migrate(&url, &StoreOptions::default())
        .await
        .expect("open postgres");
    Some(TestStore {
        store,
        url,
        backend: "postgres",
        _dir: None,
    })
}

/// The URL of a new, empty PostgreSQL database, or `None` when skipping PostgreSQL.
pub async fn pg_database_url() -> Option<String> {
    let Ok(server) = std::env::var("POSTGATE_TEST_PG_URL") else {
        if std::env::var("POSTGATE_TEST_SKIP_PG").as_deref() == Ok("1") {
            return None;
        }
        panic!("POSTGATE_TEST_PG_URL is not set: run the suite with tests/run.sh (or set POSTGATE_TEST_SKIP_PG=1)");
    };
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to test postgres");
    let name = format!("pgt_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = server
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(server);
    Some(format!("{base}/{name}"))
}

/// Both backends: SQLite always, PostgreSQL unless skipped.
pub async fn all_stores() -> Vec<TestStore> {
    let mut v = vec![sqlite_store().await];
    if let Some(pg) = pg_store().await {
        v.push(pg);
    }
    v
}

/// A child process (a postgate node, an `smtp-sink`) killed and reaped
/// when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1, as the kernel hands out (bound, read,
/// released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An admin connection to the test PostgreSQL server (its default database).
pub async fn pg_admin() -> sqlx::PgConnection {
    use sqlx::Connection;
    let url = std::env::var("POSTGATE_TEST_PG_URL").unwrap();
    sqlx::PgConnection::connect(&url).await.unwrap()
}

/// Runs `sql` on `conn`; panics naming the statement if it fails.
pub async fn pg_exec(conn: &mut sqlx::PgConnection, sql: &str) {
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Terminates every other connection to database `db`.
pub async fn pg_kick(conn: &mut sqlx::PgConnection, db: &str) {
    pg_exec(
        conn,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        ),
    )
    .await;
}

/// Holds SQLite's write lock from another process, like a long maintenance
/// transaction would: every writer of postgate waits, then fails.
pub struct SqliteWriteLock(std::process::Child);

impl SqliteWriteLock {
    /// Takes the write lock of the SQLite file at `path` (python3 holds it).
    pub fn take(path: &str) -> SqliteWriteLock {
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('BEGIN IMMEDIATE')\nprint('locked',flush=True)\nsys.stdin.read()\nc.execute('ROLLBACK')",
                path,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        SqliteWriteLock(child)
    }

    /// Rolls back and ends the holder.
    pub fn release(mut self) {
        drop(self.0.stdin.take());
        assert!(self.0.wait().unwrap().success());
    }
}

/// Database `db` refuses new connections and its open ones are killed
/// (`allow` false), or accepts connections again (`allow` true).
pub async fn pg_allow_connections(conn: &mut sqlx::PgConnection, db: &str, allow: bool) {
    pg_exec(
        conn,
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {allow}"),
    )
    .await;
    if !allow {
        pg_kick(conn, db).await;
    }
}
