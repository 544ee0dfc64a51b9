//! `QueueStore::record_outcomes` finishing messages, on both backends: a
//! message is deleted by the outcome that delivers its last recipient
//! (whether its other recipients were delivered in the same call or an
//! earlier one), never while a recipient is still queued, and every
//! attempt is logged.

use postgate::store::{OutcomeKind, RecipientOutcome, StoreError};

use crate::common::all_stores;
use crate::delivery_queue::message;

const T0: i64 = 1_700_000_000_000;

fn done(id: i64, kind: OutcomeKind) -> RecipientOutcome {
    RecipientOutcome {
        recipient_id: id,
        kind,
        upstream: Some("up1".into()),
        reply: Some("reply".into()),
        log: true,
    }
}

fn later() -> OutcomeKind {
    OutcomeKind::Deferred {
        next_attempt_at: T0 + 1_000,
        route_index: 0,
        count_attempt: true,
    }
}

#[tokio::test]
async fn the_outcome_that_delivers_the_last_recipient_deletes_the_message_on_every_backend() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        // One message fully delivered in one call, one half delivered (the
        // other recipient deferred), one single-recipient message: one call.
        let all = message("a@example.com", &["a1@x.org", "a2@x.org"], b"x", T0);
        let half = message("a@example.com", &["h1@x.org", "h2@x.org"], b"y", T0);
        let one = message("a@example.com", &["o1@x.org"], b"z", T0);
        for m in [&all, &half, &one] {
            s.enqueue(m).await.unwrap();
        }
        let claimed = s.claim_due("A", T0, 60_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 3, "{b}");
        let mut outcomes = Vec::new();
        for c in &claimed {
            for r in &c.recipients {
                let kind = if r.address == "h2@x.org" {
                    later()
                } else {
                    OutcomeKind::Delivered
                };
                outcomes.push(done(r.id, kind));
            }
        }
        assert_eq!(
            s.record_outcomes("A", T0, &outcomes).await.unwrap(),
            5,
            "{b}"
        );
        for gone in [&all, &one] {
            assert!(
                matches!(s.queue_show(&gone.id).await, Err(StoreError::NotFound(_))),
                "{b}: all delivered, deleted"
            );
        }
        let shown = s.queue_show(&half.id).await.unwrap();
        let states: Vec<(&str, u32)> = shown
            .recipients
            .iter()
            .map(|r| (r.status.as_str(), r.attempts))
            .collect();
        assert_eq!(states, [("delivered", 1), ("queued", 1)], "{b}");
        let mut logged: Vec<(&str, &str)> = shown
            .log
            .iter()
            .map(|l| (l.recipient.as_str(), l.outcome.as_str()))
            .collect();
        logged.sort();
        assert_eq!(
            logged,
            [("h1@x.org", "delivered"), ("h2@x.org", "deferred")],
            "{b}"
        );

        // The deferred one delivered later: now the message goes.
        let again = s.claim_due("B", T0 + 1_000, 60_000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{b}");
        let r = &again[0].recipients[0];
        assert_eq!((r.address.as_str(), r.attempts), ("h2@x.org", 1), "{b}");
        // A node that lost the lease records nothing and deletes nothing.
        assert_eq!(
            s.record_outcomes("A", T0 + 1_000, &[done(r.id, OutcomeKind::Delivered)])
                .await
                .unwrap(),
            0,
            "{b}"
        );
        assert!(s.queue_show(&half.id).await.is_ok(), "{b}");
        assert_eq!(
            s.record_outcomes("B", T0 + 1_000, &[done(r.id, OutcomeKind::Delivered)])
                .await
                .unwrap(),
            1,
            "{b}"
        );
        assert!(
            matches!(s.queue_show(&half.id).await, Err(StoreError::NotFound(_))),
            "{b}"
        );
        assert!(s.queue_list(10).await.unwrap().is_empty(), "{b}");
        assert!(s.unfinished_messages(10).await.unwrap().is_empty(), "{b}");
    }
}

#[tokio::test]
async fn deleting_a_user_keeps_its_queued_messages_and_forgets_the_user_id_on_every_backend() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        s.user_add("alice", "default", "hash").await.unwrap();
        let id = s.user_list().await.unwrap()[0].id;
        let mut m = message("a@example.com", &["r@x.org"], b"x", T0);
        m.user_id = Some(id);
        s.enqueue(&m).await.unwrap();
        let mut other = message("a@example.com", &["r@x.org"], b"y", T0 + 1);
        other.user_id = None;
        s.enqueue(&other).await.unwrap();
        s.user_delete("alice").await.unwrap();
        let claimed = s.claim_due("A", T0 + 1, 60_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 2, "{b}: the user's mail is still delivered");
        assert_eq!(claimed[0].id, m.id, "{b}");
        assert_eq!(claimed[0].user_id, None, "{b}: set to NULL with the user");
        assert_eq!(claimed[0].username.as_deref(), Some("alice"), "{b}");
    }
}
