//! One message, several routes: its claimed recipients are split by route
//! ([`route::split`]: recipient domain, sender domain, user, then the
//! stored fail-over position) and each group is one transaction with one
//! upstream ([`Engine::attempt`]). Groups go at the same time, so a slow
//! upstream does not hold back another route's recipients; each recipient
//! is in exactly one group, and its outcome stays its own.

use bytes::Bytes;

use super::pool::Held;
use super::worker::Waiting;
use super::{route, Engine};
use crate::store::{ClaimedMessage, RecipientOutcome};

impl Engine {
    /// One attempt for every claimed recipient of `m`: one transaction per
    /// route group, all groups concurrently. Outcomes of all recipients,
    /// and the ids of those delivered to an upstream that did not take the
    /// DSN parameters (postgate owes their SUCCESS notice, see notices.rs).
    /// `waiting` is given up once the first group holds a connection. The
    /// connection slots used ([`Held`]) are added to `held`: the caller
    /// keeps them until the outcomes are committed.
    pub(super) async fn attempt_routes(
        &self,
        m: &ClaimedMessage,
        body: &Bytes,
        waiting: &Waiting,
        held: &mut Vec<Held>,
    ) -> (Vec<RecipientOutcome>, Vec<i64>) {
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
        let mut relayed = vec![Vec::new(); groups.len()];
        let mut slots: Vec<Option<Held>> = groups.iter().map(|_| None).collect();
        let attempts = groups
            .iter()
            .zip(relayed.iter_mut())
            .zip(slots.iter_mut())
            .map(|((g, rel), slot)| {
                self.attempt(m, body, g.route, g.start, &g.members, rel, waiting, slot)
            });
        let outcomes = futures::future::join_all(attempts)
            .await
            .into_iter()
            .flatten()
            .collect();
        held.extend(slots.into_iter().flatten());
        (outcomes, relayed.into_iter().flatten().collect())
    }
}
