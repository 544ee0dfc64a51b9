//! Delivery metrics against real upstream SMTP servers on both backends:
//! per-upstream attempt results, the bounce counter, transaction latency,
//! the circuit gauge and `/readyz` following an open circuit, and the
//! queue gauges read from the store.

use std::sync::Arc;
use std::time::Duration;

use postgate::delivery::{now_ms, sample_queue, Delivery, RouteConfig, Started};
use postgate::http::{HttpState, UpstreamStatus};
use postgate::metrics::{run_queue_sampler, Metrics, MetricsOptions};
use postgate::store::{OutcomeKind, QueueSummary, RecipientOutcome};
use tokio_util::sync::CancellationToken;

use crate::common::all_stores;
use crate::delivery_flow::{config, new_message, wait_for};
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

/// The value of the series `name` whose labels include all of `labels`
/// (`k="v"` pairs), from the text exposition; `None` if absent.
fn series(m: &Metrics, name: &str, labels: &[&str]) -> Option<f64> {
    m.render().lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let (n, rest) = key.split_once('{').unwrap_or((key, ""));
        if n != name || !labels.iter().all(|p| rest.contains(p)) {
            return None;
        }
        value.parse().ok()
    })
}

/// Delivery recording into a registry of its own; cancel the token to stop.
fn start_measured(
    store: &Arc<dyn postgate::store::Store>,
    cfg: postgate::delivery::DeliveryConfig,
) -> (Arc<Metrics>, CancellationToken, Started) {
    let metrics = Arc::new(Metrics::new(&MetricsOptions::default()));
    let token = CancellationToken::new();
    let started = Delivery::start_with_metrics(store.clone(), cfg, token.clone(), metrics.clone())
        .expect("start delivery");
    (metrics, token, started)
}

fn attempts(m: &Metrics, upstream: &str, result: &str) -> f64 {
    let u = format!("upstream=\"{upstream}\"");
    let r = format!("result=\"{result}\"");
    series(m, "postgate_delivery_attempts_total", &[&u, &r]).unwrap_or(0.0)
}

fn throttled(m: &Metrics, upstream: &str, cause: &str) -> f64 {
    let u = format!("upstream=\"{upstream}\"");
    let c = format!("cause=\"{cause}\"");
    series(m, "postgate_upstream_throttled_total", &[&u, &c]).unwrap_or(0.0)
}

/// A throttling reply (SES `454 Throttling failure`) counts per upstream
/// and recipient as `cause="reply"`, not as a rate deferral, and the
/// message goes once the upstream accepts again.
#[tokio::test]
async fn throttling_replies_are_counted_per_upstream() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.rcpt_default = "454 4.7.0 Throttling failure: Maximum sending rate exceeded.".into();
        let server = UpstreamServer::start(beh).await;
        let cfg = config(vec![server.upstream_config("ses")], vec![]);
        let (metrics, token, started) = start_measured(&t.store, cfg);
        let m = new_message("s@example.com", &["a@x.org", "b@x.org"], "throttled");
        t.store.enqueue(&m).await.unwrap();
        wait_for(30, "throttling counted", async || {
            throttled(&metrics, "ses", "reply") >= 2.0
        })
        .await;
        server.set(|x| x.rcpt_default = "250 ok".into());
        wait_for(30, "both delivered after the pause", async || {
            attempts(&metrics, "ses", "delivered") == 2.0
        })
        .await;
        token.cancel();
        started.handle.await.unwrap();
        assert!(throttled(&metrics, "ses", "reply") >= 2.0, "{b}");
        assert_eq!(throttled(&metrics, "ses", "rate"), 0.0, "{b}: no rate set");
        assert_eq!(attempts(&metrics, "ses", "failed"), 0.0, "{b}");
    }
}

/// An upstream's `rate` with no slot within `max_throttle_wait` defers the
/// message without using an attempt, counts in
/// `postgate_rate_limit_rejections_total{scope="upstream"}`, and the message
/// goes once its slot comes.
#[tokio::test]
async fn upstream_rate_deferrals_are_counted_and_then_delivered() {
    for t in all_stores().await {
        let b = t.backend;
        let server = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let mut upstream = server.upstream_config("paced");
        upstream.rate = Some(2.0);
        let mut cfg = config(vec![upstream], vec![]);
        cfg.queue.max_throttle_wait = Duration::ZERO;
        cfg.queue.poll_interval = Duration::from_millis(50);
        let (metrics, token, started) = start_measured(&t.store, cfg);
        for n in 0..3 {
            let m = new_message("s@example.com", &["r@x.org"], &format!("paced-{n}"));
            t.store.enqueue(&m).await.unwrap();
        }
        wait_for(30, "all three delivered", async || {
            server.received().len() == 3
        })
        .await;
        token.cancel();
        started.handle.await.unwrap();
        let deferrals = series(
            &metrics,
            "postgate_rate_limit_rejections_total",
            &["scope=\"upstream\"", "limit=\"messages\""],
        );
        assert!(deferrals.is_some_and(|n| n >= 2.0), "{b}: {deferrals:?}");
        assert_eq!(
            throttled(&metrics, "paced", "rate"),
            deferrals.unwrap(),
            "{b}: one recipient per deferred message, counted for its upstream"
        );
        assert_eq!(throttled(&metrics, "paced", "reply"), 0.0, "{b}");
        assert_eq!(attempts(&metrics, "paced", "delivered"), 3.0, "{b}");
        assert_eq!(
            attempts(&metrics, "paced", "deferred"),
            0.0,
            "{b}: no attempt used"
        );
        let times: Vec<_> = server.received().iter().map(|r| r.at).collect();
        let span = times
            .iter()
            .max()
            .unwrap()
            .duration_since(*times.iter().min().unwrap());
        assert!(
            span >= Duration::from_millis(950),
            "{b}: 3 at 2/s took {span:?}"
        );
    }
}

#[tokio::test]
async fn attempt_results_bounce_and_latency_are_counted() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.rcpt_replies
            .insert("later@x.org".into(), "450 4.2.1 mailbox busy".into());
        beh.rcpt_replies
            .insert("bad@x.org".into(), "550 5.1.1 no such user".into());
        let main = UpstreamServer::start(beh).await;
        let dsn = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        // Mail from example.com goes to `main`; the DSN (sender <>) to `dsn`,
        // so `main` counts only the three recipients.
        let routes = vec![
            RouteConfig {
                recipient_domain: None,
                sender_domain: Some("example.com".into()),
                user: None,
                upstreams: vec!["main".into()],
            },
            RouteConfig {
                recipient_domain: None,
                sender_domain: None,
                user: None,
                upstreams: vec!["dsn".into()],
            },
        ];
        let mut cfg = config(
            vec![main.upstream_config("main"), dsn.upstream_config("dsn")],
            routes,
        );
        // The deferred recipient is not retried while the test runs.
        cfg.queue.retry_initial = Duration::from_secs(600);
        cfg.queue.retry_max = Duration::from_secs(600);
        let (metrics, token, started) = start_measured(&t.store, cfg);
        // A DSN is due once all of a message's recipients are final, so the
        // refused recipient comes in a message of its own.
        let m1 = new_message("sender@example.com", &["good@x.org", "later@x.org"], "one");
        let m2 = new_message("sender@example.com", &["bad@x.org"], "two");
        t.store.enqueue(&m1).await.unwrap();
        t.store.enqueue(&m2).await.unwrap();
        wait_for(30, "delivery and DSN", async || {
            main.received().len() == 1 && dsn.received().len() == 1
        })
        .await;
        wait_for(10, "bounce counted", async || {
            series(&metrics, "postgate_bounces_total", &[]) == Some(1.0)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel();
        started.handle.await.unwrap();

        assert_eq!(attempts(&metrics, "main", "delivered"), 1.0, "{b}");
        assert_eq!(attempts(&metrics, "main", "deferred"), 1.0, "{b}");
        assert_eq!(attempts(&metrics, "main", "failed"), 1.0, "{b}");
        assert_eq!(attempts(&metrics, "dsn", "delivered"), 1.0, "{b}: the DSN");
        assert_eq!(attempts(&metrics, "dsn", "failed"), 0.0, "{b}");
        assert_eq!(
            series(&metrics, "postgate_bounces_total", &[]),
            Some(1.0),
            "{b}: one DSN"
        );
        let latency = series(
            &metrics,
            "postgate_delivery_duration_seconds_count",
            &["upstream=\"main\""],
        );
        assert_eq!(latency, Some(2.0), "{b}: both transactions timed");
        let latency_sum = series(
            &metrics,
            "postgate_delivery_duration_seconds_sum",
            &["upstream=\"main\""],
        );
        assert!(latency_sum.is_some_and(|s| s > 0.0), "{b}: {latency_sum:?}");
        for op in ["claim", "record_outcome"] {
            let n = series(
                &metrics,
                "postgate_store_operation_duration_seconds_count",
                &[&format!("operation=\"{op}\"")],
            );
            assert!(n.is_some_and(|n| n >= 1.0), "{b}: {op} timed: {n:?}");
        }
        assert_eq!(
            series(
                &metrics,
                "postgate_upstream_circuit_state",
                &["upstream=\"main\""]
            ),
            Some(0.0),
            "{b}: recipient replies keep the circuit closed"
        );
        assert_eq!(
            started.circuits.upstream_status(),
            UpstreamStatus {
                usable: 2,
                configured: 2
            },
            "{b}"
        );
        // The deferred recipient keeps its message in the queue.
        let q = sample_queue(&*t.store).await.unwrap();
        assert_eq!(q.depth, 1, "{b}");
    }
}

/// GETs `path` with curl: the HTTP status and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// GETs `/readyz` with curl; returns the HTTP status.
async fn readyz(addr: std::net::SocketAddr) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{addr}/readyz"))
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn an_open_circuit_shows_in_the_gauge_and_health_upstreams_but_readyz_stays_200() {
    for t in all_stores().await {
        let b = t.backend;
        let mut down = Behavior::new(ServerTls::None);
        down.greeting = "421 4.3.2 service not available".into();
        let up = UpstreamServer::start(down).await;
        let mut cfg = config(vec![up.upstream_config("down")], vec![]);
        cfg.queue.workers = 1;
        cfg.queue.circuit_failures = 2;
        cfg.queue.circuit_cooldown = Duration::from_secs(600);
        let (metrics, token, Started { handle, circuits }) = start_measured(&t.store, cfg);
        let gauge = || {
            series(
                &metrics,
                "postgate_upstream_circuit_state",
                &["upstream=\"down\""],
            )
        };
        assert_eq!(gauge(), Some(0.0), "{b}: closed at start");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut state = HttpState::new(metrics.clone(), t.store.clone());
        state.upstreams = Some(Arc::new(circuits.clone()));
        let http_stop = CancellationToken::new();
        let http = tokio::spawn(postgate::http::serve(listener, state, http_stop.clone()));
        assert_eq!(readyz(addr).await, "200", "{b}: ready while closed");

        t.store
            .enqueue(&new_message("s@example.com", &["r@x.org"], "m"))
            .await
            .unwrap();
        // Two failed attempts (the retry comes after the short backoff).
        wait_for(30, "circuit open", async || gauge() == Some(2.0)).await;
        assert_eq!(up.connections(), 2, "{b}");
        assert_eq!(
            circuits.upstream_status(),
            UpstreamStatus {
                usable: 0,
                configured: 1
            },
            "{b}"
        );
        // Issue 13: still ready (it accepts and queues); the upstream view
        // shows the open breaker.
        assert_eq!(readyz(addr).await, "200", "{b}: ready without an upstream");
        let (code, body) = http_get(addr, "/health/upstreams").await;
        assert_eq!(code, "503", "{b}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["upstreams"],
            serde_json::json!([{"name": "down", "circuit": "open"}]),
            "{b}"
        );
        assert_eq!(attempts(&metrics, "down", "deferred"), 2.0, "{b}");
        assert_eq!(attempts(&metrics, "down", "delivered"), 0.0, "{b}");
        assert!(up.received().is_empty(), "{b}");

        token.cancel();
        handle.await.unwrap();
        http_stop.cancel();
        let _ = http.await;
    }
}

#[tokio::test]
async fn queue_stats_count_unfinished_messages_and_the_oldest_age() {
    for t in all_stores().await {
        let b = t.backend;
        let now = now_ms();
        assert_eq!(
            t.store.queue_stats(now).await.unwrap(),
            QueueSummary {
                depth: 0,
                oldest_age_ms: 0
            },
            "{b}: empty"
        );
        let mut ids = Vec::new();
        for (age_s, rcpts) in [(30, 1), (20, 2), (10, 1)] {
            let mut m = new_message("s@example.com", &["a@x.org", "b@x.org"][..rcpts], "body");
            m.received_at = now - age_s * 1000;
            ids.push(m.id.clone());
            t.store.enqueue(&m).await.unwrap();
        }
        assert_eq!(
            t.store.queue_stats(now).await.unwrap(),
            QueueSummary {
                depth: 3,
                oldest_age_ms: 30_000
            },
            "{b}"
        );
        // Deliver the oldest message (deleted) and one recipient of the second
        // (still counted: its other recipient is queued).
        let claimed = t.store.claim_due("w", now, 60_000, 100).await.unwrap();
        let delivered: Vec<RecipientOutcome> = claimed
            .iter()
            .filter(|c| c.id == ids[0] || c.id == ids[1])
            .flat_map(|c| c.recipients.iter().take(1))
            .map(|r| RecipientOutcome {
                recipient_id: r.id,
                kind: OutcomeKind::Delivered,
                upstream: Some("up".into()),
                reply: Some("250 ok".into()),
                log: true,
            })
            .collect();
        assert_eq!(delivered.len(), 2, "{b}");
        t.store.record_outcomes("w", now, &delivered).await.unwrap();
        assert_eq!(
            t.store.queue_stats(now + 5_000).await.unwrap(),
            QueueSummary {
                depth: 2,
                oldest_age_ms: 25_000
            },
            "{b}: leased or not, queued recipients count; finished ones do not"
        );

        // The sampler publishes the same reading as gauges.
        let metrics = Arc::new(Metrics::new(&MetricsOptions::default()));
        let stop = CancellationToken::new();
        let store = t.store.clone();
        let sampler = tokio::spawn(run_queue_sampler(
            metrics.clone(),
            Duration::from_secs(15),
            stop.clone(),
            move || {
                let store = store.clone();
                async move { sample_queue(&*store).await }
            },
        ));
        wait_for(10, "first sample", async || {
            series(&metrics, "postgate_queue_depth", &[]) == Some(2.0)
        })
        .await;
        let age = series(&metrics, "postgate_queue_oldest_message_age_seconds", &[]).unwrap();
        assert!((20.0..30.0).contains(&age), "{b}: oldest age {age}");
        stop.cancel();
        sampler.await.unwrap();
    }
}
