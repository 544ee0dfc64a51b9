//! End-to-end benchmark: load generator -> postgate SMTP (STARTTLS + AUTH,
//! durable commit before 250, via `postgate::run::run`) -> store ->
//! delivery workers (started by `run` from `[queue]` and `[[upstream]]`)
//! -> sink over STARTTLS.
//!
//! ```text
//! cargo bench --bench e2e -- --store URL [--size 2048] [--count 5000] [--sessions 50] [--workers 32] [--pool 16]
//! ```
//! Prints accepted messages/s, delivered messages/s, and the latency from
//! the pipelined MAIL/RCPT/DATA to the 250 after the body (p50/p99).
//!
//! `--process PATH_TO_POSTGATE` runs the real binary (`postgate serve`) as a
//! child process instead of `run` in this one, and also prints that
//! process's peak RSS (`VmHWM`): the whole relay (SMTP front end, intake,
//! store, delivery), without the load generator and the sink. With
//! `--size 25000000 --count 20 --sessions 20` that is the "20 concurrent
//! 25 MB messages" figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postgate::config::{Config, Secret};
use postgate::delivery::upstream::{Envelope, Upstream};
use postgate::delivery::{TlsMode, UpstreamConfig};

#[path = "delivery.rs"]
#[allow(dead_code)]
mod delivery_bench;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let url = arg("--store", "sqlite:///tmp/postgate-e2e.db");
    let size: usize = arg("--size", "2048").parse().unwrap();
    let count: usize = arg("--count", "5000").parse().unwrap();
    let sessions: usize = arg("--sessions", "50").parse().unwrap();
    let workers: usize = arg("--workers", "32").parse().unwrap();
    // Store pool size ([store] max_connections; 16 is its default).
    let pool: usize = arg("--pool", "16").parse().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = postgate::tls::self_signed(&["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let sink = delivery_bench::start_sink().await;
    // In --process mode the child binds this port (found free here).
    let process = arg("--process", "");
    let fixed_port = if process.is_empty() {
        0
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let text = format!(
        r#"[server]
hostname = "localhost"
shutdown_grace = "5s"

[store]
url = "{url}"
max_connections = {pool}

[tls]
cert = "{c}"
key = "{k}"

[[smtp.listener]]
address = "127.0.0.1:{fixed_port}"
mode = "starttls"

[http]
address = "127.0.0.1:0"

# The load generator is one user from one address: lift the per-user and
# per-IP limits so they do not shape the measurement.
[limits]
messages_per_minute = 10000000
messages_per_hour = 10000000
messages_per_day = 10000000
recipients_per_day = 10000000
concurrent_sessions = 10000
ip_connections_per_minute = 10000000
ip_concurrent_connections = 10000

[queue]
workers = {workers}
poll_interval = "20ms"

[[upstream]]
name = "sink"
host = "127.0.0.1"
port = {sink_port}
tls = "starttls"
ca_file = "{ca}"
tls_server_name = "localhost"
max_connections = 64
max_messages_per_connection = 1000
"#,
        c = cert_path.display(),
        k = key_path.display(),
        sink_port = sink.port,
        ca = sink.ca_file.display(),
    );
    let config = Config::parse(&text, "e2e-bench").expect("config");
    let store = postgate::store::open_and_migrate(&url, &config.store.options())
        .await
        .unwrap();
    let password = "bench-password-123";
    let _ = postgate::accounts::user_add(&*store, "bench", "default", password, &config.auth.hash)
        .await;
    let _ = postgate::accounts::sender_allow(&*store, "bench", "@example.com").await;
    // `--dkim rsa|ed25519|dual`: sign every message (the From domain is example.com).
    let dkim = arg("--dkim", "none");
    for (alg, selector) in [
        (postgate::store::DkimAlgorithm::RsaSha256, "bench-rsa"),
        (postgate::store::DkimAlgorithm::Ed25519Sha256, "bench-ed"),
    ] {
        let wanted = match alg {
            postgate::store::DkimAlgorithm::RsaSha256 => dkim == "rsa" || dkim == "dual",
            postgate::store::DkimAlgorithm::Ed25519Sha256 => dkim == "ed25519" || dkim == "dual",
        };
        if wanted {
            let _ = postgate::dkim::cli_generate(&*store, "example.com", selector, alg, None).await;
        }
    }

    let control = postgate::run::Control::default();
    let (smtp_port, node, mut child) = if process.is_empty() {
        let bound = postgate::run::Bound::bind(&config).await.unwrap();
        let port = bound.smtp[0].1.local_addr().unwrap().port();
        let node = tokio::spawn(postgate::run::run(config, bound, control.clone()));
        (port, Some(node), None)
    } else {
        let config_path = dir.path().join("postgate.toml");
        std::fs::write(&config_path, &text).unwrap();
        let child = std::process::Command::new(&process)
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start postgate");
        let addr = format!("127.0.0.1:{fixed_port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "postgate did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (fixed_port, None, Some(child))
    };

    let mut client = UpstreamConfig::new("postgate", "127.0.0.1", smtp_port, TlsMode::Starttls);
    client.ca_file = Some(cert_path.clone());
    client.tls_server_name = Some("localhost".into());
    client.username = Some("bench".into());
    client.password = Some(Secret::inline(password));
    let client = Arc::new(Upstream::new(client, "loadgen.local").unwrap());
    let body: Bytes = delivery_bench::body(size, 0);
    let per = count.div_ceil(sessions);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let client = client.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await.expect("connect to postgate");
            let rcpt = vec!["someone@example.net".to_string()];
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let tx = conn
                    .send(Envelope {
                        sender: "bench@example.com",
                        recipients: &rcpt,
                        body: &body,
                        smtputf8: false,
                        dsn: None,
                    })
                    .await
                    .expect("send");
                assert!(
                    tx.data.as_ref().is_some_and(|d| d.is_positive()),
                    "not accepted: {tx:?}"
                );
                lat.push(t.elapsed());
                conn.reset().await.expect("RSET");
            }
            conn.quit().await;
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let accepted_secs = started.elapsed().as_secs_f64();
    lat.sort();
    let n = lat.len() as u64;
    while sink.messages.load(std::sync::atomic::Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    println!(
        "{} e2e: {n} x {size} B, {sessions} sessions (STARTTLS+AUTH in, STARTTLS out), {workers} workers: \
         accepted {:.0} msg/s, delivered {:.0} msg/s, 250-after-DATA p50 {:.1} ms p99 {:.1} ms",
        store.backend(),
        n as f64 / accepted_secs,
        n as f64 / delivered_secs,
        delivery_bench::pct(&lat, 0.5).as_secs_f64() * 1000.0,
        delivery_bench::pct(&lat, 0.99).as_secs_f64() * 1000.0,
    );
    if let Some(child) = &mut child {
        println!(
            "postgate process peak RSS (VmHWM): {:.0} MiB",
            peak_rss_kib(child.id()) as f64 / 1024.0
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    control.shutdown.cancel();
    if let Some(node) = node {
        let _ = node.await;
    }
}

/// The peak resident set size of process `pid` in KiB (`VmHWM` in
/// /proc/PID/status), 0 if unreadable.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
