//! Delivery against a real MTA (Postfix's `smtp-sink`), and two delivery
//! instances sharing one PostgreSQL: 1,000 messages, no duplicate, no loss.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::Duration;

use postgate::store::{self, StoreOptions};

use crate::delivery_flow::{config, new_message, wait_for, Running};
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
        let _sink = Sink(
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
