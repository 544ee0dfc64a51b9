//! The only outbound socket code: a small SMTP client for upstream relays.
//!
//! Replies are parsed by smtp-proto's sans-IO `ResponseReceiver` (bounded
//! to 4096 bytes per reply: a longer reply is a clean protocol error, never
//! memory growth). Every read and write has a deadline. TLS is verified
//! (system roots, webpki roots as fall-back, or a configured CA file, plus
//! an optional SPKI pin) and never silently dropped: with `starttls`, an
//! upstream that does not offer or fails STARTTLS is a transient failure.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use rustls::pki_types::ServerName;
use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::config::{AuthMechanism, TlsMode, UpstreamConfig};
use super::extensions::{self, Offered};
use super::oauth::{TokenCache, TokenSource};
use super::probe::{Quiet, Steps};
use super::tls_client;
pub use super::transaction::{next_response, Envelope, Reply, SendError, TxReplies, UpstreamError};

/// What the upstream offered in its EHLO reply.
#[derive(Debug, Clone, Default)]
pub(super) struct Caps {
    pipelining: bool,
    starttls: bool,
    eightbitmime: bool,
    smtputf8: bool,
    dsn: bool,
    size: bool,
    pub(super) auth_plain: bool,
    pub(super) auth_login: bool,
    pub(super) auth_xoauth2: bool,
}

impl Caps {
    fn parse(ehlo: &str) -> Self {
        let mut caps = Caps::default();
        for line in ehlo.lines().skip(1) {
            let upper = line.trim().to_ascii_uppercase();
            let mut words = upper.split([' ', '=']);
            match words.next().unwrap_or("") {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "SIZE" => caps.size = true,
                "AUTH" => {
                    for mech in words {
                        caps.auth_plain |= mech == "PLAIN";
                        caps.auth_login |= mech == "LOGIN";
                        caps.auth_xoauth2 |= mech == "XOAUTH2";
                    }
                }
                _ => {}
            }
        }
        caps
    }
}

/// A configured upstream: knows how to open verified, authenticated connections.
pub struct Upstream {
    pub(super) cfg: UpstreamConfig,
    helo: String,
    tls: Option<TlsConnector>,
    server_name: ServerName<'static>,
    pin: Option<Vec<u8>>,
    pub(super) oauth: Option<TokenCache>,
}

impl Upstream {
    /// Prepares `cfg` (loads the CA file, decodes the pin); `helo` is our
    /// EHLO name. Fails on bad TLS settings, naming the upstream.
    pub fn new(cfg: UpstreamConfig, helo: &str) -> Result<Self, UpstreamError> {
        Self::with_metrics(cfg, helo, &crate::metrics::Metrics::detached())
    }

    /// [`new`](Self::new), recording OAuth token requests into `metrics`.
    pub fn with_metrics(
        cfg: UpstreamConfig,
        helo: &str,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, UpstreamError> {
        let err = |what: String| UpstreamError::Config {
            name: cfg.name.clone(),
            what,
        };
        let sni = cfg
            .tls_server_name
            .clone()
            .unwrap_or_else(|| cfg.host.clone());
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|e| err(format!("bad TLS server name {sni:?}: {e}")))?;
        let pin = match &cfg.spki_pin {
            None => None,
            Some(p) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(p.trim())
                    .map_err(|e| err(format!("spki_pin is not base64: {e}")))?;
                if raw.len() != 32 {
                    return Err(err("spki_pin must be a base64 SHA-256 (32 bytes)".into()));
                }
                Some(raw)
            }
        };
        let tls = if cfg.tls == TlsMode::None {
            None
        } else {
            let roots = tls_client::roots(cfg.ca_file.as_ref()).map_err(&err)?;
            let identity = match (&cfg.client_certificate, &cfg.client_key) {
                (Some(c), Some(k)) => Some(
                    tls_client::ClientIdentity::load(c, k)
                        .map_err(|e| err(format!("client_certificate/client_key: {e}")))?,
                ),
                _ => None,
            };
            let config = tls_client::client_config(roots, identity.as_ref()).map_err(&err)?;
            Some(TlsConnector::from(Arc::new(config)))
        };
        let oauth = match (&cfg.oauth, cfg.auth) {
            (Some(o), AuthMechanism::Xoauth2) => {
                let source = TokenSource::new(o).map_err(&err)?;
                Some(TokenCache::new(&cfg.name, source, metrics.oauth(&cfg.name)))
            }
            _ => None,
        };
        Ok(Upstream {
            helo: helo.to_string(),
            cfg,
            tls,
            server_name,
            pin,
            oauth,
        })
    }

    /// The config this upstream was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Opens a session ready for a mail transaction: connected, greeted,
    /// TLS up (unless `tls = "none"`), EHLO done, authenticated if configured.
    pub async fn connect(&self) -> Result<Connection, SendError> {
        self.connect_for("").await
    }

    /// [`connect`](Self::connect), authenticated for mail from `sender`.
    pub async fn connect_for(&self, sender: &str) -> Result<Connection, SendError> {
        self.connect_observed(sender, &mut Quiet).await
    }

    /// [`connect_for`](Self::connect_for), reporting each step to `steps`
    /// (`upstream test`).
    pub async fn connect_observed(
        &self,
        sender: &str,
        steps: &mut (dyn Steps + Send),
    ) -> Result<Connection, SendError> {
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port());
        let deadline = Instant::now() + self.cfg.connect_timeout;
        steps.begin("connect");
        let tcp = timeout_at(deadline, TcpStream::connect(&addr))
            .await
            .map_err(|_| SendError::Timeout("TCP connect"))?
            .map_err(|e| SendError::Connect(addr.clone(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        steps.done(&format!("connected to {addr}"));
        let stream = if self.cfg.tls == TlsMode::Implicit {
            steps.begin("TLS");
            let tls = self.handshake(tcp, deadline).await?;
            steps.done(&tls_summary(&tls, &self.server_name));
            Either::Right(tls)
        } else {
            Either::Left(tcp)
        };
        let mut conn = Connection::new(stream, &self.cfg);
        // The greeting shares the connect deadline: an upstream that accepts
        // TCP and never speaks is given up after `connect_timeout`, not after
        // a command timeout (RFC 5321 §4.5.3.2.1 suggests 5 minutes for the
        // greeting of a server that is slow, not hung).
        steps.begin("greeting");
        let greeting = conn.read_reply(deadline, "greeting").await?;
        if greeting.code != 220 {
            return Err(SendError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        steps.done(&greeting.text);
        steps.begin("EHLO");
        let ehlo = conn.ehlo(&self.helo).await?;
        steps.done(&ehlo);
        if self.cfg.tls == TlsMode::Starttls {
            steps.begin("STARTTLS");
            if !conn.caps.starttls {
                return Err(SendError::Tls("upstream does not offer STARTTLS".into()));
            }
            let reply = conn.command(b"STARTTLS\r\n", "STARTTLS").await?;
            if reply.code != 220 {
                return Err(SendError::Tls(format!("STARTTLS refused: {reply}")));
            }
            // RFC 3207 §4.2: nothing may be pipelined behind STARTTLS; bytes
            // already buffered would be an injection attempt.
            if !conn.buf.is_empty() {
                return Err(SendError::Tls(
                    "unexpected data after the STARTTLS reply".into(),
                ));
            }
            steps.done(&reply.text);
            let Either::Left(tcp) = conn.stream else {
                return Err(SendError::Protocol("STARTTLS on a TLS stream".into()));
            };
            let deadline = Instant::now() + self.cfg.connect_timeout;
            steps.begin("TLS");
            let tls = self.handshake(tcp, deadline).await?;
            steps.done(&tls_summary(&tls, &self.server_name));
            conn = Connection::new(Either::Right(tls), &self.cfg);
            // RFC 3207 §4.2: forget everything learnt before TLS; EHLO again.
            steps.begin("EHLO");
            let ehlo = conn.ehlo(&self.helo).await?;
            steps.done(&ehlo);
        }
        match (self.cfg.auth, self.mailbox(sender)?, &self.cfg.password) {
            (AuthMechanism::Xoauth2, Some(user), _) => {
                self.xoauth2(&mut conn, &user, steps).await?;
            }
            (mech, Some(user), Some(pass)) => {
                steps.begin("AUTH");
                let reply = conn.auth(mech, &user, pass.expose()).await?;
                steps.done(&reply.text);
            }
            _ => {}
        }
        Ok(conn)
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        deadline: Instant,
    ) -> Result<TlsStream<TcpStream>, SendError> {
        let connector = self
            .tls
            .as_ref()
            .ok_or_else(|| SendError::Tls("TLS not configured".into()))?;
        let tls = timeout_at(deadline, connector.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| SendError::Timeout("TLS handshake"))?
            .map_err(|e| SendError::Tls(e.to_string()))?;
        if let Some(pin) = &self.pin {
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| SendError::Tls("no server certificate".into()))?;
            let ee = webpki::EndEntityCert::try_from(cert)
                .map_err(|e| SendError::Tls(format!("bad server certificate: {e}")))?;
            let spki = ee.subject_public_key_info();
            let digest = <sha2::Sha256 as sha2::Digest>::digest(spki.as_ref());
            if digest.as_slice() != pin.as_slice() {
                return Err(SendError::Tls(
                    "server certificate does not match spki_pin".into(),
                ));
            }
        }
        Ok(tls)
    }
}

/// An open SMTP session with an upstream, between transactions.
pub struct Connection {
    stream: Either<TcpStream, TlsStream<TcpStream>>,
    buf: Vec<u8>,
    rx: ResponseReceiver,
    pub(super) caps: Caps,
    command_timeout: Duration,
    data_timeout: Duration,
    /// Transactions started on this connection.
    pub(crate) transactions: u32,
    /// When the last transaction ended.
    pub(crate) last_used: Instant,
}

/// Staging buffer for the body: bounded, whatever the message size.
const WRITE_CHUNK: usize = 64 * 1024;

impl Connection {
    fn new(stream: Either<TcpStream, TlsStream<TcpStream>>, cfg: &UpstreamConfig) -> Self {
        Connection {
            stream,
            buf: Vec::new(),
            rx: ResponseReceiver::default(),
            caps: Caps::default(),
            command_timeout: cfg.command_timeout,
            data_timeout: cfg.data_timeout,
            transactions: 0,
            last_used: Instant::now(),
        }
    }

    fn command_deadline(&self) -> Instant {
        Instant::now() + self.command_timeout
    }

    /// Reads one complete reply before `deadline`.
    async fn read_reply(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Reply, SendError> {
        self.read_response(deadline, what)
            .await
            .map(Reply::from_proto)
    }

    async fn read_response(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<smtp_proto::Response<String>, SendError> {
        loop {
            if let Some(parsed) = next_response(&mut self.rx, &mut self.buf, what) {
                return parsed;
            }
            let mut chunk = [0u8; 8192];
            let n = timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| SendError::Timeout(what))?
                .map_err(|e| SendError::Io(e.to_string()))?;
            if n == 0 {
                return Err(SendError::Io(format!(
                    "upstream closed the connection ({what})"
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn write(
        &mut self,
        data: &[u8],
        deadline: Instant,
        what: &'static str,
    ) -> Result<(), SendError> {
        timeout_at(deadline, self.stream.write_all(data))
            .await
            .map_err(|_| SendError::Timeout(what))?
            .map_err(|e| SendError::Io(e.to_string()))
    }

    async fn flush(&mut self, deadline: Instant, what: &'static str) -> Result<(), SendError> {
        timeout_at(deadline, self.stream.flush())
            .await
            .map_err(|_| SendError::Timeout(what))?
            .map_err(|e| SendError::Io(e.to_string()))
    }

    pub(super) async fn command(
        &mut self,
        line: &[u8],
        what: &'static str,
    ) -> Result<Reply, SendError> {
        let deadline = self.command_deadline();
        self.write(line, deadline, what).await?;
        self.flush(deadline, what).await?;
        self.read_reply(deadline, what).await
    }

    /// EHLO (or HELO); the reply's first line.
    async fn ehlo(&mut self, helo: &str) -> Result<String, SendError> {
        let deadline = self.command_deadline();
        self.write(format!("EHLO {helo}\r\n").as_bytes(), deadline, "EHLO")
            .await?;
        self.flush(deadline, "EHLO").await?;
        let response = self.read_response(deadline, "EHLO").await?;
        if response.code == 250 {
            self.caps = Caps::parse(&response.message);
            let first = response.message.lines().next().unwrap_or("").to_string();
            return Ok(format!("250 {first}"));
        }
        // RFC 5321 §3.2: fall back to HELO (no extensions) if EHLO is refused.
        let reply = self
            .command(format!("HELO {helo}\r\n").as_bytes(), "HELO")
            .await?;
        if reply.code != 250 {
            return Err(SendError::Refused {
                stage: "EHLO",
                reply,
            });
        }
        self.caps = Caps::default();
        Ok(reply.text)
    }

    /// Resets the session between transactions (RFC 5321 §4.1.1.5).
    pub async fn reset(&mut self) -> Result<(), SendError> {
        let reply = self.command(b"RSET\r\n", "RSET").await?;
        if reply.code != 250 {
            return Err(SendError::Refused {
                stage: "RSET",
                reply,
            });
        }
        Ok(())
    }

    /// Ends the session politely; errors are ignored.
    pub async fn quit(mut self) {
        let deadline = Instant::now() + Duration::from_secs(2).min(self.command_timeout);
        if self.write(b"QUIT\r\n", deadline, "QUIT").await.is_ok()
            && self.flush(deadline, "QUIT").await.is_ok()
        {
            let _ = self.read_reply(deadline, "QUIT").await;
        }
        let _ = timeout_at(deadline, self.stream.shutdown()).await;
    }

    /// Runs one mail transaction, pipelined when the upstream offers
    /// PIPELINING (RFC 2920). `Err` means the session broke (the connection
    /// must be dropped); refusals are replies in the `Ok` value.
    pub async fn send(&mut self, env: Envelope<'_>) -> Result<TxReplies, SendError> {
        let offered = Offered {
            smtputf8: self.caps.smtputf8,
            eightbitmime: self.caps.eightbitmime,
            dsn: self.caps.dsn,
        };
        // RFC 6531 §3.4, RFC 6152: what this upstream cannot take is refused
        // here, per recipient, and the rest is sent.
        let refused = extensions::refusals(&env, offered);
        if let Some(first) = refused.iter().flatten().next() {
            if refused.iter().all(Option::is_some) {
                return Ok(TxReplies {
                    mail: first.clone(),
                    rcpt: refused.into_iter().flatten().collect(),
                    data: None,
                    dsn_passed: false,
                });
            }
        }
        let keep: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| refused[i].is_none())
            .collect();
        self.transactions += 1;
        let mut mail = format!("MAIL FROM:<{}>", env.sender);
        if self.caps.size {
            mail.push_str(&format!(" SIZE={}", env.body.len()));
        }
        if self.caps.eightbitmime && !env.body.is_ascii() {
            mail.push_str(" BODY=8BITMIME");
        }
        if env.smtputf8 && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str(&extensions::mail_dsn_params(&env, offered));
        mail.push_str("\r\n");
        let rcpt_lines: Vec<String> = keep
            .iter()
            .map(|&i| {
                format!(
                    "RCPT TO:<{}>{}\r\n",
                    env.recipients[i],
                    extensions::rcpt_dsn_params(&env, i, offered)
                )
            })
            .collect();
        let result = if self.caps.pipelining {
            self.send_pipelined(&mail, &rcpt_lines, env.body).await
        } else {
            self.send_lockstep(&mail, &rcpt_lines, env.body).await
        };
        self.last_used = Instant::now();
        let mut tx = result?;
        tx.dsn_passed = offered.dsn && env.dsn.is_some();
        if keep.len() < env.recipients.len() && !tx.rcpt.is_empty() {
            // Put the local refusals back in the recipients' order.
            let mut sent = std::mem::take(&mut tx.rcpt).into_iter();
            tx.rcpt = refused
                .into_iter()
                .map(|r| r.or_else(|| sent.next()).unwrap_or_else(|| tx.mail.clone()))
                .collect();
        }
        Ok(tx)
    }

    async fn send_pipelined(
        &mut self,
        mail: &str,
        rcpt_lines: &[String],
        body: &Bytes,
    ) -> Result<TxReplies, SendError> {
        let mut batch = mail.as_bytes().to_vec();
        for line in rcpt_lines {
            batch.extend_from_slice(line.as_bytes());
        }
        // RFC 2920 §3.1: DATA may end a pipelined group.
        batch.extend_from_slice(b"DATA\r\n");
        let deadline = self.command_deadline();
        self.write(&batch, deadline, "MAIL").await?;
        self.flush(deadline, "MAIL").await?;
        let mail = self.read_reply(deadline, "MAIL").await?;
        let mut rcpt = Vec::with_capacity(rcpt_lines.len());
        for _ in rcpt_lines {
            let deadline = self.command_deadline();
            rcpt.push(self.read_reply(deadline, "RCPT").await?);
        }
        let deadline = self.command_deadline();
        let data = self.read_reply(deadline, "DATA").await?;
        let accepted = mail.is_positive() && rcpt.iter().any(Reply::is_positive);
        if data.code == 354 {
            if accepted {
                let final_reply = self.send_body(body).await?;
                return Ok(TxReplies {
                    mail,
                    rcpt,
                    data: Some(final_reply),
                    dsn_passed: false,
                });
            }
            // RFC 2920 §3.1: DATA accepted with no valid recipient; end it empty.
            let deadline = self.command_deadline();
            self.write(b".\r\n", deadline, "DATA").await?;
            self.flush(deadline, "DATA").await?;
            self.read_reply(deadline, "DATA").await?;
            return Ok(TxReplies {
                mail,
                rcpt,
                data: None,
                dsn_passed: false,
            });
        }
        Ok(TxReplies {
            mail,
            rcpt,
            data: accepted.then_some(data),
            dsn_passed: false,
        })
    }

    async fn send_lockstep(
        &mut self,
        mail: &str,
        rcpt_lines: &[String],
        body: &Bytes,
    ) -> Result<TxReplies, SendError> {
        let mail = self.command(mail.as_bytes(), "MAIL").await?;
        if !mail.is_positive() {
            return Ok(TxReplies {
                mail,
                rcpt: Vec::new(),
                data: None,
                dsn_passed: false,
            });
        }
        let mut rcpt = Vec::with_capacity(rcpt_lines.len());
        for line in rcpt_lines {
            rcpt.push(self.command(line.as_bytes(), "RCPT").await?);
        }
        if !rcpt.iter().any(Reply::is_positive) {
            return Ok(TxReplies {
                mail,
                rcpt,
                data: None,
                dsn_passed: false,
            });
        }
        let data = self.command(b"DATA\r\n", "DATA").await?;
        let data = if data.code == 354 {
            self.send_body(body).await?
        } else {
            data
        };
        Ok(TxReplies {
            mail,
            rcpt,
            data: Some(data),
            dsn_passed: false,
        })
    }

    /// Sends the body dot-stuffed (RFC 5321 §4.5.2) through a bounded
    /// staging buffer, ends it with CRLF.CRLF and reads the final reply.
    async fn send_body(&mut self, body: &Bytes) -> Result<Reply, SendError> {
        let deadline = Instant::now() + self.data_timeout;
        let mut out = Vec::with_capacity(WRITE_CHUNK.min(body.len() + 8) + 64);
        let mut line_start = true;
        let mut rest: &[u8] = body;
        while !rest.is_empty() {
            if line_start && rest[0] == b'.' {
                out.push(b'.');
            }
            let end = memchr_lf(rest).map(|i| i + 1).unwrap_or(rest.len());
            let take = end.min(WRITE_CHUNK.saturating_sub(out.len()).max(1));
            out.extend_from_slice(&rest[..take]);
            line_start = take == end && rest[take - 1] == b'\n';
            rest = &rest[take..];
            if out.len() >= WRITE_CHUNK {
                self.write(&out, deadline, "DATA body").await?;
                out.clear();
            }
        }
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.write(&out, deadline, "DATA body").await?;
        self.flush(deadline, "DATA body").await?;
        self.read_reply(deadline, "end of DATA").await
    }
}

/// What `upstream test` prints for a finished handshake.
fn tls_summary(tls: &TlsStream<TcpStream>, name: &ServerName<'static>) -> String {
    let c = tls.get_ref().1;
    format!(
        "{:?} {:?}, certificate verified for {}",
        c.protocol_version()
            .map(|v| v.as_str().unwrap_or("TLS"))
            .unwrap_or("TLS"),
        c.negotiated_cipher_suite().map(|s| s.suite()),
        name.to_str()
    )
    .replace('"', "")
}

fn memchr_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}
