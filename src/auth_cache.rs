//! A cache of SUCCESSFUL password verifications (issue #6), so a client that
//! reconnects for every message (TCP + TLS + AUTH each time) costs one
//! argon2 verify per TTL instead of one per message.
//!
//! - Keyed by HMAC-SHA256 of (username, password) under a random key made at
//!   start: the cache holds no password nor anything that could be tested
//!   offline, and nothing survives the process.
//! - Only successes are cached. Concurrent identical logins are coalesced
//!   (single flight): one verification runs, the others await its outcome,
//!   failure included; a failure is then forgotten.
//! - Bounded: a TTL per entry and at most `max_entries` (oldest evicted).
//! - Invalidation: [`AuthCache::invalidate_user`] (this process) and
//!   [`AuthCache::spawn_invalidation`], which drops everything on each
//!   account change reported by the store (PostgreSQL NOTIFY from any node
//!   or plain SQL; SQLite: a polled version bumped by triggers). That only
//!   keeps the cache tidy: [`crate::auth::CachedAuthenticator`] re-checks
//!   every hit against the store, so an account change never waits for it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::AuthChanges;

/// `[auth_cache]` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthCacheConfig {
    /// Cache successful logins (default true). When false every AUTH runs
    /// a verification (still coalesced when identical and concurrent).
    pub enabled: bool,
    /// How long a successful login is reused (default "5m"). Account
    /// changes drop entries at once; the TTL bounds everything else.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// At most this many cached logins (default 10000; oldest evicted).
    pub max_entries: usize,
}

impl Default for AuthCacheConfig {
    fn default() -> Self {
        AuthCacheConfig {
            enabled: true,
            ttl: Duration::from_secs(300),
            max_entries: 10_000,
        }
    }
}

type Key = [u8; 32];
type Outcome<V, E> = Result<Option<V>, E>;
type FlightRx<V, E> = watch::Receiver<Option<Outcome<V, E>>>;

struct Entry<V> {
    value: V,
    user: String,
    expires: Instant,
    seq: u64,
}

struct Inner<V, E> {
    entries: HashMap<Key, Entry<V>>,
    /// Insertion order: seq -> key, for "evict oldest".
    order: BTreeMap<u64, Key>,
    inflight: HashMap<Key, (u64, FlightRx<V, E>)>,
    seq: u64,
    /// Bumped by every invalidation: a verification that started before one
    /// is not cached (it may have read the old password hash).
    generation: u64,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct AuthCacheStats {
    /// Logins answered from the cache.
    pub hits: AtomicU64,
    /// Verifications actually run.
    pub verifications: AtomicU64,
    /// Logins that awaited a concurrent identical verification.
    pub coalesced: AtomicU64,
}

/// The cache. `V` is what a successful login yields (the authenticated
/// identity); `E` the verification's infrastructure error.
pub struct AuthCache<V, E> {
    hmac_key: [u8; 32],
    config: AuthCacheConfig,
    inner: Mutex<Inner<V, E>>,
    stats: AuthCacheStats,
}

/// Normalises usernames the way the store does (trim, lower case).
fn user_norm(username: &str) -> String {
    username.trim().to_lowercase()
}

impl<V, E> AuthCache<V, E>
where
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// An empty cache with a fresh random HMAC key.
    pub fn new(config: AuthCacheConfig) -> Self {
        use rand::RngCore;
        let mut hmac_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut hmac_key);
        AuthCache {
            hmac_key,
            config,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                inflight: HashMap::new(),
                seq: 0,
                generation: 0,
            }),
            stats: AuthCacheStats::default(),
        }
    }

    /// Hit, verification and coalescing counters.
    pub fn stats(&self) -> &AuthCacheStats {
        &self.stats
    }

    /// Cached logins right now (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V, E>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, user: &str, password: &[u8]) -> Key {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.hmac_key)
            .expect("HMAC accepts any key length");
        // Length prefix: ("ab","c") and ("a","bc") must differ.
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// The outcome of logging in as `username` with `password`: from the
    /// cache when a success is cached, else from `verify` (run at most once
    /// at a time per identical pair; concurrent callers share its outcome).
    /// `verify` returns `Ok(Some(v))` for success (cached), `Ok(None)` for
    /// bad credentials, `Err` when it could not decide; neither is cached.
    /// If the caller running `verify` is cancelled, a waiter takes over.
    pub async fn get_or_verify<F, Fut>(
        &self,
        username: &str,
        password: &[u8],
        verify: F,
    ) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        if !self.config.enabled {
            self.stats.verifications.fetch_add(1, Ordering::Relaxed);
            return verify().await;
        }
        let user = user_norm(username);
        let key = self.key(&user, password);
        let mut verify = Some(verify);
        loop {
            let step = {
                let mut inner = self.lock();
                let mut step = None;
                if let Some(e) = inner.entries.get(&key) {
                    if e.expires > Instant::now() {
                        step = Some(Step::Hit(e.value.clone()));
                    } else {
                        let seq = e.seq;
                        inner.entries.remove(&key);
                        inner.order.remove(&seq);
                    }
                }
                match step {
                    Some(step) => step,
                    None => match inner.inflight.get(&key) {
                        Some((_, rx)) => Step::Wait(rx.clone()),
                        None => {
                            inner.seq += 1;
                            let flight = inner.seq;
                            let (tx, rx) = watch::channel(None);
                            inner.inflight.insert(key, (flight, rx));
                            Step::Lead(tx, flight, inner.generation)
                        }
                    },
                }
            };
            let (tx, flight, generation) = match step {
                Step::Hit(value) => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(value));
                }
                Step::Wait(rx) => {
                    self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    if let Some(outcome) = wait(rx).await {
                        return outcome;
                    }
                    // The verifying caller was cancelled: try again.
                    continue;
                }
                Step::Lead(tx, flight, generation) => (tx, flight, generation),
            };
            let guard = FlightGuard {
                cache: self,
                key,
                flight,
                armed: true,
            };
            self.stats.verifications.fetch_add(1, Ordering::Relaxed);
            let verify = verify.take().expect("verify runs once");
            let outcome = verify().await;
            {
                let mut inner = self.lock();
                if inner.inflight.get(&key).is_some_and(|(f, _)| *f == flight) {
                    inner.inflight.remove(&key);
                }
                if let (Ok(Some(value)), true) = (&outcome, inner.generation == generation) {
                    self.insert(&mut inner, key, user, value.clone());
                }
            }
            let mut guard = guard;
            guard.armed = false;
            tx.send_replace(Some(outcome.clone()));
            return outcome;
        }
    }

    fn insert(&self, inner: &mut Inner<V, E>, key: Key, user: String, value: V) {
        while inner.entries.len() >= self.config.max_entries.max(1) {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.order.insert(seq, key);
        inner.entries.insert(
            key,
            Entry {
                value,
                user,
                expires: Instant::now() + self.config.ttl,
                seq,
            },
        );
    }

    /// Drops every cached login (and keeps in-flight ones from being cached).
    pub fn invalidate_all(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
        inner.generation += 1;
    }

    /// Drops the cached logins of `username` (any password), and keeps
    /// in-flight verifications from being cached.
    pub fn invalidate_user(&self, username: &str) {
        let user = user_norm(username);
        let mut inner = self.lock();
        let gone: Vec<(Key, u64)> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.user == user)
            .map(|(k, e)| (*k, e.seq))
            .collect();
        for (k, seq) in gone {
            inner.entries.remove(&k);
            inner.order.remove(&seq);
        }
        inner.generation += 1;
    }

    /// Drops everything on each event of `changes` (from
    /// [`crate::store::AuthChangeStore::subscribe_auth_changes`]) until the
    /// sender stops. Call once at start; abort the handle at shutdown.
    pub fn spawn_invalidation(
        self: &Arc<Self>,
        mut changes: AuthChanges,
    ) -> tokio::task::JoinHandle<()> {
        let cache = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let Some(cache) = cache.upgrade() else { break };
                tracing::debug!(?change, "account change: dropping cached logins");
                cache.invalidate_all();
            }
        })
    }
}

/// What a login does after looking at the cache.
enum Step<V, E> {
    Hit(V),
    Wait(FlightRx<V, E>),
    Lead(watch::Sender<Option<Outcome<V, E>>>, u64, u64),
}

/// Awaits the outcome of another caller's verification; `None` when that
/// caller went away without one.
async fn wait<V: Clone, E: Clone>(
    mut rx: watch::Receiver<Option<Outcome<V, E>>>,
) -> Option<Outcome<V, E>> {
    loop {
        if let Some(outcome) = rx.borrow_and_update().clone() {
            return Some(outcome);
        }
        rx.changed().await.ok()?;
    }
}

/// Removes a flight whose verifying caller was cancelled, so that waiters
/// (woken by the dropped sender) start a new one.
struct FlightGuard<'a, V, E> {
    cache: &'a AuthCache<V, E>,
    key: Key,
    flight: u64,
    armed: bool,
}

impl<V, E> Drop for FlightGuard<'_, V, E> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut inner = self.cache.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner
            .inflight
            .get(&self.key)
            .is_some_and(|(f, _)| *f == self.flight)
        {
            inner.inflight.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    type Cache = AuthCache<String, String>;

    fn cache(ttl_secs: u64, max_entries: usize) -> Arc<Cache> {
        Arc::new(AuthCache::new(AuthCacheConfig {
            enabled: true,
            ttl: Duration::from_secs(ttl_secs),
            max_entries,
        }))
    }

    /// Logs in, counting verifications in `n`; "good" is the only password.
    async fn login(c: &Cache, user: &str, pw: &str, n: &AtomicUsize) -> Option<String> {
        c.get_or_verify(user, pw.as_bytes(), || async {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, String>((pw == "good").then(|| format!("id:{user}")))
        })
        .await
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn successes_are_cached_until_the_ttl() {
        let c = cache(60, 100);
        let n = AtomicUsize::new(0);
        assert_eq!(
            login(&c, "alice", "good", &n).await.as_deref(),
            Some("id:alice")
        );
        assert_eq!(
            login(&c, "ALICE", "good", &n).await.as_deref(),
            Some("id:alice")
        );
        assert_eq!(n.load(Ordering::SeqCst), 1, "second login was a hit");
        assert_eq!(c.stats().hits.load(Ordering::Relaxed), 1);
        // A different password is a different key.
        assert_eq!(login(&c, "alice", "bad", &n).await, None);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(59)).await;
        login(&c, "alice", "good", &n).await;
        assert_eq!(n.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        login(&c, "alice", "good", &n).await;
        assert_eq!(n.load(Ordering::SeqCst), 3, "expired after the TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_not_cached() {
        let c = cache(60, 100);
        let n = AtomicUsize::new(0);
        for _ in 0..3 {
            assert_eq!(login(&c, "alice", "bad", &n).await, None);
        }
        assert_eq!(n.load(Ordering::SeqCst), 3);
        let err = c
            .get_or_verify("alice", b"good", || async {
                Err::<Option<String>, _>("db down".to_string())
            })
            .await;
        assert_eq!(err, Err("db down".to_string()));
        assert!(c.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn size_is_bounded_oldest_evicted() {
        let c = cache(600, 3);
        let n = AtomicUsize::new(0);
        for u in ["a", "b", "c", "d"] {
            login(&c, u, "good", &n).await;
        }
        assert_eq!(c.len(), 3);
        assert_eq!(n.load(Ordering::SeqCst), 4);
        login(&c, "d", "good", &n).await;
        login(&c, "b", "good", &n).await;
        assert_eq!(n.load(Ordering::SeqCst), 4, "b and d still cached");
        login(&c, "a", "good", &n).await;
        assert_eq!(n.load(Ordering::SeqCst), 5, "a, the oldest, was evicted");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_identical_logins_cost_one_verification() {
        let c = cache(60, 100);
        let n = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (c, n) = (c.clone(), n.clone());
                let pw = if i < 25 { "good" } else { "bad" };
                tokio::spawn(async move { login(&c, "alice", pw, &n).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap().is_some() as usize;
        }
        assert_eq!(ok, 25);
        assert_eq!(
            n.load(Ordering::SeqCst),
            2,
            "one per distinct (user, password)"
        );
        assert_eq!(c.stats().coalesced.load(Ordering::Relaxed), 48);
        // The shared failure was not cached.
        login(&c, "alice", "bad", &n).await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_verification_hands_over_to_a_waiter() {
        let c = cache(60, 100);
        let n = Arc::new(AtomicUsize::new(0));
        let first = {
            let (c, n) = (c.clone(), n.clone());
            tokio::spawn(async move { login(&c, "alice", "good", &n).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = {
            let (c, n) = (c.clone(), n.clone());
            tokio::spawn(async move { login(&c, "alice", "good", &n).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        assert_eq!(second.await.unwrap().as_deref(), Some("id:alice"));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_drops_entries_and_in_flight_results() {
        let c = cache(600, 100);
        let n = Arc::new(AtomicUsize::new(0));
        login(&c, "alice", "good", &n).await;
        login(&c, "bob", "good", &n).await;
        c.invalidate_user("Alice");
        login(&c, "bob", "good", &n).await;
        assert_eq!(n.load(Ordering::SeqCst), 2, "bob still cached");
        login(&c, "alice", "good", &n).await;
        assert_eq!(n.load(Ordering::SeqCst), 3, "alice verified again");
        c.invalidate_all();
        assert!(c.is_empty());
        // A verification that straddles an invalidation is not cached.
        let t = {
            let (c, n) = (c.clone(), n.clone());
            tokio::spawn(async move { login(&c, "carol", "good", &n).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        c.invalidate_all();
        assert!(t.await.unwrap().is_some());
        assert!(c.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn store_events_invalidate_everything() {
        let c = cache(600, 100);
        let n = AtomicUsize::new(0);
        login(&c, "alice", "good", &n).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let task = c.spawn_invalidation(rx);
        tx.send(crate::store::AuthChange::Changed).await.unwrap();
        drop(tx);
        task.await.unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn keys_depend_on_user_password_and_process_key() {
        let a: Cache = AuthCache::new(AuthCacheConfig::default());
        let b: Cache = AuthCache::new(AuthCacheConfig::default());
        assert_ne!(a.key("ab", b"c"), a.key("a", b"bc"));
        assert_ne!(a.key("a", b"x"), b.key("a", b"x"), "random key per cache");
        let cfg: AuthCacheConfig = toml::from_str("ttl = \"30s\"").unwrap();
        assert_eq!(cfg.ttl, Duration::from_secs(30));
        assert_eq!(cfg.max_entries, 10_000);
        assert!(toml::from_str::<AuthCacheConfig>("size = 1").is_err());
    }
}
