//! Message content in a session: DATA (RFC 5321 §4.1.1.4) and BDAT
//! (RFC 3030), and submission to the intake (whose durable commit the final
//! 250 waits for). The message is charged to the login's rates only once
//! committed; limits were checked at MAIL and RCPT, so DATA itself never
//! gets a 4xx from them (RFC 5321 §4.3.2 lists 354, 503 and 554 for DATA).

use bytes::Bytes;

use super::{Input, Session, Transaction};
use crate::metrics::RejectReason;
use crate::smtp::budget::Lease;
use crate::smtp::data::{BdatChunk, Body, DataError, DataReader};
use crate::smtp::ports::{ClientInfo, Submission};
use crate::smtp::reply::Reply;
use crate::submission;

/// Memory leased for content whose size was not declared; grown as the
/// body's buffer grows.
const FIRST_LEASE: usize = 64 * 1024;

/// Grows `lease` to cover the memory `body` holds; when the node's budget
/// cannot, refuses the body (`452 4.3.1` at its end) and gives the lease
/// back at once, since a refused body holds nothing.
pub(super) fn cover(lease: &mut Option<Lease>, body: &mut Body) {
    let Some(l) = lease else {
        return;
    };
    if body.failed() || l.grow_to(body.reserved()) {
        return;
    }
    body.refuse(DataError::MemoryBudget);
    *lease = None;
}

impl Session {
    /// Checks that a transaction may start sending content.
    async fn content_allowed(&mut self) -> Result<(), Reply> {
        let (Some(txn), Some(_)) = (&self.txn, &self.identity) else {
            return Err(Reply::bad_sequence("need MAIL and RCPT first"));
        };
        if txn.recipients.is_empty() {
            return Err(Reply::no_recipients());
        }
        let first = txn.mail.size.unwrap_or(FIRST_LEASE);
        let Some(lease) = self
            .settings
            .memory
            .lease(first.min(self.settings.max_message_size))
        else {
            tracing::info!(session = %self.id, "memory budget spent");
            self.settings.metrics.rejected(RejectReason::MemoryBudget);
            return Err(Reply::insufficient_storage());
        };
        if let Some(t) = self.txn.as_mut() {
            t.lease = Some(lease);
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
        let declared = self.txn.as_ref().and_then(|t| t.mail.size);
        self.input = Input::Data(
            DataReader::new(self.settings.max_message_size, self.normalize()).expecting(declared),
        );
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
                self.content_refused(&txn, e)
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
                    let declared = self.txn.as_ref().and_then(|t| t.mail.size);
                    let body = Body::new(self.settings.max_message_size, self.normalize())
                        .expecting(declared);
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

    pub(super) async fn on_bdat_chunk_end(
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
            Some(Err(e)) => self.content_refused(&txn, e),
            None => Reply::bad_sequence("no BDAT transaction"),
        }
    }

    /// Counts a refused content, reports it for its `rejected` event (every
    /// recipient) and returns its reply.
    fn content_refused(&self, txn: &Transaction, e: DataError) -> Reply {
        let r = submission::Refusal::data(e);
        if let Some(reason) = r.reason {
            self.settings.metrics.rejected(reason);
        }
        if let Some(identity) = &self.identity {
            let rcpts: Vec<String> = txn.recipients.iter().map(|r| r.address.clone()).collect();
            submission::report(&*self.ports.intake, identity, &txn.mail.address, &rcpts, &r);
        }
        r.reply
    }

    async fn submit(&mut self, txn: Transaction, body: Vec<u8>) -> Reply {
        let Some(identity) = self.identity.clone() else {
            return Reply::auth_required();
        };
        let size = body.len();
        // The fields docs/operations.md promises on the `queued` line.
        let (user, credential) = (identity.username.clone(), identity.credential_label.clone());
        let (sender, rcpts) = (txn.mail.address.clone(), txn.recipients.len());
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
        match submission::commit(&*self.ports.intake, &*self.ports.limits, submission).await {
            Ok(queue_id) => {
                tracing::info!(
                    session = %self.id,
                    queue_id = %queue_id,
                    user = %user,
                    credential = %credential,
                    sender = %sender,
                    rcpts,
                    size,
                    "queued"
                );
                Reply::queued(&queue_id)
            }
            // Not counted here: the intake counts the refusals it decides.
            Err(refusal) => refusal.reply,
        }
    }
}
