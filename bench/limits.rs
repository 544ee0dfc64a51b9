//! Limiter and auth-cache throughput (issue #6).
//!
//!   cargo bench --bench limits                        # local backend + auth cache
//!   POSTGATE_BENCH_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres \
//!     cargo bench --bench limits                      # + PostgreSQL backend
//!
//! POSTGATE_BENCH_PG_LOGGED=1 turns `limit_counters` back into a logged
//! (WAL-written) table, to compare with the default UNLOGGED one.
//!
//! Prints checks per second for each backend (one "check" = one GCRA
//! counter), messages per second (4 counters each with the default config),
//! and the cost of a login answered from the auth cache versus one argon2id
//! verification with the default parameters. Bounded in time: each phase
//! runs for about 3 seconds.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgate::auth_cache::{AuthCache, AuthCacheConfig};
use postgate::limits::{Account, Limiter, LimitsBackend, LimitsConfig, SystemClock};
use postgate::password::{self, HashParams, Verification};
use postgate::store::{self, LimitOverrides, LimitStore, StoreOptions};

const PHASE: Duration = Duration::from_secs(3);

fn roomy(backend: LimitsBackend) -> LimitsConfig {
    LimitsConfig {
        backend,
        messages_per_minute: 1_000_000,
        messages_per_hour: 1_000_000,
        messages_per_day: 1_000_000,
        recipients_per_day: 1_000_000,
        ip_connections_per_minute: 1_000_000,
        ..LimitsConfig::default()
    }
}

/// Runs `op(task, i)` on `tasks` concurrent tasks for [`PHASE`]; returns ops/s.
async fn drive<F, Fut>(tasks: usize, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while start.elapsed() < PHASE {
                    for _ in 0..64 {
                        op(t, i).await;
                        i += 1;
                    }
                }
                done.fetch_add(i, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn bench_limiter(name: &str, limiter: Arc<Limiter>, tasks: usize) {
    let l = limiter.clone();
    let conns = drive(tasks, move |t, i| {
        let l = l.clone();
        async move {
            let ip = IpAddr::V4(Ipv4Addr::from(((t as u32) << 16) | (i as u32 % 5000)));
            let _ = l.connection(ip).await;
        }
    })
    .await;
    println!("{name:<9} connection(ip)            {conns:>10.0} checks/s  (1 counter each, {tasks} tasks)");
    let l = limiter.clone();
    let msgs = drive(tasks, move |t, i| {
        let l = l.clone();
        async move {
            let none = LimitOverrides::default();
            let a = Account {
                user_id: (t as i64) * 1000 + (i % 1000) as i64,
                username: "bench",
                user_limits: &none,
                credential_id: 1,
                credential_label: "default",
                credential_limits: &none,
            };
            let _ = l.message(&a, 3).await;
        }
    })
    .await;
    println!(
        "{name:<9} message(account, 3 rcpt)  {msgs:>10.0} messages/s = {:.0} checks/s (4 counters each)",
        msgs * 4.0
    );
}

async fn bench_auth_cache() {
    let params = HashParams::default();
    let hash = password::hash("correct horse", &params).unwrap();
    let cache: Arc<AuthCache<i64, String>> = Arc::new(AuthCache::new(AuthCacheConfig::default()));
    let verify = |pw: &'static str| {
        let hash = hash.clone();
        move || async move {
            let ok = tokio::task::spawn_blocking(move || {
                password::verify(pw, &hash, &HashParams::default())
            })
            .await
            .unwrap();
            Ok::<_, String>(matches!(ok, Verification::Match { .. }).then_some(42))
        }
    };
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(2) {
        assert!(verify("correct horse")().await.unwrap().is_some());
        n += 1;
    }
    let per = start.elapsed() / n;
    println!(
        "auth      argon2id verify (default params)      {:>8.2} ms each = {:.0}/s per core",
        per.as_secs_f64() * 1e3,
        1.0 / per.as_secs_f64()
    );
    cache
        .get_or_verify("alice", b"correct horse", verify("correct horse"))
        .await
        .unwrap();
    let c = cache.clone();
    let rate = drive(4, move |_, _| {
        let c = c.clone();
        async move {
            let v = c
                .get_or_verify("alice", b"correct horse", || async {
                    Err::<Option<i64>, _>("miss".to_string())
                })
                .await;
            assert_eq!(v, Ok(Some(42)));
        }
    })
    .await;
    println!("auth      cache hit (HMAC-SHA256 + map)         {:>8.2} us each = {rate:.0} logins/s (4 tasks)", 1e6 / rate);
}

#[tokio::main]
async fn main() {
    let clock = Arc::new(SystemClock);
    let local = Arc::new(Limiter::new(roomy(LimitsBackend::Local), None, clock.clone()).unwrap());
    bench_limiter("local", local, 4).await;

    let url = std::env::var("POSTGATE_BENCH_PG_URL").ok();
    if let Some(server) = url {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&server).await.expect("connect");
        let name = format!("bench_limits_{}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let db = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
        let options = StoreOptions {
            max_connections: 16,
            ..StoreOptions::default()
        };
        let s = store::open_and_migrate(&db, &options).await.unwrap();
        if std::env::var("POSTGATE_BENCH_PG_LOGGED").as_deref() == Ok("1") {
            // For comparison with the default UNLOGGED table.
            let mut c = sqlx::PgConnection::connect(&db).await.unwrap();
            sqlx::query("ALTER TABLE limit_counters SET LOGGED")
                .execute(&mut c)
                .await
                .unwrap();
            println!("postgres  (limit_counters set LOGGED for this run)");
        }
        let shared: Arc<dyn LimitStore> = s.clone();
        let pg =
            Arc::new(Limiter::new(roomy(LimitsBackend::Postgres), Some(shared), clock).unwrap());
        bench_limiter("postgres", pg, 16).await;
        drop(s);
        let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    } else {
        println!("postgres  skipped (set POSTGATE_BENCH_PG_URL)");
    }
    bench_auth_cache().await;
}
