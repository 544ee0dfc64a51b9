//! Issue 12 over real sockets against a real server and store (both
//! backends): brute-force attempts are reserved when checked (item 3),
//! slow clients meet deadlines (item 7), message bytes held in memory have
//! a node-wide budget (item 8).

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgate::limits::{Limiter, LimiterPorts, LimitsBackend, LimitsConfig, SystemClock};
use postgate::store::LimitStore;

use crate::common::{all_stores, sqlite_store};
use crate::smtp_harness::{self as h, expect, Raw};

/// 100 concurrent wrong passwords for one user from 100 addresses (real
/// client addresses through PROXY headers): exactly `auth_lockout_per_user`
/// (10) are verified and answered 535, the other 90 get 454 4.7.0 without
/// verification, on the local and the shared (store) limits backend of
/// each store. Then the right password is locked out too (454), while
/// another user's right password still gets 235.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_passwords_verify_at_most_the_lockout() {
    for ts in all_stores().await {
        for backend in [LimitsBackend::Local, LimitsBackend::Store] {
            let b = format!("{} / {backend:?}", ts.backend);
            let cfg = LimitsConfig {
                backend,
                auth_tarpit_after: 3,
                auth_tarpit_delay: Duration::from_millis(50),
                auth_tarpit_max_delay: Duration::from_millis(200),
                auth_lockout_per_user: 10,
                auth_lockout_per_ip: 10,
                ..LimitsConfig::default()
            };
            let store: Arc<dyn LimitStore> = ts.store.clone();
            let limiter = Arc::new(Limiter::new(cfg, Some(store), Arc::new(SystemClock)).unwrap());
            let ports = Arc::new(LimiterPorts::new(
                limiter.clone(),
                postgate::metrics::Metrics::detached(),
            ));
            let srv = h::start_with_limits(&ts, ports, |c| {
                c.proxy_trusted = vec!["127.0.0.0/8".parse().unwrap()];
                c.listeners[0].proxy_protocol = true;
                c.auth_failure_delay = Duration::from_millis(300);
            })
            .await;
            // Everyone is connected, in TLS and past EHLO before anyone
            // tries a password, so the attempts really are concurrent.
            let mut clients = Vec::new();
            for i in 0..100u8 {
                let (mut c, g) =
                    Raw::connect_proxied(srv.starttls(), &srv, &format!("198.51.100.{i}")).await;
                assert_eq!(g.code, 220, "{b}: {g:?}");
                assert_eq!(c.starttls().await.code, 250, "{b}");
                clients.push(c);
            }
            use base64::Engine as _;
            let wrong = base64::engine::general_purpose::STANDARD
                .encode(format!("\0{}\0not the password", h::USER));
            let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|mut c| {
                    let (wrong, barrier) = (wrong.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        c.cmd(&format!("AUTH PLAIN {wrong}")).await
                    })
                })
                .collect();
            let (mut failed, mut limited) = (0, 0);
            for t in tasks {
                let got = t.await.unwrap();
                match got.code {
                    535 => failed += 1,
                    454 => {
                        expect(&got, 454, "4.7.0");
                        limited += 1
                    }
                    _ => panic!("{b}: unexpected {got:?}"),
                }
            }
            assert_eq!((failed, limited), (10, 90), "{b}: 535s vs 454s");
            let (mut c, _) = Raw::connect_proxied(srv.starttls(), &srv, "203.0.113.50").await;
            c.starttls().await;
            expect(&c.login().await, 454, "4.7.0");
            // Once the operator lifts the lockout, the right password works.
            limiter.reset(h::USER).await.unwrap();
            let (mut c, _) = Raw::connect_proxied(srv.starttls(), &srv, "203.0.113.51").await;
            c.starttls().await;
            expect(&c.login().await, 235, "2.7.0");
            srv.stop().await;
        }
    }
}

/// 40 clients log in at once as one user from one address with the right
/// password (an application's connection pool after a restart), with a
/// username allowance of 10: the attempts beyond the allowance wait for
/// those in flight instead of getting 454, and all 40 get 235, on the local
/// and the shared limits backend of each store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_right_passwords_all_log_in() {
    for ts in all_stores().await {
        for backend in [LimitsBackend::Local, LimitsBackend::Store] {
            let b = format!("{} / {backend:?}", ts.backend);
            let cfg = LimitsConfig {
                backend,
                auth_tarpit_after: 0,
                auth_lockout_per_user: 10,
                auth_lockout_per_ip: 10,
                concurrent_sessions: 100,
                ..LimitsConfig::default()
            };
            let store: Arc<dyn LimitStore> = ts.store.clone();
            let limiter = Arc::new(Limiter::new(cfg, Some(store), Arc::new(SystemClock)).unwrap());
            let ports = Arc::new(LimiterPorts::new(
                limiter.clone(),
                postgate::metrics::Metrics::detached(),
            ));
            let srv = h::start_with_limits(&ts, ports, |_| {}).await;
            let mut clients = Vec::new();
            for _ in 0..40 {
                let (mut c, g) = Raw::connect(srv.starttls(), &srv).await;
                assert_eq!(g.code, 220, "{b}: {g:?}");
                assert_eq!(c.starttls().await.code, 250, "{b}");
                clients.push(c);
            }
            let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|mut c| {
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let got = c.login().await;
                        (c, got)
                    })
                })
                .collect();
            let mut codes = Vec::new();
            let mut keep = Vec::new();
            for t in tasks {
                let (c, got) = t.await.unwrap();
                codes.push(got.code);
                keep.push(c);
            }
            assert!(codes.iter().all(|&c| c == 235), "{b}: {codes:?}");
            drop(keep);
            srv.stop().await;
        }
    }
}

/// Sends `byte` every `every` until a reply arrives (or `give_up` passes);
/// returns the reply and when it came.
async fn trickle(
    c: &mut Raw,
    byte: &[u8],
    every: Duration,
    give_up: Duration,
) -> Option<(h::Got, Duration)> {
    let t0 = Instant::now();
    while t0.elapsed() < give_up {
        if let Some(got) = c.try_reply(every).await {
            return Some((got, t0.elapsed()));
        }
        c.send(byte).await;
    }
    None
}

#[track_caller]
fn cut_between(got: Option<(h::Got, Duration)>, low: f64, high: f64, what: &str) {
    let (got, after) = got.unwrap_or_else(|| panic!("{what}: never cut"));
    expect(&got, 421, "4.4.2");
    let s = after.as_secs_f64();
    assert!((low..high).contains(&s), "{what}: cut after {s:.1} s");
}

/// Item 7: a client sending one byte every 0.4 s never trips the per-read
/// timeout (2 s), but is cut with `421 4.4.2` when its command line is not
/// complete 2 s after the last reply, when its message content (DATA, or a
/// BDAT transaction) is not complete within `data_phase_timeout` (3 s), and
/// when the session is older than `session_lifetime`, however busy.
#[tokio::test]
async fn slow_clients_are_cut_at_their_deadlines() {
    let ts = sqlite_store().await;
    let srv = h::start(&ts, |c| {
        c.command_timeout = Duration::from_secs(2);
        c.data_timeout = Duration::from_secs(2);
        c.data_phase_timeout = Duration::from_secs(3);
    })
    .await;
    let every = Duration::from_millis(400);
    let (mut c, _) = Raw::connect(srv.plain(), &srv).await;
    c.send(b"EHLO ").await;
    let got = trickle(&mut c, b"x", every, Duration::from_secs(8)).await;
    cut_between(got, 1.5, 3.0, "command line");
    assert!(c.closed(Duration::from_secs(2)).await);

    let (mut c, _) = Raw::connect(srv.plain(), &srv).await;
    c.cmd("EHLO client.test").await;
    expect(&c.login().await, 235, "2.7.0");
    expect(
        &c.cmd(&format!("MAIL FROM:<{}>", h::SENDER)).await,
        250,
        "2.1.0",
    );
    expect(&c.cmd("RCPT TO:<x@dest.example>").await, 250, "2.1.5");
    assert_eq!(c.cmd("DATA").await.code, 354);
    let got = trickle(&mut c, b"y", every, Duration::from_secs(8)).await;
    cut_between(got, 2.5, 4.5, "DATA");

    let (mut c, _) = Raw::connect(srv.plain(), &srv).await;
    c.cmd("EHLO client.test").await;
    c.login().await;
    c.cmd(&format!("MAIL FROM:<{}>", h::SENDER)).await;
    c.cmd("RCPT TO:<x@dest.example>").await;
    let t0 = Instant::now();
    let mut cut = None;
    while t0.elapsed() < Duration::from_secs(8) {
        // Each chunk is answered at once: only the whole BDAT transaction
        // is slow.
        c.send(b"BDAT 4\r\nabcd").await;
        let got = c.reply().await;
        if got.code != 250 {
            cut = Some((got, t0.elapsed()));
            break;
        }
        tokio::time::sleep(every).await;
    }
    cut_between(cut, 2.5, 4.5, "BDAT");
    assert!(h::queued(&srv).await.is_empty(), "nothing was queued");
    srv.stop().await;

    let srv = h::start(&ts, |c| c.session_lifetime = Duration::from_secs(3)).await;
    let (mut c, _) = Raw::connect(srv.plain(), &srv).await;
    let t0 = Instant::now();
    let mut cut = None;
    while t0.elapsed() < Duration::from_secs(8) {
        let got = c.cmd("NOOP").await;
        if got.code != 250 {
            cut = Some((got, t0.elapsed()));
            break;
        }
        tokio::time::sleep(every).await;
    }
    cut_between(cut, 2.5, 4.5, "session lifetime");
    srv.stop().await;
}

/// A body of `n` octets in 100-octet lines.
fn body(n: usize) -> Vec<u8> {
    let line = format!("{}\r\n", "m".repeat(98));
    let mut b = b"Subject: budget\r\n\r\n".to_vec();
    while b.len() < n {
        b.extend_from_slice(line.as_bytes());
    }
    b
}

async fn ready_for_data(c: &mut Raw, size: Option<usize>) -> h::Got {
    let size = size.map(|n| format!(" SIZE={n}")).unwrap_or_default();
    expect(
        &c.cmd(&format!("MAIL FROM:<{}>{size}", h::SENDER)).await,
        250,
        "2.1.0",
    );
    expect(&c.cmd("RCPT TO:<x@dest.example>").await, 250, "2.1.5");
    c.cmd("DATA").await
}

/// Item 8: with a node budget of 250,000 octets for message content, a
/// session holding a 200,000-octet declared message makes another
/// session's MAIL with a SIZE that does not fit, its DATA and its BDAT get
/// `452 4.3.1`; a message whose buffer outgrows the budget is refused at
/// its end with `452 4.3.1`; the session goes on and, once the budget is
/// given back, the same session's message is accepted.
#[tokio::test]
async fn memory_budget_refuses_with_452_4_3_1_and_recovers() {
    for ts in all_stores().await {
        let b = ts.backend;
        let srv = h::start(&ts, |c| {
            c.max_message_size = 200_000;
            c.message_memory_budget = 250_000;
        })
        .await;
        let session = || async {
            let (mut c, _) = Raw::connect(srv.plain(), &srv).await;
            c.cmd("EHLO client.test").await;
            expect(&c.login().await, 235, "2.7.0");
            c
        };
        let (mut a, mut bb) = (session().await, session().await);
        assert_eq!(ready_for_data(&mut a, Some(200_000)).await.code, 354, "{b}");
        a.send(&body(20_000)).await;

        let sender = format!("MAIL FROM:<{}>", h::SENDER);
        expect(
            &bb.cmd(&format!("{sender} SIZE=100000")).await,
            452,
            "4.3.1",
        );
        expect(&ready_for_data(&mut bb, None).await, 452, "4.3.1");
        bb.cmd("RSET").await;
        bb.cmd(&sender).await;
        bb.cmd("RCPT TO:<x@dest.example>").await;
        bb.send(b"BDAT 5 LAST\r\nhello").await;
        expect(&bb.reply().await, 452, "4.3.1");

        a.send(b".\r\n").await;
        expect(&a.reply().await, 250, "2.0.0");

        // Without SIZE: A's buffer grows to 131,072 octets; B's start
        // (65,536) fits, its growth to 131,072 does not.
        assert_eq!(ready_for_data(&mut a, None).await.code, 354, "{b}");
        a.send(&body(100_000)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ready_for_data(&mut bb, None).await.code, 354, "{b}");
        bb.send(&body(100_000)).await;
        bb.send(b".\r\n").await;
        expect(&bb.reply().await, 452, "4.3.1");
        a.send(b".\r\n").await;
        expect(&a.reply().await, 250, "2.0.0");

        // Given back: the same session now gets its message through.
        assert_eq!(
            ready_for_data(&mut bb, Some(150_000)).await.code,
            354,
            "{b}"
        );
        bb.send(&body(100_000)).await;
        bb.send(b".\r\n").await;
        expect(&bb.reply().await, 250, "2.0.0");
        assert_eq!(h::queued(&srv).await.len(), 3, "{b}");
        srv.stop().await;
    }
}

/// Item 9: 300 idle TCP connections and 64 clients trickling their request
/// headers (more than `http.max_connections`, 256) do not delay `/healthz`:
/// curl gets its answer within a second, several times over, while the
/// slow clients keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_within_a_second_while_idle_and_slow_clients_hold_connections() {
    use postgate::http::{self, HttpState};
    use postgate::metrics::{Metrics, MetricsOptions};
    use tokio::io::AsyncWriteExt;

    let ts = sqlite_store().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = HttpState::new(
        Arc::new(Metrics::new(&MetricsOptions::default())),
        ts.store.clone(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(http::serve(listener, state, shutdown.clone()));

    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let slowloris = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut slow = Vec::new();
            for _ in 0..64 {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
                slow.push(s);
            }
            while !stop.is_cancelled() {
                for s in &mut slow {
                    let _ = s.write_all(b"X-Slow: 1\r\n").await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..3 {
        let t0 = Instant::now();
        let url = format!("http://{addr}/healthz");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "5", "-w", " %{http_code}", &url])
                .output()
                .expect("run curl")
        })
        .await
        .unwrap();
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(text, "ok\n 200", "round {round}: {out:?}");
        assert!(
            took < Duration::from_secs(1),
            "round {round}: took {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.cancel();
    slowloris.await.unwrap();
    drop(idle);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
