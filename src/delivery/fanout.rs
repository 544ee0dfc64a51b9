//! One message, several routes: its claimed recipients are split by route
//! ([`route::split`]: recipient domain, sender domain, user, then the
//! stored fail-over position) and each group is one transaction with one
//! upstream ([`Engine::attempt`]). Groups go at the same time, so a slow
//! upstream does not hold back another route's recipients; each recipient
//! is in exactly one group, and its outcome stays its own.

use bytes::Bytes;

use super::{route, Engine};
use crate::store::{ClaimedMessage, RecipientOutcome};

impl Engine {
    /// One attempt for every claimed recipient of `m`: one transaction per
    /// route group, all groups concurrently. Outcomes of all recipients.
    /// `unrecorded` collects the message's connection permits (see
    /// [`Engine::attempt`]).
    pub(super) async fn attempt_routes(
        &self,
        m: &ClaimedMessage,
        body: &Bytes,
        unrecorded: &super::attempt::Unrecorded,
    ) -> Vec<RecipientOutcome> {
        let facts = self
            .router
            .message(self.routing_sender(m), m.username.as_deref());
        let groups = route::split(
            &self.router,
            &facts,
            m.recipients
                .iter()
                .map(|r| (r, r.address.as_str(), r.route_index)),
        );
        let attempts = groups
            .iter()
            .map(|g| self.attempt(m, body, g.route, g.start, &g.members, unrecorded));
        futures::future::join_all(attempts)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}
