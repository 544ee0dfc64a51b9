//! Delivery against a real MTA (Postfix's `smtp-sink`), and two delivery
//! instances sharing one PostgreSQL: 1,000 messages, no duplicate, no loss;
//! an upstream's rate holds for both together (issue #6: the same limiter);
//! many workers with a small batch still send each message once, with all
//! its recipients in one transaction.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use postgate::limits::{Limiter, LimitsBackend, LimitsConfig, SystemClock};

use postgate::store::{self, StoreOptions};

use crate::common::{all_stores, free_port, KillOnDrop};
use crate::delivery_flow::{config, new_message, wait_for, Running};
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

#[tokio::test]
async fn delivers_to_postfix_smtp_sink() {
    let sink_bin = "/usr/sbin/smtp-sink";
    assert!(
        std::path::Path::new(sink_bin).exists(),
        "postfix's smtp-sink is required (tests/run.sh installs postfix)"
    );
    for t in crate::common::all_stores().await {
        let b = t.backend;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = free_port();
        let mut cmd = Command::new(sink_bin);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "nobody"]);
        }
        let template = format!("{}/%s.", dir.path().display());
        let _sink = KillOnDrop(
            cmd.args(["-d", &template, &format!("127.0.0.1:{port}"), "10"])
                .spawn()
                .expect("start smtp-sink"),
        );
        wait_for(30, "smtp-sink listening", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        let up = postgate::delivery::UpstreamConfig::new(
            "postfix",
            "127.0.0.1",
            port,
            postgate::delivery::TlsMode::None,
        );
        let run = Running::start(t.store.clone(), config(vec![up], vec![]));
        for n in 0..3 {
            t.store
                .enqueue(&new_message(
                    "s@example.com",
                    &["r1@x.org", "r2@x.org"],
                    &format!("marker-{n}"),
                ))
                .await
                .unwrap();
        }
        let store = t.store.clone();
        wait_for(20, "queue drained into smtp-sink", async || {
            store.queue_list(10).await.unwrap().is_empty()
        })
        .await;
        run.stop().await;
        let mut dumps = String::new();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            dumps.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
        // Each (message, recipient) exactly once. Two workers may split one
        // message's recipients between them (SKIP LOCKED), so count pairs.
        let mut pairs = HashMap::new();
        for tx in dumps.split("X-Client-Addr:").skip(1) {
            let marker = tx
                .lines()
                .find(|l| l.starts_with("marker-"))
                .expect("marker");
            for rcpt in tx.lines().filter(|l| l.starts_with("X-Rcpt-Args:")) {
                *pairs
                    .entry((marker.to_string(), rcpt.to_string()))
                    .or_insert(0) += 1;
            }
        }
        assert_eq!(pairs.len(), 6, "{b}: {dumps}");
        assert!(pairs.values().all(|n| *n == 1), "{b}: {dumps}");
        assert!(dumps.contains("X-Mail-Args: <s@example.com>"), "{b}");
    }
}

#[tokio::test]
async fn two_nodes_on_one_postgres_deliver_1000_messages_exactly_once() {
    let Some(url) = crate::common::pg_database_url().await else {
        return;
    };
    let a = store::open_and_migrate(&url, &StoreOptions::default())
        .await
        .unwrap();
    let b = store::open(&url, &StoreOptions::default()).await.unwrap();
    let server = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut cfg_a = config(vec![server.upstream_config("sink")], vec![]);
    cfg_a.queue.workers = 4;
    cfg_a.queue.batch = 8;
    cfg_a.node_id = "node-a".into();
    let mut cfg_b = cfg_a.clone();
    cfg_b.node_id = "node-b".into();
    // Enqueue while both nodes already run, so they compete for every claim.
    let run_a = Running::start(a.clone(), cfg_a);
    let run_b = Running::start(b.clone(), cfg_b);
    let mut tasks = Vec::new();
    for chunk in 0..10 {
        let s = if chunk % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for n in 0..100 {
                let m = new_message(
                    "s@example.com",
                    &["r@x.org"],
                    &format!("seq-{}", chunk * 100 + n),
                );
                s.enqueue(&m).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for(60, "1000 deliveries", async || {
        server.received().len() >= 1000
    })
    .await;
    wait_for(30, "empty queue", async || {
        a.queue_list(10).await.unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    run_a.stop().await;
    run_b.stop().await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in server.received() {
        let text = String::from_utf8_lossy(&r.data).into_owned();
        let seq = text
            .lines()
            .find(|l| l.starts_with("seq-"))
            .expect("sequence line")
            .to_string();
        *seen.entry(seq).or_default() += 1;
    }
    assert_eq!(seen.len(), 1000, "no loss");
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "no duplicates: {dups:?}");
}

/// Delivers `count` messages through two delivery instances on one
/// PostgreSQL whose limiters use `backend`, to one upstream limited to
/// `rate` messages per second; returns the seconds between the first and
/// the last message's arrival.
async fn two_nodes_deliver_at_rate(
    url: &str,
    backend: LimitsBackend,
    rate: f64,
    count: usize,
) -> f64 {
    let a = store::open_and_migrate(url, &StoreOptions::default())
        .await
        .unwrap();
    let b = store::open(url, &StoreOptions::default()).await.unwrap();
    let server = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut upstream = server.upstream_config("paced");
    upstream.rate = Some(rate);
    upstream.burst = 1;
    let mut cfg_a = config(vec![upstream], vec![]);
    cfg_a.queue.workers = 4;
    cfg_a.queue.batch = 4;
    cfg_a.queue.max_throttle_wait = Duration::from_secs(30);
    cfg_a.node_id = "node-a".into();
    let mut cfg_b = cfg_a.clone();
    cfg_b.node_id = "node-b".into();
    let limiter = |s: Arc<dyn store::Store>| {
        let config = LimitsConfig {
            backend,
            ..LimitsConfig::default()
        };
        Arc::new(Limiter::new(config, Some(s), Arc::new(SystemClock)).unwrap())
    };
    for n in 0..count {
        let m = new_message("s@example.com", &["r@x.org"], &format!("paced-{n}"));
        a.enqueue(&m).await.unwrap();
    }
    let run_a = Running::start_limited(a.clone(), cfg_a, limiter(a.clone()));
    let run_b = Running::start_limited(b.clone(), cfg_b, limiter(b.clone()));
    wait_for(60, "paced deliveries", async || {
        server.received().len() >= count
    })
    .await;
    run_a.stop().await;
    run_b.stop().await;
    let times: Vec<_> = server.received().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), count, "each message once");
    let first = times.iter().min().unwrap();
    let last = times.iter().max().unwrap();
    last.duration_since(*first).as_secs_f64()
}

#[tokio::test]
async fn an_upstream_rate_holds_for_two_nodes_together_on_the_postgres_limiter() {
    let Some(url) = crate::common::pg_database_url().await else {
        return;
    };
    // 40 messages at 20 per second, burst 1: the last one goes no sooner
    // than 39 / 20 = 1.95 s after the first when both nodes share one
    // quota; each node alone would finish in about half that.
    let shared = two_nodes_deliver_at_rate(&url, LimitsBackend::Postgres, 20.0, 40).await;
    assert!(
        (1.85..4.0).contains(&shared),
        "two nodes on the shared limiter took {shared:.2} s"
    );
    // The same run with per-node (`local`) limiters is about twice as fast,
    // which shows the shared counter is what paces them.
    let Some(url) = crate::common::pg_database_url().await else {
        return;
    };
    let local = two_nodes_deliver_at_rate(&url, LimitsBackend::Local, 20.0, 40).await;
    eprintln!("40 messages at 20/s: shared limiter {shared:.2} s, per-node {local:.2} s");
    assert!(
        local < shared * 0.75,
        "per-node limiters took {local:.2} s, shared {shared:.2} s"
    );
}

/// A claim takes whole messages: 8 workers claiming 3 recipients' worth at a
/// time still hand each 5-recipient message to the upstream once, in one
/// transaction with all five (not split across workers or claims).
#[tokio::test]
async fn each_message_goes_out_once_with_all_its_recipients_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        let server = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
        let mut cfg = config(vec![server.upstream_config("up")], vec![]);
        cfg.queue.workers = 8;
        cfg.queue.batch = 3;
        let rcpts = ["a@x.org", "b@x.org", "c@x.org", "d@x.org", "e@x.org"];
        // Queued before delivery starts, so the workers race for them.
        for i in 0..20 {
            let m = new_message("s@example.com", &rcpts, &format!("whole-{i}"));
            t.store.enqueue(&m).await.unwrap();
        }
        let run = Running::start(t.store.clone(), cfg);
        wait_for(30, "100 recipients delivered", async || {
            server
                .received()
                .iter()
                .map(|r| r.rcpt_to.len())
                .sum::<usize>()
                >= 100
        })
        .await;
        run.stop().await;
        let got = server.received();
        assert_eq!(got.len(), 20, "{b}: one transaction per message");
        assert!(
            got.iter().all(|r| r.rcpt_to == rcpts),
            "{b}: every transaction carries all five: {:?}",
            got.iter().map(|r| r.rcpt_to.len()).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn leases_are_named_after_the_node_id_on_every_backend() {
    // Issue 13 item 6: `[server] node_id` names the lease owner (plus a
    // per-start suffix); without it, the host name and process id do.
    for t in all_stores().await {
        let b = t.backend;
        let mut behavior = Behavior::new(ServerTls::None);
        behavior.reply_delay = Duration::from_millis(300);
        let server = UpstreamServer::start(behavior).await;
        for (node_id, want) in [
            ("relay-7", "relay-7/".to_string()),
            ("", format!("relay.test-{}/", std::process::id())),
        ] {
            let mut cfg = config(vec![server.upstream_config("slow")], vec![]);
            cfg.node_id = node_id.into();
            let m = new_message("s@example.com", &["r@x.org"], node_id);
            t.store.enqueue(&m).await.unwrap();
            let run = Running::start(t.store.clone(), cfg);
            let mut owner = None;
            wait_for(10, "a lease", async || {
                owner = t
                    .store
                    .queue_show(&m.id)
                    .await
                    .ok()
                    .and_then(|d| d.recipients[0].lease_owner.clone());
                owner.is_some()
            })
            .await;
            let owner = owner.unwrap();
            assert!(
                owner.starts_with(&want),
                "{b}: lease owner {owner:?}, want {want}..."
            );
            assert!(
                owner.len() > want.len(),
                "{b}: {owner:?} has no per-start suffix"
            );
            wait_for(10, "delivery", async || {
                t.store.queue_show(&m.id).await.is_err()
            })
            .await;
            run.stop().await;
        }
    }
}
