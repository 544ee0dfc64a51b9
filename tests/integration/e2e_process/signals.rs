//! Issue #7, signals: SIGTERM drains sessions and deliveries in flight and
//! exits 0; SIGHUP swaps the TLS certificate and survives a bad one.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    for url in store_urls(dir.path()).await {
        sigterm(dir.path(), &url).await;
    }
}

async fn sigterm(dir: &Path, url: &str) {
    let mut b = Behavior::new(ServerTls::None);
    b.reply_delay = Duration::from_millis(200);
    let up = UpstreamServer::start(b).await;
    let tag = backend_tag(url);
    let grace = Duration::from_secs(3);
    let mut settings = Settings::new(url, up.addr.port());
    settings.grace = "3s";
    let mut files = write_node(dir, &format!("term-{tag}"), &settings);
    add_user(&files.config).await;
    let mut node = Serve::start(&mut files).await;
    assert_eq!(http_status(files.http, "/readyz").await, Some(200));

    // Deliveries in flight: three accepted messages, slow upstream.
    let mut acked = Vec::new();
    let (mut p, code) = Client::login(files.smtp_port, USER, PASSWORD).await;
    assert_eq!(code, 235);
    for i in 0..3 {
        let subject = format!("term-{tag}-early-{i}");
        p.send("bob@dest.example", &message(&subject))
            .await
            .expect("accepted");
        acked.push(subject);
    }
    drop(p);
    // A: mid-DATA, finishes after SIGTERM. C: mid-DATA, never finishes.
    let port = files.smtp_port;
    let mid_data = |subject: String| async move {
        let (mut c, code) = Client::login(port, USER, PASSWORD).await;
        assert_eq!(code, 235);
        assert_eq!(c.cmd(&format!("MAIL FROM:<{FROM}>")).await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<bob@dest.example>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        let m = message(&subject);
        let (head, _) = m.split_once("\r\n\r\n").unwrap();
        c.send_raw(format!("{head}\r\n").as_bytes()).await;
        c
    };
    let a_subject = format!("term-{tag}-finishing");
    let c_subject = format!("term-{tag}-abandoned");
    let mut a = mid_data(a_subject.clone()).await;
    let mut c = mid_data(c_subject.clone()).await;
    let mut idle = Client::connect(files.smtp_port).await;
    assert_eq!(idle.cmd("EHLO idle.e2e").await.0, 250);

    let t0 = Instant::now();
    node.signal(libc::SIGTERM);
    // Draining: /readyz goes 503 while the HTTP server is still up.
    let mut saw_503 = false;
    while t0.elapsed() < Duration::from_secs(2) {
        if http_status(files.http, "/readyz").await == Some(503) {
            saw_503 = true;
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_503, "/readyz never answered 503 while draining");
    // New connections are no longer greeted.
    if let Ok(Ok(s)) = timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", files.smtp_port)),
    )
    .await
    {
        let (r, w) = s.into_split();
        let mut late = Client {
            r: BufReader::new(r),
            w,
        };
        let greeting = late.try_reply().await;
        assert!(
            !matches!(greeting, Some((220, _))),
            "greeted after SIGTERM: {greeting:?}"
        );
    }
    // A finishes its message within the grace period.
    a.send_raw(b"\r\nfinished after SIGTERM\r\n.\r\n").await;
    let a_reply = a.try_reply().await;
    eprintln!("{tag}: mid-DATA message finished after SIGTERM: {a_reply:?}");
    match &a_reply {
        Some((250, _)) => acked.push(a_subject.clone()),
        Some((421, _)) | None => {}
        other => panic!("mid-DATA message after SIGTERM: {other:?}"),
    }
    // C and the idle client are told 421 (or closed) at the end of grace.
    for (name, cl) in [("abandoned", &mut c), ("idle", &mut idle)] {
        let r = cl.try_reply().await;
        eprintln!(
            "{tag}: {name} session at the end of grace: {r:?} after {:?}",
            t0.elapsed()
        );
        assert!(
            matches!(r, None | Some((421, _))),
            "{name} session got {r:?}"
        );
    }
    let status = timeout(grace + Duration::from_secs(10), node.child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within grace + 10 s: {}", node.logs()))
        .unwrap();
    assert!(status.success(), "exit {status}: {}", node.logs());
    eprintln!("{tag}: exit 0 after {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < grace + Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );

    // Nothing acknowledged is lost: a restart delivers what is left.
    let node = Serve::start(&mut files).await;
    wait_delivered(&up, &acked, Duration::from_secs(30)).await;
    sleep(Duration::from_secs(2)).await;
    let got = received_subjects(&up);
    // A graceful stop records every attempt it let finish: no duplicates.
    for s in &acked {
        let n = got.iter().filter(|g| *g == s).count();
        assert_eq!(n, 1, "{s} arrived {n} times");
    }
    assert!(
        !got.contains(&c_subject),
        "the abandoned message was delivered"
    );
    if !acked.contains(&a_subject) {
        assert!(!got.contains(&a_subject), "a 421'd message was delivered");
    }
    drop(node);
}

/// The SHA-256 (hex) of the certificate a STARTTLS session on `port` is
/// shown, as Python's ssl module sees it.
async fn peer_fingerprint(port: u16) -> String {
    const PY: &str = r#"
import hashlib, os, smtplib, ssl
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=20)
s.starttls(context=ctx)
print(hashlib.sha256(s.sock.getpeercert(binary_form=True)).hexdigest())
s.quit()
"#;
    let out = timeout(
        Duration::from_secs(30),
        Command::new("python3")
            .args(["-c", PY])
            .env("PORT", port.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python timed out")
    .expect("python3");
    assert!(
        out.status.success(),
        "TLS client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// SHA-256 (hex) of the first certificate of a PEM text.
fn pem_fingerprint(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    sha2::Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificate_and_keeps_it_on_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut settings = Settings::new(&url, up.addr.port());
    settings.mode = "starttls";
    let mut files = write_node(dir.path(), "hup", &settings);
    let a = pem_fingerprint(&std::fs::read_to_string(dir.path().join("cert.pem")).unwrap());
    let mut node = Serve::start(&mut files).await;
    assert_eq!(peer_fingerprint(files.smtp_port).await, a);

    let (cert_b, key_b) = postgate::tls::self_signed(&["localhost".into()]).unwrap();
    let b = pem_fingerprint(&cert_b);
    assert_ne!(a, b);
    std::fs::write(dir.path().join("key.pem"), key_b).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert_b).unwrap();
    node.signal(libc::SIGHUP);
    node.wait_log("TLS certificate reloaded", Duration::from_secs(15))
        .await;
    assert_eq!(peer_fingerprint(files.smtp_port).await, b);

    // A broken certificate file: the reload fails, B stays, serve lives on.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").unwrap();
    node.signal(libc::SIGHUP);
    node.wait_log("TLS certificate kept", Duration::from_secs(15))
        .await;
    assert!(node.child.try_wait().unwrap().is_none(), "serve exited");
    assert_eq!(peer_fingerprint(files.smtp_port).await, b);
}

/// Issue #14 item 6: SIGHUP re-reads the config file and says exactly which
/// sections changed and need a restart; a broken file is reported and the
/// node keeps running on what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_names_the_config_sections_that_need_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
    let up = UpstreamServer::start(Behavior::new(ServerTls::None)).await;
    let mut files = write_node(dir.path(), "hupcfg", &Settings::new(&url, up.addr.port()));
    let node = Serve::start(&mut files).await;

    node.signal(libc::SIGHUP);
    node.wait_log("reload: config file unchanged", Duration::from_secs(15))
        .await;

    let text = std::fs::read_to_string(&files.config).unwrap();
    let changed = text
        .replace("command_timeout = \"10s\"", "command_timeout = \"11s\"")
        .replace("filter = \"info\"", "filter = \"info,postgate=info\"");
    assert_ne!(changed, text);
    std::fs::write(&files.config, changed).unwrap();
    node.signal(libc::SIGHUP);
    node.wait_log("apply only after a restart", Duration::from_secs(15))
        .await;
    let line = node
        .logs()
        .lines()
        .find(|l| l.contains("apply only after a restart"))
        .unwrap()
        .to_string();
    let sections = line
        .split("sections=")
        .nth(1)
        .expect("sections field")
        .trim_matches('"');
    let sections: Vec<&str> = sections
        .split(", ")
        .map(|s| s.split_whitespace().next().unwrap_or("").trim_matches('"'))
        .collect();
    assert_eq!(sections, ["log", "upstream"], "{line}");

    std::fs::write(&files.config, "[smtp\nbroken").unwrap();
    node.signal(libc::SIGHUP);
    node.wait_log("config file has errors", Duration::from_secs(15))
        .await;
    sleep(Duration::from_millis(300)).await;
    let mut node = node;
    assert!(node.child.try_wait().unwrap().is_none(), "serve exited");
}
