//! What happens to a DSN between [`super::dsn`] writing it and the queue:
//! it is DKIM-signed with the same [`Signer`](crate::dkim::Signer) intake
//! uses (keys of its header From domain, i.e. of `[delivery] dsn_from`),
//! so a provider that checks alignment accepts it like any other message.
//! Its route is chosen like any other message's, with `dsn_from` as the
//! sender ([`Engine::routing_sender`]).

use bytes::Bytes;
use tracing::warn;

use super::Engine;
use crate::store::{ClaimedMessage, NewMessage};

impl Engine {
    /// `dsn` with the DKIM signatures of its From domain prepended, when
    /// this node signs and has keys for that domain. A DSN is never held
    /// back for a signature: when signing fails (or `require_signature`
    /// finds no key) it is queued unsigned and a warning logged.
    pub(super) async fn sign_dsn(&self, mut dsn: NewMessage) -> NewMessage {
        let Some(signer) = &self.dsn_signer else {
            return dsn;
        };
        match signer.sign(dsn.body.clone()).await {
            Ok(sigs) if !sigs.headers.is_empty() => {
                dsn.body = Bytes::from(sigs.prepend_to(&dsn.body));
            }
            Ok(_) => {}
            Err(e) => {
                warn!(dsn_id = %dsn.id, error = %e, "DSN not DKIM-signed; queued unsigned");
            }
        }
        dsn
    }

    /// The sender the route of `m` is chosen for: its envelope sender, or
    /// for a DSN (null sender, RFC 5321 §4.5.5) the `dsn_from` address, so
    /// that sender-domain rules send DSNs where that domain's mail goes.
    pub(super) fn routing_sender<'a>(&'a self, m: &'a ClaimedMessage) -> &'a str {
        match (&self.dsn_from, m.is_dsn && m.sender.is_empty()) {
            (Some(from), true) => from,
            _ => &m.sender,
        }
    }
}
