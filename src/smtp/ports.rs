//! The session's whole world: the traits it talks to and the types that
//! cross them. Nothing here knows a socket, SQL or the clock.
//!
//! - who: [`Identity`] (an authenticated login), checked by an [`Authenticator`]
//!   ([`crate::auth::StoreAuthenticator`], [`crate::auth::CachedAuthenticator`]);
//! - how much: [`SessionLimits`] ([`crate::limits::LimiterPorts`]; [`NoLimits`]
//!   is the no-op default and the test double), refusing with one typed
//!   [`LimitRefusal`];
//! - what: a [`Submission`] handed to an [`Intake`] ([`crate::intake::StoreIntake`]),
//!   refused with a typed [`IntakeError`].
//!
//! Every refusal becomes an SMTP reply in one place, `smtp/reply.rs`.

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// An authenticated user, as the session, limits and intake see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub username: String,
    /// The credential that matched (limits and logs are keyed on it).
    pub credential_id: i64,
    pub credential_label: String,
    /// Sender permissions: exact lower-case addresses or `@domain`.
    pub senders: Vec<String>,
    /// Credential overrides on top of the user's.
    pub limits: AccountLimits,
    /// The user's own overrides (limits count the user and, when it has
    /// overrides of its own, the credential separately).
    pub user_limits: AccountLimits,
    /// Per-user override of the listener's `normalize_line_endings`.
    pub normalize_line_endings: Option<bool>,
    /// Which stored password hash the login matched: see
    /// [`crate::auth::credential_tag`].
    pub credential_tag: CredentialTag,
}

/// An account's limit overrides as a session carries them; `None` means
/// "config default". Converted from the store's at login (`auth.rs`) and
/// back for the limiter (`limits/session.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountLimits {
    pub messages_per_minute: Option<u32>,
    pub messages_per_hour: Option<u32>,
    pub messages_per_day: Option<u32>,
    pub recipients_per_day: Option<u32>,
    /// Users only; always `None` on a credential.
    pub concurrent_sessions: Option<u32>,
}

/// SHA-256 of a stored password hash (PHC or crypt string). A cached login
/// keeps this instead of the hash, so it can be re-checked against the store
/// without holding anything a password could be tested against offline.
pub type CredentialTag = [u8; 32];

/// The result of checking a username and password.
// One per login, moved once: the size of `Ok` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AuthOutcome {
    /// The password matches an enabled credential of an enabled user.
    Ok(Identity),
    /// Unknown user, disabled user or wrong password: indistinguishable.
    Failed,
    /// The credential store could not be consulted: try again later.
    Unavailable,
}

/// Checks credentials.
///
/// Contract: may take tens of milliseconds (password hashing) but must not
/// block the async threads; must take about the same time whether or not
/// the user exists; must never log the password.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// Checks `username`/`password` for a client connected from `ip`.
    async fn authenticate(&self, username: &str, password: &str, ip: IpAddr) -> AuthOutcome;

    /// Re-checks a login verified earlier (kept in a cache) against the
    /// accounts as they are now, without hashing: `Ok` with the current
    /// identity while the user is enabled and the credential still holds
    /// the password hash the login matched; `Failed` once the password,
    /// credential or user changed; `Unavailable` if that cannot be told.
    /// The default trusts the earlier verification.
    async fn recheck(&self, identity: &Identity) -> AuthOutcome {
        AuthOutcome::Ok(identity.clone())
    }

    /// The identity of the account `username` WITHOUT a password, for a
    /// client on a listener's trusted network: `Ok` while the user exists
    /// and is enabled (its sender permissions and user limits; no
    /// credential: `credential_id` 0, label `"network"`), `Failed` if not,
    /// `Unavailable` if that cannot be told. The default knows no account.
    async fn account(&self, username: &str) -> AuthOutcome {
        let _ = username;
        AuthOutcome::Failed
    }
}

/// Who a refused limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// The user (all its credentials together).
    User,
    /// One credential of a user (its own overrides).
    Credential,
    /// The client IP (or IPv6 prefix).
    Ip,
}

/// What a refused limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Messages per minute, hour, day or trusted-network window.
    Messages,
    /// Recipients per day.
    Recipients,
    /// Concurrent sessions of a user.
    Sessions,
    /// New connections per minute.
    Connections,
    /// Concurrent connections of a client IP.
    ConcurrentConnections,
    /// Failed logins: a brute-force lockout (or the attempts in flight
    /// already fill the allowance).
    AuthFailures,
}

/// A refusal by a limit: the one typed refusal of the limiter, matched on
/// by the SMTP replies (`smtp/reply.rs`) and the metrics labels (by
/// `scope` and `kind`, never by the wording of `reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRefusal {
    /// Who the limit applies to.
    pub scope: LimitScope,
    /// What it counts.
    pub kind: LimitKind,
    /// How long until the same request would pass (at least 1 s from the limiter).
    pub retry_after: Duration,
    /// Human-readable cause sent to the client, e.g. `message rate for
    /// user alice exceeded (100 per hour)`.
    pub reason: String,
}

impl LimitRefusal {
    /// True for a brute-force lockout (IP or username).
    pub fn is_lockout(&self) -> bool {
        self.kind == LimitKind::AuthFailures
    }

    /// Retry-after in whole seconds, rounded up.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
}

impl std::fmt::Display for LimitRefusal {
    /// `<reason>, try again in N s` (the text of the refusal's reply).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, try again in {} s",
            self.reason,
            self.retry_after_secs()
        )
    }
}

/// Rate and concurrency limits, consulted by the server and the session.
///
/// Contract: every method must be cheap (in-memory, or one short store
/// statement); errors are refusals, never panics.
#[async_trait]
pub trait SessionLimits: Send + Sync {
    /// New connection from ip (after any PROXY header). Err => 421 4.7.0 and close.
    async fn connection(&self, ip: IpAddr) -> Result<(), LimitRefusal>;
    /// Before verifying a password; reserves the attempt (counted as a
    /// failure until told otherwise), so concurrent attempts cannot all pass
    /// one check. Ok(delay): wait that long before answering (tarpit);
    /// Err => 454 4.7.0, nothing reserved. Every Ok is followed by exactly
    /// one [`SessionLimits::auth_result`] or [`SessionLimits::auth_abandoned`].
    async fn auth_allowed(&self, ip: IpAddr, username: &str) -> Result<Duration, LimitRefusal>;
    /// After verification: the outcome of the reserved attempt.
    async fn auth_result(&self, ip: IpAddr, username: &str, success: bool);
    /// The reserved attempt was not verified (credential store unavailable):
    /// give it back. Default: nothing to give back.
    async fn auth_abandoned(&self, _ip: IpAddr, _username: &str) {}
    /// After a successful AUTH: hold a concurrent-session slot while the session lives. Err => 421 4.7.0 and close.
    async fn session_start(
        &self,
        identity: &Identity,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, LimitRefusal>;
    /// At MAIL: would one more message fit the login's message rates and
    /// quotas now? Charges nothing. Err => 451 4.7.1 "<reason>, try again
    /// in N s" to MAIL (RFC 5321 §4.3.2 lists 451 for MAIL).
    async fn mail_allowed(&self, identity: &Identity) -> Result<(), LimitRefusal>;
    /// At RCPT: would `recipients` recipients (the transaction's, this one
    /// included) fit the login's recipient quotas now? Charges nothing.
    /// Err => 451 4.7.1 to this RCPT; the transaction keeps the others.
    async fn rcpt_allowed(&self, identity: &Identity, recipients: u32) -> Result<(), LimitRefusal>;
    /// The message was committed to the queue: charge one message and
    /// `recipients` recipients. Never refuses; a message that is refused
    /// (store down, DKIM failure, bad data) is never charged.
    async fn message_committed(&self, identity: &Identity, recipients: u32);
    /// At MAIL of a session on a trusted network (no AUTH): charges one of
    /// `messages` per `window` for the client `ip`. Err => 451 4.7.1.
    async fn trusted_message(
        &self,
        ip: IpAddr,
        messages: u32,
        window: Duration,
    ) -> Result<(), LimitRefusal> {
        let _ = (ip, messages, window);
        Ok(())
    }
}

/// No limits at all: every call is allowed at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLimits;

#[async_trait]
impl SessionLimits for NoLimits {
    async fn connection(&self, _ip: IpAddr) -> Result<(), LimitRefusal> {
        Ok(())
    }
    async fn auth_allowed(&self, _ip: IpAddr, _username: &str) -> Result<Duration, LimitRefusal> {
        Ok(Duration::ZERO)
    }
    async fn auth_result(&self, _ip: IpAddr, _username: &str, _success: bool) {}
    async fn session_start(
        &self,
        _identity: &Identity,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, LimitRefusal> {
        Ok(Box::new(()))
    }
    async fn mail_allowed(&self, _identity: &Identity) -> Result<(), LimitRefusal> {
        Ok(())
    }
    async fn rcpt_allowed(&self, _identity: &Identity, _n: u32) -> Result<(), LimitRefusal> {
        Ok(())
    }
    async fn message_committed(&self, _identity: &Identity, _recipients: u32) {}
}

/// The TLS parameters of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`.
    pub protocol: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// Who submitted, from where, how.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client address (after any PROXY header).
    pub ip: IpAddr,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// `None` only on an explicitly configured loopback plain listener.
    pub tls: Option<TlsInfo>,
    /// `PLAIN` or `LOGIN`.
    pub auth_mechanism: String,
}

/// One accepted recipient of a transaction, with its RFC 3461 parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    /// RFC 3461 NOTIFY parameter as given (e.g. `FAILURE,DELAY`).
    pub notify: Option<String>,
    /// RFC 3461 ORCPT parameter as given.
    pub orcpt: Option<String>,
}

/// A complete message as received, ready for intake.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The session id (also on every log line of the session).
    pub session_id: String,
    pub identity: Identity,
    pub client: ClientInfo,
    /// Envelope sender (never empty: the null sender is refused).
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// The message as received: CRLF line endings, dot-unstuffed.
    pub body: Bytes,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    /// RFC 3461 RET (`FULL` / `HDRS`).
    pub ret: Option<String>,
    /// RFC 6531 SMTPUTF8 was given on MAIL.
    pub smtputf8: bool,
    /// RFC 6152 BODY (`7BIT` / `8BITMIME`), when given.
    pub body_type: Option<&'static str>,
}

/// Why intake did not queue a message: the typed intake refusals. Nothing
/// of the message is stored in any case. The `String`s are the detail
/// sent to the client (rule names, header problems; never a secret),
/// except for [`IntakeError::QueueUnavailable`], whose detail is only logged.
/// `smtp/reply.rs` maps each to its reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// `dkim.header_from = "enforce"` and a header From address is not a
    /// permitted sender of the login.
    #[error("{0}")]
    HeaderFromNotPermitted(String),
    /// The header cannot be parsed for the fixups.
    #[error("{0}")]
    MalformedHeader(String),
    /// `dkim.require_signature` is on and the header From may not be
    /// signed for this login.
    #[error("cannot sign (dkim.require_signature is on): {0}")]
    SignatureNotPermitted(String),
    /// Signing refused because of the message itself (no key under
    /// `require_signature`, unusable header From).
    #[error("{0}")]
    SigningRefused(String),
    /// Signing failed for a reason of the system (key, store): the client
    /// tries again later.
    #[error("DKIM signing failed")]
    SigningUnavailable,
    /// The queue could not commit the message (the store error, for logs).
    #[error("store: {0}")]
    QueueUnavailable(String),
}

/// A submission of an authenticated client refused by a rule before it
/// reached intake (at MAIL, RCPT or the content): what its `rejected`
/// event records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub username: String,
    pub sender: String,
    /// The refused recipient (RCPT), every recipient (content), or none (MAIL).
    pub recipients: Vec<String>,
    /// Which rule refused (`submission::Cause::rule`).
    pub rule: String,
    /// The reply the client got (`CODE ENHANCED TEXT`).
    pub reply: String,
}

/// Accepts complete messages.
///
/// Contract: returns the queue id only once the message is durably
/// committed; on error nothing of the message is stored.
#[async_trait]
pub trait Intake: Send + Sync {
    /// Queues `submission`, returning its queue id.
    async fn submit(&self, submission: Submission) -> Result<String, IntakeError>;

    /// Records a refusal by a rule before intake (a `rejected` event when
    /// events are on). Returns at once: best effort, nothing awaited.
    fn rejected(&self, _rejected: Rejected) {}
}
