//! The rules every front door applies to a submission, in one place: the
//! SMTP session (`smtp/session/`) and the HTTP API (`http/api.rs`) call
//! these, so a message gets the same answer whichever way it came in.
//!
//! Each check returns a [`Refusal`]: the SMTP reply that says why (the API
//! maps it to an HTTP status in `http/api/status.rs`), the metrics label
//! when the refusal is counted by the caller, and how long to wait when a
//! rate limit refused.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use crate::auth::Identity;
use crate::intake::{Intake, Submission};
use crate::metrics::RejectReason;
use crate::policy;
use crate::smtp::data::DataError;
use crate::smtp::ports::{
    AuthOutcome, IntakeError, LimitKind, LimitRefusal, LimitScope, Rejected, SessionLimits,
};
use crate::smtp::reply::Reply;

/// Which rule refused, typed: it names the `rule` of a `rejected` event
/// ([`Cause::rule`]) and picks the API's HTTP status (`http/api/status.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Missing or wrong credentials.
    Credentials,
    /// The credential store could not answer.
    CredentialsUnavailable,
    /// A declared or actual size over `smtp.max_message_size`.
    TooLarge,
    /// The null sender, or a sender the login may not use.
    Sender,
    /// A rate limit, quota, session cap or brute-force lock-out.
    Limit(LimitScope, LimitKind),
    /// Past `smtp.max_recipients`.
    TooManyRecipients,
    /// The content (bare CR or LF, a long line, too big) or the node's
    /// memory budget.
    Data(DataError),
    /// Refused or failed at intake (header From, fixups, signing, commit).
    Intake(IntakeError),
}

impl Cause {
    /// The `rule` of the `rejected` event this refusal writes; `None` when
    /// no rule refused (credentials, or a failure of the system: memory
    /// budget, store, signing unavailable).
    pub fn rule(&self) -> Option<String> {
        let fixed = match self {
            Cause::Credentials | Cause::CredentialsUnavailable => return None,
            Cause::TooLarge | Cause::Data(DataError::TooBig { .. }) => "size",
            Cause::Sender => "sender",
            Cause::Limit(scope, kind) => {
                let scope = match scope {
                    LimitScope::User => "user",
                    LimitScope::Credential => "credential",
                    LimitScope::Ip => "ip",
                };
                let kind = match kind {
                    LimitKind::Messages => "messages",
                    LimitKind::Recipients => "recipients",
                    LimitKind::Sessions => "sessions",
                    LimitKind::Connections => "connections",
                    LimitKind::ConcurrentConnections => "concurrent_connections",
                    LimitKind::AuthFailures => "auth_failures",
                };
                return Some(format!("limit:{scope}:{kind}"));
            }
            Cause::TooManyRecipients => "max_recipients",
            Cause::Data(DataError::BareLf | DataError::BareCr) => "bare_line_ending",
            Cause::Data(DataError::LineTooLong { .. }) => "line_too_long",
            Cause::Data(DataError::MemoryBudget) => return None,
            Cause::Intake(e) => return crate::events::rejection_rule(e).map(str::to_string),
        };
        Some(fixed.to_string())
    }
}

/// Why a submission (or one of its parts) is refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The SMTP reply (code, enhanced code, text).
    pub reply: Reply,
    /// Which rule refused (the event's `rule`, the API's HTTP status).
    pub cause: Cause,
    /// The `postgate_messages_rejected_total` label the caller counts, if
    /// the caller counts it (rate limits count themselves).
    pub reason: Option<RejectReason>,
    /// Set when a rate limit or quota refused: when to try again.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// A refusal by `cause` answered with `reply`, counted under `reason`.
    pub fn new(cause: Cause, reply: Reply, reason: Option<RejectReason>) -> Self {
        Refusal {
            reply,
            cause,
            reason,
            retry_after: None,
        }
    }

    /// A limit's refusal answered with `reply` (counted by the limiter).
    pub fn limited(reply: Reply, refusal: &LimitRefusal) -> Self {
        Refusal {
            reply,
            cause: Cause::Limit(refusal.scope, refusal.kind),
            reason: Some(RejectReason::RateLimited),
            retry_after: Some(refusal.retry_after),
        }
    }

    /// A refusal of the content (`reply` from the error).
    pub fn data(e: DataError) -> Self {
        Refusal::new(
            Cause::Data(e.clone()),
            Reply::from(&e),
            Some(crate::smtp::session::metrics::data_error_reason(&e)),
        )
    }
}

/// The result of [`login`].
#[derive(Debug)]
pub enum Login {
    Ok(Identity),
    /// The brute-force limits refused before any check (`454 4.7.0`).
    Limited(LimitRefusal),
    /// Wrong credentials, unknown or disabled user (answered no sooner than
    /// the failure delay after the check began).
    Failed,
    /// The credential store could not be consulted.
    Unavailable,
}

/// One login attempt under the brute-force limits: reserves the attempt
/// for `ip`/`username`, waits any tarpit delay, runs `verify`, reports the
/// outcome to the limits, and answers a failure no sooner than
/// `failure_delay` after the check began (an unknown user and a user with
/// several credentials answer at the same moment).
pub async fn login<F>(
    limits: &dyn SessionLimits,
    ip: IpAddr,
    username: &str,
    failure_delay: Duration,
    verify: F,
) -> Login
where
    F: Future<Output = AuthOutcome>,
{
    match limits.auth_allowed(ip, username).await {
        Err(refusal) => return Login::Limited(refusal),
        Ok(delay) if !delay.is_zero() => tokio::time::sleep(delay).await,
        Ok(_) => {}
    }
    let checked_from = tokio::time::Instant::now();
    let outcome = verify.await;
    match &outcome {
        AuthOutcome::Unavailable => limits.auth_abandoned(ip, username).await,
        o => {
            limits
                .auth_result(ip, username, matches!(o, AuthOutcome::Ok(_)))
                .await
        }
    }
    match outcome {
        AuthOutcome::Ok(identity) => Login::Ok(identity),
        AuthOutcome::Failed => {
            tokio::time::sleep_until(checked_from + failure_delay).await;
            Login::Failed
        }
        AuthOutcome::Unavailable => Login::Unavailable,
    }
}

/// A declared (SMTP SIZE) or actual size against `max` (`552 5.3.4`).
pub fn check_size(size: usize, max: usize) -> Result<(), Refusal> {
    if size > max {
        return Err(Refusal::new(
            Cause::TooLarge,
            Reply::too_big(max),
            Some(RejectReason::TooLarge),
        ));
    }
    Ok(())
}

/// The envelope sender: never the null sender, and one of the login's
/// permitted senders (RFC 6409 §4.1). `Ok` names the rule that matched.
pub fn check_sender<'a>(identity: &'a Identity, sender: &str) -> Result<&'a str, Refusal> {
    if sender.is_empty() {
        return Err(Refusal::new(
            Cause::Sender,
            Reply::null_sender(),
            Some(RejectReason::SenderNotAllowed),
        ));
    }
    policy::permitted_by(&identity.senders, sender).ok_or_else(|| {
        Refusal::new(
            Cause::Sender,
            Reply::sender_not_permitted(sender, &identity.username, &identity.senders),
            Some(RejectReason::SenderNotAllowed),
        )
    })
}

/// Would one more message fit the login's message rates and quotas now?
/// Charges nothing (`451 4.7.1`).
pub async fn mail_allowed(limits: &dyn SessionLimits, identity: &Identity) -> Result<(), Refusal> {
    limits
        .mail_allowed(identity)
        .await
        .map_err(|r| Refusal::limited(Reply::message_limited(&r), &r))
}

/// May the transaction take its `count`-th recipient (counting this one)?
/// Past `max`: `452 4.5.3` (RFC 5321 §4.5.3.1.10); then the login's
/// recipient quota (`451 4.7.1`). Charges nothing.
pub async fn recipient_allowed(
    limits: &dyn SessionLimits,
    identity: Option<&Identity>,
    count: usize,
    max: usize,
) -> Result<(), Refusal> {
    if count > max {
        return Err(Refusal::new(
            Cause::TooManyRecipients,
            Reply::too_many_recipients(max),
            Some(RejectReason::TooManyRecipients),
        ));
    }
    if let Some(identity) = identity {
        limits
            .rcpt_allowed(identity, count as u32)
            .await
            .map_err(|r| Refusal::limited(Reply::message_limited(&r), &r))?;
    }
    Ok(())
}

/// Reports `refusal` of `identity`'s submission from `sender` to the
/// intake, which writes its `rejected` event, when a rule refused before
/// intake (`recipients`: the refused one at RCPT, all for the content,
/// none at MAIL). Intake refusals are reported by the intake itself.
pub fn report(
    intake: &dyn Intake,
    identity: &Identity,
    sender: &str,
    recipients: &[String],
    refusal: &Refusal,
) {
    if matches!(refusal.cause, Cause::Intake(_)) {
        return;
    }
    let Some(rule) = refusal.cause.rule() else {
        return;
    };
    let r = &refusal.reply;
    intake.rejected(Rejected {
        username: identity.username.clone(),
        sender: sender.to_string(),
        recipients: recipients.to_vec(),
        rule,
        reply: format!("{} {} {}", r.code, r.enhanced, r.text),
    });
}

/// Hands `submission` to the intake (fixups, header From policy, DKIM,
/// durable commit) and, once committed, charges it to the login's rates.
/// `Ok` is the queue id; the intake counts its own refusals, this logs them.
pub async fn commit(
    intake: &dyn Intake,
    limits: &dyn SessionLimits,
    submission: Submission,
) -> Result<String, Refusal> {
    let identity = submission.identity.clone();
    let recipients = submission.recipients.len() as u32;
    let session = submission.session_id.clone();
    match intake.submit(submission).await {
        Ok(queue_id) => {
            limits.message_committed(&identity, recipients).await;
            Ok(queue_id)
        }
        Err(e) => {
            tracing::warn!(session = %session, error = %e, "intake refused message");
            Err(Refusal::new(
                Cause::Intake(e.clone()),
                Reply::from(&e),
                None,
            ))
        }
    }
}
