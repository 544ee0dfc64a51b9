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
use rustls::pki_types::{CertificateDer, ServerName};
use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::config::{AuthMechanism, TlsMode, UpstreamConfig};
pub use super::transaction::{Envelope, Reply, SendError, TxReplies, UpstreamError};

/// What the upstream offered in its EHLO reply.
#[derive(Debug, Clone, Default)]
struct Caps {
    pipelining: bool,
    starttls: bool,
    eightbitmime: bool,
    smtputf8: bool,
    size: bool,
    auth_plain: bool,
    auth_login: bool,
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
                "SIZE" => caps.size = true,
                "AUTH" => {
                    for mech in words {
                        caps.auth_plain |= mech == "PLAIN";
                        caps.auth_login |= mech == "LOGIN";
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
    cfg: UpstreamConfig,
    helo: String,
    tls: Option<TlsConnector>,
    server_name: ServerName<'static>,
    pin: Option<Vec<u8>>,
}

impl Upstream {
    /// Prepares `cfg` (loads the CA file, decodes the pin); `helo` is our
    /// EHLO name. Fails on bad TLS settings, naming the upstream.
    pub fn new(cfg: UpstreamConfig, helo: &str) -> Result<Self, UpstreamError> {
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
            let mut roots = rustls::RootCertStore::empty();
            if let Some(path) = &cfg.ca_file {
                use rustls::pki_types::pem::PemObject;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| err(format!("ca_file {}: {e}", path.display())))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(format!("ca_file {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(err(format!(
                        "ca_file {}: no usable certificate",
                        path.display()
                    )));
                }
            } else {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| err(format!("TLS setup: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(TlsConnector::from(Arc::new(config)))
        };
        Ok(Upstream {
            helo: helo.to_string(),
            cfg,
            tls,
            server_name,
            pin,
        })
    }

    /// The config this upstream was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Opens a session ready for a mail transaction: connected, greeted,
    /// TLS up (unless `tls = "none"`), EHLO done, authenticated if configured.
    pub async fn connect(&self) -> Result<Connection, SendError> {
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port());
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let tcp = timeout_at(deadline, TcpStream::connect(&addr))
            .await
            .map_err(|_| SendError::Timeout("TCP connect"))?
            .map_err(|e| SendError::Connect(addr.clone(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream = if self.cfg.tls == TlsMode::Implicit {
            Either::Right(self.handshake(tcp, deadline).await?)
        } else {
            Either::Left(tcp)
        };
        let mut conn = Connection::new(stream, &self.cfg);
        // The greeting shares the connect deadline: an upstream that accepts
        // TCP and never speaks is given up after `connect_timeout`, not after
        // a command timeout (RFC 5321 §4.5.3.2.1 suggests 5 minutes for the
        // greeting of a server that is slow, not hung).
        let greeting = conn.read_reply(deadline, "greeting").await?;
        if greeting.code != 220 {
            return Err(SendError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        conn.ehlo(&self.helo).await?;
        if self.cfg.tls == TlsMode::Starttls {
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
            let Either::Left(tcp) = conn.stream else {
                return Err(SendError::Protocol("STARTTLS on a TLS stream".into()));
            };
            let deadline = Instant::now() + self.cfg.connect_timeout;
            let tls = self.handshake(tcp, deadline).await?;
            conn = Connection::new(Either::Right(tls), &self.cfg);
            // RFC 3207 §4.2: forget everything learnt before TLS; EHLO again.
            conn.ehlo(&self.helo).await?;
        }
        if let (Some(user), Some(pass)) = (&self.cfg.username, &self.cfg.password) {
            conn.auth(self.cfg.auth, user, pass.expose()).await?;
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
    caps: Caps,
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
            if !self.buf.is_empty() {
                let mut it = self.buf.iter();
                let parsed = self.rx.parse(&mut it);
                let consumed = self.buf.len() - it.len();
                self.buf.drain(..consumed);
                match parsed {
                    Ok(r) => {
                        self.rx.reset();
                        return Ok(r);
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(smtp_proto::Error::ResponseTooLong) => {
                        return Err(SendError::Protocol(format!(
                            "reply to {what} longer than {} bytes",
                            smtp_proto::response::parser::MAX_RESPONSE_LENGTH
                        )))
                    }
                    Err(e) => return Err(SendError::Protocol(format!("reply to {what}: {e:?}"))),
                }
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

    async fn command(&mut self, line: &[u8], what: &'static str) -> Result<Reply, SendError> {
        let deadline = self.command_deadline();
        self.write(line, deadline, what).await?;
        self.flush(deadline, what).await?;
        self.read_reply(deadline, what).await
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), SendError> {
        let deadline = self.command_deadline();
        self.write(format!("EHLO {helo}\r\n").as_bytes(), deadline, "EHLO")
            .await?;
        self.flush(deadline, "EHLO").await?;
        let response = self.read_response(deadline, "EHLO").await?;
        if response.code == 250 {
            self.caps = Caps::parse(&response.message);
            return Ok(());
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
        Ok(())
    }

    async fn auth(&mut self, mech: AuthMechanism, user: &str, pass: &str) -> Result<(), SendError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let use_plain = match mech {
            AuthMechanism::Plain => true,
            AuthMechanism::Login => false,
            AuthMechanism::Auto => self.caps.auth_plain || !self.caps.auth_login,
        };
        if !self.caps.auth_plain && !self.caps.auth_login {
            return Err(SendError::Protocol("upstream does not offer AUTH".into()));
        }
        let reply = if use_plain {
            // RFC 4616 §2: authzid NUL authcid NUL passwd.
            let token = b64.encode(format!("\0{user}\0{pass}"));
            self.command(format!("AUTH PLAIN {token}\r\n").as_bytes(), "AUTH")
                .await?
        } else {
            let r = self.command(b"AUTH LOGIN\r\n", "AUTH").await?;
            if r.code != 334 {
                return Err(SendError::Refused {
                    stage: "AUTH",
                    reply: r,
                });
            }
            let r = self
                .command(format!("{}\r\n", b64.encode(user)).as_bytes(), "AUTH")
                .await?;
            if r.code != 334 {
                return Err(SendError::Refused {
                    stage: "AUTH",
                    reply: r,
                });
            }
            self.command(format!("{}\r\n", b64.encode(pass)).as_bytes(), "AUTH")
                .await?
        };
        if reply.code != 235 {
            return Err(SendError::Refused {
                stage: "AUTH",
                reply,
            });
        }
        Ok(())
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
        mail.push_str("\r\n");
        let result = if self.caps.pipelining {
            self.send_pipelined(&mail, env).await
        } else {
            self.send_lockstep(&mail, env).await
        };
        self.last_used = Instant::now();
        result
    }

    async fn send_pipelined(
        &mut self,
        mail: &str,
        env: Envelope<'_>,
    ) -> Result<TxReplies, SendError> {
        let mut batch = mail.as_bytes().to_vec();
        for r in env.recipients {
            batch.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
        }
        // RFC 2920 §3.1: DATA may end a pipelined group.
        batch.extend_from_slice(b"DATA\r\n");
        let deadline = self.command_deadline();
        self.write(&batch, deadline, "MAIL").await?;
        self.flush(deadline, "MAIL").await?;
        let mail = self.read_reply(deadline, "MAIL").await?;
        let mut rcpt = Vec::with_capacity(env.recipients.len());
        for _ in env.recipients {
            let deadline = self.command_deadline();
            rcpt.push(self.read_reply(deadline, "RCPT").await?);
        }
        let deadline = self.command_deadline();
        let data = self.read_reply(deadline, "DATA").await?;
        let accepted = mail.is_positive() && rcpt.iter().any(Reply::is_positive);
        if data.code == 354 {
            if accepted {
                let final_reply = self.send_body(env.body).await?;
                return Ok(TxReplies {
                    mail,
                    rcpt,
                    data: Some(final_reply),
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
            });
        }
        Ok(TxReplies {
            mail,
            rcpt,
            data: accepted.then_some(data),
        })
    }

    async fn send_lockstep(
        &mut self,
        mail: &str,
        env: Envelope<'_>,
    ) -> Result<TxReplies, SendError> {
        let mail = self.command(mail.as_bytes(), "MAIL").await?;
        if !mail.is_positive() {
            return Ok(TxReplies {
                mail,
                rcpt: Vec::new(),
                data: None,
            });
        }
        let mut rcpt = Vec::with_capacity(env.recipients.len());
        for r in env.recipients {
            rcpt.push(
                self.command(format!("RCPT TO:<{r}>\r\n").as_bytes(), "RCPT")
                    .await?,
            );
        }
        if !rcpt.iter().any(Reply::is_positive) {
            return Ok(TxReplies {
                mail,
                rcpt,
                data: None,
            });
        }
        let data = self.command(b"DATA\r\n", "DATA").await?;
        let data = if data.code == 354 {
            self.send_body(env.body).await?
        } else {
            data
        };
        Ok(TxReplies {
            mail,
            rcpt,
            data: Some(data),
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

fn memchr_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}
