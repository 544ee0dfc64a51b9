//! Issue #14 item 7: devices that cannot log in. A listener's
//! `trusted_networks` makes a client on that network a named account
//! without AUTH (its sender permissions and limits), with or without TLS as
//! the listener says, and charges each message to the client IP; every other
//! client must log in. Driven with swaks (a real client), on both stores,
//! with the real limiter.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use postgate::limits::{Limiter, LimiterPorts, LimitsConfig, SystemClock};

use crate::common::all_stores;
use crate::smtp_harness::{self as h, Harness};

/// swaks without AUTH from 127.0.0.1, with STARTTLS verified against
/// `tls` (a CA file) when given: (exit success, transcript).
fn swaks(port: u16, from: &str, tls: Option<String>) -> (bool, String) {
    let port = port.to_string();
    let mut args = vec![
        "60",
        "swaks",
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--ehlo",
        "printer.test",
        "--from",
        from,
        "--to",
        "someone@dest.test",
        "--header",
        "Subject: scan",
        "--body",
        "a scanned page",
    ];
    if let Some(ca) = &tls {
        args.extend(["--tls", "--tls-verify", "--tls-ca-path", ca]);
    }
    let out = Command::new("timeout")
        .args(&args)
        .output()
        .expect("run swaks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn swaks_async(port: u16, from: &'static str, tls: Option<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || swaks(port, from, tls))
        .await
        .unwrap()
}

fn ca(srv: &Harness) -> String {
    srv.certs.ca.display().to_string()
}

/// A server whose starttls listener trusts `network` as user `bob`
/// (allowed `@example.com`), with `ip_messages` per hour per client IP.
async fn start(
    db: &crate::common::TestStore,
    network: &str,
    require_tls: bool,
    ip_messages: u32,
) -> Harness {
    let limiter = Limiter::new(LimitsConfig::default(), None, Arc::new(SystemClock)).unwrap();
    let limits = Arc::new(LimiterPorts::new(
        Arc::new(limiter),
        postgate::metrics::Metrics::detached(),
    ));
    let network = network.parse().unwrap();
    h::start_with_limits(db, limits, move |c| {
        let l = &mut c.listeners[0];
        l.trusted_networks.insert(network, h::USER.to_string());
        l.trusted_require_tls = require_tls;
        l.trusted_ip_messages = ip_messages;
        l.trusted_ip_window = Duration::from_secs(3600);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_network_sends_as_its_account_without_auth() {
    for db in all_stores().await {
        let srv = start(&db, "127.0.0.0/8", false, 0).await;
        let (ok, text) = swaks_async(srv.starttls().port(), "scanner@example.com", None).await;
        assert!(ok, "{}: {text}", db.backend);
        assert!(text.contains("250 2.0.0"), "{text}");
        let q = h::queued(&srv).await;
        assert_eq!(q.len(), 1, "{}", db.backend);
        assert_eq!(q[0].sender, "scanner@example.com");
        assert_eq!(q[0].username.as_deref(), Some(h::USER));
        assert_eq!(q[0].credential.as_deref(), Some("network"));
        // The account's sender permissions hold.
        let (ok, text) = swaks_async(srv.starttls().port(), "ceo@elsewhere.test", None).await;
        assert!(!ok, "{text}");
        assert!(text.contains("553 5.7.1"), "{text}");
        // The other listeners are not trusted: there, MAIL needs AUTH.
        let (ok, text) = swaks_async(srv.plain().port(), "scanner@example.com", None).await;
        assert!(!ok, "{text}");
        assert!(text.contains("530 5.7.0"), "{text}");
        assert_eq!(h::queued(&srv).await.len(), 1);
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_network_and_clear_text_when_tls_is_required_must_log_in() {
    for db in all_stores().await {
        // 127.0.0.1 is not in 10.20.0.0/24: like any client, it must log in.
        let srv = start(&db, "10.20.0.0/24", false, 0).await;
        let (ok, text) =
            swaks_async(srv.starttls().port(), "scanner@example.com", Some(ca(&srv))).await;
        assert!(!ok, "{text}");
        assert!(text.contains("530 5.7.0 authentication required"), "{text}");
        srv.stop().await;

        // Trusted, but TLS is required: clear text is refused, TLS works.
        let srv = start(&db, "127.0.0.1/32", true, 0).await;
        let (ok, text) = swaks_async(srv.starttls().port(), "scanner@example.com", None).await;
        assert!(!ok, "{text}");
        assert!(text.contains("530 5.7.0 must issue a STARTTLS"), "{text}");
        let (ok, text) =
            swaks_async(srv.starttls().port(), "scanner@example.com", Some(ca(&srv))).await;
        assert!(ok, "{}: {text}", db.backend);
        assert_eq!(h::queued(&srv).await.len(), 1);
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_client_ip_is_held_to_its_message_rate_at_mail() {
    for db in all_stores().await {
        let srv = start(&db, "127.0.0.0/8", false, 2).await;
        for _ in 0..2 {
            let (ok, text) = swaks_async(srv.starttls().port(), "scanner@example.com", None).await;
            assert!(ok, "{text}");
        }
        let (ok, text) = swaks_async(srv.starttls().port(), "scanner@example.com", None).await;
        assert!(!ok, "{text}");
        let refusal = text
            .lines()
            .find(|l| l.contains(" 451 "))
            .unwrap_or_else(|| panic!("no 451: {text}"));
        assert!(
            refusal.contains("451 4.7.1 message rate from 127.0.0.1 exceeded (2 per hour)"),
            "{refusal}"
        );
        assert_eq!(h::queued(&srv).await.len(), 2, "{}", db.backend);
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_trusted_account_sends_nothing() {
    for db in all_stores().await {
        let srv = start(&db, "127.0.0.0/8", false, 0).await;
        db.store.user_set_enabled(h::USER, false).await.unwrap();
        let (ok, text) = swaks_async(srv.starttls().port(), "scanner@example.com", None).await;
        assert!(!ok, "{text}");
        assert!(text.contains("530 5.7.0"), "{text}");
        assert!(h::queued(&srv).await.is_empty());
        srv.stop().await;
    }
}
