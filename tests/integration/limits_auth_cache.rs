//! Issue #6: a cached login stops working as soon as the account changes,
//! on every node: changes made by another node's store, by plain SQL on
//! PostgreSQL (triggers + NOTIFY), or by another process on SQLite
//! (triggers + polled version). A login's own bookkeeping (last_used_at)
//! must not flush the caches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgate::auth_cache::{AuthCache, AuthCacheConfig};
use postgate::password::{self, HashParams, Verification};
use postgate::store::{self, AuthChange, Store, StoreOptions};
use sqlx::Connection;

use crate::common::{pg_database_url, sqlite_store};

const FAST: HashParams = HashParams {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

type Cache = AuthCache<(i64, i64), String>;

/// One login through the cache: look the user up and verify, as AUTH does.
async fn login(
    cache: &Cache,
    store: &Arc<dyn Store>,
    user: &str,
    pw: &str,
    n: &AtomicUsize,
) -> Option<(i64, i64)> {
    cache
        .get_or_verify(user, pw.as_bytes(), || async {
            n.fetch_add(1, Ordering::SeqCst);
            let Some(rec) = store.login_lookup(user).await.map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            Ok(rec.credentials.iter().find_map(|c| {
                matches!(
                    password::verify(pw, &c.password_hash, &FAST),
                    Verification::Match { .. }
                )
                .then_some((rec.user_id, c.id))
            }))
        })
        .await
        .unwrap()
}

/// Waits up to 5 s for the cache to empty; returns how long it took.
async fn emptied(cache: &Cache) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if cache.is_empty() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn new_cache() -> Arc<Cache> {
    Arc::new(AuthCache::new(AuthCacheConfig::default()))
}

#[tokio::test]
async fn postgres_changes_from_sql_and_other_nodes_invalidate_at_once() {
    let Some(url) = pg_database_url().await else {
        return;
    };
    let node1 = store::open_and_migrate(&url, &StoreOptions::default())
        .await
        .unwrap();
    let node2 = store::open(&url, &StoreOptions::default()).await.unwrap();
    node1
        .user_add("alice", "default", &password::hash("old", &FAST).unwrap())
        .await
        .unwrap();
    let cache = new_cache();
    let _watch = cache.spawn_invalidation(node1.subscribe_auth_changes().await.unwrap());
    let n = AtomicUsize::new(0);

    let (_, cred) = login(&cache, &node1, "alice", "old", &n).await.unwrap();
    login(&cache, &node1, "alice", "old", &n).await.unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 1, "second login from the cache");

    // The login's own bookkeeping does not flush the cache.
    node1.credential_used(cred, 1, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.len(), 1, "last_used_at update must not invalidate");

    // Plain SQL on another connection, no NOTIFY of its own: the triggers notify.
    let mut sql = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE credentials SET password_hash = $1 WHERE label = 'default'")
        .bind(password::hash("new", &FAST).unwrap())
        .execute(&mut sql)
        .await
        .unwrap();
    let took = emptied(&cache).await.expect("invalidated by NOTIFY");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        login(&cache, &node1, "alice", "old", &n).await,
        None,
        "old password refused"
    );
    assert!(login(&cache, &node1, "alice", "new", &n).await.is_some());

    // The documented manual NOTIFY works too.
    sqlx::query("NOTIFY postgate_auth")
        .execute(&mut sql)
        .await
        .unwrap();
    emptied(&cache).await.expect("manual NOTIFY");

    // Another node disables the user, then re-enables; a new sender permission.
    login(&cache, &node1, "alice", "new", &n).await.unwrap();
    node2.user_set_enabled("alice", false).await.unwrap();
    emptied(&cache).await.expect("disable on node 2");
    assert_eq!(login(&cache, &node1, "alice", "new", &n).await, None);
    node2.user_set_enabled("alice", true).await.unwrap();
    // Let the enable's own notification pass before caching again, so the
    // next invalidation can only come from the next change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    login(&cache, &node1, "alice", "new", &n).await.unwrap();
    assert_eq!(cache.len(), 1);
    node2.sender_allow("alice", "@example.org").await.unwrap();
    emptied(&cache).await.expect("sender permission insert");
    tokio::time::sleep(Duration::from_millis(300)).await;
    login(&cache, &node1, "alice", "new", &n).await.unwrap();
    assert_eq!(cache.len(), 1);
    node2.user_delete("alice").await.unwrap();
    emptied(&cache).await.expect("delete on node 2");
    assert_eq!(login(&cache, &node1, "alice", "new", &n).await, None);
}

#[tokio::test]
async fn postgres_listener_reconnects_and_asks_for_a_resync() {
    let Some(url) = pg_database_url().await else {
        return;
    };
    let node = store::open_and_migrate(&url, &StoreOptions::default())
        .await
        .unwrap();
    let mut changes = node.subscribe_auth_changes().await.unwrap();
    let mut sql = sqlx::PgConnection::connect(&url).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
    )
    .fetch_one(&mut sql)
    .await
    .unwrap();
    assert_eq!(killed, 1, "the listener's connection was found");
    let ev = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .unwrap();
    assert_eq!(ev, Some(AuthChange::Resync));
    // Still listening after the reconnect.
    sqlx::query("NOTIFY postgate_auth")
        .execute(&mut sql)
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .unwrap();
        if ev == Some(AuthChange::Changed) {
            break;
        }
        assert_eq!(ev, Some(AuthChange::Resync));
    }
}

#[tokio::test]
async fn sqlite_changes_from_another_process_invalidate_within_a_poll() {
    let t = sqlite_store().await;
    // A second, independent pool on the same file: what the CLI process is.
    let cli = store::open(&t.url, &StoreOptions::default()).await.unwrap();
    let node = &t.store;
    node.user_add("alice", "default", &password::hash("old", &FAST).unwrap())
        .await
        .unwrap();
    let cache = new_cache();
    let _watch = cache.spawn_invalidation(node.subscribe_auth_changes().await.unwrap());
    let n = AtomicUsize::new(0);
    let (_, cred) = login(&cache, node, "alice", "old", &n).await.unwrap();
    node.credential_used(cred, 1, None).await.unwrap();
    tokio::time::sleep(store::SQLITE_AUTH_POLL * 2).await;
    assert_eq!(cache.len(), 1, "last_used_at update must not invalidate");

    cli.credential_set_hash("alice", "default", &password::hash("new", &FAST).unwrap())
        .await
        .unwrap();
    let took = emptied(&cache).await.expect("invalidated by polling");
    assert!(
        took <= store::SQLITE_AUTH_POLL + Duration::from_millis(300),
        "took {took:?}"
    );
    assert_eq!(login(&cache, node, "alice", "old", &n).await, None);
    login(&cache, node, "alice", "new", &n).await.unwrap();
    cli.user_set_enabled("alice", false).await.unwrap();
    emptied(&cache).await.expect("disable");
    assert_eq!(login(&cache, node, "alice", "new", &n).await, None);
}
