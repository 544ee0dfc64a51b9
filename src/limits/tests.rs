//! Limiter semantics on the local backend with a hand-moved clock. The same
//! scenarios run on the store backends in tests/integration/limits_*.rs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;

const T0: i64 = 1_800_000_000_000;

fn limiter(config: LimitsConfig) -> (Limiter, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    (Limiter::new(config, None, clock.clone()).unwrap(), clock)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn no_overrides() -> LimitOverrides {
    LimitOverrides::default()
}

#[tokio::test]
async fn connection_rate_triggers_at_count_and_recovers() {
    let (l, clock) = limiter(LimitsConfig {
        ip_connections_per_minute: 5,
        ..LimitsConfig::default()
    });
    for _ in 0..5 {
        l.connection(ip("192.0.2.1")).await.unwrap();
    }
    let r = l.connection(ip("192.0.2.1")).await.unwrap_err();
    assert_eq!((r.scope, r.kind), (LimitScope::Ip, LimitKind::Connections));
    assert_eq!(
        r.reason,
        "connection rate from 192.0.2.1 exceeded (5 per minute)"
    );
    assert_eq!(r.retry_after_secs(), 12);
    l.connection(ip("192.0.2.2")).await.unwrap();
    clock.advance_ms(60_000);
    for _ in 0..5 {
        l.connection(ip("192.0.2.1")).await.unwrap();
    }
    assert!(l.connection(ip("192.0.2.1")).await.is_err());
}

#[tokio::test]
async fn connection_slots_are_released_on_drop() {
    let (l, _) = limiter(LimitsConfig {
        ip_concurrent_connections: 2,
        ..LimitsConfig::default()
    });
    let a = l.connection_slot(ip("192.0.2.1")).unwrap();
    let _b = l.connection_slot(ip("192.0.2.1")).unwrap();
    assert!(l.connection_slot(ip("192.0.2.1")).is_err());
    l.connection_slot(ip("192.0.2.9")).unwrap();
    drop(a);
    let _c = l.connection_slot(ip("192.0.2.1")).unwrap();
}

#[tokio::test]
async fn sessions_per_user_with_override() {
    let (l, _) = limiter(LimitsConfig {
        concurrent_sessions: 1,
        ..LimitsConfig::default()
    });
    let g = l.session_start(7, &no_overrides()).unwrap();
    let r = l.session_start(7, &no_overrides()).unwrap_err();
    assert_eq!(r.reason, "too many concurrent sessions for user 7 (1)");
    let more = LimitOverrides {
        concurrent_sessions: Some(2),
        ..no_overrides()
    };
    let _g2 = l.session_start(7, &more).unwrap();
    assert!(l.session_start(7, &more).is_err());
    drop(g);
    l.session_start(7, &more).unwrap();
    assert_eq!(l.snapshot().await.unwrap().sessions, vec![(7, 1)]);
}

fn account<'a>(user: &'a LimitOverrides, cred: &'a LimitOverrides, cred_id: i64) -> Account<'a> {
    Account {
        user_id: 1,
        username: "alice",
        user_limits: user,
        credential_id: cred_id,
        credential_label: "printer",
        credential_limits: cred,
    }
}

#[tokio::test]
async fn message_limits_per_minute_hour_day_and_recipients() {
    let (l, clock) = limiter(LimitsConfig {
        messages_per_minute: 3,
        messages_per_hour: 5,
        messages_per_day: 7,
        recipients_per_day: 100,
        ..LimitsConfig::default()
    });
    let none = no_overrides();
    let a = account(&none, &none, 10);
    for _ in 0..3 {
        l.message(&a, 1).await.unwrap();
    }
    let r = l.message(&a, 1).await.unwrap_err();
    assert_eq!(
        r.reason,
        "message rate for user alice exceeded (3 per minute)"
    );
    assert_eq!(
        r.to_string(),
        "message rate for user alice exceeded (3 per minute), try again in 20 s"
    );
    clock.advance_ms(60_000);
    l.message(&a, 1).await.unwrap();
    l.message(&a, 1).await.unwrap();
    let r = l.message(&a, 1).await.unwrap_err();
    assert_eq!(
        r.reason,
        "message rate for user alice exceeded (5 per hour)"
    );
    assert_eq!((r.scope, r.kind), (LimitScope::User, LimitKind::Messages));
    clock.advance_ms(3_600_000);
    l.message(&a, 1).await.unwrap();
    l.message(&a, 1).await.unwrap();
    let r = l.message(&a, 1).await.unwrap_err();
    assert_eq!(
        r.reason,
        "message quota for user alice exceeded (7 per day)"
    );
    clock.advance_ms(86_400_000);
    l.message(&a, 60).await.unwrap();
    let r = l.message(&a, 41).await.unwrap_err();
    assert_eq!(
        r.reason,
        "recipient quota for user alice exceeded (100 per day)"
    );
    assert_eq!((r.scope, r.kind), (LimitScope::User, LimitKind::Recipients));
    // The refused message took nothing: 40 more recipients still fit.
    l.message(&a, 40).await.unwrap();
    assert!(l.message(&a, 1).await.is_err());
    clock.advance_ms(86_400_000);
    l.message(&a, 100).await.unwrap();
}

#[tokio::test]
async fn credential_overrides_count_on_their_own_and_toward_the_user() {
    let (l, _) = limiter(LimitsConfig {
        messages_per_minute: 0,
        messages_per_hour: 5,
        messages_per_day: 0,
        recipients_per_day: 0,
        ..LimitsConfig::default()
    });
    let user = LimitOverrides {
        messages_per_hour: Some(4),
        ..no_overrides()
    };
    let printer = LimitOverrides {
        messages_per_hour: Some(2),
        ..no_overrides()
    };
    let none = no_overrides();
    let p = account(&user, &printer, 10);
    let laptop = account(&user, &none, 11);
    l.message(&p, 1).await.unwrap();
    l.message(&p, 1).await.unwrap();
    let r = l.message(&p, 1).await.unwrap_err();
    assert_eq!(
        r.reason,
        "message rate for credential printer of user alice exceeded (2 per hour)"
    );
    assert_eq!(r.scope, LimitScope::Credential);
    // The printer's two count toward the user's 4 (override of the default 5).
    l.message(&laptop, 1).await.unwrap();
    l.message(&laptop, 1).await.unwrap();
    let r = l.message(&laptop, 1).await.unwrap_err();
    assert_eq!(
        r.reason,
        "message rate for user alice exceeded (4 per hour)"
    );
    assert_eq!(
        merge_overrides(&user, &printer).messages_per_hour,
        Some(2),
        "credential wins"
    );
}

#[tokio::test]
async fn zero_means_no_limit() {
    let (l, _) = limiter(LimitsConfig {
        messages_per_minute: 0,
        messages_per_hour: 0,
        messages_per_day: 0,
        recipients_per_day: 0,
        ip_connections_per_minute: 0,
        ..LimitsConfig::default()
    });
    let none = no_overrides();
    for _ in 0..1000 {
        l.message(&account(&none, &none, 1), 1000).await.unwrap();
        l.connection(ip("192.0.2.1")).await.unwrap();
    }
}

fn brute_config() -> LimitsConfig {
    LimitsConfig {
        auth_failure_window: Duration::from_secs(600),
        auth_tarpit_after: 2,
        auth_tarpit_delay: Duration::from_secs(1),
        auth_tarpit_max_delay: Duration::from_secs(4),
        auth_lockout_per_user: 5,
        auth_lockout_per_ip: 8,
        auth_lockout_duration: Duration::from_secs(300),
        ..LimitsConfig::default()
    }
}

#[tokio::test]
async fn failed_logins_tarpit_then_lock_the_username() {
    let (l, clock) = limiter(brute_config());
    let mut delays = Vec::new();
    for i in 0..5u8 {
        // A different IP each time: only the username counter grows.
        let from = IpAddr::from([198, 51, 100, i]);
        delays.push(l.auth_allowed(from, "Alice").await.unwrap().as_secs());
        l.auth_result(from, "alice", false).await;
    }
    assert_eq!(delays, [0, 0, 1, 2, 4]);
    let r = l
        .auth_allowed(ip("203.0.113.1"), "ALICE")
        .await
        .unwrap_err();
    assert_eq!(
        (r.scope, r.kind),
        (LimitScope::User, LimitKind::AuthFailures)
    );
    assert!(r.is_lockout());
    assert_eq!(r.reason, "too many failed logins for user alice");
    assert_eq!(r.retry_after_secs(), 300);
    // Others are unaffected.
    assert_eq!(
        l.auth_allowed(ip("203.0.113.1"), "bob").await.unwrap(),
        Duration::ZERO
    );
    clock.advance_ms(300_000);
    l.auth_allowed(ip("203.0.113.1"), "alice").await.unwrap();
}

#[tokio::test]
async fn failed_logins_lock_the_ip_at_accept_too() {
    let (l, clock) = limiter(brute_config());
    for i in 0..8 {
        l.auth_allowed(ip("192.0.2.66"), &format!("user{i}"))
            .await
            .unwrap();
        l.auth_result(ip("192.0.2.66"), &format!("user{i}"), false)
            .await;
    }
    let r = l
        .auth_allowed(ip("192.0.2.66"), "someone")
        .await
        .unwrap_err();
    assert_eq!(r.reason, "too many failed logins from 192.0.2.66");
    let r = l.connection(ip("192.0.2.66")).await.unwrap_err();
    assert_eq!((r.scope, r.kind), (LimitScope::Ip, LimitKind::AuthFailures));
    let snap = l.snapshot().await.unwrap();
    assert!(snap
        .counters
        .iter()
        .any(|c| c.subject == "ip:192.0.2.66" && c.kind == "lockout"));
    assert!(snap.to_string().contains("ip:192.0.2.66"));
    // The operator lifts it.
    assert!(l.reset("192.0.2.66").await.unwrap() >= 1);
    l.connection(ip("192.0.2.66")).await.unwrap();
    l.auth_allowed(ip("192.0.2.66"), "someone").await.unwrap();
    let _ = clock;
}

/// Attempts in flight fill the username's allowance: the next one waits
/// for them instead of being refused. A success among them makes room; a
/// last failure locks the username out and the waiter gets the lockout.
#[tokio::test]
async fn an_attempt_waits_for_the_attempts_in_flight() {
    let (l, _) = limiter(LimitsConfig {
        auth_wait_in_flight: Duration::from_secs(5),
        ..brute_config()
    });
    let l = Arc::new(l);
    for i in 0..5u8 {
        l.auth_allowed(IpAddr::from([198, 51, 100, i]), "alice")
            .await
            .unwrap();
    }
    let waiter = {
        let l = l.clone();
        tokio::spawn(async move { l.auth_allowed(ip("203.0.113.7"), "alice").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "it waits while the allowance is in flight"
    );
    l.auth_result(IpAddr::from([198, 51, 100, 0]), "alice", true)
        .await;
    waiter.await.unwrap().expect("room made by the success");

    // Five attempts for bob in flight, all failing: the last failure locks
    // bob out, and the waiter gets the lockout.
    for i in 0..5u8 {
        l.auth_allowed(IpAddr::from([192, 0, 2, i]), "bob")
            .await
            .unwrap();
    }
    let waiter = {
        let l = l.clone();
        tokio::spawn(async move { l.auth_allowed(ip("203.0.113.9"), "bob").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    for i in 0..5u8 {
        l.auth_result(IpAddr::from([192, 0, 2, i]), "bob", false)
            .await;
    }
    let r = waiter.await.unwrap().unwrap_err();
    assert!(r.is_lockout() && r.retry_after_secs() == 300, "{r:?}");
}

/// With `auth_wait_in_flight = "0s"` a full allowance is refused at once.
#[tokio::test]
async fn no_wait_refuses_at_once_when_the_allowance_is_in_flight() {
    let (l, _) = limiter(LimitsConfig {
        auth_wait_in_flight: Duration::ZERO,
        ..brute_config()
    });
    for i in 0..5u8 {
        l.auth_allowed(IpAddr::from([198, 51, 100, i]), "alice")
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    l.auth_allowed(ip("203.0.113.7"), "alice")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// One verified failure: reserved, then reported.
async fn fail(l: &Limiter, from: &str, user: &str) {
    l.auth_allowed(ip(from), user).await.unwrap();
    l.auth_result(ip(from), user, false).await;
}

#[tokio::test]
async fn success_clears_the_username_failures() {
    let (l, _) = limiter(brute_config());
    for _ in 0..4 {
        fail(&l, "192.0.2.1", "alice").await;
    }
    l.auth_allowed(ip("192.0.2.2"), "alice").await.unwrap();
    l.auth_result(ip("192.0.2.2"), "alice", true).await;
    assert_eq!(
        l.auth_allowed(ip("192.0.2.2"), "alice").await.unwrap(),
        Duration::ZERO
    );
}

#[tokio::test]
async fn failures_are_forgotten_over_the_window() {
    let (l, clock) = limiter(brute_config());
    for _ in 0..4 {
        fail(&l, "192.0.2.1", "alice").await;
    }
    clock.advance_ms(600_000);
    assert_eq!(
        l.auth_allowed(ip("192.0.2.1"), "alice").await.unwrap(),
        Duration::ZERO
    );
    l.auth_abandoned(ip("192.0.2.1"), "alice").await;
    // 4 old + 4 new would lock at 5 if nothing had been forgotten.
    for _ in 0..4 {
        fail(&l, "192.0.2.1", "alice").await;
    }
    l.auth_allowed(ip("192.0.2.1"), "alice").await.unwrap();
}

/// Issue 12 item 3: attempts are reserved when checked, so a burst of
/// concurrent wrong passwords (each from its own address) gets at most the
/// username's allowance verified; the rest are refused before verifying.
#[tokio::test]
async fn concurrent_attempts_never_exceed_the_lockout() {
    let (l, _) = limiter(LimitsConfig {
        auth_tarpit_after: 0,
        auth_lockout_per_user: 10,
        // Every check is made before any result is known: nobody waits.
        auth_wait_in_flight: Duration::ZERO,
        ..brute_config()
    });
    let l = Arc::new(l);
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100u8)
        .map(|i| {
            let (l, barrier) = (l.clone(), barrier.clone());
            tokio::spawn(async move {
                let from = IpAddr::from([198, 51, 100, i]);
                let allowed = l.auth_allowed(from, "alice").await.is_ok();
                // Every check happens before any verification ends.
                barrier.wait().await;
                if allowed {
                    l.auth_result(from, "alice", false).await;
                }
                allowed
            })
        })
        .collect();
    let mut verified = 0;
    for t in tasks {
        verified += t.await.unwrap() as u32;
    }
    assert_eq!(verified, 10);
    let r = l
        .auth_allowed(ip("203.0.113.1"), "alice")
        .await
        .unwrap_err();
    assert!(r.is_lockout(), "{r:?}");
    assert_eq!(
        r.retry_after_secs(),
        300,
        "the lockout itself, not a GCRA wait"
    );
}

/// A success gives the IP its reserved attempt back and an unverified
/// attempt (credential store down) counts as nothing: the IP's allowance
/// is untouched after any number of them.
#[tokio::test]
async fn successes_and_abandoned_attempts_cost_nothing() {
    let (l, _) = limiter(brute_config());
    for i in 0..20 {
        let user = format!("user{i}");
        l.auth_allowed(ip("192.0.2.7"), &user).await.unwrap();
        if i % 2 == 0 {
            l.auth_result(ip("192.0.2.7"), &user, true).await;
        } else {
            l.auth_abandoned(ip("192.0.2.7"), &user).await;
        }
    }
    assert_eq!(
        l.auth_allowed(ip("192.0.2.7"), "alice").await.unwrap(),
        Duration::ZERO
    );
    l.connection(ip("192.0.2.7")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn follows_a_paused_tokio_clock() {
    let clock = Arc::new(TokioClock::new());
    let l = Limiter::new(
        LimitsConfig {
            messages_per_minute: 2,
            ..LimitsConfig::default()
        },
        None,
        clock,
    )
    .unwrap();
    let none = no_overrides();
    let a = account(&none, &none, 1);
    l.message(&a, 1).await.unwrap();
    l.message(&a, 1).await.unwrap();
    let r = l.message(&a, 1).await.unwrap_err();
    assert_eq!(r.retry_after_secs(), 30);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(l.message(&a, 1).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    l.message(&a, 1).await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    l.message(&a, 1).await.unwrap();
    l.message(&a, 1).await.unwrap();
    assert!(l.message(&a, 1).await.is_err());
}

fn granted(ms: u64) -> Reservation {
    Reservation::Granted {
        wait: Duration::from_millis(ms),
    }
}

#[tokio::test]
async fn reservations_pace_a_named_rate_to_the_millisecond() {
    let (l, clock) = limiter(LimitsConfig::default());
    let (period, max_wait) = (Duration::from_millis(72), Duration::from_millis(200));
    // 1 per 72 ms (about 14 per second, SES's default quota): the first
    // goes now, the next ones are reserved 72 ms apart, up to `max_wait`.
    for ms in [0, 72, 144] {
        assert_eq!(
            l.reserve("upstream ses", 1, period, max_wait).await,
            granted(ms)
        );
    }
    assert_eq!(
        l.reserve("upstream ses", 1, period, max_wait).await,
        Reservation::Refused {
            retry_after: Duration::from_millis(16)
        }
    );
    // Another name has its own slots; a refusal took nothing.
    assert_eq!(
        l.reserve("upstream m365", 1, period, max_wait).await,
        granted(0)
    );
    clock.advance_ms(16);
    assert_eq!(
        l.reserve("upstream ses", 1, period, max_wait).await,
        granted(200)
    );
    clock.advance_ms(1000);
    assert_eq!(
        l.reserve("upstream ses", 1, period, max_wait).await,
        granted(0)
    );
}

#[tokio::test]
async fn reservations_allow_the_burst_at_once() {
    let (l, clock) = limiter(LimitsConfig::default());
    let period = Duration::from_millis(300);
    for _ in 0..3 {
        assert_eq!(l.reserve("u", 3, period, Duration::ZERO).await, granted(0));
    }
    assert_eq!(
        l.reserve("u", 3, period, Duration::ZERO).await,
        Reservation::Refused {
            retry_after: Duration::from_millis(100)
        }
    );
    assert_eq!(
        l.reserve("u", 3, period, Duration::from_millis(100)).await,
        granted(100)
    );
    clock.advance_ms(100);
    assert_eq!(
        l.reserve("u", 3, period, Duration::from_millis(100)).await,
        granted(100)
    );
    assert_eq!(
        l.reserve("unlimited", 0, period, Duration::ZERO).await,
        granted(0)
    );
}

#[test]
fn credential_only_recovers_what_the_credential_sets() {
    let user = LimitOverrides {
        messages_per_hour: Some(4),
        messages_per_day: Some(50),
        concurrent_sessions: Some(3),
        ..no_overrides()
    };
    let cred = LimitOverrides {
        messages_per_minute: Some(1),
        messages_per_hour: Some(2),
        ..no_overrides()
    };
    let merged = merge_overrides(&user, &cred);
    assert_eq!(merged.concurrent_sessions, Some(3));
    assert_eq!(merged.messages_per_day, Some(50));
    assert_eq!(credential_only(&user, &merged), cred);
}
