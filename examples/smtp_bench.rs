//! Load generator for the submission front end (issue #3 targets).
//!
//! ```text
//! cargo run --release --example smtp_bench -- server DIR      # SQLite store + user in DIR, prints PORT and PID
//! cargo run --release --example smtp_bench -- idle PORT DIR N PID   # N idle TLS sessions, then postgate's RSS
//! cargo run --release --example smtp_bench -- storm PORT DIR N      # NOOP latency while N clients log in
//! ```
//! The server runs the real `Server` on 127.0.0.1 (implicit TLS) with the
//! real store authenticator and default (OWASP) argon2 parameters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use postgate::auth::{AuthConfig, StoreAuthenticator};
use postgate::intake::StoreIntake;
use postgate::smtp::config::{ListenerConfig, ListenerMode, SmtpConfig};
use postgate::smtp::ports::NoLimits;
use postgate::smtp::server::Server;
use postgate::smtp::session::Ports;
use postgate::tls::{ServerTls, TlsConfig};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USER: &str = "bench";
const PASSWORD: &str = "bench-password-123";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("server") => rt.block_on(server(
            &args[1],
            args.get(2).map(String::as_str) == Some("cache"),
        )),
        Some("relogin") => rt.block_on(relogin(
            args[1].parse()?,
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
        )),
        Some("idle") => rt.block_on(idle(args[1].parse()?, &args[2], args[3].parse()?, &args[4])),
        Some("storm") => rt.block_on(storm(args[1].parse()?, &args[2], args[3].parse()?)),
        _ => anyhow::bail!("usage: smtp_bench server DIR | idle PORT DIR N PID | storm PORT DIR N"),
    }
}

async fn server(dir: &str, cache: bool) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf = leaf.signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("cert.pem"), leaf.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    let tls = ServerTls::load(&TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    })?;

    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let _ = std::fs::remove_file(dir.join("bench.db"));
    let store = postgate::store::open_and_migrate(&url, &Default::default()).await?;
    let auth_config = AuthConfig::default();
    let hash = postgate::password::hash(PASSWORD, &auth_config.hash)?;
    store.user_add(USER, "default", &hash).await?;
    store.sender_allow(USER, "@example.com").await?;

    let config = SmtpConfig {
        listeners: vec![ListenerConfig::new(
            "127.0.0.1:0".parse()?,
            ListenerMode::ImplicitTls,
        )],
        max_connections: 20_000,
        max_connections_per_ip: 20_000,
        ..SmtpConfig::default()
    };
    let verifier: Arc<dyn postgate::smtp::ports::Authenticator> =
        Arc::new(StoreAuthenticator::new(store.clone(), &auth_config)?);
    let authenticator: Arc<dyn postgate::smtp::ports::Authenticator> = if cache {
        let cache = Arc::new(postgate::auth_cache::AuthCache::new(Default::default()));
        Arc::new(postgate::auth::CachedAuthenticator::new(verifier, cache))
    } else {
        verifier
    };
    let ports = Ports {
        authenticator,
        intake: Arc::new(StoreIntake::new(store, Duration::from_secs(86400))),
        limits: Arc::new(NoLimits),
    };
    let bound = Server::bind(&config.listeners).await?;
    println!("PORT {}", bound[0].1.local_addr()?.port());
    println!("PID {}", std::process::id());
    let server = Server::new(
        "bench.test".into(),
        config,
        Some(tls),
        ports,
        Duration::from_secs(1),
    )?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s2 = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s2.cancel();
    });
    server.serve(bound, shutdown).await;
    Ok(())
}

fn connector(dir: &str) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(format!("{dir}/ca.pem"))? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn open(port: u16, tls: &tokio_rustls::TlsConnector) -> anyhow::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    let mut s = tls.connect(name, tcp).await?;
    read_reply(&mut s).await?;
    Ok(s)
}

/// Reads until a final reply line (`DDD ` + CRLF) arrives; returns its code.
async fn read_reply(s: &mut Tls) -> anyhow::Result<u16> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    loop {
        let n = s.read(&mut b).await?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&b[..n]);
        if let Some(last) = buf
            .strip_suffix(b"\r\n")
            .and_then(|x| x.split(|&c| c == b'\n').next_back())
        {
            if last.len() >= 4 && last[3] == b' ' {
                return Ok(std::str::from_utf8(&last[..3])?.parse()?);
            }
        }
    }
}

async fn cmd(s: &mut Tls, line: &str) -> anyhow::Result<u16> {
    s.write_all(format!("{line}\r\n").as_bytes()).await?;
    read_reply(s).await
}

async fn login(s: &mut Tls) -> anyhow::Result<u16> {
    cmd(s, "EHLO bench.client").await?;
    let ir = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    cmd(s, &format!("AUTH PLAIN {ir}")).await
}

fn rss_kib(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

async fn idle(port: u16, dir: &str, n: usize, pid: &str) -> anyhow::Result<()> {
    let tls = connector(dir)?;
    let before = rss_kib(pid)?;
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let tls = tls.clone();
        let permit = sem.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let mut s = open(port, &tls).await?;
            cmd(&mut s, "EHLO idle.client").await?;
            drop(permit);
            anyhow::Ok(s)
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    for t in tasks {
        sessions.push(t.await??);
    }
    println!(
        "opened {} TLS sessions in {:.1} s",
        sessions.len(),
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    println!(
        "postgate RSS: before {} MiB, with {} idle TLS sessions {} MiB ({:.1} KiB/session)",
        before / 1024,
        sessions.len(),
        after / 1024,
        (after.saturating_sub(before)) as f64 / sessions.len() as f64
    );
    // Every session is still alive.
    let mut alive = 0;
    for s in sessions.iter_mut().step_by(100) {
        if cmd(s, "NOOP").await? == 250 {
            alive += 1;
        }
    }
    println!("sampled {alive} sessions answer NOOP");
    Ok(())
}

async fn storm(port: u16, dir: &str, n: usize) -> anyhow::Result<()> {
    let tls = connector(dir)?;
    let mut probe = open(port, &tls).await?;
    anyhow::ensure!(login(&mut probe).await? == 235, "probe login failed");
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = open(port, &tls).await?;
            let code = login(&mut s).await?;
            let _ = cmd(&mut s, "QUIT").await;
            anyhow::Ok(code)
        }));
    }
    let mut lat = Vec::new();
    while tasks.iter().any(|t| !t.is_finished()) {
        let t = Instant::now();
        anyhow::ensure!(cmd(&mut probe, "NOOP").await? == 250);
        lat.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let storm_time = start.elapsed();
    let mut ok = 0;
    for t in tasks {
        if t.await?? == 235 {
            ok += 1;
        }
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{ok}/{n} logins succeeded in {:.2} s; NOOP during the storm: n={} p50={:?} p99={:?} max={:?}",
        storm_time.as_secs_f64(),
        lat.len(),
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or_default()
    );
    Ok(())
}

/// `n` reconnecting logins (TCP + TLS + EHLO + AUTH PLAIN + QUIT each) from
/// `conc` concurrent clients; prints logins per second.
async fn relogin(port: u16, dir: &str, n: usize, conc: usize) -> anyhow::Result<()> {
    let tls = connector(dir)?;
    // Warm the cache (when the server has one) with one login.
    let mut first = open(port, &tls).await?;
    anyhow::ensure!(login(&mut first).await? == 235, "warm-up login failed");
    let _ = cmd(&mut first, "QUIT").await;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (tls, next) = (tls.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let mut s = open(port, &tls).await?;
                if login(&mut s).await? == 235 {
                    ok += 1;
                }
                let _ = cmd(&mut s, "QUIT").await;
            }
            anyhow::Ok(ok)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{ok}/{n} logins (TCP+TLS+AUTH each, {conc} clients) in {secs:.2} s: {:.0} logins/s",
        ok as f64 / secs
    );
    Ok(())
}
