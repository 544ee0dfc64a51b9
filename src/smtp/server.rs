//! The only inbound socket code: accept, connection caps, PROXY header,
//! TLS (implicit and STARTTLS), timeouts, and the read/write loop that feeds
//! a [`Session`] and writes its replies in order.
//!
//! Memory per session is bounded: the input buffer holds at most one read
//! plus one partial command line (capped by the framer), message content
//! goes to the session's size-capped body, and replies are flushed whenever
//! all pending input is processed (RFC 2920 §3.2: pipelined replies in order).
//!
//! With [`Server::with_metrics`], each listener (named by its configured
//! address) counts accepted and refused connections, open sessions and
//! failed TLS handshakes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::intake::TlsInfo;
use crate::metrics::{ConnectionRefusal, ListenerMetrics, Metrics};
use crate::smtp::budget::MemoryBudget;
use crate::smtp::config::{ListenerConfig, ListenerMode, SmtpConfig, SmtpConfigError};
use crate::smtp::proxy;
use crate::smtp::reply::Reply;
use crate::smtp::session::metrics::connection_refusal;
use crate::smtp::session::{Ports, Session, SessionMetrics, SessionSettings};
use crate::tls::ServerTls;

/// Largest read per syscall; the input buffer never grows far beyond it.
const READ_CHUNK: usize = 16 * 1024;

/// The submission server: listeners share caps, TLS and ports.
pub struct Server {
    hostname: String,
    config: Arc<SmtpConfig>,
    tls: Option<ServerTls>,
    ports: Ports,
    conns: Arc<ConnectionCaps>,
    memory: Arc<MemoryBudget>,
    shutdown_grace: Duration,
    metrics: Arc<Metrics>,
}

/// Global and per-IP concurrent connection counts.
struct ConnectionCaps {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Releases its slot(s) on drop.
struct Slot {
    caps: Arc<ConnectionCaps>,
    ip: Option<IpAddr>,
}

impl ConnectionCaps {
    fn acquire_global(self: &Arc<Self>) -> Option<Slot> {
        let mut st = self.state.lock().ok()?;
        if st.0 >= self.max_total {
            return None;
        }
        st.0 += 1;
        Some(Slot {
            caps: self.clone(),
            ip: None,
        })
    }

    fn acquire_ip(&self, slot: &mut Slot, ip: IpAddr) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let n = st.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return false;
        }
        *n += 1;
        slot.ip = Some(ip);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut st) = self.caps.state.lock() {
            st.0 = st.0.saturating_sub(1);
            if let Some(ip) = self.ip {
                if let Some(n) = st.1.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        st.1.remove(&ip);
                    }
                }
            }
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] SmtpConfigError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// How a session loop ended.
enum Exit {
    Closed,
    StartTls,
}

impl Server {
    /// A server named `hostname` (greeting, EHLO) with the `[smtp]` config,
    /// the TLS certificate (required by `starttls`/`implicit-tls` listeners),
    /// and the ports sessions talk to. `shutdown_grace`: how long sessions
    /// may finish after shutdown before they get `421 4.3.2`.
    pub fn new(
        hostname: String,
        config: SmtpConfig,
        tls: Option<ServerTls>,
        ports: Ports,
        shutdown_grace: Duration,
    ) -> Result<Self, ServerError> {
        config.validate(tls.is_some())?;
        let conns = Arc::new(ConnectionCaps {
            max_total: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            state: Mutex::new((0, HashMap::new())),
        });
        Ok(Server {
            hostname,
            memory: MemoryBudget::new(config.message_memory_budget),
            config: Arc::new(config),
            tls,
            ports,
            conns,
            shutdown_grace,
            metrics: Metrics::detached(),
        })
    }

    /// Records connections, refusals, open sessions and TLS failures per
    /// listener (named by its address), and every session's AUTH outcomes,
    /// refusals and received messages, into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.memory =
            MemoryBudget::with_metrics(self.config.message_memory_budget, metrics.clone());
        self.metrics = metrics;
        self
    }

    /// The node's budget of message bytes held in memory, for other front
    /// doors to share (the HTTP API).
    pub fn memory(&self) -> Arc<MemoryBudget> {
        self.memory.clone()
    }

    /// Binds every listener of `config` (call before dropping privileges;
    /// port 0 picks a free port: read it from the returned listener).
    pub async fn bind(
        listeners: &[ListenerConfig],
    ) -> Result<Vec<(ListenerConfig, TcpListener)>, ServerError> {
        let mut out = Vec::with_capacity(listeners.len());
        for l in listeners {
            let sock = TcpListener::bind(l.address)
                .await
                .map_err(|source| ServerError::Bind {
                    address: l.address,
                    source,
                })?;
            out.push((l.clone(), sock));
        }
        Ok(out)
    }

    /// Accepts on every listener until `shutdown` is cancelled; then stops
    /// accepting, lets sessions finish (idle ones are told `421 4.3.2` at
    /// once) for up to the grace period, then closes the rest with `421 4.3.2`.
    pub async fn serve(
        self,
        listeners: Vec<(ListenerConfig, TcpListener)>,
        shutdown: CancellationToken,
    ) {
        let server = Arc::new(self);
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        for (cfg, listener) in listeners {
            let server = server.clone();
            let tracker2 = tracker.clone();
            let shutdown = shutdown.clone();
            let hard = hard_stop.clone();
            tracker.spawn(async move {
                tracing::info!(address = %cfg.address, mode = ?cfg.mode, "listening");
                server
                    .accept_loop(cfg, listener, tracker2, shutdown, hard)
                    .await;
            });
        }
        shutdown.cancelled().await;
        tracker.close();
        if tokio::time::timeout(server.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::info!("shutdown grace period over, closing remaining sessions");
            hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        cfg: ListenerConfig,
        listener: TcpListener,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        hard: CancellationToken,
    ) {
        let cfg = Arc::new(cfg);
        let lm = Arc::new(
            self.metrics
                .listener(&cfg.address.to_string(), cfg.mode.metric_label()),
        );
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            lm.connection_accepted();
            let server = self.clone();
            let cfg = cfg.clone();
            let lm = lm.clone();
            let (shutdown, hard) = (shutdown.clone(), hard.clone());
            let id = uuid::Uuid::now_v7().simple().to_string();
            let span = tracing::info_span!("smtp", session = %id);
            tracker.spawn(
                async move {
                    let listener = Listener { cfg, metrics: lm };
                    server
                        .connection(id, listener, tcp, peer, shutdown, hard)
                        .await;
                }
                .instrument(span),
            );
        }
    }

    async fn connection(
        self: Arc<Self>,
        id: String,
        listener: Listener,
        mut tcp: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
        hard: CancellationToken,
    ) {
        let Listener { cfg, metrics: lm } = listener;
        let lm = &*lm;
        let implicit = cfg.mode == ListenerMode::ImplicitTls;
        let session_end = tokio::time::Instant::now() + self.config.session_lifetime;
        let Some(mut slot) = self.conns.acquire_global() else {
            tracing::info!(session = %id, peer = %peer, "global connection cap reached");
            lm.connection_refused(ConnectionRefusal::GlobalCap);
            refuse(&mut tcp, implicit, &Reply::too_many_connections()).await;
            return;
        };
        let Some(client) = self.client_address(&id, &cfg, &mut tcp, peer, lm).await else {
            return;
        };
        let ip = client.ip();
        tracing::info!(session = %id, client = %client, peer = %peer, listener = %cfg.address, "connect");
        let refusal = self.admission(&id, &mut slot, ip, lm).await;
        let settings = self.settings(&cfg, ip);
        let ctx = Ctx {
            id: &id,
            config: &self.config,
            shutdown: &shutdown,
            hard: &hard,
            session_end,
        };
        let new_session = |tls| Session::new(id.clone(), settings, self.ports.clone(), ip, tls);
        if implicit {
            self.implicit_tls(tcp, refusal, lm, &ctx, new_session).await;
        } else {
            self.cleartext(tcp, refusal, lm, &ctx, new_session).await;
        }
    }

    /// The client's address: from the PROXY header when the listener takes
    /// one and `peer` is a trusted proxy, else `peer`. `None` when the
    /// header is bad or late (the connection is then dropped).
    async fn client_address(
        &self,
        id: &str,
        cfg: &ListenerConfig,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        lm: &ListenerMetrics,
    ) -> Option<SocketAddr> {
        let proxied = cfg.proxy_protocol
            && (self.config.proxy_trusted.iter()).any(|n| n.contains(&peer.ip()));
        if !proxied {
            return Some(peer);
        }
        match tokio::time::timeout(self.config.handshake_timeout, read_proxy(tcp)).await {
            Ok(Ok(source)) => Some(source.unwrap_or(peer)),
            Ok(Err(e)) => {
                tracing::info!(session = %id, peer = %peer, error = %e, "bad PROXY header");
                lm.connection_refused(ConnectionRefusal::ProxyHeader);
                None
            }
            Err(_) => {
                lm.connection_refused(ConnectionRefusal::ProxyHeader);
                None
            }
        }
    }

    /// What a session of listener `cfg` with client `ip` may do.
    fn settings(&self, cfg: &ListenerConfig, ip: IpAddr) -> Arc<SessionSettings> {
        Arc::new(SessionSettings {
            hostname: self.hostname.clone(),
            max_message_size: self.config.max_message_size,
            max_recipients: self.config.max_recipients,
            max_errors: self.config.max_errors,
            starttls_available: self.tls.is_some() && cfg.mode != ListenerMode::ImplicitTls,
            auth_without_tls: cfg.mode == ListenerMode::Plain && ip.is_loopback(),
            normalize_line_endings: cfg.normalize_line_endings,
            auth_failure_delay: self.config.auth_failure_delay,
            metrics: SessionMetrics::new(self.metrics.clone()),
            trusted: cfg.trusted_access(ip),
            memory: self.memory.clone(),
        })
    }

    /// An implicit-TLS connection (RFC 8314): the handshake, then the
    /// session (or the admission refusal) inside TLS.
    async fn implicit_tls(
        &self,
        tcp: TcpStream,
        refusal: Option<Reply>,
        lm: &ListenerMetrics,
        ctx: &Ctx<'_>,
        new_session: impl FnOnce(Option<TlsInfo>) -> Session,
    ) {
        let Some(tls) = &self.tls else { return };
        let Some((mut stream, info)) = self.handshake(ctx.id, tls, tcp, lm).await else {
            return;
        };
        // RFC 8314 §3.3: on implicit TLS, even a refusal is sent in TLS.
        if let Some(reply) = refusal {
            let mut out = reply.to_wire().into_bytes();
            write_out(&mut stream, &mut out, Duration::from_secs(5)).await;
            let _ = stream.shutdown().await;
            return;
        }
        let _open = lm.session_started();
        let mut session = new_session(Some(info));
        let greeting = session.greeting();
        drive(
            &mut stream,
            &mut session,
            &mut BytesMut::new(),
            Some(greeting),
            ctx,
        )
        .await;
        let _ = stream.shutdown().await;
        tracing::info!(session = %session.id(), "disconnect");
    }

    /// A cleartext connection: the session, moved into TLS in place when
    /// the client sends STARTTLS (RFC 3207).
    async fn cleartext(
        &self,
        mut tcp: TcpStream,
        refusal: Option<Reply>,
        lm: &ListenerMetrics,
        ctx: &Ctx<'_>,
        new_session: impl FnOnce(Option<TlsInfo>) -> Session,
    ) {
        if let Some(reply) = refusal {
            refuse(&mut tcp, false, &reply).await;
            return;
        }
        let _open = lm.session_started();
        let mut session = new_session(None);
        let greeting = session.greeting();
        let mut inbuf = BytesMut::new();
        if let Exit::StartTls = drive(&mut tcp, &mut session, &mut inbuf, Some(greeting), ctx).await
        {
            // RFC 3207 §4.2 / CVE-2011-0411: nothing read before the
            // handshake may be interpreted after it.
            inbuf.clear();
            let Some(tls) = &self.tls else { return };
            let Some((mut stream, info)) = self.handshake(ctx.id, tls, tcp, lm).await else {
                return;
            };
            session.on_tls(info);
            drive(&mut stream, &mut session, &mut inbuf, None, ctx).await;
            let _ = stream.shutdown().await;
        }
        tracing::info!(session = %ctx.id, "disconnect");
    }

    /// Per-IP cap and connection rate limit for the real client `ip`:
    /// `Some(refusal)` to send before closing.
    async fn admission(
        &self,
        id: &str,
        slot: &mut Slot,
        ip: IpAddr,
        lm: &ListenerMetrics,
    ) -> Option<Reply> {
        if !self.conns.acquire_ip(slot, ip) {
            tracing::info!(session = %id, client = %ip, "per-IP connection cap reached");
            lm.connection_refused(ConnectionRefusal::IpCap);
            return Some(Reply::too_many_connections());
        }
        if let Err(refusal) = self.ports.limits.connection(ip).await {
            tracing::info!(session = %id, client = %ip, reason = %refusal.reason, "connection rate-limited");
            lm.connection_refused(connection_refusal(&refusal));
            return Some(Reply::connection_limited(&refusal));
        }
        None
    }

    async fn handshake(
        &self,
        id: &str,
        tls: &ServerTls,
        tcp: TcpStream,
        lm: &ListenerMetrics,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo)> {
        match tls.accept(tcp, self.config.handshake_timeout).await {
            Ok((stream, info)) => {
                tracing::info!(session = %id, protocol = %info.protocol, cipher = %info.cipher, "tls");
                Some((stream, info))
            }
            Err(e) => {
                tracing::info!(session = %id, error = %e, "tls handshake failed");
                lm.tls_handshake_failed();
                None
            }
        }
    }
}

/// One listener's config and its metric series (shared by its sessions).
struct Listener {
    cfg: Arc<ListenerConfig>,
    metrics: Arc<ListenerMetrics>,
}

struct Ctx<'a> {
    /// The session id, for logs.
    id: &'a str,
    config: &'a SmtpConfig,
    shutdown: &'a CancellationToken,
    hard: &'a CancellationToken,
    /// `smtp.session_lifetime` after the connection was accepted.
    session_end: tokio::time::Instant,
}

/// Which deadline a read may wait for (named in the log when it passes).
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// No byte for `command_timeout`/`data_timeout` (RFC 5321 §4.5.3.2).
    Idle,
    /// A command line not complete `command_timeout` after the last reply.
    CommandLine,
    /// A message's content not complete within `data_phase_timeout`.
    DataPhase,
    /// `session_lifetime` over.
    Session,
}

/// The read deadlines of one session (issue 12 item 7): besides the
/// per-read timeout, a whole command line, a whole message's content and
/// the whole session each have one, so a client trickling a byte at a time
/// cannot hold a session forever.
struct Deadlines {
    command_line: tokio::time::Instant,
    data_phase: Option<tokio::time::Instant>,
}

impl Deadlines {
    fn new(config: &SmtpConfig) -> Self {
        Deadlines {
            command_line: tokio::time::Instant::now() + config.command_timeout,
            data_phase: None,
        }
    }

    /// A reply was produced: the next command line starts now.
    fn replied(&mut self, config: &SmtpConfig) {
        self.command_line = tokio::time::Instant::now() + config.command_timeout;
    }

    /// The earliest deadline for the next read, and which one it is.
    fn next(&mut self, session: &Session, ctx: &Ctx<'_>) -> (tokio::time::Instant, Deadline) {
        let now = tokio::time::Instant::now();
        let data = session.reading_data();
        if !session.in_message() {
            self.data_phase = None;
        } else if self.data_phase.is_none() {
            self.data_phase = Some(now + ctx.config.data_phase_timeout);
        }
        let per_read = if data {
            ctx.config.data_timeout
        } else {
            ctx.config.command_timeout
        };
        let mut next = (now + per_read, Deadline::Idle);
        let mut earlier = |at: tokio::time::Instant, which: Deadline| {
            if at < next.0 {
                next = (at, which);
            }
        };
        if !data {
            earlier(self.command_line, Deadline::CommandLine);
        }
        if let Some(at) = self.data_phase {
            earlier(at, Deadline::DataPhase);
        }
        earlier(ctx.session_end, Deadline::Session);
        next
    }
}

/// Writes a refusal (not on implicit TLS: there is no TLS yet to write it in).
async fn refuse(tcp: &mut TcpStream, implicit: bool, reply: &Reply) {
    if !implicit {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tcp.write_all(reply.to_wire().as_bytes()),
        )
        .await;
    }
    let _ = tcp.shutdown().await;
}

/// Reads exactly one PROXY header; `Some(source)` unless the proxy reports none.
async fn read_proxy(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, proxy::ProxyError> {
    let mut buf = Vec::with_capacity(proxy::MIN_HEADER);
    loop {
        match proxy::parse(&buf)? {
            proxy::Parsed::Need(n) => {
                let have = buf.len();
                buf.resize(n, 0);
                tcp.read_exact(&mut buf[have..])
                    .await
                    .map_err(|_| proxy::ProxyError::Malformed("connection closed"))?;
            }
            proxy::Parsed::Done { source } => return Ok(source),
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Vec<u8>, t: Duration) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = matches!(
        tokio::time::timeout(t, async {
            stream.write_all(out).await?;
            stream.flush().await
        })
        .await,
        Ok(Ok(()))
    );
    out.clear();
    ok
}

/// The session loop on one stream: feed input, write replies, time out.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    inbuf: &mut BytesMut,
    greeting: Option<Reply>,
    ctx: &Ctx<'_>,
) -> Exit {
    let write_timeout = ctx.config.command_timeout;
    let mut deadlines = Deadlines::new(ctx.config);
    let mut out: Vec<u8> = Vec::new();
    if let Some(g) = greeting {
        out.extend_from_slice(g.to_wire().as_bytes());
    }
    loop {
        while let Some(reply) = session.advance(inbuf).await {
            deadlines.replied(ctx.config);
            out.extend_from_slice(reply.to_wire().as_bytes());
            if reply.close {
                write_out(stream, &mut out, write_timeout).await;
                return Exit::Closed;
            }
            if session.take_starttls() {
                if !write_out(stream, &mut out, write_timeout).await {
                    return Exit::Closed;
                }
                return Exit::StartTls;
            }
        }
        if !write_out(stream, &mut out, write_timeout).await {
            return Exit::Closed;
        }
        if inbuf.is_empty() && inbuf.capacity() > 4 * READ_CHUNK {
            *inbuf = BytesMut::new();
        }
        if inbuf.capacity() - inbuf.len() < 1024 {
            inbuf.reserve(READ_CHUNK.min(inbuf.len().max(4096)));
        }
        let busy = session.reading_data();
        let (deadline, which) = deadlines.next(session, ctx);
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.read_buf(inbuf)) => r,
            _ = ctx.shutdown.cancelled(), if !busy && inbuf.is_empty() => {
                out.extend_from_slice(Reply::shutting_down().to_wire().as_bytes());
                write_out(stream, &mut out, Duration::from_secs(5)).await;
                return Exit::Closed;
            }
            _ = ctx.hard.cancelled() => {
                out.extend_from_slice(Reply::shutting_down().to_wire().as_bytes());
                write_out(stream, &mut out, Duration::from_secs(5)).await;
                return Exit::Closed;
            }
        };
        match read {
            Err(_) => {
                tracing::info!(session = %session.id(), deadline = ?which, "timeout");
                out.extend_from_slice(Reply::timeout().to_wire().as_bytes());
                write_out(stream, &mut out, Duration::from_secs(5)).await;
                return Exit::Closed;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Exit::Closed,
            Ok(Ok(_)) => {}
        }
    }
}
