//! Crash safety of the real binary: `postgate serve` is killed with SIGKILL
//! while messages are queued and in delivery; after a restart every message
//! that got a 250 arrives (at least once: a duplicate is allowed only for
//! a message killed between the upstream's 250 and recording it).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use postgate::config::Secret;
use postgate::delivery::upstream::{Envelope, Upstream};
use postgate::delivery::{TlsMode, UpstreamConfig};

use crate::common::{free_port, KillOnDrop};
use crate::delivery_flow::wait_for;
use crate::upstream_server::{Behavior, ServerTls, UpstreamServer};

fn serve(config: &std::path::Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_postgate"))
            .arg("-c")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgate serve"),
    )
}

#[tokio::test]
async fn sigkill_with_messages_queued_and_in_delivery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![format!(
        "sqlite://{}",
        dir.path().join("crash.db").display()
    )];
    if let Some(pg) = crate::common::pg_database_url().await {
        urls.push(pg);
    }
    for url in urls {
        let store = postgate::store::open_and_migrate(&url, &Default::default())
            .await
            .unwrap();
        let params = postgate::password::HashParams::default();
        postgate::accounts::user_add(&*store, "alice", "default", "crash-test-pw", &params)
            .await
            .unwrap();
        postgate::accounts::sender_allow(&*store, "alice", "@example.com")
            .await
            .unwrap();

        // A slow upstream: when the node is killed, messages are mid-delivery.
        let mut slow = Behavior::new(ServerTls::None);
        slow.reply_delay = Duration::from_millis(300);
        let upstream = UpstreamServer::start(slow).await;
        let (cert, key) = postgate::tls::self_signed(&["localhost".into()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let smtp_port = free_port();
        let config = dir.path().join("postgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"[server]
hostname = "localhost"

[store]
url = {url:?}

[tls]
cert = "{d}/cert.pem"
key = "{d}/key.pem"

[[smtp.listener]]
address = "127.0.0.1:{smtp_port}"
mode = "starttls"

[http]
address = "127.0.0.1:{http_port}"

[queue]
workers = 2
batch = 4
lease = "3s"
poll_interval = "50ms"

[[upstream]]
name = "slow"
host = "127.0.0.1"
port = {up_port}
tls = "none"
"#,
                d = dir.path().display(),
                http_port = free_port(),
                up_port = upstream.addr.port(),
            ),
        )
        .unwrap();

        let node = serve(&config);
        wait_for(60, "postgate listening", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", smtp_port))
                .await
                .is_ok()
        })
        .await;
        let mut client = UpstreamConfig::new("postgate", "127.0.0.1", smtp_port, TlsMode::Starttls);
        client.ca_file = Some(cert_path.clone());
        client.tls_server_name = Some("localhost".into());
        client.username = Some("alice".into());
        client.password = Some(Secret::inline("crash-test-pw"));
        let client = Upstream::new(client, "client.test").unwrap();
        let mut conn = client.connect().await.expect("submit session");
        let rcpt = vec!["someone@example.net".to_string()];
        let total = 20;
        for n in 0..total {
            let body = Bytes::from(format!(
                "From: <alice@example.com>\r\nTo: <someone@example.net>\r\nSubject: crash {n}\r\n\r\nmarker-{n}\r\n"
            ));
            let tx = conn
                .send(Envelope {
                    sender: "alice@example.com",
                    recipients: &rcpt,
                    body: &body,
                    smtputf8: false,
                    dsn: None,
                })
                .await
                .unwrap();
            assert!(tx.data.unwrap().is_positive(), "{url}: accepted with 250");
            conn.reset().await.unwrap();
        }
        // Some delivered, some in delivery, the rest queued: kill -9.
        wait_for(60, "first deliveries", async || {
            !upstream.received().is_empty()
        })
        .await;
        let before = upstream.received().len();
        drop(node);
        assert!(before < total, "{url}: killed with messages still queued");

        upstream.set(|b| b.reply_delay = Duration::ZERO);
        let _node = serve(&config);
        let markers = async || {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for r in upstream.received() {
                let text = String::from_utf8_lossy(&r.data).into_owned();
                if let Some(m) = text.lines().find(|l| l.starts_with("marker-")) {
                    *seen.entry(m.to_string()).or_default() += 1;
                }
            }
            seen
        };
        wait_for(60, "every accepted message after the restart", async || {
            markers().await.len() == total
        })
        .await;
        wait_for(30, "empty queue", async || {
            postgate::delivery::admin::list(&*store, 100)
                .await
                .unwrap()
                .is_empty()
        })
        .await;
    }
}
