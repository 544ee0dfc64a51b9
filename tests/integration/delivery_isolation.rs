//! Issue #13, items 2 and 3, on both backends: a hung upstream (accepts
//! TCP, never speaks) does not delay delivery on other routes; its greeting
//! is given up after `connect_timeout`; a delivery that takes longer than
//! the lease is renewed by the heartbeat and sent exactly once; the lease
//! check of `check-config`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgate::delivery::{now_ms, RouteConfig, TlsMode, UpstreamConfig};
use tokio::net::TcpListener;

use crate::common::all_stores;
use crate::delivery_flow::{config, new_message, wait_for, Running};
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

/// A TCP server that accepts connections and never sends a byte (the
/// "blackhole" of issue #13); it keeps every socket open until dropped.
struct Blackhole {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(tcp);
            }
        });
        Blackhole {
            port,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn upstream_config(&self, name: &str) -> UpstreamConfig {
        UpstreamConfig::new(name, "127.0.0.1", self.port, TlsMode::None)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Mail from `hung.example` goes to `hung`, everything else to `good`.
fn hung_and_good_routes() -> Vec<RouteConfig> {
    vec![
        RouteConfig {
            recipient_domain: None,
            sender_domain: Some("hung.example".into()),
            user: None,
            upstreams: vec!["hung".into()],
        },
        RouteConfig {
            recipient_domain: None,
            sender_domain: None,
            user: None,
            upstreams: vec!["good".into()],
        },
    ]
}

#[tokio::test]
async fn a_hung_upstream_does_not_delay_other_routes_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        let hole = Blackhole::start().await;
        let good = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let mut hung = hole.upstream_config("hung");
        // The hole holds its sessions for longer than the measurement (a few
        // seconds), yet the delivery stops within its 10 s once the
        // greetings time out. Two connections, so most of its messages
        // wait for a connection slot.
        hung.connect_timeout = Duration::from_secs(6);
        hung.max_connections = 2;
        let mut cfg = config(
            vec![hung, good.upstream_config("good")],
            hung_and_good_routes(),
        );
        // Two claim loops of one message each: on a worker loop that waits
        // for its claim, two hung messages stop all delivery.
        cfg.queue.workers = 2;
        cfg.queue.batch = 1;
        cfg.queue.max_pool_wait = Duration::from_millis(500);
        let run = Running::start(t.store.clone(), cfg);
        for n in 0..6 {
            t.store
                .enqueue(&new_message(
                    "a@hung.example",
                    &["r@x.org"],
                    &format!("h{n}"),
                ))
                .await
                .unwrap();
        }
        wait_for(30, "the hung upstream holds two sessions", async || {
            hole.accepted() >= 2
        })
        .await;
        let mut latencies = Vec::new();
        for n in 0..5 {
            let sent = Instant::now();
            t.store
                .enqueue(&new_message(
                    "b@corp.example",
                    &["r@x.org"],
                    &format!("g{n}"),
                ))
                .await
                .unwrap();
            wait_for(20, "delivery on the good route", async || {
                good.received().len() > n
            })
            .await;
            latencies.push(sent.elapsed());
        }
        run.stop().await;
        let worst = latencies.iter().max().unwrap();
        assert!(
            *worst < Duration::from_secs(2),
            "{b}: the good route keeps its latency while the hung upstream holds: {latencies:?}"
        );
        assert!(hole.accepted() <= 2, "{b}: never more than max_connections");
        assert_eq!(good.received().len(), 5, "{b}");
    }
}

#[tokio::test]
async fn a_silent_greeting_is_given_up_after_connect_timeout_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        let hole = Blackhole::start().await;
        let mut hung = hole.upstream_config("hung");
        hung.connect_timeout = Duration::from_secs(1);
        hung.command_timeout = Duration::from_secs(60);
        let m = new_message("a@x.example", &["r@x.org"], "x");
        t.store.enqueue(&m).await.unwrap();
        let started = Instant::now();
        let run = Running::start(t.store.clone(), config(vec![hung], vec![]));
        wait_for(15, "the greeting timeout", async || {
            let shown = t.store.queue_show(&m.id).await.unwrap();
            shown.recipients[0].attempts >= 1
        })
        .await;
        let took = started.elapsed();
        run.stop().await;
        let shown = t.store.queue_show(&m.id).await.unwrap();
        let reply = shown.recipients[0].last_reply.clone().unwrap_or_default();
        assert!(reply.contains("greeting"), "{b}: {reply}");
        assert!(
            took < Duration::from_secs(10),
            "{b}: given up after connect_timeout (1 s), not command_timeout (60 s): {took:?}"
        );
    }
}

#[tokio::test]
async fn a_delivery_longer_than_the_lease_is_sent_once_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        // Every reply comes after 1 s: greeting, EHLO, MAIL/RCPT/DATA and
        // the final reply take about 5 s, more than twice the 2 s lease.
        let mut beh = Behavior::new(ServerTls::None);
        beh.reply_delay = Duration::from_secs(1);
        let slow = UpstreamServer::start(beh).await;
        let mut cfg = config(vec![slow.upstream_config("slow")], vec![]);
        cfg.queue.lease = Duration::from_secs(2);
        let m = new_message("a@x.example", &["r@x.org"], "slow");
        t.store.enqueue(&m).await.unwrap();
        let run = Running::start(t.store.clone(), cfg);
        wait_for(40, "delivery", async || !slow.received().is_empty()).await;
        wait_for(10, "recorded", async || {
            t.store.queue_list(10).await.unwrap().is_empty()
        })
        .await;
        // Long enough for a second copy to arrive if one had started.
        tokio::time::sleep(Duration::from_secs(6)).await;
        run.stop().await;
        assert_eq!(
            slow.received().len(),
            1,
            "{b}: delivered exactly once though it outlasted the lease"
        );
        assert_eq!(slow.connections(), 1, "{b}: no second session");
    }
}

#[tokio::test]
async fn renew_leases_extends_only_the_owners_live_leases_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        let s = &t.store;
        s.enqueue(&new_message("a@x.example", &["r1@x.org", "r2@x.org"], "x"))
            .await
            .unwrap();
        let now = now_ms();
        let claimed = s.claim_due("node-a", now, 1_000, 10).await.unwrap();
        let ids: Vec<i64> = claimed[0].recipients.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 2, "{b}");
        // Someone else's heartbeat renews nothing.
        assert_eq!(
            s.renew_leases("node-b", &ids, now, 60_000).await.unwrap(),
            0,
            "{b}"
        );
        assert_eq!(
            s.renew_leases("node-a", &ids, now, 60_000).await.unwrap(),
            2,
            "{b}"
        );
        assert_eq!(s.renew_leases("node-a", &[], now, 60_000).await.unwrap(), 0);
        // Past the original lease: renewed, so nobody else may claim.
        let later = now + 5_000;
        assert!(
            s.claim_due("node-b", later, 1_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{b}: a renewed lease holds"
        );
        let shown = s.queue_show(&claimed[0].id).await.unwrap();
        assert!(
            shown
                .recipients
                .iter()
                .all(|r| r.lease_until == Some(now + 60_000)),
            "{b}"
        );
        // Once the renewed lease ran out and node-b took over, node-a's
        // heartbeat cannot take it back.
        let much_later = now + 61_000;
        let taken = s.claim_due("node-b", much_later, 1_000, 10).await.unwrap();
        assert_eq!(taken[0].recipients.len(), 2, "{b}");
        assert_eq!(
            s.renew_leases("node-a", &ids, much_later, 60_000)
                .await
                .unwrap(),
            0,
            "{b}"
        );
    }
}

#[test]
fn check_config_refuses_a_lease_shorter_than_one_delivery() {
    let mut up = UpstreamConfig::new("ses", "127.0.0.1", 25, TlsMode::None);
    let mut cfg = config(vec![up.clone()], vec![]);
    // Defaults: 30 s connect + 60 s command + 5 min data = 6 min 30 s.
    cfg.queue.lease = Duration::from_secs(300);
    let err = cfg.check_lease().unwrap_err().to_string();
    assert!(err.contains("lease 5m") && err.contains("\"ses\""), "{err}");
    assert!(err.contains("6m 30s"), "{err}");
    cfg.queue.lease = Duration::from_secs(390);
    cfg.check_lease().unwrap();
    // The default lease covers the default timeouts.
    cfg.queue.lease = postgate::delivery::QueueConfig::default().lease;
    cfg.check_lease().unwrap();
    // Shorter timeouts allow a shorter lease.
    up.connect_timeout = Duration::from_secs(5);
    up.command_timeout = Duration::from_secs(10);
    up.data_timeout = Duration::from_secs(15);
    cfg.upstreams = vec![up];
    cfg.queue.lease = Duration::from_secs(30);
    cfg.check_lease().unwrap();
}

#[test]
fn check_config_names_the_lease_key_and_serve_settings_pass() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, queue: &str, upstream: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[store]\nurl = \"sqlite://{}/p.db\"\n\n[[smtp.listener]]\naddress = \"127.0.0.1:2587\"\nmode = \"plain\"\n\n[queue]\n{queue}\n\n[[upstream]]\nname = \"mta\"\nhost = \"127.0.0.1\"\ntls = \"none\"\n{upstream}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_postgate"))
            .arg("-c")
            .arg(path)
            .arg("check-config")
            .output()
            .unwrap()
    };
    let short = write("short.toml", "lease = \"2m\"", "");
    let o = check(&short);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("short.toml: queue.lease:")
            && err.contains("lease 2m")
            && err.contains("6m 30s"),
        "{err}"
    );
    // The same lease with timeouts that fit in it.
    let fits = write(
        "fits.toml",
        "lease = \"2m\"",
        "connect_timeout = \"10s\"\ncommand_timeout = \"20s\"\ndata_timeout = \"90s\"",
    );
    let o = check(&fits);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The defaults pass.
    let o = check(&write("default.toml", "", ""));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
