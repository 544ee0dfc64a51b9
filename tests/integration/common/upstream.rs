//! A real upstream SMTP server for delivery tests: tokio + tokio-rustls,
//! STARTTLS or implicit TLS, AUTH PLAIN/LOGIN, PIPELINING (it simply
//! answers pipelined commands in order). Its replies are scripted per
//! command through [`Behavior`] and can be changed while it runs; it
//! records every transaction it accepted.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use postgate::delivery::{TlsMode, UpstreamConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A throwaway PKI: a CA (written to `ca_file`) and a server certificate.
pub struct Pki {
    pub ca_file: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    ca_der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    _dir: tempfile::TempDir,
}

/// Which certificate the server presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// Valid for `localhost` and 127.0.0.1.
    Good,
    /// Valid, but for `wrong.example`.
    WrongHost,
    /// For `localhost`, but expired in 2020.
    Expired,
}

impl Pki {
    /// A new CA and a server certificate of `kind` signed by it.
    pub fn new(kind: CertKind) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "postgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let names = match kind {
            CertKind::WrongHost => vec!["wrong.example".to_string()],
            _ => vec!["localhost".to_string(), "127.0.0.1".to_string()],
        };
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        if kind == CertKind::Expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
        Pki {
            ca_file,
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
            ca_der: ca_cert.der().clone(),
            issuer,
            _dir: dir,
        }
    }

    /// A client certificate signed by this CA (PEM files in `dir`): the
    /// certificate path and its key path.
    pub fn client_identity(&self, dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("client key");
        let mut params =
            rcgen::CertificateParams::new(vec!["relay.test".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "postgate relay client");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        let (c, k) = (dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// An acceptor that requires a client certificate issued by this CA.
    pub fn mtls_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("ca");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("server cert");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("server cert");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// Base64 SHA-256 of the server certificate's SubjectPublicKeyInfo.
    pub fn spki_pin(&self) -> String {
        let ee = webpki::EndEntityCert::try_from(&self.chain[0]).expect("ee");
        let spki = ee.subject_public_key_info();
        let digest = <sha2::Sha256 as sha2::Digest>::digest(spki.as_ref());
        base64::engine::general_purpose::STANDARD.encode(digest)
    }
}

/// How the server secures sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTls {
    None,
    Starttls,
    Implicit,
}

/// The server's script. Replies are full lines without CRLF.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub tls: ServerTls,
    /// Announce STARTTLS (when `tls` is `Starttls`).
    pub offer_starttls: bool,
    /// After `220` to STARTTLS, close instead of doing the handshake.
    pub break_tls: bool,
    pub pipelining: bool,
    /// Required AUTH credentials (MAIL is refused without them).
    pub auth: Option<(String, String)>,
    /// Raw bytes sent instead of the greeting (garbage, a huge line).
    pub raw_greeting: Option<Vec<u8>>,
    pub greeting: String,
    pub mail_reply: String,
    /// Reply per recipient address; others get `rcpt_default`.
    pub rcpt_replies: HashMap<String, String>,
    pub rcpt_default: String,
    pub data_reply: String,
    /// Delay before every reply.
    pub reply_delay: Duration,
    /// Close the connection after the first body bytes arrive.
    pub drop_during_data: bool,
    /// EHLO extensions offered (default: 8BITMIME and SMTPUTF8, no DSN).
    pub offer_8bitmime: bool,
    pub offer_smtputf8: bool,
    pub offer_dsn: bool,
    /// Offer AUTH XOAUTH2 and require it (MAIL is refused without), with a
    /// live token of this token endpoint; `535 5.7.3` otherwise.
    pub xoauth2: Option<crate::token_server::TokenCheck>,
}

impl Behavior {
    /// A well-behaved server with `tls`, PIPELINING, no AUTH.
    pub fn new(tls: ServerTls) -> Self {
        Behavior {
            tls,
            offer_starttls: true,
            break_tls: false,
            pipelining: true,
            auth: None,
            raw_greeting: None,
            greeting: "220 upstream.test ESMTP ready".into(),
            mail_reply: "250 2.1.0 sender ok".into(),
            rcpt_replies: HashMap::new(),
            rcpt_default: "250 2.1.5 recipient ok".into(),
            data_reply: "250 2.0.0 queued as TEST".into(),
            reply_delay: Duration::ZERO,
            drop_during_data: false,
            offer_8bitmime: true,
            offer_smtputf8: true,
            offer_dsn: false,
            xoauth2: None,
        }
    }
}

/// One transaction the server accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub tls: bool,
    pub auth_user: Option<String>,
    pub mail_from: String,
    /// Accepted recipients.
    pub rcpt_to: Vec<String>,
    /// The MAIL command line as sent (parameters included).
    pub mail_line: String,
    /// The RCPT command lines of the accepted recipients, as sent.
    pub rcpt_lines: Vec<String>,
    /// The message after dot-unstuffing, without the final `.` line.
    pub data: Vec<u8>,
    /// When the final `.` arrived.
    pub at: std::time::Instant,
}

/// A running test upstream; stops when dropped.
pub struct UpstreamServer {
    pub addr: SocketAddr,
    pub pki: Arc<Pki>,
    behavior: Arc<Mutex<Behavior>>,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    commands: Arc<Mutex<Vec<String>>>,
    auth_refused: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for UpstreamServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UpstreamServer {
    /// Starts a server on 127.0.0.1 (random port) with a good certificate.
    pub async fn start(behavior: Behavior) -> Self {
        Self::start_with_cert(behavior, CertKind::Good).await
    }

    /// Starts a server presenting a certificate of `kind`.
    pub async fn start_with_cert(behavior: Behavior, kind: CertKind) -> Self {
        Self::start_inner(behavior, kind, false).await
    }

    /// Starts a server that requires a client certificate issued by its
    /// own CA ([`Pki::client_identity`]) in the TLS handshake.
    pub async fn start_mtls(behavior: Behavior) -> Self {
        Self::start_inner(behavior, CertKind::Good, true).await
    }

    async fn start_inner(behavior: Behavior, kind: CertKind, mtls: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pki = Arc::new(Pki::new(kind));
        let behavior = Arc::new(Mutex::new(behavior));
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let auth_refused = Arc::new(AtomicUsize::new(0));
        let state = Shared {
            auth_refused: auth_refused.clone(),
            acceptor: if mtls {
                pki.mtls_acceptor()
            } else {
                pki.acceptor()
            },
            behavior: behavior.clone(),
            received: received.clone(),
            commands: commands.clone(),
        };
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = state.session(tcp).await;
                });
            }
        });
        UpstreamServer {
            addr,
            pki,
            behavior,
            received,
            connections,
            commands,
            auth_refused,
            task,
        }
    }

    /// Changes the script of the running server (from the next command on;
    /// the TLS mode only for new sessions).
    pub fn set(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.behavior.lock().unwrap());
    }

    /// Transactions accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Command verbs received so far (upper case), in order.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    /// An upstream config pointing at this server, trusting its CA, with
    /// short timeouts.
    pub fn upstream_config(&self, name: &str) -> UpstreamConfig {
        let tls = match self.behavior.lock().unwrap().tls {
            ServerTls::None => TlsMode::None,
            ServerTls::Starttls => TlsMode::Starttls,
            ServerTls::Implicit => TlsMode::Implicit,
        };
        let mut cfg = UpstreamConfig::new(name, "127.0.0.1", self.addr.port(), tls);
        cfg.ca_file = Some(self.pki.ca_file.clone());
        cfg.tls_server_name = Some("localhost".into());
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.command_timeout = Duration::from_secs(5);
        cfg.data_timeout = Duration::from_secs(30);
        if let Some((u, p)) = &self.behavior.lock().unwrap().auth {
            cfg.username = Some(u.clone());
            cfg.password = Some(postgate::config::Secret::inline(p.clone()));
        }
        cfg
    }

    /// AUTH commands that got 535, so far.
    pub fn auth_refusals(&self) -> usize {
        self.auth_refused.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Shared {
    acceptor: tokio_rustls::TlsAcceptor,
    behavior: Arc<Mutex<Behavior>>,
    received: Arc<Mutex<Vec<Received>>>,
    commands: Arc<Mutex<Vec<String>>>,
    auth_refused: Arc<AtomicUsize>,
}

enum End {
    Closed,
    StartTls,
}

struct Session {
    b: Behavior,
    tls: bool,
    auth_user: Option<String>,
    mail_from: Option<String>,
    mail_line: String,
    rcpt_to: Vec<String>,
    rcpt_lines: Vec<String>,
    buf: Vec<u8>,
}

impl Shared {
    async fn session(self, tcp: TcpStream) -> std::io::Result<()> {
        let b = self.behavior.lock().unwrap().clone();
        let mut s = Session {
            b: b.clone(),
            tls: false,
            auth_user: None,
            mail_from: None,
            mail_line: String::new(),
            rcpt_to: Vec::new(),
            rcpt_lines: Vec::new(),
            buf: Vec::new(),
        };
        if b.tls == ServerTls::Implicit {
            let mut tls = self.acceptor.accept(tcp).await?;
            s.tls = true;
            self.run(&mut tls, &mut s, true).await?;
            return Ok(());
        }
        let mut tcp = tcp;
        match self.run(&mut tcp, &mut s, true).await? {
            End::Closed => Ok(()),
            End::StartTls => {
                if b.break_tls {
                    tcp.write_all(b"this is not TLS\r\n").await?;
                    return Ok(());
                }
                let mut tls = self.acceptor.accept(tcp).await?;
                s.tls = true;
                s.buf.clear();
                s.auth_user = None;
                self.run(&mut tls, &mut s, false).await?;
                Ok(())
            }
        }
    }

    async fn reply<S: AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        s: &Session,
        text: &str,
    ) -> std::io::Result<()> {
        if !s.b.reply_delay.is_zero() {
            tokio::time::sleep(s.b.reply_delay).await;
        }
        let mut line = Vec::with_capacity(text.len() + 2);
        line.extend_from_slice(text.as_bytes());
        line.extend_from_slice(b"\r\n");
        io.write_all(&line).await?;
        io.flush().await
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        s: &mut Session,
        greet: bool,
    ) -> std::io::Result<End> {
        if greet {
            if let Some(raw) = s.b.raw_greeting.clone() {
                io.write_all(&raw).await?;
                io.flush().await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Ok(End::Closed);
            }
            let g = s.b.greeting.clone();
            self.reply(io, s, &g).await?;
        }
        loop {
            let Some(line) = read_line(io, &mut s.buf).await? else {
                return Ok(End::Closed);
            };
            // The script may change while a pooled session stays open.
            let tls_mode = s.b.tls;
            s.b = self.behavior.lock().unwrap().clone();
            s.b.tls = tls_mode;
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let upper = text.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("").to_string();
            self.commands.lock().unwrap().push(verb.clone());
            match verb.as_str() {
                "EHLO" => {
                    let mut lines = vec!["upstream.test greets you".to_string()];
                    if s.b.pipelining {
                        lines.push("PIPELINING".into());
                    }
                    if s.b.offer_8bitmime {
                        lines.push("8BITMIME".into());
                    }
                    if s.b.offer_dsn {
                        lines.push("DSN".into());
                    }
                    lines.push("SIZE 52428800".into());
                    if s.b.tls == ServerTls::Starttls && !s.tls && s.b.offer_starttls {
                        lines.push("STARTTLS".into());
                    }
                    if (s.b.auth.is_some() || s.b.xoauth2.is_some())
                        && (s.tls || s.b.tls == ServerTls::None)
                    {
                        lines.push("AUTH PLAIN LOGIN XOAUTH2".into());
                    }
                    if s.b.offer_smtputf8 {
                        lines.push("SMTPUTF8".into());
                    }
                    let n = lines.len();
                    let out: Vec<String> = lines
                        .iter()
                        .enumerate()
                        .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
                        .collect();
                    self.reply(io, s, &out.join("\r\n")).await?;
                }
                "HELO" => self.reply(io, s, "250 upstream.test").await?,
                "STARTTLS" if s.b.tls == ServerTls::Starttls && !s.tls => {
                    self.reply(io, s, "220 2.0.0 go ahead").await?;
                    return Ok(End::StartTls);
                }
                "AUTH" if upper.starts_with("AUTH XOAUTH2") => {
                    let check = s.b.xoauth2.clone();
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let raw = text.split_whitespace().nth(2).unwrap_or("");
                    let decoded = b64
                        .decode(raw)
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default();
                    // user=U ^A auth=Bearer T ^A ^A
                    let mut user = None;
                    let mut token = None;
                    for part in decoded.split('\x01') {
                        if let Some(u) = part.strip_prefix("user=") {
                            user = Some(u.to_string());
                        } else if let Some(t) = part.strip_prefix("auth=Bearer ") {
                            token = Some(t.to_string());
                        }
                    }
                    match (check, user, token) {
                        (Some(c), Some(u), Some(t)) if c.accepts(&u, &t) => {
                            s.auth_user = Some(u);
                            self.reply(io, s, "235 2.7.0 Authentication successful")
                                .await?;
                        }
                        _ => {
                            self.auth_refused.fetch_add(1, Ordering::SeqCst);
                            self.reply(io, s, "535 5.7.3 Authentication unsuccessful")
                                .await?
                        }
                    }
                }
                "AUTH" => {
                    let user = self.auth(io, s, &text).await?;
                    match (&s.b.auth, user) {
                        (Some((u, p)), Some((gu, gp))) if *u == gu && *p == gp => {
                            s.auth_user = Some(gu);
                            self.reply(io, s, "235 2.7.0 authenticated").await?;
                        }
                        _ => {
                            self.auth_refused.fetch_add(1, Ordering::SeqCst);
                            self.reply(io, s, "535 5.7.8 bad credentials").await?
                        }
                    }
                }
                "MAIL" => {
                    if (s.b.auth.is_some() || s.b.xoauth2.is_some()) && s.auth_user.is_none() {
                        self.reply(io, s, "530 5.7.0 authentication required")
                            .await?;
                        continue;
                    }
                    let r = s.b.mail_reply.clone();
                    if r.starts_with('2') {
                        s.mail_from = Some(angle(&text));
                        s.mail_line = text.clone();
                        s.rcpt_to.clear();
                        s.rcpt_lines.clear();
                    }
                    self.reply(io, s, &r).await?;
                }
                "RCPT" => {
                    if s.mail_from.is_none() {
                        self.reply(io, s, "503 5.5.1 MAIL first").await?;
                        continue;
                    }
                    let addr = angle(&text);
                    let r =
                        s.b.rcpt_replies
                            .get(&addr)
                            .cloned()
                            .unwrap_or_else(|| s.b.rcpt_default.clone());
                    if r.starts_with('2') {
                        s.rcpt_to.push(addr);
                        s.rcpt_lines.push(text.clone());
                    }
                    self.reply(io, s, &r).await?;
                }
                "DATA" => {
                    if s.mail_from.is_none() || s.rcpt_to.is_empty() {
                        self.reply(io, s, "554 5.5.1 no valid recipients").await?;
                        continue;
                    }
                    self.reply(io, s, "354 go ahead").await?;
                    let mut data = Vec::new();
                    loop {
                        let Some(line) = read_line(io, &mut s.buf).await? else {
                            return Ok(End::Closed);
                        };
                        if s.b.drop_during_data {
                            return Ok(End::Closed);
                        }
                        if line == b".\r\n" {
                            break;
                        }
                        let l = if line.starts_with(b"..") {
                            &line[1..]
                        } else {
                            &line[..]
                        };
                        data.extend_from_slice(l);
                    }
                    let r = s.b.data_reply.clone();
                    if r.starts_with('2') {
                        self.received.lock().unwrap().push(Received {
                            tls: s.tls,
                            auth_user: s.auth_user.clone(),
                            mail_from: s.mail_from.clone().unwrap_or_default(),
                            rcpt_to: s.rcpt_to.clone(),
                            mail_line: s.mail_line.clone(),
                            rcpt_lines: s.rcpt_lines.clone(),
                            data,
                            at: std::time::Instant::now(),
                        });
                    }
                    s.mail_from = None;
                    s.rcpt_to.clear();
                    self.reply(io, s, &r).await?;
                }
                "RSET" => {
                    s.mail_from = None;
                    s.rcpt_to.clear();
                    self.reply(io, s, "250 2.0.0 reset").await?;
                }
                "NOOP" => self.reply(io, s, "250 2.0.0 ok").await?,
                "QUIT" => {
                    self.reply(io, s, "221 2.0.0 bye").await?;
                    return Ok(End::Closed);
                }
                _ => self.reply(io, s, "502 5.5.2 unknown command").await?,
            }
        }
    }

    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        s: &mut Session,
        text: &str,
    ) -> std::io::Result<Option<(String, String)>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut words = text.split_whitespace().skip(1);
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        let decode = |t: &str| {
            b64.decode(t.trim())
                .ok()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        match mech.as_str() {
            "PLAIN" => {
                let token = match words.next() {
                    Some(t) => t.to_string(),
                    None => {
                        self.reply(io, s, "334 ").await?;
                        let Some(l) = read_line(io, &mut s.buf).await? else {
                            return Ok(None);
                        };
                        String::from_utf8_lossy(&l).trim().to_string()
                    }
                };
                let Some(plain) = decode(&token) else {
                    return Ok(None);
                };
                let parts: Vec<&str> = plain.split('\0').collect();
                Ok((parts.len() == 3).then(|| (parts[1].to_string(), parts[2].to_string())))
            }
            "LOGIN" => {
                self.reply(io, s, "334 VXNlcm5hbWU6").await?;
                let Some(u) = read_line(io, &mut s.buf).await? else {
                    return Ok(None);
                };
                self.reply(io, s, "334 UGFzc3dvcmQ6").await?;
                let Some(p) = read_line(io, &mut s.buf).await? else {
                    return Ok(None);
                };
                Ok(decode(&String::from_utf8_lossy(&u)).zip(decode(&String::from_utf8_lossy(&p))))
            }
            _ => Ok(None),
        }
    }
}

fn angle(text: &str) -> String {
    let start = text.find('<').map(|i| i + 1).unwrap_or(0);
    let end = text[start..]
        .find('>')
        .map(|i| i + start)
        .unwrap_or(text.len());
    text[start..end].to_string()
}

async fn read_line<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(i) = buf.iter().position(|&c| c == b'\n') {
            return Ok(Some(buf.drain(..=i).collect()));
        }
        let mut tmp = [0u8; 16384];
        let n = io.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}
