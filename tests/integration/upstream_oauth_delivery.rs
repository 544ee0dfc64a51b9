//! XOAUTH2 delivery through the queue on both backends: per-mailbox tokens
//! and connections, one token request for 50 concurrent deliveries, refresh
//! before expiry over a long run, a revoked token refreshed once, and a
//! token endpoint outage that defers (never bounces) and then delivers once.

use std::time::Duration;

use postgate::delivery::UpstreamConfig;
use postgate::store::Store;

use crate::common::all_stores;
use crate::delivery_flow::{config, new_message, wait_for, Running};
use crate::token_server::{Client, Mode, TokenServer};
use crate::upstream_oauth::{
    google, microsoft_secret, service_account, xoauth2_config, xoauth2_server, SECRET,
};

async fn empty(store: &dyn Store) -> bool {
    store.queue_list(10_000).await.unwrap().is_empty()
}

async fn secret_endpoint(lifetime: Duration) -> TokenServer {
    TokenServer::start(
        vec![Client::Secret {
            id: "app-1".into(),
            secret: SECRET.into(),
        }],
        lifetime,
    )
    .await
}

#[tokio::test]
async fn sender_mailboxes_get_separate_tokens_and_connections() {
    for t in all_stores().await {
        let b = t.backend;
        let dir = tempfile::tempdir().unwrap();
        let (key, client) = service_account(dir.path(), "relay@proj.iam.gserviceaccount.com");
        let tokens = TokenServer::start(vec![client], Duration::from_secs(300)).await;
        let server = xoauth2_server(&tokens).await;
        let up = xoauth2_config(&server, google(&tokens, &key), "{sender}");
        let mut cfg = config(vec![up], vec![]);
        cfg.queue.workers = 1;
        let run = Running::start(t.store.clone(), cfg);
        for (i, sender) in [
            "alice@example.com",
            "bob@example.com",
            "alice@example.com",
            "bob@example.com",
        ]
        .iter()
        .enumerate()
        {
            t.store
                .enqueue(&new_message(sender, &["r@x.org"], &format!("m{i}")))
                .await
                .unwrap();
            wait_for(30, "delivery", async || server.received().len() == i + 1).await;
        }
        wait_for(30, "empty queue", async || empty(&*t.store).await).await;
        run.stop().await;
        let got = server.received();
        for r in &got {
            assert_eq!(
                r.auth_user.as_deref(),
                Some(r.mail_from.as_str()),
                "{b}: each message authenticated as its sender"
            );
        }
        assert_eq!(tokens.issued(), 2, "{b}: one token per mailbox");
        assert_eq!(
            server.connections(),
            2,
            "{b}: one pooled connection per mailbox"
        );
        assert_eq!(server.auth_refusals(), 0, "{b}");
    }
}

#[tokio::test]
async fn fifty_concurrent_deliveries_make_one_token_request() {
    for t in all_stores().await {
        let b = t.backend;
        let tokens = secret_endpoint(Duration::from_secs(300)).await;
        let mut server_b =
            crate::upstream_server::Behavior::new(crate::upstream_server::ServerTls::Starttls);
        server_b.xoauth2 = Some(tokens.checker());
        // Slow replies keep the sessions open at once.
        server_b.reply_delay = Duration::from_millis(20);
        let server = crate::upstream_server::UpstreamServer::start(server_b).await;
        let mut up: UpstreamConfig =
            xoauth2_config(&server, microsoft_secret(&tokens), "relay@example.com");
        up.max_connections = 50;
        let mut cfg = config(vec![up], vec![]);
        cfg.queue.workers = 1;
        cfg.queue.batch = 64;
        for i in 0..50 {
            t.store
                .enqueue(&new_message(
                    "a@example.com",
                    &["r@x.org"],
                    &format!("m{i}"),
                ))
                .await
                .unwrap();
        }
        let run = Running::start(t.store.clone(), cfg);
        wait_for(60, "50 deliveries", async || server.received().len() == 50).await;
        wait_for(30, "empty queue", async || empty(&*t.store).await).await;
        run.stop().await;
        assert!(
            server.connections() > 10,
            "{b}: sessions were concurrent ({})",
            server.connections()
        );
        assert_eq!(tokens.requests(), 1, "{b}: one token request for all");
        assert_eq!(server.received().len(), 50, "{b}");
    }
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires_across_a_long_run() {
    for t in all_stores().await {
        let b = t.backend;
        // 2 s tokens: refreshed after 1.5 s, so a live token is always used.
        let tokens = secret_endpoint(Duration::from_secs(2)).await;
        let server = xoauth2_server(&tokens).await;
        let mut up = xoauth2_config(&server, microsoft_secret(&tokens), "relay@example.com");
        up.max_messages_per_connection = 1; // every message authenticates
        let mut cfg = config(vec![up], vec![]);
        cfg.queue.workers = 1;
        let run = Running::start(t.store.clone(), cfg);
        let started = std::time::Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_secs(5) {
            t.store
                .enqueue(&new_message(
                    "a@example.com",
                    &["r@x.org"],
                    &format!("m{sent}"),
                ))
                .await
                .unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        wait_for(30, "all delivered", async || {
            server.received().len() == sent
        })
        .await;
        run.stop().await;
        assert_eq!(server.auth_refusals(), 0, "{b}: never an expired token");
        let n = tokens.issued();
        assert!(
            (3..=5).contains(&n),
            "{b}: refreshed every ~1.5 s over 5 s: {n} tokens"
        );
    }
}

#[tokio::test]
async fn revoked_token_is_refreshed_once_and_the_message_delivered_once() {
    for t in all_stores().await {
        let b = t.backend;
        let tokens = secret_endpoint(Duration::from_secs(300)).await;
        let server = xoauth2_server(&tokens).await;
        let mut up = xoauth2_config(&server, microsoft_secret(&tokens), "relay@example.com");
        up.max_messages_per_connection = 1;
        let mut cfg = config(vec![up], vec![]);
        cfg.queue.workers = 1;
        let run = Running::start(t.store.clone(), cfg);
        t.store
            .enqueue(&new_message("a@example.com", &["r@x.org"], "one"))
            .await
            .unwrap();
        wait_for(30, "first", async || server.received().len() == 1).await;
        tokens.revoke_all();
        let m = new_message("a@example.com", &["r@x.org"], "two");
        t.store.enqueue(&m).await.unwrap();
        wait_for(30, "second", async || server.received().len() == 2).await;
        wait_for(30, "empty queue", async || empty(&*t.store).await).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stop().await;
        assert_eq!(
            server.auth_refusals(),
            1,
            "{b}: the revoked token was refused once"
        );
        assert_eq!(tokens.requests(), 2, "{b}: one refresh");
        assert_eq!(server.received().len(), 2, "{b}: delivered exactly once");
    }
}

#[tokio::test]
async fn token_endpoint_down_defers_then_delivers_once() {
    for t in all_stores().await {
        let b = t.backend;
        let tokens = secret_endpoint(Duration::from_secs(300)).await;
        tokens.set_mode(Mode::Down);
        let server = xoauth2_server(&tokens).await;
        let up = xoauth2_config(&server, microsoft_secret(&tokens), "relay@example.com");
        let mut cfg = config(vec![up], vec![]);
        cfg.queue.workers = 1;
        cfg.queue.circuit_failures = 100;
        let run = Running::start(t.store.clone(), cfg);
        let m = new_message("a@example.com", &["r@x.org"], "waits");
        t.store.enqueue(&m).await.unwrap();
        wait_for(30, "a deferral", async || {
            let d = t.store.queue_show(&m.id).await.unwrap();
            d.log.iter().any(|l| l.outcome == "deferred")
        })
        .await;
        let d = t.store.queue_show(&m.id).await.unwrap();
        let reply = d.recipients[0].last_reply.clone().unwrap_or_default();
        assert!(
            reply.contains("OAuth: token endpoint unavailable"),
            "{b}: {reply}"
        );
        assert_eq!(
            d.recipients[0].status, "queued",
            "{b}: deferred, not bounced"
        );
        assert!(server.received().is_empty(), "{b}");
        tokens.set_mode(Mode::Normal);
        wait_for(30, "delivery", async || server.received().len() == 1).await;
        wait_for(30, "empty queue", async || empty(&*t.store).await).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stop().await;
        let got = server.received();
        assert_eq!(got.len(), 1, "{b}: delivered once, no DSN");
        assert_eq!(got[0].rcpt_to, ["r@x.org"], "{b}");
    }
}

#[tokio::test]
async fn one_refused_mailbox_does_not_open_the_circuit_for_other_senders() {
    for t in all_stores().await {
        let b = t.backend;
        let dir = tempfile::tempdir().unwrap();
        let (key, client) = service_account(dir.path(), "relay@proj.iam.gserviceaccount.com");
        let tokens = TokenServer::start(vec![client], Duration::from_secs(300)).await;
        tokens.refuse_subject("ghost@example.com");
        let server = xoauth2_server(&tokens).await;
        let up = xoauth2_config(&server, google(&tokens, &key), "{sender}");
        let mut cfg = config(vec![up], vec![]);
        cfg.queue.workers = 1;
        cfg.queue.circuit_failures = 2;
        // An open circuit would hold alice's mail for a minute.
        cfg.queue.circuit_cooldown = Duration::from_secs(60);
        let run = Running::start(t.store.clone(), cfg);
        let mut ghosts = Vec::new();
        for i in 0..4 {
            let m = new_message("ghost@example.com", &["r@x.org"], &format!("g{i}"));
            t.store.enqueue(&m).await.unwrap();
            ghosts.push(m);
        }
        wait_for(30, "ghost deferrals", async || {
            let mut n = 0;
            for m in &ghosts {
                let d = t.store.queue_show(&m.id).await.unwrap();
                n += d.log.iter().filter(|l| l.outcome == "deferred").count();
            }
            n >= 4
        })
        .await;
        let d = t.store.queue_show(&ghosts[0].id).await.unwrap();
        let reply = d.recipients[0].last_reply.clone().unwrap_or_default();
        assert!(
            reply.contains("invalid_grant for ghost@example.com"),
            "{b}: {reply}"
        );
        t.store
            .enqueue(&new_message("alice@example.com", &["r@x.org"], "alice"))
            .await
            .unwrap();
        wait_for(10, "alice delivered", async || server.received().len() == 1).await;
        run.stop().await;
        assert_eq!(
            server.received()[0].auth_user.as_deref(),
            Some("alice@example.com"),
            "{b}"
        );
    }
}
