//! Intake: what happens to a message the session has fully received.
//!
//! The session hands a [`Submission`] to an [`Intake`]; [`StoreIntake`]
//! produces the final bytes (the one place where header fixups and DKIM
//! signing go: [`StoreIntake::final_body`]) and commits message and
//! envelope to the queue in one store transaction. The client is told 250
//! only after that commit returned (DESIGN "250 after DATA only once the
//! store commit has returned").

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::metrics::{DkimResult, Metrics, RejectReason, StoreOperation};
pub use crate::smtp::ports::{ClientInfo, Intake, IntakeError, Submission, TlsInfo};
use crate::smtp::ports::{Recipient, Rejected};
use crate::store::{self, NewMessage, NewRecipient, QueueStore, StoreError};
use crate::time::now_ms;

impl From<StoreError> for IntakeError {
    fn from(e: StoreError) -> Self {
        IntakeError::QueueUnavailable(e.to_string())
    }
}

impl From<Recipient> for NewRecipient {
    fn from(r: Recipient) -> Self {
        NewRecipient {
            address: r.address,
            notify: r.notify,
            orcpt: r.orcpt,
        }
    }
}

/// How accepted messages are changed before they are stored: the header
/// From policy, RFC 6409 §8 fixups and DKIM signing, in that order.
pub struct MessageProcessing {
    /// Our host name (Received `by`, Message-ID right side).
    pub hostname: String,
    /// Header From must be a permitted sender of the login (`dkim.header_from = "enforce"`).
    pub enforce_header_from: bool,
    pub fixups: crate::fixups::FixupsConfig,
    /// `None` when signing is off (`dkim.enabled = false`).
    pub signer: Option<Arc<crate::dkim::Signer>>,
}

/// The production [`Intake`]: processes the message (see
/// [`MessageProcessing`]) and commits it to the store's queue.
///
/// With metrics, it counts what it decides itself: the refusals of header
/// From, fixups and signing, a failed commit, the enqueue duration, and
/// each message queued (with its size as stored, after fixups and signing).
pub struct StoreIntake {
    store: Arc<dyn QueueStore>,
    lifetime: Duration,
    processing: Option<MessageProcessing>,
    metrics: Arc<Metrics>,
    /// Writes a `rejected` event for each refusal by a rule (`[events]` on).
    rejections: Option<crate::events::rejected::RejectionWriter>,
    /// Adds a journal copy to the commit (`[journal]` set).
    journal: Option<crate::journal::Journal>,
}

impl StoreIntake {
    /// Stores bodies unchanged; messages expire `lifetime` after acceptance.
    pub fn new(store: Arc<dyn QueueStore>, lifetime: Duration) -> Self {
        StoreIntake {
            store,
            lifetime,
            processing: None,
            metrics: Metrics::detached(),
            rejections: None,
            journal: None,
        }
    }

    /// Adds header policy, fixups and signing before the commit.
    pub fn with_processing(mut self, processing: MessageProcessing) -> Self {
        self.processing = Some(processing);
        self
    }

    /// Counts queued and refused messages and signatures, and times the
    /// enqueue, into `metrics` (else into metrics nothing serves).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Writes a `rejected` event for each refusal by a rule, of
    /// [`Intake::submit`] and those reported by [`Intake::rejected`].
    pub fn with_rejections(
        mut self,
        rejections: Option<crate::events::rejected::RejectionWriter>,
    ) -> Self {
        self.rejections = rejections;
        self
    }

    /// Commits with each message its journal copy (when a rule matches).
    pub fn with_journal(mut self, journal: Option<crate::journal::Journal>) -> Self {
        self.journal = journal;
        self
    }

    fn count_rejected(&self, reason: RejectReason) {
        self.metrics.message_rejected(reason);
    }

    /// The bytes to store (and later deliver) for `submission`: the one
    /// place where the message is changed. Refusals name the rule (5xx
    /// replies); [`IntakeError::SigningUnavailable`] is a failure of the
    /// system (4xx, the client retries).
    pub async fn final_body(
        &self,
        submission: &Submission,
        queue_id: &str,
        received_at: i64,
    ) -> Result<Bytes, IntakeError> {
        let Some(p) = &self.processing else {
            return Ok(submission.body.clone());
        };
        if p.enforce_header_from {
            crate::fixups::check_header_from(&submission.body, &submission.identity.senders)
                .map_err(|e| {
                    self.count_rejected(RejectReason::FromNotAllowed);
                    IntakeError::HeaderFromNotPermitted(e.to_string())
                })?;
        }
        let recipients: Vec<String> = submission
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect();
        let ctx = crate::fixups::FixupContext {
            hostname: &p.hostname,
            now_ms: received_at,
            queue_id,
            authenticated: true,
            tls: submission
                .client
                .tls
                .as_ref()
                .map(|t| crate::fixups::TlsInfo {
                    version: &t.protocol,
                    cipher: &t.cipher,
                }),
            smtputf8: submission.smtputf8,
            helo: Some(&submission.client.helo),
            client_ip: Some(submission.client.ip),
            client_host: None,
            recipients: &recipients,
            config: &p.fixups,
        };
        let fixed = Bytes::from(crate::fixups::apply(&submission.body, &ctx).map_err(|e| {
            // A header the fixups cannot parse: no closer label.
            self.count_rejected(RejectReason::Internal);
            IntakeError::MalformedHeader(e.to_string())
        })?);
        let Some(signer) = &p.signer else {
            return Ok(fixed);
        };
        // A signature vouches for the From domain: only a From the login may
        // send as is signed, whatever `header_from` says (issue 12; with
        // "enforce" it was checked above).
        if signer.config().enabled && !p.enforce_header_from {
            if let Err(e) = crate::fixups::check_header_from(&fixed, &submission.identity.senders) {
                if signer.config().require_signature {
                    self.count_rejected(RejectReason::SignatureRequired);
                    return Err(IntakeError::SignatureNotPermitted(e.to_string()));
                }
                tracing::info!(queue_id, error = %e, "not signed: header From not permitted for this login");
                self.metrics.dkim_not_permitted();
                return Ok(fixed);
            }
        }
        match signer.sign(fixed.clone()).await {
            Ok(sigs) => {
                if sigs.headers.is_empty() {
                    self.metrics.dkim_unsigned();
                }
                for &algorithm in &sigs.algorithms {
                    self.metrics
                        .dkim_signature(algorithm_label(algorithm), DkimResult::Signed);
                }
                if sigs.headers.is_empty() {
                    Ok(fixed)
                } else {
                    Ok(Bytes::from(sigs.prepend_to(&fixed)))
                }
            }
            Err(e) if e.is_permanent() => {
                self.count_rejected(RejectReason::SignatureRequired);
                Err(IntakeError::SigningRefused(e.to_string()))
            }
            Err(e) => {
                // Only `Sign` errors reach here (the others are permanent).
                let algorithm = e.algorithm().unwrap_or(store::DkimAlgorithm::RsaSha256);
                self.metrics
                    .dkim_signature(algorithm_label(algorithm), DkimResult::Failed);
                tracing::error!(queue_id, error = %e, "DKIM signing failed");
                self.count_rejected(RejectReason::Internal);
                Err(IntakeError::SigningUnavailable)
            }
        }
    }
}

/// The metrics label of a key's algorithm.
fn algorithm_label(algorithm: store::DkimAlgorithm) -> crate::metrics::DkimAlgorithm {
    match algorithm {
        store::DkimAlgorithm::RsaSha256 => crate::metrics::DkimAlgorithm::RsaSha256,
        store::DkimAlgorithm::Ed25519Sha256 => crate::metrics::DkimAlgorithm::Ed25519Sha256,
    }
}

#[async_trait]
impl Intake for StoreIntake {
    async fn submit(&self, submission: Submission) -> Result<String, IntakeError> {
        let id = store::new_queue_id();
        let received_at = now_ms();
        let body = match self.final_body(&submission, &id, received_at).await {
            Ok(body) => body,
            Err(e) => {
                if let Some(rule) = crate::events::rejection_rule(&e) {
                    let reply = crate::smtp::reply::Reply::from(&e);
                    self.rejected(Rejected {
                        username: submission.identity.username.clone(),
                        sender: submission.sender.clone(),
                        recipients: submission
                            .recipients
                            .iter()
                            .map(|r| r.address.clone())
                            .collect(),
                        rule: rule.to_string(),
                        reply: format!("{} {} {}", reply.code, reply.enhanced, reply.text),
                    });
                }
                return Err(e);
            }
        };
        // The bytes as received are not needed once the stored form exists:
        // free them before waiting for the commit (a 25 MB message would
        // otherwise be held twice while it waits for the writer).
        drop(submission.body);
        let user = submission.identity.username;
        let mut message = NewMessage {
            id,
            sender: submission.sender,
            recipients: submission.recipients.into_iter().map(Into::into).collect(),
            user_id: Some(submission.identity.user_id),
            username: Some(user.clone()),
            credential: Some(submission.identity.credential_label),
            body,
            envid: submission.envid,
            dsn_ret: submission.ret,
            is_dsn: false,
            smtputf8: submission.smtputf8,
            received_at,
            expires_at: received_at.saturating_add(self.lifetime.as_millis() as i64),
            journal: None,
        };
        message.journal = self
            .journal
            .as_ref()
            .and_then(|j| j.copy_of(&message))
            .map(Box::new);
        let started = Instant::now();
        let committed = self.store.enqueue(&message).await;
        self.metrics.store_operation(
            StoreOperation::Enqueue,
            started.elapsed(),
            committed.is_err(),
        );
        match &committed {
            Ok(()) => {
                self.metrics.message_queued(
                    Some(&user),
                    message.recipients.len(),
                    message.body.len() as u64,
                );
                if let Some(copy) = &message.journal {
                    self.metrics.journal().queued(copy.recipients.len());
                }
            }
            Err(_) => self
                .metrics
                .message_rejected(RejectReason::StoreUnavailable),
        }
        committed?;
        Ok(message.id)
    }

    fn rejected(&self, rejected: Rejected) {
        if let Some(w) = &self.rejections {
            w.write(rejected, now_ms());
        }
    }
}
