//! Issue #6 on real stores: every limit triggers at exactly its count and
//! recovers after its window with counters in SQLite and PostgreSQL
//! (`backend = "store"`/`"postgres"`), brute-force lockouts treat unknown
//! users like existing ones, and two limiters on one PostgreSQL (two nodes)
//! enforce one combined quota.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use postgate::limits::{
    gcra, Account, Clock, LimitRefusal, Limiter, LimitsBackend, LimitsConfig, ManualClock,
    Reservation,
};
use postgate::store::{self, GcraOutcome, LimitCounter, LimitOverrides, LimitStore, StoreOptions};

use crate::common::all_stores;

const T0: i64 = 1_800_000_000_000;

fn shared(store: Arc<dyn store::Store>) -> Option<Arc<dyn LimitStore>> {
    Some(store)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config() -> LimitsConfig {
    LimitsConfig {
        backend: LimitsBackend::Store,
        messages_per_minute: 3,
        messages_per_hour: 5,
        messages_per_day: 7,
        recipients_per_day: 20,
        ip_connections_per_minute: 4,
        auth_failure_window: Duration::from_secs(600),
        auth_tarpit_after: 2,
        auth_tarpit_delay: Duration::from_secs(1),
        auth_tarpit_max_delay: Duration::from_secs(8),
        auth_lockout_per_user: 4,
        auth_lockout_per_ip: 6,
        auth_lockout_duration: Duration::from_secs(300),
        ..LimitsConfig::default()
    }
}

/// The raw counter contract: the store's SQL agrees with the pure GCRA on a
/// long mixed sequence, and keys with LIKE metacharacters reset exactly.
#[tokio::test]
async fn store_counters_match_the_pure_algorithm() {
    for t in all_stores().await {
        let s = &t.store;
        let rate = gcra::Rate::new(7, 60_000);
        let mut model: Option<i64> = None;
        let mut now = T0;
        for i in 0..60u32 {
            now += i64::from((i * 7919) % 13_000);
            let cost = 1 + i % 3;
            let step = rate.step(now, cost);
            let want = gcra::apply(&step, model);
            let got = s.limit_check("k/x/7/60000", &step).await.unwrap();
            match (want, got) {
                (GcraOutcome::Allowed { tat: a }, GcraOutcome::Allowed { tat: b }) => {
                    assert_eq!(a, b, "{} step {i}", t.backend);
                    model = Some(a);
                }
                (GcraOutcome::Refused { tat: a }, GcraOutcome::Refused { tat: b }) => {
                    assert_eq!(a, b, "{} step {i}", t.backend)
                }
                (w, g) => panic!("{} step {i}: want {w:?}, got {g:?}", t.backend),
            }
        }
        let row = &s.limit_get(&["k/x/7/60000".to_string()]).await.unwrap()[0];
        assert_eq!(
            row.expires_at,
            gcra::expires_at(&rate.step(now, 1), row.tat)
        );
        for key in ["user:a_%/lockout", "user:ab%/lockout", "user:a_/lockout"] {
            s.limit_set(&LimitCounter {
                key: key.into(),
                tat: 5,
                expires_at: now + 10,
            })
            .await
            .unwrap();
        }
        assert_eq!(
            s.limit_delete_prefix("user:a_%/").await.unwrap(),
            1,
            "{}",
            t.backend
        );
        assert_eq!(s.limit_list(now).await.unwrap().len(), 3, "{}", t.backend);
        let gone = s
            .limit_delete(&["user:ab%/lockout".into(), "absent".into()])
            .await
            .unwrap();
        assert_eq!(gone, 1, "{}", t.backend);
        assert_eq!(s.limit_purge(now + 10).await.unwrap(), 1, "{}", t.backend);
        let left = s.limit_list(now).await.unwrap();
        assert_eq!(left.len(), 1, "{}", t.backend);
        assert_eq!(left[0].key, "k/x/7/60000", "{}", t.backend);
    }
}

/// Upstream pacing (delivery's provider throttles) on the store's
/// counters: slots reserved to the millisecond, a refusal past the allowed
/// wait that takes nothing, recovery.
#[tokio::test]
async fn reservations_pace_to_the_millisecond_on_the_store() {
    let ms = Duration::from_millis;
    for t in all_stores().await {
        let b = t.backend;
        let clock = Arc::new(ManualClock::new(T0));
        let l = Limiter::new(config(), shared(t.store.clone()), clock.clone()).unwrap();
        for wait in [0, 72, 144] {
            assert_eq!(
                l.reserve("upstream ses", 1, ms(72), ms(200)).await,
                Reservation::Granted { wait: ms(wait) },
                "{b}"
            );
        }
        assert_eq!(
            l.reserve("upstream ses", 1, ms(72), ms(200)).await,
            Reservation::Refused {
                retry_after: ms(16)
            },
            "{b}"
        );
        clock.advance_ms(16);
        assert_eq!(
            l.reserve("upstream ses", 1, ms(72), ms(200)).await,
            Reservation::Granted { wait: ms(200) },
            "{b}"
        );
        clock.advance_ms(1_000);
        assert_eq!(
            l.reserve("upstream ses", 1, ms(72), ms(200)).await,
            Reservation::Granted { wait: ms(0) },
            "{b}"
        );
    }
}

#[tokio::test]
async fn connection_and_message_limits_trigger_at_count_and_recover() {
    for t in all_stores().await {
        let b = t.backend;
        let clock = Arc::new(ManualClock::new(T0));
        let l = Limiter::new(config(), shared(t.store.clone()), clock.clone()).unwrap();
        for _ in 0..4 {
            l.connection(ip("192.0.2.1")).await.unwrap();
        }
        let r = l.connection(ip("192.0.2.1")).await.unwrap_err();
        assert_eq!(
            r.reason, "connection rate from 192.0.2.1 exceeded (4 per minute)",
            "{b}"
        );
        clock.advance_ms(60_000);
        for _ in 0..4 {
            l.connection(ip("192.0.2.1")).await.unwrap();
        }

        let none = LimitOverrides::default();
        let a = Account {
            user_id: 1,
            username: "alice",
            user_limits: &none,
            credential_id: 1,
            credential_label: "default",
            credential_limits: &none,
        };
        for _ in 0..3 {
            l.message(&a, 1).await.unwrap();
        }
        let r: LimitRefusal = l.message(&a, 1).await.unwrap_err();
        assert_eq!(
            r.to_string(),
            "message rate for user alice exceeded (3 per minute), try again in 20 s",
            "{b}"
        );
        clock.advance_ms(60_000);
        l.message(&a, 1).await.unwrap();
        l.message(&a, 1).await.unwrap();
        let r = l.message(&a, 1).await.unwrap_err();
        assert_eq!(
            r.reason, "message rate for user alice exceeded (5 per hour)",
            "{b}"
        );
        clock.advance_ms(3_600_000);
        l.message(&a, 1).await.unwrap();
        l.message(&a, 1).await.unwrap();
        let r = l.message(&a, 1).await.unwrap_err();
        assert_eq!(
            r.reason, "message quota for user alice exceeded (7 per day)",
            "{b}"
        );
        clock.advance_ms(86_400_000);
        l.message(&a, 15).await.unwrap();
        let r = l.message(&a, 6).await.unwrap_err();
        assert_eq!(
            r.reason, "recipient quota for user alice exceeded (20 per day)",
            "{b}"
        );
        l.message(&a, 5).await.unwrap();
        assert!(l.message(&a, 1).await.is_err(), "{b}");
        clock.advance_ms(86_400_000);
        l.message(&a, 20).await.unwrap();

        // Per-credential override: its own counter, on top of the user's.
        let printer = LimitOverrides {
            messages_per_minute: Some(1),
            ..LimitOverrides::default()
        };
        let p = Account {
            credential_id: 2,
            credential_label: "printer",
            credential_limits: &printer,
            ..a
        };
        clock.advance_ms(86_400_000);
        l.message(&p, 1).await.unwrap();
        let r = l.message(&p, 1).await.unwrap_err();
        assert_eq!(
            r.reason, "message rate for credential printer of user alice exceeded (1 per minute)",
            "{b}"
        );
        l.message(&a, 1).await.unwrap();
        l.message(&a, 1).await.unwrap();
        assert!(
            l.message(&a, 1).await.is_err(),
            "{b}: printer's message counted for alice"
        );

        let snap = l.snapshot().await.unwrap();
        assert!(
            snap.counters
                .iter()
                .any(|c| c.subject == "uid:1" && c.kind == "messages" && c.used == 3),
            "{b}: {snap}"
        );
        assert!(l.reset("uid:1").await.unwrap() >= 1, "{b}");
        l.message(&a, 1).await.unwrap();
    }
}

/// Runs a fixed brute-force script against `username` and records every
/// answer (delay or refusal, reason with the name masked), so existing and
/// unknown usernames can be compared.
async fn brute_force_script(
    l: &Limiter,
    clock: &ManualClock,
    username: &str,
    net: u8,
) -> Vec<String> {
    let show = |r: Result<Duration, LimitRefusal>| match r {
        Ok(d) => format!("Ok({})", d.as_secs()),
        Err(r) => format!(
            "Err({}: {})",
            r.retry_after_secs(),
            r.reason.replace(username, "USER")
        ),
    };
    let mut log = Vec::new();
    for i in 0..5u8 {
        // A different IP each time: only the username's counter grows.
        let from = IpAddr::from([198, 51, net, i]);
        let answer = l.auth_allowed(from, username).await;
        if answer.is_ok() {
            l.auth_result(from, username, false).await;
        }
        log.push(show(answer));
    }
    clock.advance_ms(299_000);
    log.push(show(l.auth_allowed(ip("203.0.113.9"), username).await));
    clock.advance_ms(1_000);
    log.push(show(l.auth_allowed(ip("203.0.113.9"), username).await));
    log
}

#[tokio::test]
async fn lockouts_per_user_and_ip_and_identical_for_unknown_users() {
    for t in all_stores().await {
        let b = t.backend;
        t.store
            .user_add("alice", "default", "$argon2id$x")
            .await
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let l = Limiter::new(config(), shared(t.store.clone()), clock.clone()).unwrap();
        let known = brute_force_script(&l, &clock, "alice", 1).await;
        // Time goes on (never back): a purge of expired counters spawned by
        // the last check above may still be running, and it deletes what
        // expired by *its* clock reading; turning the clock back would make
        // fresh counters look expired to it (a flake under load).
        let unknown = brute_force_script(&l, &clock, "mallory", 2).await;
        assert_eq!(
            known, unknown,
            "{b}: existing and unknown users look the same"
        );
        let lock = "too many failed logins for user USER";
        assert_eq!(
            known,
            [
                "Ok(0)".to_string(),
                "Ok(0)".into(),
                "Ok(1)".into(),
                "Ok(2)".into(),
                format!("Err(300: {lock})"),
                format!("Err(1: {lock})"),
                // Lockout over; 2 of the 4 failures are still remembered.
                "Ok(1)".into(),
            ],
            "{b}"
        );
        // Per IP: 6 failures from one address with different usernames.
        clock.set_ms(T0 + 10_000_000);
        for i in 0..6 {
            l.auth_allowed(ip("192.0.2.66"), &format!("u{i}"))
                .await
                .unwrap();
            l.auth_result(ip("192.0.2.66"), &format!("u{i}"), false)
                .await;
        }
        let r = l.auth_allowed(ip("192.0.2.66"), "alice").await.unwrap_err();
        assert_eq!(r.reason, "too many failed logins from 192.0.2.66", "{b}");
        let r = l.connection(ip("192.0.2.66")).await.unwrap_err();
        assert_eq!((r.is_lockout(), r.retry_after_secs()), (true, 300), "{b}");
        l.reset("192.0.2.66").await.unwrap();
        l.connection(ip("192.0.2.66")).await.unwrap();
    }
}

/// Two nodes: two limiters, each with its own connection pool, on one
/// PostgreSQL, hammered concurrently: exactly the quota passes in total.
#[tokio::test]
async fn two_nodes_on_one_postgres_enforce_one_quota() {
    let Some(url) = crate::common::pg_database_url().await else {
        return;
    };
    let a = store::open_and_migrate(&url, &StoreOptions::default())
        .await
        .unwrap();
    let b = store::open(&url, &StoreOptions::default()).await.unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let cfg = LimitsConfig {
        backend: LimitsBackend::Postgres,
        messages_per_minute: 10,
        messages_per_hour: 0,
        messages_per_day: 0,
        recipients_per_day: 25,
        ..LimitsConfig::default()
    };
    assert!(cfg.validate(a.backend()).is_ok());
    let nodes = [
        Arc::new(Limiter::new(cfg.clone(), shared(a), clock.clone()).unwrap()),
        Arc::new(Limiter::new(cfg, shared(b), clock.clone()).unwrap()),
    ];
    let run = |recipients: u32| {
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let node = nodes[i % 2].clone();
                tokio::spawn(async move {
                    let none = LimitOverrides::default();
                    let acc = Account {
                        user_id: 9,
                        username: "bob",
                        user_limits: &none,
                        credential_id: 9,
                        credential_label: "default",
                        credential_limits: &none,
                    };
                    node.message(&acc, recipients).await.is_ok()
                })
            })
            .collect();
        async move {
            let mut ok = 0;
            for t in tasks {
                ok += t.await.unwrap() as u32;
            }
            ok
        }
    };
    assert_eq!(run(1).await, 10, "10 per minute across both nodes");
    clock.advance_ms(60_000);
    // 25 recipients per day; 10 already used: 15 single-recipient messages
    // fit, but the minute rate (10) is the tighter bound now.
    assert_eq!(run(1).await, 10);
    clock.advance_ms(60_000);
    assert_eq!(run(1).await, 5, "the day's 25 recipients are used up");
    let snap = nodes[1].snapshot().await.unwrap();
    assert!(snap
        .counters
        .iter()
        .any(|c| c.kind == "recipients" && c.used == 25 && c.subject == "uid:9"));
    let _ = clock.now_ms();
}

/// Issue 12 item 3 on both store backends: 100 concurrent wrong passwords
/// for one username from 100 addresses, through two nodes (two limiters,
/// two pools) on one store, every check made before any result is known:
/// exactly the username's allowance (10) is verified, the rest
/// refused before verification; the lockout follows. A success in between
/// (the right password) still clears the username and costs the IP nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_attempts_never_exceed_the_lockout_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        let clock = Arc::new(ManualClock::new(T0));
        let cfg = LimitsConfig {
            auth_tarpit_after: 3,
            auth_lockout_per_user: 10,
            auth_lockout_per_ip: 10,
            // Every check is made before any result is known (the
            // barrier below): nobody waits for the attempts in flight.
            auth_wait_in_flight: Duration::ZERO,
            ..config()
        };
        let l =
            Arc::new(Limiter::new(cfg.clone(), shared(t.store.clone()), clock.clone()).unwrap());
        // A second node: its own limiter and connection pool on the same store.
        let other = store::open(&t.url, &StoreOptions::default()).await.unwrap();
        let l2 = Arc::new(Limiter::new(cfg, shared(other), clock.clone()).unwrap());
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let tasks: Vec<_> = (0..100u8)
            .map(|i| {
                let l = if i % 2 == 0 { l.clone() } else { l2.clone() };
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let from = IpAddr::from([198, 51, 100, i]);
                    let allowed = l.auth_allowed(from, "victim").await.is_ok();
                    barrier.wait().await;
                    if allowed {
                        l.auth_result(from, "victim", false).await;
                    }
                    allowed
                })
            })
            .collect();
        let mut verified = 0;
        for task in tasks {
            verified += task.await.unwrap() as u32;
        }
        assert_eq!(verified, 10, "{b}: at most the allowance is verified");
        let r = l
            .auth_allowed(ip("203.0.113.1"), "victim")
            .await
            .unwrap_err();
        assert_eq!((r.is_lockout(), r.retry_after_secs()), (true, 300), "{b}");

        // Success semantics: failures, then the right password, clear the
        // username; the successful attempt is not charged to its IP.
        for _ in 0..3 {
            l.auth_allowed(ip("192.0.2.5"), "alice").await.unwrap();
            l.auth_result(ip("192.0.2.5"), "alice", false).await;
        }
        assert!(l.auth_allowed(ip("192.0.2.6"), "alice").await.unwrap() > Duration::ZERO);
        l.auth_result(ip("192.0.2.6"), "alice", true).await;
        for _ in 0..9 {
            l.auth_allowed(ip("192.0.2.6"), "carol").await.unwrap();
            l.auth_result(ip("192.0.2.6"), "carol", true).await;
        }
        assert_eq!(
            l.auth_allowed(ip("192.0.2.6"), "alice").await.unwrap(),
            Duration::ZERO,
            "{b}"
        );
        l.auth_abandoned(ip("192.0.2.6"), "alice").await;
        l.connection(ip("192.0.2.6")).await.unwrap();
    }
}

/// Issue 12 item 6 on the local backend and on every store: checks at MAIL
/// and RCPT charge nothing; a committed message is charged, even past the
/// limit (a race between sessions), and then MAIL and RCPT are refused.
#[tokio::test]
async fn quota_checks_charge_nothing_and_commits_charge_on_every_backend() {
    let mut limiters = Vec::new();
    let quota = LimitsConfig {
        messages_per_day: 2,
        recipients_per_day: 3,
        ..config()
    };
    let clock = Arc::new(ManualClock::new(T0));
    let local = LimitsConfig {
        backend: LimitsBackend::Local,
        ..quota.clone()
    };
    limiters.push((
        "local".to_string(),
        Limiter::new(local, None, clock.clone()).unwrap(),
    ));
    let stores = all_stores().await;
    for t in &stores {
        let l = Limiter::new(quota.clone(), shared(t.store.clone()), clock.clone()).unwrap();
        limiters.push((t.backend.to_string(), l));
    }
    assert!(limiters.len() >= 2);
    let none = LimitOverrides::default();
    let a = Account {
        user_id: 1,
        username: "alice",
        user_limits: &none,
        credential_id: 1,
        credential_label: "default",
        credential_limits: &none,
    };
    for (b, l) in &limiters {
        for _ in 0..10 {
            l.mail_check(&a).await.unwrap();
            l.rcpt_check(&a, 3).await.unwrap();
        }
        let r = l.rcpt_check(&a, 4).await.unwrap_err();
        assert_eq!(
            r.reason, "recipient quota for user alice exceeded (3 per day)",
            "{b}"
        );
        l.message_charge(&a, 2).await;
        l.mail_check(&a).await.unwrap();
        l.rcpt_check(&a, 1).await.unwrap();
        assert!(l.rcpt_check(&a, 2).await.is_err(), "{b}");
        // Two sessions passed their checks at once: both are charged.
        l.message_charge(&a, 2).await;
        l.message_charge(&a, 1).await;
        let r = l.mail_check(&a).await.unwrap_err();
        assert_eq!(
            r.reason, "message quota for user alice exceeded (2 per day)",
            "{b}"
        );
        assert!(l.rcpt_check(&a, 1).await.is_err(), "{b}");
        let snap = l.snapshot().await.unwrap();
        assert!(
            snap.counters
                .iter()
                .any(|c| c.subject == "uid:1" && c.kind == "messages" && c.used >= 2),
            "{b}: {snap}"
        );
    }
}
