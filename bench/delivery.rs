//! Queue + delivery benchmark (issue #4, performance), without the SMTP
//! front end: a fast in-process sink (STARTTLS, discards bodies), a load
//! generator enqueueing through the real store, and the real delivery
//! workers delivering over verified TLS to the sink.
//!
//! ```text
//! cargo bench --bench delivery -- --store URL [--size 2048] [--count 5000]
//!     [--concurrency 50] [--workers 32] [--mode sink|enqueue|deliver|both|rss]
//! ```
//! Modes: `sink`: the load generator straight to the sink (the sink's
//! ceiling); `enqueue`: commit rate and commit latency (p50/p99) of
//! `concurrency` concurrent enqueuers (the store part of 250-after-DATA);
//! `deliver`: pre-filled queue drained by the workers; `both`: enqueue and
//! deliver at once; `rss`: 20 concurrent 25 MB messages through enqueue and
//! delivery, peak RSS of this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postgate::delivery::upstream::{Envelope, Upstream};
use postgate::delivery::{now_ms, Delivery, DeliveryConfig, QueueConfig, TlsMode, UpstreamConfig};
use postgate::store::{self, new_queue_id, NewMessage, NewRecipient, Store, StoreOptions};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Args {
    store: String,
    size: usize,
    count: usize,
    concurrency: usize,
    workers: usize,
    mode: String,
}

fn args() -> Args {
    let mut a = Args {
        store: "sqlite:///tmp/postgate-bench.db".into(),
        size: 2048,
        count: 5000,
        concurrency: 50,
        workers: 32,
        mode: "both".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("value");
        match k.as_str() {
            "--store" => a.store = v(),
            "--size" => a.size = v().parse().unwrap(),
            "--count" => a.count = v().parse().unwrap(),
            "--concurrency" => a.concurrency = v().parse().unwrap(),
            "--workers" => a.workers = v().parse().unwrap(),
            "--mode" => a.mode = v(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The fast sink: counts messages, discards bodies.
pub struct Sink {
    pub port: u16,
    pub ca_file: std::path::PathBuf,
    pub messages: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

pub async fn start_sink() -> Sink {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(AtomicU64::new(0));
    let count = messages.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if tcp.write_all(b"220 sink ESMTP\r\n").await.is_err() {
                    return;
                }
                if let Ok(true) = sink_session(&mut tcp, &mut buf, &count, true).await {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        buf.clear();
                        let _ = sink_session(&mut tls, &mut buf, &count, false).await;
                    }
                }
            });
        }
    });
    Sink {
        port,
        ca_file,
        messages,
        _dir: dir,
    }
}

/// Returns Ok(true) when STARTTLS was accepted.
async fn sink_session<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    count: &AtomicU64,
    plain: bool,
) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; 65536];
    let mut in_data = false;
    let mut out = Vec::new();
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if in_data {
                // Keep only what could still hold the end marker.
                if let Some(i) = find(buf, b"\r\n.\r\n") {
                    buf.drain(..i + 5);
                    in_data = false;
                    count.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(b"250 2.0.0 ok\r\n");
                    continue;
                }
                let keep = buf.len().min(4);
                buf.drain(..buf.len() - keep);
                break;
            }
            let Some(i) = buf.iter().position(|&c| c == b'\n') else {
                break;
            };
            let line: Vec<u8> = buf.drain(..=i).collect();
            let upper = line.to_ascii_uppercase();
            if upper.starts_with(b"EHLO") {
                out.extend_from_slice(if plain {
                    b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n".as_slice()
                } else {
                    b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n".as_slice()
                });
            } else if upper.starts_with(b"STARTTLS") {
                io.write_all(b"220 go\r\n").await?;
                return Ok(true);
            } else if upper.starts_with(b"DATA") {
                out.extend_from_slice(b"354 go\r\n");
                in_data = true;
                // The body may start right here; "\r\n." at its very start counts too.
                buf.splice(0..0, b"\r\n".iter().copied());
            } else if upper.starts_with(b"QUIT") {
                out.extend_from_slice(b"221 bye\r\n");
                io.write_all(&out).await?;
                return Ok(false);
            } else {
                out.extend_from_slice(b"250 ok\r\n");
            }
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn body(size: usize, n: usize) -> Bytes {
    let mut b = format!("From: <bench@example.com>\r\nTo: <r@x.org>\r\nSubject: bench {n}\r\n\r\n")
        .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n";
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b.truncate(size.max(64) - 2);
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

fn message(body: Bytes) -> NewMessage {
    let now = now_ms();
    NewMessage {
        id: new_queue_id(),
        sender: "bench@example.com".into(),
        recipients: vec![NewRecipient {
            address: "r@x.org".into(),
            notify: None,
            orcpt: None,
        }],
        user_id: None,
        username: None,
        credential: None,
        body,
        envid: None,
        dsn_ret: None,
        is_dsn: false,
        smtputf8: false,
        received_at: now,
        expires_at: now + 86_400_000,
        journal: None,
    }
}

pub fn upstream(sink: &Sink) -> UpstreamConfig {
    let mut u = UpstreamConfig::new("sink", "127.0.0.1", sink.port, TlsMode::Starttls);
    u.ca_file = Some(sink.ca_file.clone());
    u.tls_server_name = Some("localhost".into());
    u.max_connections = 64;
    u.max_messages_per_connection = 1000;
    u
}

pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Enqueues `count` messages from `concurrency` tasks; returns latencies.
async fn enqueue_all(store: Arc<dyn Store>, a: &Args, size: usize, count: usize) -> Vec<Duration> {
    let per = count.div_ceil(a.concurrency);
    // One shared body (reference-counted): the generator's own memory stays small.
    let shared = body(size, 0);
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let store = store.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let m = message(shared.clone());
                let t = Instant::now();
                store.enqueue(&m).await.expect("enqueue");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

async fn drain(store: &Arc<dyn Store>, sink: &Sink, target: u64) {
    while sink.messages.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while !store.queue_list(1).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let a = args();
    let sink = start_sink().await;
    if a.mode == "sink" {
        let up = Arc::new(Upstream::new(upstream(&sink), "bench").unwrap());
        let started = Instant::now();
        let per = a.count.div_ceil(a.concurrency);
        let mut tasks = Vec::new();
        for c in 0..a.concurrency {
            let up = up.clone();
            let size = a.size;
            tasks.push(tokio::spawn(async move {
                let mut conn = up.connect().await.unwrap();
                let rcpt = vec!["r@x.org".to_string()];
                for n in 0..per {
                    let b = body(size, c * per + n);
                    conn.send(Envelope {
                        sender: "b@example.com",
                        recipients: &rcpt,
                        body: &b,
                        smtputf8: false,
                        dsn: None,
                    })
                    .await
                    .unwrap();
                    conn.reset().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "sink: {} messages of {} B in {secs:.2}s = {:.0} msg/s",
            per * a.concurrency,
            a.size,
            (per * a.concurrency) as f64 / secs
        );
        return;
    }
    let store = store::open_and_migrate(
        &a.store,
        &StoreOptions {
            max_connections: 64,
            ..Default::default()
        },
    )
    .await
    .expect("store");
    let cfg = DeliveryConfig {
        queue: QueueConfig {
            workers: a.workers,
            poll_interval: Duration::from_millis(20),
            ..QueueConfig::default()
        },
        upstreams: vec![upstream(&sink)],
        routes: vec![],
        hostname: "bench.local".into(),
        node_id: "bench".into(),
        ..DeliveryConfig::default()
    };
    let backend = store.backend();
    match a.mode.as_str() {
        "enqueue" => {
            let started = Instant::now();
            let lat = enqueue_all(store.clone(), &a, a.size, a.count).await;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{backend} enqueue: {} x {} B, {} concurrent: {:.0} msg/s, commit latency p50 {:.1} ms p99 {:.1} ms",
                lat.len(), a.size, a.concurrency, lat.len() as f64 / secs,
                pct(&lat, 0.5).as_secs_f64() * 1000.0, pct(&lat, 0.99).as_secs_f64() * 1000.0
            );
        }
        "deliver" => {
            let lat = enqueue_all(store.clone(), &a, a.size, a.count).await;
            let token = CancellationToken::new();
            let started = Instant::now();
            let h = Delivery::start(store.clone(), cfg, token.clone()).unwrap();
            drain(&store, &sink, lat.len() as u64).await;
            let secs = started.elapsed().as_secs_f64();
            token.cancel();
            let _ = h.await;
            println!(
                "{backend} deliver: {} x {} B, {} workers: {:.0} msg/s",
                lat.len(),
                a.size,
                a.workers,
                lat.len() as f64 / secs
            );
        }
        "both" => {
            let token = CancellationToken::new();
            let h = Delivery::start(store.clone(), cfg, token.clone()).unwrap();
            let started = Instant::now();
            let lat = enqueue_all(store.clone(), &a, a.size, a.count).await;
            let enq_secs = started.elapsed().as_secs_f64();
            drain(&store, &sink, lat.len() as u64).await;
            let secs = started.elapsed().as_secs_f64();
            token.cancel();
            let _ = h.await;
            println!(
                "{backend} both: {} x {} B, {} enqueuers, {} workers: accepted {:.0} msg/s (commit p50 {:.1} ms p99 {:.1} ms), delivered {:.0} msg/s",
                lat.len(), a.size, a.concurrency, a.workers, lat.len() as f64 / enq_secs,
                pct(&lat, 0.5).as_secs_f64() * 1000.0, pct(&lat, 0.99).as_secs_f64() * 1000.0,
                lat.len() as f64 / secs
            );
        }
        "rss" => {
            let before = peak_rss_mb();
            let big = Args {
                store: String::new(),
                size: 25 * 1024 * 1024,
                count: 20,
                concurrency: 20,
                workers: a.workers,
                mode: String::new(),
            };
            let lat = enqueue_all(store.clone(), &big, 25 * 1024 * 1024, 20).await;
            let after_enqueue = peak_rss_mb();
            let token = CancellationToken::new();
            let h = Delivery::start(store.clone(), cfg, token.clone()).unwrap();
            drain(&store, &sink, lat.len() as u64).await;
            token.cancel();
            let _ = h.await;
            println!(
                "{backend} rss: 20 concurrent 25 MB messages: peak RSS {before} MB at start, {after_enqueue} MB after the concurrent enqueues, {} MB after delivering them",
                peak_rss_mb()
            );
        }
        other => panic!("unknown mode {other}"),
    }
}
