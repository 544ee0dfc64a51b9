//! The SMTP submission state machine (RFC 5321, 6409, 3207, 4954, 3030).
//!
//! Sans-IO: the server feeds received bytes to [`Session::advance`], which
//! returns the next [`Reply`] to send (or `None` when it needs more input).
//! The session never touches a socket or SQL: it talks to auth, intake and
//! limits through [`Authenticator`], [`Intake`] and [`SessionLimits`].
//! After a `220` to STARTTLS, [`Session::take_starttls`] is true; the server
//! discards buffered input, upgrades, and calls [`Session::on_tls`].
//! AUTH outcomes, refused transactions and received messages are counted
//! through [`SessionSettings::metrics`] (see [`metrics`]); rate-limit
//! refusals are counted by the [`SessionLimits`] implementation, which
//! knows their exact labels.
//!
//! The AUTH exchange is in `auth.rs`, DATA/BDAT and submission in `data.rs`,
//! the trusted-network account in `trusted.rs` (more `impl Session` blocks).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::metrics::RejectReason;
use crate::smtp::budget::{Lease, MemoryBudget};
use crate::smtp::command::{self, Command, LineFramer, MailParams, RcptParams, MAX_AUTH_LINE};
use crate::smtp::data::{BdatChunk, Body, DataReader};
use crate::smtp::ports::{Authenticator, SessionLimits};
use crate::smtp::ports::{Identity, Intake, Recipient, TlsInfo};
use crate::smtp::reply::Reply;
use crate::smtp::sasl::Exchange;
use crate::submission;

mod auth;
mod data;
pub mod metrics;
mod trusted;
pub use metrics::SessionMetrics;

/// What a session needs to know about its listener and limits.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Name in the greeting and EHLO.
    pub hostname: String,
    /// RFC 1870 SIZE, enforced at MAIL and while reading.
    pub max_message_size: usize,
    /// Recipients per message (RFC 5321 §4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
    /// Client errors (5xx replies) tolerated before 421 and close; 4xx
    /// replies (server-side refusals: store down, limits, excess
    /// recipients) never count.
    pub max_errors: usize,
    /// STARTTLS is offered (a certificate is configured, not yet TLS).
    pub starttls_available: bool,
    /// AUTH without TLS: only on an explicitly configured loopback plain listener.
    pub auth_without_tls: bool,
    /// Bare CR/LF in DATA become CRLF instead of being refused (per-user override wins).
    pub normalize_line_endings: bool,
    /// A failed AUTH is answered no sooner than this after its check began.
    pub auth_failure_delay: std::time::Duration,
    /// Where AUTH outcomes, refusals and received messages are counted.
    pub metrics: SessionMetrics,
    /// The client is on one of the listener's trusted networks: it is that
    /// network's account without AUTH (see `trusted.rs`).
    pub trusted: Option<crate::smtp::config::TrustedAccess>,
    /// The node-wide budget of message bytes held in memory (shared by
    /// every session of the node): `452 4.3.1` when spent.
    pub memory: Arc<MemoryBudget>,
}

/// The traits a session talks to.
#[derive(Clone)]
pub struct Ports {
    pub authenticator: Arc<dyn Authenticator>,
    pub intake: Arc<dyn Intake>,
    pub limits: Arc<dyn SessionLimits>,
}

struct Transaction {
    mail: MailParams,
    recipients: Vec<Recipient>,
    /// Set once BDAT started: the content received so far.
    bdat: Option<Body>,
    /// The memory budget held for the content (from DATA/BDAT to the end
    /// of the transaction: stored or refused).
    lease: Option<Lease>,
}

enum Input {
    Command,
    Sasl(Exchange, &'static str),
    Data(DataReader),
    /// A BDAT chunk; `refusal` is sent once the chunk is consumed (RFC 3030 §2:
    /// a refused chunk is still read, never interpreted as commands).
    Bdat {
        chunk: BdatChunk,
        size: usize,
        last: bool,
        refusal: Option<Reply>,
    },
}

/// One SMTP session.
pub struct Session {
    id: String,
    settings: Arc<SessionSettings>,
    ports: Ports,
    ip: IpAddr,
    tls: Option<TlsInfo>,
    helo: Option<String>,
    identity: Option<Identity>,
    mechanism: &'static str,
    _slot: Option<Box<dyn std::any::Any + Send + Sync>>,
    txn: Option<Transaction>,
    input: Input,
    framer: LineFramer,
    errors: usize,
    starttls: bool,
}

impl Session {
    /// A new session for a client at `ip`; `tls` is `Some` on implicit TLS.
    pub fn new(
        id: String,
        settings: Arc<SessionSettings>,
        ports: Ports,
        ip: IpAddr,
        tls: Option<TlsInfo>,
    ) -> Self {
        Session {
            id,
            settings,
            ports,
            ip,
            tls,
            helo: None,
            identity: None,
            mechanism: "",
            _slot: None,
            txn: None,
            input: Input::Command,
            framer: LineFramer::default(),
            errors: 0,
            starttls: false,
        }
    }

    /// The session id (on every log line).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Reply {
        Reply::greeting(&self.settings.hostname)
    }

    /// Whether message content is being read (the server then applies the
    /// data timeout instead of the command timeout).
    pub fn reading_data(&self) -> bool {
        matches!(self.input, Input::Data(_) | Input::Bdat { .. })
    }

    /// Whether a message is being transferred: DATA content, a BDAT chunk,
    /// or between the chunks of a BDAT transaction (the server applies the
    /// whole-message deadline while this holds).
    pub fn in_message(&self) -> bool {
        self.reading_data() || self.txn.as_ref().is_some_and(|t| t.bdat.is_some())
    }

    /// The authenticated identity, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// True once after STARTTLS was accepted: the server must now drop any
    /// buffered input (RFC 3207 §4, CVE-2011-0411), handshake, then call
    /// [`Session::on_tls`].
    pub fn take_starttls(&mut self) -> bool {
        std::mem::take(&mut self.starttls)
    }

    /// TLS is up: back to the state before EHLO (RFC 3207 §4.2).
    pub fn on_tls(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.helo = None;
        self.identity = None;
        self.txn = None;
        self.input = Input::Command;
        self.framer.reset();
    }

    /// Processes input from the front of `input` until one reply is due.
    /// `None`: all complete input is consumed; read more.
    pub async fn advance(&mut self, input: &mut BytesMut) -> Option<Reply> {
        let reply = self.step(input).await?;
        // Only the client's own errors count (5xx: syntax, sequence, bad
        // credentials, refused content). A 4xx is the server's state (store
        // down, a limit, RFC 5321 §4.5.3.1.10 excess recipients): counting
        // it would close sessions during an outage or drop a pipelined
        // transaction that overshot max_recipients.
        if reply.code >= 500 && !reply.close {
            self.errors += 1;
            if self.errors > self.settings.max_errors {
                tracing::info!(session = %self.id, errors = self.errors, "too many errors");
                return Some(Reply::too_many_errors());
            }
        }
        Some(reply)
    }

    async fn step(&mut self, input: &mut BytesMut) -> Option<Reply> {
        loop {
            if let Some(reply) = self.step_once(input).await? {
                return Some(reply);
            }
        }
    }

    /// `None`: needs input; `Some(None)`: progressed without a reply (BDAT
    /// command: its reply comes after the chunk); `Some(Some(r))`: reply.
    async fn step_once(&mut self, input: &mut BytesMut) -> Option<Option<Reply>> {
        Some(match &mut self.input {
            Input::Command => {
                let line = self.framer.next_line(input, MAX_AUTH_LINE)?;
                match line.and_then(|l| command::parse(&l)) {
                    Ok(Command::Bdat { size, last }) => {
                        self.on_bdat(size, last).await;
                        None
                    }
                    Ok(cmd) => Some(self.on_command(cmd).await),
                    Err(e) => Some(Reply::from(&e)),
                }
            }
            Input::Sasl(..) => {
                let line = self.framer.next_line(input, MAX_AUTH_LINE)?;
                let Input::Sasl(exchange, mechanism) =
                    std::mem::replace(&mut self.input, Input::Command)
                else {
                    return None;
                };
                Some(self.on_sasl_line(exchange, mechanism, line).await)
            }
            Input::Data(reader) => {
                let (n, done) = reader.feed(input);
                input.advance(n);
                if let Some(t) = self.txn.as_mut() {
                    data::cover(&mut t.lease, reader.body_mut());
                }
                let result = done?;
                self.input = Input::Command;
                Some(self.on_data_end(result).await)
            }
            Input::Bdat { chunk, .. } => {
                let mut discard = Body::new(0, false);
                let mut no_lease = None;
                let (body, lease) = match self.txn.as_mut() {
                    Some(Transaction {
                        bdat: Some(b),
                        lease,
                        ..
                    }) => (b, lease),
                    _ => (&mut discard, &mut no_lease),
                };
                let (n, complete) = chunk.feed(input, body);
                input.advance(n);
                data::cover(lease, body);
                if !complete {
                    return None;
                }
                let Input::Bdat {
                    size,
                    last,
                    refusal,
                    ..
                } = std::mem::replace(&mut self.input, Input::Command)
                else {
                    return None;
                };
                Some(self.on_bdat_chunk_end(size, last, refusal).await)
            }
        })
    }

    /// Dispatches one parsed command other than BDAT (see [`Session::on_bdat`]).
    pub async fn on_command(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Ehlo(host) => self.on_ehlo(host),
            Command::Helo(host) => self.on_helo(host),
            Command::StartTls => self.on_starttls(),
            Command::Auth { mechanism, initial } => self.on_auth(mechanism, initial).await,
            Command::Mail(m) => self.on_mail_any(m).await,
            Command::Rcpt(r) => self.on_rcpt(r).await,
            Command::Data => self.on_data().await,
            Command::Bdat { .. } => Reply::bad_sequence("BDAT is handled by advance()"),
            Command::Rset => {
                self.txn = None;
                Reply::ok()
            }
            Command::Noop => Reply::ok(),
            Command::Vrfy => Reply::vrfy(),
            Command::Help => Reply::help(),
            Command::Quit => Reply::bye(&self.settings.hostname),
            Command::NotImplemented(name) => Reply::not_implemented(name),
        }
    }

    fn auth_allowed_here(&self) -> bool {
        self.tls.is_some() || self.settings.auth_without_tls
    }

    /// EHLO: RFC 5321 §4.1.1.1; resets any transaction.
    pub fn on_ehlo(&mut self, host: String) -> Reply {
        tracing::info!(session = %self.id, helo = %host, "ehlo");
        self.helo = Some(host);
        self.txn = None;
        let s = &self.settings;
        let mut lines = vec![
            format!("{} at your service", s.hostname),
            "PIPELINING".to_string(),
            format!("SIZE {}", s.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            // RFC 3461: NOTIFY, RET, ENVID and ORCPT are honoured (delivery/dsn.rs).
            "DSN".to_string(),
        ];
        if self.tls.is_none() && s.starttls_available {
            lines.push("STARTTLS".to_string());
        }
        // RFC 4954 §4 + DESIGN: AUTH is never offered in clear text.
        if self.auth_allowed_here() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        Reply::ehlo(lines)
    }

    /// HELO: RFC 5321 §4.1.1.1, no extensions.
    pub fn on_helo(&mut self, host: String) -> Reply {
        tracing::info!(session = %self.id, helo = %host, "helo");
        self.helo = Some(host);
        self.txn = None;
        Reply::ehlo(vec![self.settings.hostname.clone()])
    }

    /// STARTTLS: RFC 3207 §4.
    pub fn on_starttls(&mut self) -> Reply {
        if self.tls.is_some() {
            return Reply::bad_sequence("TLS already active");
        }
        if !self.settings.starttls_available {
            return Reply::new(454, "4.7.0", "TLS not available");
        }
        self.starttls = true;
        Reply::ready_for_tls()
    }

    /// MAIL FROM: RFC 5321 §4.1.1.2, RFC 6409 §4.1 (authorised senders
    /// only); the login's message rates and quotas are checked here (451
    /// 4.7.1), charged only when the message is committed.
    pub async fn on_mail(&mut self, m: MailParams) -> Reply {
        if self.helo.is_none() {
            return Reply::bad_sequence("send EHLO first");
        }
        let metrics = &self.settings.metrics;
        let Some(identity) = &self.identity else {
            metrics.rejected(RejectReason::AuthRequired);
            return if self.auth_allowed_here() {
                Reply::auth_required()
            } else {
                Reply::tls_required()
            };
        };
        if self.txn.is_some() {
            return Reply::bad_sequence("nested MAIL command");
        }
        if let Some(size) = m.size {
            if let Err(r) = submission::check_size(size, self.settings.max_message_size) {
                tracing::info!(session = %self.id, size, "declared size too big");
                return self.refused(r, &m.address, None);
            }
        }
        if let Some(size) = m.size.filter(|&s| !self.settings.memory.fits(s)) {
            tracing::info!(session = %self.id, size, "memory budget spent");
            metrics.rejected(RejectReason::MemoryBudget);
            return Reply::insufficient_storage();
        }
        if !m.smtputf8 && !m.address.is_ascii() {
            return Reply::utf8_required();
        }
        match submission::check_sender(identity, &m.address) {
            Ok(rule) => {
                tracing::debug!(session = %self.id, sender = %m.address, rule, "sender permitted");
            }
            Err(r) => {
                tracing::info!(session = %self.id, sender = %m.address, username = %identity.username, "sender not permitted");
                return self.refused(r, &m.address, None);
            }
        }
        if let Err(r) = submission::mail_allowed(&*self.ports.limits, identity).await {
            tracing::info!(session = %self.id, reply = %r.reply.text, "message rate-limited at MAIL");
            return self.refused(r, &m.address, None);
        }
        self.txn = Some(Transaction {
            mail: m,
            recipients: Vec::new(),
            bdat: None,
            lease: None,
        });
        Reply::sender_ok()
    }

    /// Counts `r` (when it carries a reason), reports it for its
    /// `rejected` event (MAIL from `sender`, or RCPT of `recipient`) and
    /// returns its reply.
    fn refused(&self, r: submission::Refusal, sender: &str, recipient: Option<&str>) -> Reply {
        if let Some(reason) = r.reason {
            self.settings.metrics.rejected(reason);
        }
        if let Some(identity) = &self.identity {
            let rcpts: Vec<String> = recipient.map(str::to_string).into_iter().collect();
            submission::report(&*self.ports.intake, identity, sender, &rcpts, &r);
        }
        r.reply
    }

    /// RCPT TO: RFC 5321 §4.1.1.3. Past `max_recipients`: 452 4.5.3, the
    /// transaction keeps the earlier recipients (RFC 5321 §4.5.3.1.10); the
    /// login's recipient quota is checked here (451 4.7.1).
    pub async fn on_rcpt(&mut self, r: RcptParams) -> Reply {
        let Some(txn) = self.txn.as_mut() else {
            return Reply::bad_sequence("need MAIL before RCPT");
        };
        if txn.bdat.is_some() {
            return Reply::bad_sequence("RCPT after BDAT");
        }
        if !txn.mail.smtputf8 && !r.address.is_ascii() {
            return Reply::utf8_required();
        }
        if txn.recipients.iter().any(|x| x.address == r.address) {
            return Reply::recipient_ok();
        }
        let count = txn.recipients.len() + 1;
        if let Err(refusal) = submission::recipient_allowed(
            &*self.ports.limits,
            self.identity.as_ref(),
            count,
            self.settings.max_recipients,
        )
        .await
        {
            if refusal.retry_after.is_some() {
                tracing::info!(session = %self.id, reply = %refusal.reply.text, "recipient quota at RCPT");
            }
            let sender = self.txn.as_ref().map(|t| t.mail.address.clone());
            return self.refused(refusal, sender.as_deref().unwrap_or(""), Some(&r.address));
        }
        let Some(txn) = self.txn.as_mut() else {
            return Reply::bad_sequence("need MAIL before RCPT");
        };
        txn.recipients.push(Recipient {
            address: r.address,
            notify: r.notify,
            orcpt: r.orcpt,
        });
        Reply::recipient_ok()
    }
}

#[cfg(test)]
mod tests;
