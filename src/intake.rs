//! Intake: what happens to a message the session has fully received.
//!
//! The session hands a [`Submission`] to an [`Intake`]; [`StoreIntake`]
//! produces the final bytes (the one place where header fixups and DKIM
//! signing go: [`StoreIntake::final_body`]) and commits message and
//! envelope to the queue in one store transaction. The client is told 250
//! only after that commit returned (DESIGN "250 after DATA only once the
//! store commit has returned").

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::auth::Identity;
use crate::store::{self, NewMessage, NewRecipient, Store, StoreError};

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

/// A complete message as received, ready for intake.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The session id (also on every log line of the session).
    pub session_id: String,
    pub identity: Identity,
    pub client: ClientInfo,
    /// Envelope sender (never empty: the null sender is refused).
    pub sender: String,
    pub recipients: Vec<NewRecipient>,
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

/// Why intake did not queue a message.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A policy refusal decided at intake (e.g. header From not permitted);
    /// sent to the client as is.
    #[error("{code} {enhanced} {text}")]
    Rejected {
        code: u16,
        enhanced: String,
        text: String,
    },
    /// The store failed; nothing was stored. Sent as 451 4.3.0.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Accepts complete messages.
///
/// Contract: returns the queue id only once the message is durably
/// committed; on error nothing of the message is stored.
#[async_trait]
pub trait Intake: Send + Sync {
    /// Queues `submission`, returning its queue id.
    async fn submit(&self, submission: Submission) -> Result<String, IntakeError>;
}

/// The real intake: final body, then one `store.enqueue`.
pub struct StoreIntake {
    store: Arc<dyn Store>,
    lifetime: Duration,
}

impl StoreIntake {
    /// Intake into `store`; messages expire `lifetime` after they were received.
    pub fn new(store: Arc<dyn Store>, lifetime: Duration) -> Self {
        StoreIntake { store, lifetime }
    }

    /// The bytes stored and delivered for `submission`, queued as
    /// `queue_id` at `received_at` (Unix ms). THE place where header
    /// fixups (Received, Message-ID, Date; RFC 6409 §8), the header From
    /// check ([`IntakeError::Rejected`]) and DKIM signing are applied, once,
    /// before enqueue. Today: the body as received.
    pub async fn final_body(
        &self,
        submission: &Submission,
        queue_id: &str,
        received_at: i64,
    ) -> Result<Bytes, IntakeError> {
        let _ = (queue_id, received_at);
        Ok(submission.body.clone())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl Intake for StoreIntake {
    async fn submit(&self, submission: Submission) -> Result<String, IntakeError> {
        let id = store::new_queue_id();
        let received_at = now_ms();
        let body = self.final_body(&submission, &id, received_at).await?;
        let message = NewMessage {
            id,
            sender: submission.sender,
            recipients: submission.recipients,
            user_id: Some(submission.identity.user_id),
            username: Some(submission.identity.username),
            credential: Some(submission.identity.credential_label),
            body,
            envid: submission.envid,
            dsn_ret: submission.ret,
            is_dsn: false,
            smtputf8: submission.smtputf8,
            received_at,
            expires_at: received_at.saturating_add(self.lifetime.as_millis() as i64),
        };
        self.store.enqueue(&message).await?;
        Ok(message.id)
    }
}
