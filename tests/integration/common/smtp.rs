//! SMTP test harness: a real postgate submission server on 127.0.0.1 port 0
//! with a real store, a real certificate (rcgen CA + CA:FALSE leaf), a real
//! user; a raw SMTP client (plain, STARTTLS, implicit TLS) and a reader of
//! the queue tables.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postgate::auth::{AuthConfig, StoreAuthenticator};
use postgate::intake::StoreIntake;
use postgate::password::{self, HashParams};
use postgate::smtp::config::{ListenerConfig, ListenerMode, SmtpConfig};
use postgate::smtp::ports::{NoLimits, SessionLimits};
use postgate::smtp::server::Server;
use postgate::smtp::session::Ports;
use postgate::store::Store;
use postgate::tls::{ServerTls, TlsConfig};
use sqlx::Row;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::common::TestStore;

pub const USER: &str = "bob";
pub const PASSWORD: &str = "correct horse battery";
pub const SENDER: &str = "bob@example.com";

/// Cheap argon2 parameters so tests do not spend seconds hashing.
pub fn cheap() -> HashParams {
    HashParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    }
}

/// A test CA and a CA:FALSE leaf for `127.0.0.1` and `localhost`, as files.
pub struct Certs {
    _dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn certs() -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "postgate test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    let certs = Certs {
        ca: p("ca.pem"),
        cert: p("cert.pem"),
        key: p("key.pem"),
        _dir: dir,
        issuer: ca,
    };
    certs.issue_leaf();
    certs
}

impl Certs {
    /// Issues a new leaf for 127.0.0.1/localhost and writes cert.pem and key.pem.
    pub fn issue_leaf(&self) {
        use rcgen::{CertificateParams, IsCa, KeyPair};
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.is_ca = IsCa::ExplicitNoCa;
        let leaf = leaf.signed_by(&leaf_key, &self.issuer).unwrap();
        std::fs::write(&self.cert, leaf.pem()).unwrap();
        std::fs::write(&self.key, leaf_key.serialize_pem()).unwrap();
    }
}

/// Creates user `bob` (one credential) allowed to send as `@example.com`,
/// unless it exists already (a second server on the same store).
pub async fn add_user(store: &dyn Store) {
    use postgate::store::StoreError;
    let hash = password::hash(PASSWORD, &cheap()).unwrap();
    match store.user_add(USER, "default", &hash).await {
        Ok(()) => store.sender_allow(USER, "@example.com").await.unwrap(),
        Err(StoreError::Conflict(_)) => {}
        Err(e) => panic!("add user: {e}"),
    }
}

/// A running server. Listeners, in order: starttls, implicit-tls, plain
/// (loopback), unless the config tweak changed them.
pub struct Harness {
    pub addrs: Vec<SocketAddr>,
    /// The server's TLS handle (reload it to rotate the certificate).
    pub tls: ServerTls,
    pub certs: Certs,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
    pub url: String,
    pub backend: &'static str,
}

impl Harness {
    pub fn starttls(&self) -> SocketAddr {
        self.addrs[0]
    }
    pub fn implicit(&self) -> SocketAddr {
        self.addrs[1]
    }
    pub fn plain(&self) -> SocketAddr {
        self.addrs[2]
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

fn listener(mode: ListenerMode) -> ListenerConfig {
    ListenerConfig::new("127.0.0.1:0".parse().unwrap(), mode)
}

/// Starts a server on `ts` with user `bob`; `tweak` adjusts the config.
pub async fn start(ts: &TestStore, tweak: impl FnOnce(&mut SmtpConfig)) -> Harness {
    start_with_limits(ts, Arc::new(NoLimits), tweak).await
}

pub async fn start_with_limits(
    ts: &TestStore,
    limits: Arc<dyn SessionLimits>,
    tweak: impl FnOnce(&mut SmtpConfig),
) -> Harness {
    add_user(ts.store.as_ref()).await;
    let certs = certs();
    let tls = ServerTls::load(&TlsConfig {
        cert: certs.cert.clone(),
        key: certs.key.clone(),
    })
    .unwrap();
    let mut config = SmtpConfig {
        listeners: vec![
            listener(ListenerMode::Starttls),
            listener(ListenerMode::ImplicitTls),
            listener(ListenerMode::Plain),
        ],
        ..SmtpConfig::default()
    };
    tweak(&mut config);
    let auth_config = AuthConfig {
        hash: cheap(),
        max_concurrent_verifications: 2,
    };
    let ports = Ports {
        authenticator: Arc::new(StoreAuthenticator::new(ts.store.clone(), &auth_config).unwrap()),
        intake: Arc::new(StoreIntake::new(
            ts.store.clone(),
            Duration::from_secs(5 * 86400),
        )),
        limits,
    };
    let bound = Server::bind(&config.listeners).await.unwrap();
    let addrs = bound.iter().map(|(_, l)| l.local_addr().unwrap()).collect();
    let server = Server::new(
        "relay.test".into(),
        config,
        Some(tls.clone()),
        ports,
        Duration::from_secs(2),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.serve(bound, shutdown.clone()));
    Harness {
        addrs,
        tls,
        certs,
        shutdown,
        handle,
        url: ts.url.clone(),
        backend: ts.backend,
    }
}

/// One row of `queue_messages` with its recipients.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: String,
    pub sender: String,
    pub body: Vec<u8>,
    pub username: Option<String>,
    pub credential: Option<String>,
    pub envid: Option<String>,
    pub dsn_ret: Option<String>,
    pub smtputf8: bool,
    /// (recipient, notify, orcpt), in insertion order.
    pub recipients: Vec<(String, Option<String>, Option<String>)>,
}

/// Everything in the queue, read with plain SQL.
pub async fn queued(h: &Harness) -> Vec<Queued> {
    let msg_sql = "SELECT id, sender, body, username, credential, envid, dsn_ret, smtputf8
                   FROM queue_messages ORDER BY received_at, id";
    let rcpt_sql = "SELECT message_id, recipient, notify, orcpt FROM queue_recipients ORDER BY id";
    macro_rules! read {
        ($pool:expr) => {{
            let pool = $pool;
            let msgs = sqlx::query(msg_sql).fetch_all(&pool).await.unwrap();
            let rcpts = sqlx::query(rcpt_sql).fetch_all(&pool).await.unwrap();
            let mut out: Vec<Queued> = msgs
                .iter()
                .map(|r| Queued {
                    id: r.get("id"),
                    sender: r.get("sender"),
                    body: r.get("body"),
                    username: r.get("username"),
                    credential: r.get("credential"),
                    envid: r.get("envid"),
                    dsn_ret: r.get("dsn_ret"),
                    smtputf8: r.get("smtputf8"),
                    recipients: Vec::new(),
                })
                .collect();
            for r in &rcpts {
                let mid: String = r.get("message_id");
                if let Some(m) = out.iter_mut().find(|m| m.id == mid) {
                    m.recipients
                        .push((r.get("recipient"), r.get("notify"), r.get("orcpt")));
                }
            }
            pool.close().await;
            out
        }};
    }
    if h.backend == "sqlite" {
        read!(sqlx::SqlitePool::connect(&h.url).await.unwrap())
    } else {
        read!(sqlx::PgPool::connect(&h.url).await.unwrap())
    }
}

/// A message with CRLF line endings, as a real client would send it.
pub fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.com>\r\nTo: <x@dest.example>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.com>\r\n\r\nHello.\r\n.leading dot line\r\nBye.\r\n"
    )
    .into_bytes()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw SMTP client for the security tests.
pub struct Raw {
    /// DER of the server's leaf certificate once TLS is up.
    pub peer: Option<Vec<u8>>,
    tcp: Option<TcpStream>,
    tls: Option<Box<dyn Io>>,
    buf: Vec<u8>,
    ca: PathBuf,
}

/// One reply: code and the full text (all lines, without codes).
#[derive(Debug, Clone)]
pub struct Got {
    pub code: u16,
    pub text: String,
}

pub fn tls_connector(ca: &PathBuf) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn leaf_of(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
}

fn server_name() -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap()
}

impl Raw {
    /// Connects in clear and reads the greeting.
    pub async fn connect(addr: SocketAddr, h: &Harness) -> (Raw, Got) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            peer: None,
            tcp: Some(tcp),
            tls: None,
            buf: Vec::new(),
            ca: h.certs.ca.clone(),
        };
        let g = raw.reply().await;
        (raw, g)
    }

    /// Connects in clear to a `proxy_protocol` listener, sends a PROXY v1
    /// header naming `client` as the source, and reads the greeting.
    pub async fn connect_proxied(addr: SocketAddr, h: &Harness, client: &str) -> (Raw, Got) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let family = if client.contains(':') { "TCP6" } else { "TCP4" };
        let dst = if client.contains(':') {
            "::1"
        } else {
            "127.0.0.1"
        };
        tcp.write_all(format!("PROXY {family} {client} {dst} 40000 587\r\n").as_bytes())
            .await
            .unwrap();
        let mut raw = Raw {
            peer: None,
            tcp: Some(tcp),
            tls: None,
            buf: Vec::new(),
            ca: h.certs.ca.clone(),
        };
        let g = raw.reply().await;
        (raw, g)
    }

    /// Connects with implicit TLS and reads the greeting.
    pub async fn connect_tls(addr: SocketAddr, h: &Harness) -> (Raw, Got) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connector(&h.certs.ca)
            .connect(server_name(), tcp)
            .await
            .unwrap();
        let peer = leaf_of(&tls);
        let mut raw = Raw {
            peer,
            tcp: None,
            tls: Some(Box::new(tls)),
            buf: Vec::new(),
            ca: h.certs.ca.clone(),
        };
        let g = raw.reply().await;
        (raw, g)
    }

    /// Handshakes on the current TCP stream (after a 220 to STARTTLS).
    pub async fn upgrade(&mut self) {
        let tcp = self.tcp.take().expect("plain stream");
        let tls = tls_connector(&self.ca)
            .connect(server_name(), tcp)
            .await
            .unwrap();
        self.peer = leaf_of(&tls);
        self.tls = Some(Box::new(tls));
        self.buf.clear();
    }

    fn io(&mut self) -> &mut (dyn Io + '_) {
        match (&mut self.tls, &mut self.tcp) {
            (Some(t), _) => t.as_mut(),
            (None, Some(t)) => t,
            _ => unreachable!(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let io = self.io();
        io.write_all(bytes).await.unwrap();
        io.flush().await.unwrap();
    }

    /// Reads one (possibly multi-line) reply; panics after 10 s or on EOF.
    pub async fn reply(&mut self) -> Got {
        self.try_reply(Duration::from_secs(10))
            .await
            .expect("a reply before timeout/EOF")
    }

    /// One reply, or `None` on EOF or timeout.
    pub async fn try_reply(&mut self, t: Duration) -> Option<Got> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(got) = self.parse_reply() {
                return Some(got);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.io().read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn parse_reply(&mut self) -> Option<Got> {
        let mut pos = 0;
        let mut text = Vec::new();
        loop {
            let rel = self.buf[pos..].windows(2).position(|w| w == b"\r\n")?;
            let line = String::from_utf8_lossy(&self.buf[pos..pos + rel]).to_string();
            pos += rel + 2;
            let code: u16 = line.get(..3)?.parse().ok()?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                self.buf.drain(..pos);
                return Some(Got {
                    code,
                    text: text.join("\n"),
                });
            }
        }
    }

    /// Sends `line` + CRLF and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> Got {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// EHLO, STARTTLS, handshake, EHLO again.
    pub async fn starttls(&mut self) -> Got {
        assert_eq!(self.cmd("EHLO client.test").await.code, 250);
        assert_eq!(self.cmd("STARTTLS").await.code, 220);
        self.upgrade().await;
        self.cmd("EHLO client.test").await
    }

    /// AUTH PLAIN as bob.
    pub async fn login(&mut self) -> Got {
        use base64::Engine as _;
        let ir = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
        self.cmd(&format!("AUTH PLAIN {ir}")).await
    }

    /// True when the server closed the connection (EOF within `t`).
    pub async fn closed(&mut self, t: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(t, self.io().read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Asserts code and enhanced status code of a reply.
#[track_caller]
pub fn expect(got: &Got, code: u16, enhanced: &str) {
    assert!(
        got.code == code && got.text.starts_with(enhanced),
        "expected {code} {enhanced}, got {got:?}"
    );
}
