//! Issue #5 end to end: keys made with `postgate dkim generate` (RSA and
//! Ed25519) against a running node's store, picked up on SIGHUP; the
//! message AS THE UPSTREAM RECEIVED IT verifies with dkimpy against the
//! printed TXT records; the fixups added Date and Message-ID and the
//! Received field hides the client.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signatures_verify_at_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        dkim_end_to_end(dir.path(), &url).await;
    }
}

/// The header fields of `msg` (unfolded), as (lowercase name, value).
fn headers(msg: &str) -> Vec<(String, String)> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

async fn dkim_end_to_end(dir: &Path, url: &str) {
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let tag = backend_tag(url);
    let mut files = write_node(
        dir,
        &format!("dkim-{tag}"),
        &Settings::new(url, up.addr.port()),
    );
    add_user(&files.config).await;
    let node = Serve::start(&mut files).await;

    let mut records = cli(
        &files.config,
        &[
            "dkim",
            "generate",
            "--domain",
            "example.com",
            "--selector",
            "rsa1",
            "--algorithm",
            "rsa-sha256",
        ],
        None,
    )
    .await;
    records.push('\n');
    records.push_str(
        &cli(
            &files.config,
            &[
                "dkim",
                "generate",
                "--domain",
                "example.com",
                "--selector",
                "ed1",
                "--algorithm",
                "ed25519-sha256",
            ],
            None,
        )
        .await,
    );
    let records_file = dir.join(format!("records-{tag}.txt"));
    std::fs::write(&records_file, &records).unwrap();
    node.signal(libc::SIGHUP);
    node.wait_log("DKIM keys reloaded", Duration::from_secs(15))
        .await;

    // No Date, no Message-ID: the relay adds them (RFC 6409 §8).
    let subject = format!("dkim-{tag}");
    let body = format!(
        "From: Alice <{FROM}>\r\nTo: <bob@dest.example>\r\nSubject: {subject}\r\n\r\nSigned twice.\r\n"
    );
    let (mut c, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    c.send("bob@dest.example", &body).await.expect("accepted");
    wait_delivered(&up, std::slice::from_ref(&subject), Duration::from_secs(30)).await;
    let got = up
        .received()
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.data).contains(&format!("Subject: {subject}")))
        .unwrap();
    let msg_file = dir.join(format!("received-{tag}.eml"));
    std::fs::write(&msg_file, &got.data).unwrap();

    let out = timeout(
        Duration::from_secs(60),
        Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dkim/verify.py"))
            .arg(&records_file)
            .arg(&msg_file)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("verify.py timed out")
    .expect("python3");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "dkimpy: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<&str>> = report.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{report}");
    for (sel, alg) in [("rsa1", "rsa-sha256"), ("ed1", "ed25519-sha256")] {
        assert!(
            lines
                .iter()
                .any(|f| f[0] == "pass" && f[1] == "example.com" && f[2] == sel && f[3] == alg),
            "no passing {alg} signature: {report}"
        );
    }

    let text = String::from_utf8_lossy(&got.data).to_string();
    let h = headers(&text);
    let received: Vec<&String> = h
        .iter()
        .filter(|(n, _)| n == "received")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(received.len(), 1, "{text}");
    assert!(received[0].contains("relay.test"), "{}", received[0]);
    for secret in ["127.0.0.1", "client.e2e"] {
        assert!(
            !received[0].contains(secret),
            "Received shows {secret}: {}",
            received[0]
        );
    }
    assert!(h.iter().any(|(n, _)| n == "date"), "no Date: {text}");
    let mid = h.iter().find(|(n, _)| n == "message-id");
    assert!(
        mid.is_some_and(|(_, v)| v.starts_with('<') && v.ends_with('>')),
        "no Message-ID: {text}"
    );
    drop(node);
}
