//! Delivery end to end on both backends: queue -> workers -> real upstream
//! SMTP servers. Fail-over, circuit breaker, partial failure with a DSN for
//! the failed recipients only, throttling, retries, expiry with a DSN,
//! reclaim after a dead worker's lease, shutdown, and a real Postfix
//! `smtp-sink`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postgate::delivery::{
    now_ms, Delivery, DeliveryConfig, QueueConfig, RouteConfig, UpstreamConfig,
};
use postgate::store::{new_queue_id, NewMessage, NewRecipient, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::all_stores;
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

/// A queue config for tests: quick polling and retries, no jitter.
pub fn quick_queue() -> QueueConfig {
    QueueConfig {
        workers: 2,
        poll_interval: Duration::from_millis(30),
        retry_initial: Duration::from_millis(300),
        retry_max: Duration::from_secs(1),
        retry_jitter: 0.0,
        circuit_failures: 2,
        circuit_cooldown: Duration::from_secs(1),
        ..QueueConfig::default()
    }
}

pub fn config(upstreams: Vec<UpstreamConfig>, routes: Vec<RouteConfig>) -> DeliveryConfig {
    DeliveryConfig {
        queue: quick_queue(),
        upstreams,
        routes,
        hostname: "relay.test".into(),
        node_id: "test-node".into(),
        ..DeliveryConfig::default()
    }
}

pub fn new_message(sender: &str, recipients: &[&str], body: &str) -> NewMessage {
    let now = now_ms();
    NewMessage {
        id: new_queue_id(),
        sender: sender.into(),
        recipients: recipients
            .iter()
            .map(|r| NewRecipient {
                address: r.to_string(),
                notify: None,
                orcpt: None,
            })
            .collect(),
        user_id: None,
        username: None,
        credential: None,
        body: Bytes::from(format!(
            "From: <{sender}>\r\nSubject: test\r\nMessage-ID: <m@test>\r\n\r\n{body}\r\n"
        )),
        envid: None,
        dsn_ret: None,
        is_dsn: false,
        smtputf8: false,
        received_at: now,
        expires_at: now + 86_400_000,
        journal: None,
    }
}

/// A running delivery that stops (and is awaited) on drop of the guard.
pub struct Running {
    pub token: CancellationToken,
    pub handle: Option<JoinHandle<()>>,
}

impl Running {
    pub fn start(store: Arc<dyn Store>, cfg: DeliveryConfig) -> Self {
        let token = CancellationToken::new();
        let handle = Delivery::start(store, cfg, token.clone()).expect("start delivery");
        Running {
            token,
            handle: Some(handle),
        }
    }

    /// Like [`start`](Self::start), with upstream rates paced by `limiter`.
    pub fn start_limited(
        store: Arc<dyn Store>,
        cfg: DeliveryConfig,
        limiter: Arc<postgate::limits::Limiter>,
    ) -> Self {
        let token = CancellationToken::new();
        let started = Delivery::start_with(
            store,
            cfg,
            token.clone(),
            postgate::metrics::Metrics::detached(),
            limiter,
        )
        .expect("start delivery");
        Running {
            token,
            handle: Some(started.handle),
        }
    }

    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("delivery stops promptly")
                .unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Polls `f` until true, panicking with `what` after `secs`.
pub async fn wait_for(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn queue_len(store: &dyn Store) -> usize {
    store.queue_list(10_000).await.unwrap().len()
}

#[tokio::test]
async fn delivers_over_starttls_with_auth_reusing_the_connection() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::Starttls);
        beh.auth = Some(("relay".into(), "pw".into()));
        let server = UpstreamServer::start(beh).await;
        let mut cfg = config(vec![server.upstream_config("up1")], vec![]);
        cfg.queue.workers = 1;
        let run = Running::start(t.store.clone(), cfg);
        let m1 = new_message("a@example.com", &["r1@x.org", "r2@x.org"], ".dot line");
        t.store.enqueue(&m1).await.unwrap();
        wait_for(30, "first delivery", async || server.received().len() == 1).await;
        let m2 = new_message("a@example.com", &["r3@x.org"], "second");
        t.store.enqueue(&m2).await.unwrap();
        wait_for(30, "second delivery", async || server.received().len() == 2).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        run.stop().await;
        let got = server.received();
        assert_eq!(got[0].rcpt_to, ["r1@x.org", "r2@x.org"], "{b}");
        assert_eq!(
            got[0].data,
            &m1.body[..],
            "{b}: bytes stored are bytes delivered"
        );
        assert!(
            got[0].tls && got[0].auth_user.as_deref() == Some("relay"),
            "{b}"
        );
        assert_eq!(server.connections(), 1, "{b}: one pooled connection");
        assert!(
            server.commands().contains(&"RSET".to_string()),
            "{b}: RSET between messages"
        );
    }
}

#[tokio::test]
async fn partial_failure_bounces_only_the_failed_recipient() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::Implicit);
        beh.rcpt_replies
            .insert("bad@x.org".into(), "550 5.1.1 no such user".into());
        let server = UpstreamServer::start(beh).await;
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up1")], vec![]),
        );
        let m = new_message("sender@example.com", &["good@x.org", "bad@x.org"], "hello");
        t.store.enqueue(&m).await.unwrap();
        wait_for(30, "message and DSN", async || server.received().len() == 2).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stop().await;
        let got = server.received();
        assert_eq!(got.len(), 2, "{b}: exactly one DSN");
        assert_eq!(got[0].rcpt_to, ["good@x.org"], "{b}");
        let dsn = &got[1];
        assert_eq!(dsn.mail_from, "", "{b}: DSN has the null sender");
        assert_eq!(dsn.rcpt_to, ["sender@example.com"], "{b}");
        let text = String::from_utf8_lossy(&dsn.data);
        assert!(
            text.contains("multipart/report; report-type=delivery-status"),
            "{b}"
        );
        assert!(text.contains("Final-Recipient: rfc822; bad@x.org"), "{b}");
        assert!(text.contains("Status: 5.1.1"), "{b}");
        assert!(
            text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
            "{b}"
        );
        assert!(!text.contains("good@x.org"), "{b}: only failed recipients");
        assert!(
            text.contains("Message-ID: <m@test>"),
            "{b}: original headers"
        );
    }
}

#[tokio::test]
async fn fails_over_and_the_circuit_opens_and_closes() {
    for t in all_stores().await {
        let b = t.backend;
        let mut down = Behavior::new(ServerTls::None);
        down.greeting = "421 4.3.2 service not available".into();
        let a = UpstreamServer::start(down).await;
        let bb = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let routes = vec![RouteConfig {
            recipient_domain: None,
            sender_domain: None,
            user: None,
            upstreams: vec!["a".into(), "b".into()],
        }];
        let mut cfg = config(
            vec![a.upstream_config("a"), bb.upstream_config("b")],
            routes,
        );
        cfg.queue.workers = 1;
        let run = Running::start(t.store.clone(), cfg);
        for n in 1..=3 {
            t.store
                .enqueue(&new_message(
                    "s@example.com",
                    &["r@x.org"],
                    &format!("m{n}"),
                ))
                .await
                .unwrap();
            wait_for(30, "delivery via b", async || bb.received().len() == n).await;
        }
        // Two failures opened a's circuit: the third message did not try a.
        assert_eq!(a.connections(), 2, "{b}: circuit open after 2 failures");
        a.set(|x| x.greeting = "220 back again".into());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for n in 1..=2 {
            t.store
                .enqueue(&new_message(
                    "s@example.com",
                    &["r@x.org"],
                    &format!("again{n}"),
                ))
                .await
                .unwrap();
            wait_for(30, "delivery via a", async || a.received().len() == n).await;
        }
        assert_eq!(
            bb.received().len(),
            3,
            "{b}: circuit closed, a is used again"
        );
        run.stop().await;
    }
}

#[tokio::test]
async fn throttling_pauses_without_using_up_attempts() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.mail_reply = "454 4.7.0 Throttling failure: Maximum sending rate exceeded.".into();
        let server = UpstreamServer::start(beh).await;
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("ses")], vec![]),
        );
        let m = new_message("s@example.com", &["r@x.org"], "x");
        t.store.enqueue(&m).await.unwrap();
        let store = t.store.clone();
        let id = m.id.clone();
        wait_for(30, "throttled attempt", async || {
            store
                .queue_show(&id)
                .await
                .map(|d| !d.log.is_empty())
                .unwrap_or(false)
        })
        .await;
        let shown = t.store.queue_show(&m.id).await.unwrap();
        let r = &shown.recipients[0];
        assert_eq!(r.status, "queued", "{b}");
        assert_eq!(r.attempts, 0, "{b}: throttling does not use up an attempt");
        assert_eq!(r.route_index, 0, "{b}: same upstream");
        assert!(r
            .last_reply
            .as_deref()
            .unwrap()
            .starts_with("454 4.7.0 Throttling"));
        assert_eq!(shown.log[0].outcome, "deferred");
        server.set(|x| x.mail_reply = "250 ok".into());
        wait_for(30, "delivery after the pause", async || {
            server.received().len() == 1
        })
        .await;
        run.stop().await;
    }
}

#[tokio::test]
async fn transient_failure_is_retried_with_backoff_then_delivered() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.rcpt_default = "451 4.3.0 try later".into();
        let server = UpstreamServer::start(beh).await;
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up")], vec![]),
        );
        let m = new_message("s@example.com", &["r@x.org"], "x");
        t.store.enqueue(&m).await.unwrap();
        let store = t.store.clone();
        let id = m.id.clone();
        wait_for(30, "two deferrals", async || {
            store
                .queue_show(&id)
                .await
                .map(|d| d.log.len() >= 2)
                .unwrap_or(false)
        })
        .await;
        let shown = t.store.queue_show(&m.id).await.unwrap();
        assert!(shown.recipients[0].attempts >= 2, "{b}");
        let gap = shown.log[1].at - shown.log[0].at;
        assert!(gap >= 250, "{b}: backoff between attempts ({gap} ms)");
        server.set(|x| x.rcpt_default = "250 ok".into());
        wait_for(30, "delivery", async || server.received().len() == 1).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        run.stop().await;
    }
}

#[tokio::test]
async fn connection_dropped_in_data_is_deferred_then_delivered_once() {
    for t in all_stores().await {
        let b = t.backend;
        let mut beh = Behavior::new(ServerTls::None);
        beh.drop_during_data = true;
        let server = UpstreamServer::start(beh).await;
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up")], vec![]),
        );
        let m = new_message("s@example.com", &["r@x.org"], "x");
        t.store.enqueue(&m).await.unwrap();
        let store = t.store.clone();
        let id = m.id.clone();
        wait_for(30, "deferral", async || {
            store
                .queue_show(&id)
                .await
                .map(|d| !d.log.is_empty())
                .unwrap_or(false)
        })
        .await;
        let shown = t.store.queue_show(&m.id).await.unwrap();
        assert_eq!(shown.log[0].outcome, "deferred", "{b}");
        server.set(|x| x.drop_during_data = false);
        wait_for(30, "delivery", async || server.received().len() == 1).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.received().len(), 1, "{b}");
        run.stop().await;
    }
}

#[tokio::test]
async fn expired_messages_bounce_unless_notify_never() {
    for t in all_stores().await {
        let b = t.backend;
        let server = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let mut expired = new_message("s@example.com", &["r@x.org"], "old");
        expired.expires_at = now_ms() - 1;
        let mut quiet = new_message("q@example.com", &["r@x.org"], "old too");
        quiet.expires_at = now_ms() - 1;
        quiet.recipients[0].notify = Some("NEVER".into());
        t.store.enqueue(&expired).await.unwrap();
        t.store.enqueue(&quiet).await.unwrap();
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up")], vec![]),
        );
        wait_for(30, "DSN", async || server.received().len() == 1).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        run.stop().await;
        let got = server.received();
        assert_eq!(
            got.len(),
            1,
            "{b}: the expired message is not sent, one DSN only"
        );
        assert_eq!(got[0].mail_from, "");
        assert_eq!(got[0].rcpt_to, ["s@example.com"], "{b}");
        let text = String::from_utf8_lossy(&got[0].data);
        assert!(text.contains("Status: 4.4.7"), "{b}");
        assert!(text.contains("Final-Recipient: rfc822; r@x.org"), "{b}");
    }
}

#[tokio::test]
async fn a_dead_workers_lease_expires_and_the_message_is_delivered() {
    for t in all_stores().await {
        let b = t.backend;
        let server = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let m = new_message("s@example.com", &["r@x.org"], "x");
        t.store.enqueue(&m).await.unwrap();
        // A worker claimed it and died mid-delivery (no outcome recorded).
        let claimed = t
            .store
            .claim_due("crashed-node/0", now_ms(), 1_500, 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let started = std::time::Instant::now();
        let run = Running::start(
            t.store.clone(),
            config(vec![server.upstream_config("up")], vec![]),
        );
        wait_for(30, "delivery after lease expiry", async || {
            server.received().len() == 1
        })
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(1_200),
            "{b}: not before the lease ran out"
        );
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        run.stop().await;
    }
}

#[tokio::test]
async fn shutdown_releases_claims_and_stops() {
    let t = crate::common::sqlite_store().await;
    let mut beh = Behavior::new(ServerTls::None);
    beh.reply_delay = Duration::from_millis(300);
    let server = UpstreamServer::start(beh).await;
    let mut up = server.upstream_config("up");
    // One session at a time: a second message waits for it (not started).
    up.max_connections = 1;
    let mut cfg = config(vec![up], vec![]);
    cfg.queue.workers = 1;
    cfg.queue.batch = 1;
    for n in 0..5 {
        t.store
            .enqueue(&new_message("s@example.com", &["r@x.org"], &format!("{n}")))
            .await
            .unwrap();
    }
    let run = Running::start(t.store.clone(), cfg);
    wait_for(30, "first session", async || server.connections() == 1).await;
    run.stop().await;
    // The message in flight finished; the rest were released, not leased.
    let list = t.store.queue_list(10).await.unwrap();
    assert!(list.len() >= 3, "most messages still queued");
    for e in list {
        let shown = t.store.queue_show(&e.id).await.unwrap();
        assert!(
            shown.recipients.iter().all(|r| r.lease_owner.is_none()),
            "released"
        );
        assert_eq!(shown.recipients[0].attempts, 0);
    }
}

#[tokio::test]
async fn routes_pick_upstreams_by_sender_domain() {
    let t = crate::common::sqlite_store().await;
    let one = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let two = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let routes = vec![
        RouteConfig {
            recipient_domain: None,
            sender_domain: Some("marketing.example".into()),
            user: None,
            upstreams: vec!["two".into()],
        },
        RouteConfig {
            recipient_domain: None,
            sender_domain: None,
            user: None,
            upstreams: vec!["one".into()],
        },
    ];
    let cfg = config(
        vec![one.upstream_config("one"), two.upstream_config("two")],
        routes,
    );
    let run = Running::start(t.store.clone(), cfg);
    t.store
        .enqueue(&new_message("x@Marketing.Example", &["r@x.org"], "m"))
        .await
        .unwrap();
    t.store
        .enqueue(&new_message("y@corp.example", &["r@x.org"], "c"))
        .await
        .unwrap();
    wait_for(30, "both", async || {
        one.received().len() + two.received().len() == 2
    })
    .await;
    run.stop().await;
    assert_eq!(two.received()[0].mail_from, "x@Marketing.Example");
    assert_eq!(one.received()[0].mail_from, "y@corp.example");
}

#[test]
fn bad_delivery_config_is_refused() {
    let up = UpstreamConfig::new("a", "127.0.0.1", 25, postgate::delivery::TlsMode::None);
    let mut cfg = config(vec![up.clone(), up.clone()], vec![]);
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("used twice"));
    cfg.upstreams.pop();
    cfg.routes.push(RouteConfig {
        recipient_domain: None,
        sender_domain: Some("x.org".into()),
        user: None,
        upstreams: vec!["nope".into()],
    });
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("unknown upstream"));
    cfg.routes.clear();
    cfg.validate().unwrap();
    // A node without upstreams is valid (it only accepts); routes still may
    // not name unknown upstreams.
    cfg.upstreams.clear();
    cfg.validate().unwrap();
    cfg.routes.push(RouteConfig {
        recipient_domain: None,
        sender_domain: None,
        user: None,
        upstreams: vec!["a".into()],
    });
    assert!(cfg.validate().is_err());
    let parsed: Result<postgate::delivery::QueueConfig, _> = toml::from_str("wokers = 3");
    assert!(parsed.is_err(), "unknown keys are refused");
    let q: postgate::delivery::QueueConfig =
        toml::from_str("workers = 3\nlifetime = \"2d\"\nretry_initial = \"30s\"").unwrap();
    assert_eq!((q.workers, q.lifetime), (3, Duration::from_secs(2 * 86400)));
    let u: UpstreamConfig = toml::from_str(
        "name = \"ses\"\nhost = \"email-smtp.eu-west-1.amazonaws.com\"\ntls = \"implicit\"\nrate = 14.0\nusername = \"AKIA\"\npassword = \"x\"",
    )
    .unwrap();
    assert_eq!(u.port(), 465);
    assert!(
        !format!("{u:?}").contains("\"x\""),
        "password redacted in Debug"
    );
    assert!(
        toml::from_str::<UpstreamConfig>("name = \"a\"\nhost = \"h\"\ntls = \"maybe\"").is_err()
    );
}

#[tokio::test]
async fn a_message_left_final_by_a_crash_is_finished_with_its_dsn() {
    for t in all_stores().await {
        let b = t.backend;
        let server = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let m = new_message("s@example.com", &["r@x.org"], "x");
        t.store.enqueue(&m).await.unwrap();
        // A worker recorded "failed" and died before finishing the message.
        let c = t
            .store
            .claim_due("crashed/0", now_ms(), 60_000, 10)
            .await
            .unwrap();
        let outcome = postgate::store::RecipientOutcome {
            recipient_id: c[0].recipients[0].id,
            kind: postgate::store::OutcomeKind::Failed,
            upstream: Some("up".into()),
            reply: Some("550 5.7.1 rejected".into()),
            log: true,
        };
        t.store
            .record_outcomes("crashed/0", now_ms(), &[outcome])
            .await
            .unwrap();
        assert_eq!(
            t.store.unfinished_messages(10).await.unwrap().len(),
            1,
            "{b}"
        );
        let mut cfg = config(vec![server.upstream_config("up")], vec![]);
        cfg.queue.lease = Duration::from_secs(2);
        let run = Running::start(t.store.clone(), cfg);
        wait_for(30, "DSN", async || server.received().len() == 1).await;
        wait_for(30, "empty queue", async || queue_len(&*t.store).await == 0).await;
        run.stop().await;
        let text = String::from_utf8_lossy(&server.received()[0].data).into_owned();
        assert!(text.contains("Status: 5.7.1"), "{b}");
    }
}
