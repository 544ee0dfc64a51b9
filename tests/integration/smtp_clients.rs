//! Interop: real clients (Python smtplib, swaks, curl) submit through a
//! running postgate over STARTTLS and implicit TLS; the message must land in
//! the queue with envelope and bytes exact. Both store backends.

use std::process::Command;

use crate::common::all_stores;
use crate::smtp_harness::{self as h, Harness};

/// Runs `program args`, with a timeout, and asserts success.
fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} failed: {text}");
    text
}

async fn run_async(program: &'static str, args: Vec<String>, stdin: Option<Vec<u8>>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(program, &args, stdin.as_deref())
    })
    .await
    .unwrap()
}

const PY: &str = r#"
import os, smtplib, ssl, sys
mode = os.environ["MODE"]
ctx = ssl.create_default_context(cafile=os.environ["CA"])
port = int(os.environ["PORT"])
msg = sys.stdin.buffer.read()
if mode == "implicit":
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30)
else:
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.starttls(context=ctx)
s.ehlo("python.test")
assert "auth" in s.esmtp_features, s.esmtp_features
if mode == "login":
    s.user, s.password = os.environ["USER_"], os.environ["PASS"]
    code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235, (code, resp)
elif mode == "plain":
    s.user, s.password = os.environ["USER_"], os.environ["PASS"]
    code, resp = s.auth("PLAIN", s.auth_plain)
    assert code == 235, (code, resp)
else:
    s.login(os.environ["USER_"], os.environ["PASS"])
refused = s.sendmail("bob@example.com", ["x@dest.example", "y@dest.example"], msg,
                     mail_options=["BODY=8BITMIME"], rcpt_options=["NOTIFY=FAILURE"])
assert refused == {}, refused
s.quit()
"#;

async fn python(h: &Harness, mode: &str, port: u16, msg: &[u8]) {
    let script = PY.to_string();
    let (ca, mode, port) = (
        h.certs.ca.display().to_string(),
        mode.to_string(),
        port.to_string(),
    );
    let msg = msg.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new("timeout")
            .args(["60", "python3", "-c", &script])
            .env("MODE", &mode)
            .env("CA", &ca)
            .env("PORT", &port)
            .env("USER_", h::USER)
            .env("PASS", h::PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&msg).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python smtplib ({mode}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await
    .unwrap();
}

fn assert_one(q: &[h::Queued], body: &[u8], rcpts: &[&str]) {
    assert_eq!(q.len(), 1, "exactly one message queued");
    let m = &q[0];
    assert_eq!(m.sender, h::SENDER);
    assert_eq!(
        m.recipients
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        rcpts
    );
    assert_eq!(
        String::from_utf8_lossy(&m.body),
        String::from_utf8_lossy(body),
        "bytes stored are the bytes sent"
    );
    assert_eq!(m.body, body);
    assert_eq!(m.username.as_deref(), Some(h::USER));
    assert_eq!(m.credential.as_deref(), Some("default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_starttls_plain_login_and_implicit_tls() {
    for ts in all_stores().await {
        for (mode, implicit) in [("plain", false), ("login", false), ("implicit", true)] {
            let db = match ts.backend {
                "sqlite" => crate::common::sqlite_store().await,
                _ => crate::common::pg_store().await.unwrap(),
            };
            let srv = h::start(&db, |_| {}).await;
            let port = if implicit {
                srv.implicit()
            } else {
                srv.starttls()
            }
            .port();
            let msg = h::message(&format!("py-{mode}"));
            python(&srv, mode, port, &msg).await;
            let q = h::queued(&srv).await;
            assert_one(&q, &msg, &["x@dest.example", "y@dest.example"]);
            assert_eq!(q[0].recipients[0].1.as_deref(), Some("FAILURE"));
            srv.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_starttls_auth_plain_and_login() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |_| {}).await;
        let msg = h::message("swaks");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("msg.eml");
        // swaks ends the data with CRLF . CRLF itself, so the file has no
        // final line break (otherwise an empty line would be added).
        std::fs::write(&file, &msg[..msg.len() - 2]).unwrap();
        for (i, auth) in ["PLAIN", "LOGIN"].into_iter().enumerate() {
            let args: Vec<String> = [
                "--server",
                &format!("127.0.0.1:{}", srv.starttls().port()),
                "--tls",
                "--tls-verify",
                "--tls-ca-path",
                &srv.certs.ca.display().to_string(),
                "--auth",
                auth,
                "--auth-user",
                h::USER,
                "--auth-password",
                h::PASSWORD,
                "--from",
                h::SENDER,
                "--to",
                "x@dest.example",
                "--data",
                &format!("@{}", file.display()),
                "--timeout",
                "30",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let out = run_async("swaks", args, None).await;
            assert!(out.contains("250 2.0.0 queued as"), "{out}");
            let q = h::queued(&srv).await;
            assert_eq!(q.len(), i + 1);
            assert_one(&q[i..], &msg, &["x@dest.example"]);
        }
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_smtp_ssl_reqd_and_smtps() {
    for ts in all_stores().await {
        let srv = h::start(&ts, |_| {}).await;
        let msg = h::message("curl");
        let urls = [
            format!("smtp://127.0.0.1:{}", srv.starttls().port()),
            format!("smtps://127.0.0.1:{}", srv.implicit().port()),
        ];
        for (i, url) in urls.iter().enumerate() {
            let args: Vec<String> = [
                "--silent",
                "--show-error",
                "--url",
                url,
                "--ssl-reqd",
                "--cacert",
                &srv.certs.ca.display().to_string(),
                "--user",
                &format!("{}:{}", h::USER, h::PASSWORD),
                "--mail-from",
                h::SENDER,
                "--mail-rcpt",
                "x@dest.example",
                "--mail-rcpt",
                "z@dest.example",
                "--upload-file",
                "-",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            run_async("curl", args, Some(msg.clone())).await;
            let q = h::queued(&srv).await;
            assert_eq!(q.len(), i + 1, "{url}");
            assert_one(&q[i..], &msg, &["x@dest.example", "z@dest.example"]);
        }
        srv.stop().await;
    }
}
