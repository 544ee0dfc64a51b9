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

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::auth::Identity;
use crate::intake::{ClientInfo, Intake, Submission, TlsInfo};
use crate::metrics::{AuthResult, RejectReason};
use crate::policy;
use crate::smtp::command::{
    self, Command, LineFramer, MailParams, Mechanism, RcptParams, MAX_AUTH_LINE,
};
use crate::smtp::data::{BdatChunk, Body, DataReader};
use crate::smtp::ports::{AuthOutcome, Authenticator, SessionLimits};
use crate::smtp::reply::Reply;
use crate::smtp::sasl::{self, Credentials, Exchange, Step};
use crate::store::NewRecipient;

#[path = "session_metrics.rs"]
pub mod metrics;
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
    /// Error replies tolerated before 421 and close.
    pub max_errors: usize,
    /// STARTTLS is offered (a certificate is configured, not yet TLS).
    pub starttls_available: bool,
    /// AUTH without TLS: only on an explicitly configured loopback plain listener.
    pub auth_without_tls: bool,
    /// Bare CR/LF in DATA become CRLF instead of being refused (per-user override wins).
    pub normalize_line_endings: bool,
    /// Where AUTH outcomes, refusals and received messages are counted.
    pub metrics: SessionMetrics,
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
    recipients: Vec<NewRecipient>,
    /// Set once BDAT started: the content received so far.
    bdat: Option<Body>,
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
        if reply.is_error() && !reply.close {
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
                let result = done?;
                self.input = Input::Command;
                Some(self.on_data_end(result).await)
            }
            Input::Bdat { chunk, .. } => {
                let mut discard = Body::new(0, false);
                let body = match self.txn.as_mut().and_then(|t| t.bdat.as_mut()) {
                    Some(b) => b,
                    None => &mut discard,
                };
                let (n, complete) = chunk.feed(input, body);
                input.advance(n);
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
            Command::Mail(m) => self.on_mail(m),
            Command::Rcpt(r) => self.on_rcpt(r),
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

    /// AUTH: RFC 4954 §4.
    pub async fn on_auth(&mut self, mechanism: Mechanism, initial: Option<String>) -> Reply {
        if !self.auth_allowed_here() {
            return Reply::tls_required();
        }
        if self.helo.is_none() {
            return Reply::bad_sequence("send EHLO first");
        }
        if self.identity.is_some() {
            return Reply::bad_sequence("already authenticated");
        }
        if self.txn.is_some() {
            return Reply::bad_sequence("AUTH not allowed during a mail transaction");
        }
        let name = match mechanism {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::Other => return Reply::unknown_mechanism(),
        };
        match sasl::start(mechanism, initial.as_deref()) {
            Ok(step) => self.sasl_step(step, name).await,
            Err(e) => {
                self.settings.metrics.auth(name, AuthResult::Error);
                Reply::from(&e)
            }
        }
    }

    async fn on_sasl_line(
        &mut self,
        exchange: Exchange,
        mechanism: &'static str,
        line: Result<Bytes, command::CommandError>,
    ) -> Reply {
        // A cancelled or garbled exchange ends the attempt (RFC 4954 §4).
        let failed = |reply: Reply| {
            self.settings.metrics.auth(mechanism, AuthResult::Error);
            reply
        };
        let text = match line.and_then(|l| command::strip_line(&l).map(<[u8]>::to_vec)) {
            Ok(t) => t,
            Err(e) => return failed(Reply::from(&e)),
        };
        let Ok(text) = String::from_utf8(text) else {
            return failed(Reply::from(&sasl::SaslError::Base64));
        };
        match exchange.respond(&text) {
            Ok(step) => self.sasl_step(step, mechanism).await,
            Err(e) => failed(Reply::from(&e)),
        }
    }

    async fn sasl_step(&mut self, step: Step, mechanism: &'static str) -> Reply {
        match step {
            Step::Challenge(exchange, challenge) => {
                self.input = Input::Sasl(exchange, mechanism);
                Reply::challenge(challenge)
            }
            Step::Done(credentials) => self.verify(credentials, mechanism).await,
        }
    }

    async fn verify(&mut self, c: Credentials, mechanism: &'static str) -> Reply {
        let limits = self.ports.limits.clone();
        match limits.auth_allowed(self.ip, &c.username).await {
            Err(refusal) => {
                tracing::info!(session = %self.id, username = %c.username, reason = %refusal.reason, "auth rate-limited");
                // The refusal itself is counted by the SessionLimits implementation.
                self.settings.metrics.auth(mechanism, AuthResult::LockedOut);
                return Reply::auth_limited(&refusal);
            }
            Ok(delay) if !delay.is_zero() => tokio::time::sleep(delay).await,
            Ok(_) => {}
        }
        let outcome = self
            .ports
            .authenticator
            .authenticate(&c.username, &c.password, self.ip)
            .await;
        let success = matches!(outcome, AuthOutcome::Ok(_));
        limits.auth_result(self.ip, &c.username, success).await;
        let m = self.settings.metrics.clone();
        match outcome {
            AuthOutcome::Ok(identity) => match limits.session_start(&identity).await {
                Ok(slot) => {
                    tracing::info!(session = %self.id, username = %identity.username,
                        credential = %identity.credential_label, mechanism, "auth ok");
                    m.auth(mechanism, AuthResult::Success);
                    self._slot = Some(slot);
                    self.identity = Some(identity);
                    self.mechanism = mechanism;
                    Reply::auth_ok()
                }
                Err(refusal) => {
                    // Right password, but no 235: a temporary refusal.
                    m.auth(mechanism, AuthResult::Error);
                    Reply::session_limited(&refusal)
                }
            },
            AuthOutcome::Failed => {
                tracing::info!(session = %self.id, username = %c.username, mechanism, "auth failed");
                m.auth(mechanism, AuthResult::Failed);
                Reply::auth_failed()
            }
            AuthOutcome::Unavailable => {
                m.auth(mechanism, AuthResult::Error);
                Reply::auth_unavailable()
            }
        }
    }

    /// MAIL FROM: RFC 5321 §4.1.1.2, RFC 6409 §4.1 (authorised senders only).
    pub fn on_mail(&mut self, m: MailParams) -> Reply {
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
        if m.address.is_empty() {
            metrics.rejected(RejectReason::SenderNotAllowed);
            return Reply::null_sender();
        }
        if let Some(size) = m.size.filter(|&s| s > self.settings.max_message_size) {
            tracing::info!(session = %self.id, size, "declared size too big");
            metrics.rejected(RejectReason::TooLarge);
            return Reply::too_big(self.settings.max_message_size);
        }
        if !m.smtputf8 && !m.address.is_ascii() {
            return Reply::utf8_required();
        }
        match policy::permitted_by(&identity.senders, &m.address) {
            Some(rule) => {
                tracing::debug!(session = %self.id, sender = %m.address, rule, "sender permitted");
            }
            None => {
                tracing::info!(session = %self.id, sender = %m.address, username = %identity.username, "sender not permitted");
                metrics.rejected(RejectReason::SenderNotAllowed);
                return Reply::sender_not_permitted(
                    &m.address,
                    &identity.username,
                    &identity.senders,
                );
            }
        }
        self.txn = Some(Transaction {
            mail: m,
            recipients: Vec::new(),
            bdat: None,
        });
        Reply::sender_ok()
    }

    /// RCPT TO: RFC 5321 §4.1.1.3.
    pub fn on_rcpt(&mut self, r: RcptParams) -> Reply {
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
        if txn.recipients.len() >= self.settings.max_recipients {
            self.settings
                .metrics
                .rejected(RejectReason::TooManyRecipients);
            return Reply::too_many_recipients(self.settings.max_recipients);
        }
        txn.recipients.push(NewRecipient {
            address: r.address,
            notify: r.notify,
            orcpt: r.orcpt,
        });
        Reply::recipient_ok()
    }

    /// Checks that a transaction may start sending content; charges the
    /// message to the rate limits.
    async fn content_allowed(&mut self) -> Result<(), Reply> {
        let (Some(txn), Some(identity)) = (&self.txn, &self.identity) else {
            return Err(Reply::bad_sequence("need MAIL and RCPT first"));
        };
        if txn.recipients.is_empty() {
            return Err(Reply::no_recipients());
        }
        let n = txn.recipients.len() as u32;
        if let Err(refusal) = self.ports.limits.message(identity, n).await {
            tracing::info!(session = %self.id, reason = %refusal.reason, "message rate-limited");
            self.settings.metrics.rejected(RejectReason::RateLimited);
            return Err(Reply::message_limited(&refusal));
        }
        Ok(())
    }

    fn normalize(&self) -> bool {
        self.identity
            .as_ref()
            .and_then(|i| i.normalize_line_endings)
            .unwrap_or(self.settings.normalize_line_endings)
    }

    /// DATA: RFC 5321 §4.1.1.4.
    pub async fn on_data(&mut self) -> Reply {
        if self.txn.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return Reply::bad_sequence("DATA after BDAT");
        }
        if let Err(reply) = self.content_allowed().await {
            return reply;
        }
        self.input = Input::Data(DataReader::new(
            self.settings.max_message_size,
            self.normalize(),
        ));
        Reply::start_data()
    }

    /// End of DATA: hand over to intake; 250 only after it committed.
    pub async fn on_data_end(
        &mut self,
        result: Result<Vec<u8>, crate::smtp::data::DataError>,
    ) -> Reply {
        let Some(txn) = self.txn.take() else {
            return Reply::bad_sequence("no transaction");
        };
        self.settings.metrics.received();
        match result {
            Ok(body) => self.submit(txn, body).await,
            Err(e) => {
                tracing::info!(session = %self.id, error = %e, "message refused");
                self.settings
                    .metrics
                    .rejected(metrics::data_error_reason(&e));
                Reply::from(&e)
            }
        }
    }

    /// BDAT: RFC 3030 §2. Starts reading the chunk; the chunk is always
    /// read, and the reply (or refusal) is sent after it.
    pub async fn on_bdat(&mut self, size: usize, last: bool) {
        let mut refusal = None;
        let starting = self.txn.as_ref().is_some_and(|t| t.bdat.is_none());
        if starting {
            match self.content_allowed().await {
                Ok(()) => {
                    let body = Body::new(self.settings.max_message_size, self.normalize());
                    if let Some(t) = self.txn.as_mut() {
                        t.bdat = Some(body);
                    }
                }
                Err(reply) => refusal = Some(reply),
            }
        } else if self.txn.is_none() {
            refusal = Some(if self.identity.is_none() {
                self.settings.metrics.rejected(RejectReason::AuthRequired);
                Reply::auth_required()
            } else {
                Reply::bad_sequence("need MAIL and RCPT before BDAT")
            });
        }
        if refusal.is_some() {
            // RFC 3030 §2: after a failed BDAT the transaction is over.
            self.txn = None;
        }
        self.input = Input::Bdat {
            chunk: BdatChunk::new(size),
            size,
            last,
            refusal,
        };
    }

    async fn on_bdat_chunk_end(
        &mut self,
        size: usize,
        last: bool,
        refusal: Option<Reply>,
    ) -> Reply {
        if let Some(r) = refusal {
            return r;
        }
        let failed = self
            .txn
            .as_ref()
            .and_then(|t| t.bdat.as_ref())
            .is_some_and(Body::failed);
        if !last && !failed {
            return Reply::chunk_ok(size);
        }
        let Some(mut txn) = self.txn.take() else {
            return Reply::bad_sequence("no transaction");
        };
        let body = txn.bdat.take().map(Body::finish);
        if last {
            self.settings.metrics.received();
        }
        match body {
            Some(Ok(body)) => self.submit(txn, body).await,
            Some(Err(e)) => {
                self.settings
                    .metrics
                    .rejected(metrics::data_error_reason(&e));
                Reply::from(&e)
            }
            None => Reply::bad_sequence("no BDAT transaction"),
        }
    }

    async fn submit(&mut self, txn: Transaction, body: Vec<u8>) -> Reply {
        let Some(identity) = self.identity.clone() else {
            return Reply::auth_required();
        };
        let size = body.len();
        let submission = Submission {
            session_id: self.id.clone(),
            identity,
            client: ClientInfo {
                ip: self.ip,
                helo: self.helo.clone().unwrap_or_default(),
                tls: self.tls.clone(),
                auth_mechanism: self.mechanism.to_string(),
            },
            sender: txn.mail.address,
            recipients: txn.recipients,
            body: Bytes::from(body),
            envid: txn.mail.envid,
            ret: txn.mail.ret,
            smtputf8: txn.mail.smtputf8,
            body_type: txn.mail.body.map(|b| b.as_str()),
        };
        match self.ports.intake.submit(submission).await {
            Ok(queue_id) => {
                tracing::info!(session = %self.id, queue_id = %queue_id, size, "queued");
                Reply::queued(&queue_id)
            }
            Err(e) => {
                // Not counted here: the intake counts the refusals it decides.
                tracing::warn!(session = %self.id, error = %e, "intake refused message");
                Reply::from(&e)
            }
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
