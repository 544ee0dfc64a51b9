//! The queue under load (issue #16), on both backends:
//! - a claim's cost stays flat from a backlog of 1,000 recipients to one of
//!   100,000, even when the planner's statistics were taken on empty queue
//!   tables (and autovacuum is kept from refreshing them); on PostgreSQL no
//!   claim or outcome reads a queue table with a sequential scan;
//! - several nodes claiming, renewing, reclaiming and recording outcomes at
//!   once on one database never deadlock (`pg_stat_database.deadlocks` stays
//!   0) and never fail a store call; every recipient ends delivered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgate::store::{self, OutcomeKind, RecipientOutcome, Store, StoreOptions};
use sqlx::Connection;

use crate::common::{all_stores, TestStore};
use crate::delivery_queue::message;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const PG_BACKLOG: &str = "
    INSERT INTO queue_messages (id, sender, size, body, received_at, expires_at)
    SELECT 'load-' || g, 'a@example.com', 1, '\\x78', 1000 + g, 9000000000000
    FROM generate_series($1::BIGINT, $2::BIGINT) g;
    INSERT INTO queue_recipients (message_id, recipient, next_attempt_at)
    SELECT 'load-' || g, 'r' || g || '@x.org', 1000 + g FROM generate_series($1::BIGINT, $2::BIGINT) g";

const SQLITE_BACKLOG: &str = "
    WITH RECURSIVE g(n) AS (SELECT ?1 UNION ALL SELECT n + 1 FROM g WHERE n < ?2)
    INSERT INTO queue_messages (id, sender, size, body, received_at, expires_at)
    SELECT 'load-' || n, 'a@example.com', 1, x'78', 1000 + n, 9000000000000 FROM g;
    WITH RECURSIVE g(n) AS (SELECT ?1 UNION ALL SELECT n + 1 FROM g WHERE n < ?2)
    INSERT INTO queue_recipients (message_id, recipient, next_attempt_at)
    SELECT 'load-' || n, 'r' || n || '@x.org', 1000 + n FROM g";

/// Adds messages `from..=to` (one recipient each, all due) straight in SQL.
async fn load_backlog(t: &TestStore, from: i64, to: i64) {
    if t.backend == "postgres" {
        let mut c = sqlx::PgConnection::connect(&t.url).await.unwrap();
        for sql in PG_BACKLOG.split(';') {
            sqlx::query(sql)
                .bind(from)
                .bind(to)
                .execute(&mut c)
                .await
                .unwrap();
        }
        c.close().await.unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
        for sql in SQLITE_BACKLOG.split(';') {
            sqlx::query(sql)
                .bind(from)
                .bind(to)
                .execute(&mut c)
                .await
                .unwrap();
        }
        c.close().await.unwrap();
    }
}

/// Median time of `n` claims of 32 recipients each (each takes the next 32),
/// after one claim that warms the connections up.
/// Also returns the recipient ids of each claim.
async fn median_claim(store: &Arc<dyn Store>, n: usize) -> (Duration, Vec<Vec<i64>>) {
    let mut times = Vec::new();
    let mut claims = Vec::new();
    for i in 0..=n {
        let started = Instant::now();
        let got = store
            .claim_due("timing", now_ms(), 600_000, 32)
            .await
            .unwrap();
        if i > 0 {
            times.push(started.elapsed());
        }
        assert_eq!(got.len(), 32, "every claim finds 32 due messages");
        claims.push(
            got.iter()
                .flat_map(|m| m.recipients.iter().map(|r| r.id))
                .collect(),
        );
    }
    times.sort();
    (times[n / 2], claims)
}

/// Records every claimed recipient as delivered, one call per claim.
async fn deliver_all(store: &Arc<dyn Store>, claims: &[Vec<i64>]) {
    for ids in claims {
        let outcomes: Vec<RecipientOutcome> = ids
            .iter()
            .map(|&id| RecipientOutcome {
                recipient_id: id,
                kind: OutcomeKind::Delivered,
                upstream: Some("up".into()),
                reply: Some("250 ok".into()),
                log: true,
            })
            .collect();
        let n = store
            .record_outcomes("timing", now_ms(), &outcomes)
            .await
            .unwrap();
        assert_eq!(n, ids.len() as u64);
    }
}

/// (sequential scans, index scans) of the two queue tables so far.
async fn pg_scans(c: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *c)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT sum(seq_scan)::BIGINT, sum(coalesce(idx_scan, 0))::BIGINT FROM pg_stat_user_tables
         WHERE relname IN ('queue_messages', 'queue_recipients')",
    )
    .fetch_one(&mut *c)
    .await
    .unwrap()
}

/// Ends every other backend of `db` so that they report their statistics
/// (a backend reports them when it exits), then lets the reports land.
async fn pg_flush_stats(c: &mut sqlx::PgConnection, db: &str) {
    crate::common::pg_kick(c, db).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_claim_stays_flat_from_1k_to_100k_backlog_with_statistics_of_an_empty_queue_on_every_backend(
) {
    for t in all_stores().await {
        let b = t.backend;
        let mut pg = None;
        if b == "postgres" {
            let mut c = sqlx::PgConnection::connect(&t.url).await.unwrap();
            // Statistics of a nearly empty queue, as after a quiet night;
            // autovacuum must not refresh them behind the test's back.
            load_backlog(&t, -2, 0).await;
            for sql in [
                "ANALYZE queue_messages",
                "ANALYZE queue_recipients",
                "ALTER TABLE queue_messages SET (autovacuum_enabled = false)",
                "ALTER TABLE queue_recipients SET (autovacuum_enabled = false)",
                "DELETE FROM queue_messages",
            ] {
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
            pg = Some(c);
        }
        // Claims run on a store of their own, closed before the scan
        // counters are read (a backend reports them when it exits).
        let timing = store::open(&t.url, &StoreOptions::default()).await.unwrap();
        load_backlog(&t, 1, 1_000).await;
        let (small, _) = median_claim(&timing, 15).await;
        load_backlog(&t, 1_001, 100_000).await;
        let db = t.url.rsplit('/').next().unwrap().to_string();
        let before = match pg.as_mut() {
            Some(c) => {
                // Only what runs on the 100k backlog counts (claims on 1k rows
                // may well scan 14 pages).
                pg_flush_stats(c, &db).await;
                Some(pg_scans(c).await)
            }
            None => None,
        };
        let (large, claims) = median_claim(&timing, 15).await;
        // Outcomes too stay on indexes (the cascade included).
        deliver_all(&timing, &claims).await;
        drop(timing);
        eprintln!("{b}: median claim of 32 with 1k backlog {small:?}, with 100k {large:?}");
        assert!(
            large <= small * 5 + Duration::from_millis(10),
            "{b}: a claim with a 100k backlog took {large:?}, with 1k {small:?}: not flat"
        );
        if let (Some(c), Some((seq0, idx0))) = (pg.as_mut(), before) {
            pg_flush_stats(c, &db).await;
            let (seq1, idx1) = pg_scans(c).await;
            assert_eq!(
                seq1 - seq0,
                0,
                "{b}: claims or outcomes read a queue table with a sequential scan"
            );
            assert!(idx1 - idx0 >= 9, "{b}: claims did not go through indexes");
        }
    }
}

/// One node of the stress test: claims (batch 8, short lease) and delivers
/// each message in a task of its own that "talks to the upstream" for a
/// random while (sometimes past its lease) and records its outcome, while a
/// heartbeat renews the node's leases and a janitor reclaims expired ones.
async fn node(
    store: Arc<dyn Store>,
    owner: String,
    until: Instant,
    errors: Arc<AtomicU64>,
    done: Arc<tokio::sync::Notify>,
) {
    const LEASE_MS: i64 = 40;
    let leased = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<i64>::new(),
    ));
    let note = |e: postgate::store::StoreError, what: &str, errors: &AtomicU64| {
        eprintln!("{what}: {e}");
        errors.fetch_add(1, Ordering::Relaxed);
    };
    let heartbeat = {
        let (store, owner, leased, errors) =
            (store.clone(), owner.clone(), leased.clone(), errors.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let ids: Vec<i64> = leased.lock().unwrap().iter().copied().collect();
                if let Err(e) = store.renew_leases(&owner, &ids, now_ms(), LEASE_MS).await {
                    note(e, "renew", &errors);
                }
            }
        })
    };
    let janitor = {
        let (store, errors) = (store.clone(), errors.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(25)).await;
                if let Err(e) = store.reclaim_expired(now_ms()).await {
                    note(e, "reclaim", &errors);
                }
            }
        })
    };
    // Stopped with the node, even when the node is dropped mid-await.
    let _background = AbortOnDrop(vec![heartbeat, janitor]);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while Instant::now() < until {
        while tasks.len() >= 16 {
            tasks.join_next().await;
        }
        let claimed = match store.claim_due(&owner, now_ms(), LEASE_MS, 8).await {
            Ok(c) => c,
            Err(e) => {
                note(e, "claim", &errors);
                Vec::new()
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = done.notified() => {}
            }
            continue;
        }
        for m in claimed {
            n += 1;
            let ids: Vec<i64> = m.recipients.iter().map(|r| r.id).collect();
            leased.lock().unwrap().extend(&ids);
            let (store, owner, leased, errors) =
                (store.clone(), owner.clone(), leased.clone(), errors.clone());
            // Mostly within the lease, sometimes well past it (then another
            // node may take the message over while this one records).
            let talk = Duration::from_millis((n * 7919 % 60) + if n % 5 == 0 { 40 } else { 0 });
            tasks.spawn(async move {
                tokio::time::sleep(talk).await;
                let outcomes: Vec<RecipientOutcome> = ids
                    .iter()
                    .map(|&id| RecipientOutcome {
                        recipient_id: id,
                        // Some recipients are deferred (due again at once).
                        kind: if (id as u64 + n) % 7 == 0 {
                            OutcomeKind::Deferred {
                                next_attempt_at: now_ms(),
                                route_index: 0,
                                count_attempt: true,
                            }
                        } else {
                            OutcomeKind::Delivered
                        },
                        upstream: Some("up".into()),
                        reply: Some("250 ok".into()),
                        log: true,
                    })
                    .collect();
                if let Err(e) = store.record_outcomes(&owner, now_ms(), &outcomes).await {
                    note(e, "record", &errors);
                }
                let mut l = leased.lock().unwrap();
                for id in &ids {
                    l.remove(id);
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[tokio::test]
async fn several_nodes_claiming_and_recording_at_once_never_deadlock_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        let now = now_ms();
        // 600 messages of 1 to 3 recipients, enqueued while the nodes work.
        let messages: Vec<_> = (0..600)
            .map(|i| {
                let rcpts: Vec<String> = (0..(i % 3 + 1)).map(|k| format!("r{k}@x.org")).collect();
                let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
                message("s@example.com", &rcpts, b"body", now)
            })
            .collect();
        let errors = Arc::new(AtomicU64::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        let until = Instant::now() + Duration::from_secs(60);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut nodes = Vec::new();
        for k in 0..4 {
            // On PostgreSQL each node has its own store (own pool), as
            // separate processes would; SQLite serves one process.
            let store = if b == "postgres" {
                store::open(&t.url, &StoreOptions::default()).await.unwrap()
            } else {
                t.store.clone()
            };
            let (errors, done, stop) = (errors.clone(), done.clone(), stop.clone());
            nodes.push(tokio::spawn(async move {
                let cutoff = Instant::now() + Duration::from_secs(60);
                let watcher = {
                    let stop = stop.clone();
                    async move {
                        while !stop.load(Ordering::Relaxed) && Instant::now() < cutoff {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                tokio::select! {
                    _ = node(store, format!("node-{k}"), until, errors, done) => {}
                    _ = watcher => {}
                }
            }));
        }
        for m in &messages {
            t.store.enqueue(m).await.unwrap();
        }
        let started = Instant::now();
        loop {
            let depth = t.store.queue_stats(now_ms()).await.unwrap().depth;
            if depth == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(50),
                "{b}: {depth} messages still queued"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        done.notify_waiters();
        for n in nodes {
            n.await.unwrap();
        }
        assert_eq!(
            errors.load(Ordering::Relaxed),
            0,
            "{b}: store calls failed under concurrency (see stderr)"
        );
        // Every recipient ended delivered (a message is deleted once all are).
        assert!(
            t.store.queue_list(10).await.unwrap().is_empty(),
            "{b}: queue not empty"
        );
        if b == "postgres" {
            let db = t.url.rsplit('/').next().unwrap().to_string();
            let mut c = crate::common::pg_admin().await;
            pg_flush_stats(&mut c, &db).await;
            sqlx::query("SELECT pg_stat_clear_snapshot()")
                .execute(&mut c)
                .await
                .unwrap();
            let deadlocks: i64 =
                sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = $1")
                    .bind(&db)
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            assert_eq!(deadlocks, 0, "{b}: deadlocks between nodes");
        }
    }
}
