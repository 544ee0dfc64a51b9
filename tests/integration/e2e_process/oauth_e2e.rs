//! Issue 11 end to end with the real binary: a legacy client logs in to
//! postgate with AUTH PLAIN; postgate delivers with AUTH XOAUTH2 as the
//! sender's mailbox, with a token from the real token endpoint; a revoked
//! token is refreshed once. The node's log says a token was obtained and
//! never contains the client secret or a token.

use std::time::Duration;

use super::*;
use crate::token_server::{Client as OAuthClient, TokenServer};

const SECRET: &str = "e2e-client-secret-9d2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_plain_in_xoauth2_out_without_secrets_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        run(dir.path(), &url).await;
    }
}

async fn run(dir: &Path, url: &str) {
    let tag = backend_tag(url);
    let tokens = TokenServer::start(
        vec![OAuthClient::Secret {
            id: "app-e2e".into(),
            secret: SECRET.into(),
        }],
        Duration::from_secs(600),
    )
    .await;
    let mut b = Behavior::new(ServerTls::Starttls);
    b.xoauth2 = Some(tokens.checker());
    let m365 = UpstreamServer::start(b).await;
    // The template's own upstream stays unused: the default route is m365.
    let unused = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let secret_file = dir.join(format!("secret-{tag}"));
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let extra = format!(
        r#"
[[upstream]]
name = "m365"
host = "127.0.0.1"
port = {port}
tls = "starttls"
ca_file = "{ca}"
tls_server_name = "localhost"
auth = "xoauth2"
username = "{{sender}}"
max_messages_per_connection = 1

[upstream.oauth]
provider = "microsoft"
tenant = "tenant-1"
client_id = "app-e2e"
client_secret = {{ file = "{secret}" }}
token_url = "{token_url}"
ca_file = "{token_ca}"

[[route]]
upstreams = ["m365"]
"#,
        port = m365.addr.port(),
        ca = m365.pki.ca_file.display(),
        secret = secret_file.display(),
        token_url = tokens.url(),
        token_ca = tokens.ca_file().display(),
    );
    let mut settings = Settings::new(url, unused.addr.port());
    settings.extra = &extra;
    let mut files = write_node(dir, &format!("oauth-{tag}"), &settings);
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;

    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235, "{tag}: PLAIN towards postgate");
    let first = format!("oauth-{tag}-1");
    c.send("bob@dest.example", &message(&first))
        .await
        .expect("accepted");
    wait_delivered(&m365, std::slice::from_ref(&first), Duration::from_secs(30)).await;
    tokens.revoke_all();
    let second = format!("oauth-{tag}-2");
    c.send("bob@dest.example", &message(&second))
        .await
        .expect("accepted");
    wait_delivered(
        &m365,
        &[first.clone(), second.clone()],
        Duration::from_secs(30),
    )
    .await;
    wait_queue_empty(&files.config, Duration::from_secs(30)).await;
    node.crash().await;

    let got = m365.received();
    assert_eq!(got.len(), 2, "{tag}: each message once");
    for r in &got {
        assert_eq!(
            r.auth_user.as_deref(),
            Some(FROM),
            "{tag}: XOAUTH2 as the sender"
        );
    }
    assert_eq!(
        tokens.issued(),
        2,
        "{tag}: one token, one refresh after the revocation"
    );
    assert!(unused.received().is_empty(), "{tag}");
    let logs = std::fs::read_to_string(node_log(dir, &format!("oauth-{tag}"))).unwrap();
    assert!(logs.contains("OAuth token obtained"), "{tag}: {logs}");
    assert!(
        logs.contains("refused the cached OAuth token"),
        "{tag}: {logs}"
    );
    assert!(
        !logs.contains(SECRET),
        "{tag}: the client secret is in the log"
    );
    assert!(!logs.contains("zz-token"), "{tag}: a token is in the log");
}

/// The log file of node `name` (the harness names it NAME-UUID.log).
fn node_log(dir: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}-")) && n.ends_with(".log"))
        })
        .expect("node log")
}
