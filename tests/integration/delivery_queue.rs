//! The queue in the store, on both backends: the contract of `QueueStore`
//! (enqueue, claim with lease, lease expiry and reclaim, outcomes, finish
//! with DSN, admin), claims taking whole messages, and concurrent claimers
//! never sharing a recipient.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use postgate::store::{
    new_queue_id, NewMessage, NewRecipient, OutcomeKind, RecipientOutcome, Store, StoreError,
};

use crate::common::all_stores;

pub fn message(sender: &str, recipients: &[&str], body: &[u8], now: i64) -> NewMessage {
    NewMessage {
        id: new_queue_id(),
        sender: sender.into(),
        recipients: recipients
            .iter()
            .map(|r| NewRecipient {
                address: r.to_string(),
                notify: None,
                orcpt: None,
            })
            .collect(),
        user_id: None,
        username: Some("alice".into()),
        credential: Some("default".into()),
        body: Bytes::copy_from_slice(body),
        envid: None,
        dsn_ret: None,
        is_dsn: false,
        smtputf8: false,
        received_at: now,
        expires_at: now + 5 * 86_400_000,
        journal: None,
    }
}

fn outcome(id: i64, kind: OutcomeKind, reply: &str) -> RecipientOutcome {
    RecipientOutcome {
        recipient_id: id,
        kind,
        upstream: Some("up1".into()),
        reply: Some(reply.into()),
        log: true,
    }
}

const T0: i64 = 1_700_000_000_000;

#[tokio::test]
async fn claim_outcomes_and_finish_with_dsn_on_every_backend() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        let m = message(
            "a@example.com",
            &["r1@x.org", "r2@x.org", "r3@x.org"],
            b"Subject: hi\r\n\r\nbody\r\n",
            T0,
        );
        s.enqueue(&m).await.unwrap();
        // Not due before received_at.
        assert!(
            s.claim_due("A", T0 - 1, 60_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{b}"
        );
        let claimed = s.claim_due("A", T0, 60_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "{b}");
        let c = &claimed[0];
        assert_eq!(c.id, m.id);
        assert_eq!(c.sender, "a@example.com");
        assert_eq!(c.username.as_deref(), Some("alice"));
        let addrs: Vec<&str> = c.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(addrs, ["r1@x.org", "r2@x.org", "r3@x.org"], "{b}");
        assert!(c
            .recipients
            .iter()
            .all(|r| r.attempts == 0 && r.route_index == 0));
        // Leased: another claimer gets nothing.
        assert!(
            s.claim_due("B", T0, 60_000, 10).await.unwrap().is_empty(),
            "{b}"
        );
        assert_eq!(&s.load_body(&m.id).await.unwrap()[..], &m.body[..], "{b}");

        let ids: Vec<i64> = c.recipients.iter().map(|r| r.id).collect();
        let outcomes = vec![
            outcome(ids[0], OutcomeKind::Delivered, "250 2.0.0 ok"),
            outcome(
                ids[1],
                OutcomeKind::Deferred {
                    next_attempt_at: T0 + 1_000,
                    route_index: 1,
                    count_attempt: true,
                },
                "451 4.3.0 later",
            ),
            outcome(ids[2], OutcomeKind::Failed, "550 5.1.1 unknown"),
        ];
        // Someone who does not hold the lease records nothing.
        assert_eq!(
            s.record_outcomes("B", T0, &outcomes).await.unwrap(),
            0,
            "{b}"
        );
        assert_eq!(
            s.record_outcomes("A", T0, &outcomes).await.unwrap(),
            3,
            "{b}"
        );
        // Recorded twice: the second time nothing matches (no longer leased).
        assert_eq!(
            s.record_outcomes("A", T0, &outcomes).await.unwrap(),
            0,
            "{b}"
        );
        assert!(s.final_recipients(&m.id).await.unwrap().is_none(), "{b}");
        assert!(
            !s.finish_message(&m.id, T0, None).await.unwrap(),
            "{b}: r2 still queued"
        );

        let shown = s.queue_show(&m.id).await.unwrap();
        assert_eq!(shown.entry.pending, 1, "{b}");
        assert_eq!(shown.entry.next_attempt_at, Some(T0 + 1_000), "{b}");
        let r2 = &shown.recipients[1];
        assert_eq!(
            (r2.status.as_str(), r2.attempts, r2.route_index),
            ("queued", 1, 1),
            "{b}"
        );
        assert_eq!(r2.last_reply.as_deref(), Some("451 4.3.0 later"));
        assert_eq!(r2.lease_owner, None);
        let outcomes_logged: Vec<&str> = shown.log.iter().map(|l| l.outcome.as_str()).collect();
        assert_eq!(outcomes_logged, ["delivered", "deferred", "failed"], "{b}");
        assert!(shown
            .log
            .iter()
            .all(|l| l.attempt == 1 && l.upstream.as_deref() == Some("up1")));

        // Not due until its next attempt; then it comes back with its state.
        assert!(
            s.claim_due("A", T0 + 999, 60_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{b}"
        );
        let again = s.claim_due("B", T0 + 1_000, 60_000, 10).await.unwrap();
        assert_eq!(again[0].recipients.len(), 1, "{b}");
        let r = &again[0].recipients[0];
        assert_eq!(
            (r.address.as_str(), r.attempts, r.route_index),
            ("r2@x.org", 1, 1)
        );
        s.record_outcomes(
            "B",
            T0 + 1_000,
            &[outcome(r.id, OutcomeKind::Expired, "expired")],
        )
        .await
        .unwrap();
        let finals = s.final_recipients(&m.id).await.unwrap().expect("all final");
        let statuses: Vec<&str> = finals.iter().map(|f| f.status.as_str()).collect();
        assert_eq!(statuses, ["delivered", "expired", "failed"], "{b}");

        let mut dsn = message("", &["a@example.com"], b"report", T0 + 2_000);
        dsn.is_dsn = true;
        assert!(
            s.finish_message(&m.id, T0 + 2_000, Some(&dsn))
                .await
                .unwrap(),
            "{b}"
        );
        // Finished once only: a second finisher enqueues no second DSN.
        assert!(
            !s.finish_message(&m.id, T0 + 2_000, Some(&dsn))
                .await
                .unwrap(),
            "{b}"
        );
        assert!(
            matches!(s.queue_show(&m.id).await, Err(StoreError::NotFound(_))),
            "{b}"
        );
        let list = s.queue_list(100).await.unwrap();
        assert_eq!(list.len(), 1, "{b}");
        assert_eq!(list[0].id, dsn.id);
        assert!(list[0].is_dsn);
        assert_eq!(list[0].sender, "");
        assert_eq!(
            s.prune_delivery_log(T0 + 1_500).await.unwrap(),
            4,
            "{b}: rows before T0 + 1500 pruned, bounced rows kept"
        );
    }
}

#[tokio::test]
async fn a_late_outcome_after_the_lease_expired_still_counts_on_every_backend() {
    // Issue 13: the store was away longer than the lease; the holder's
    // outcome, retried until the store is back, lands after the janitor
    // cleared the expired lease. Nobody took the recipient over, so the
    // outcome counts (else the message would be sent again).
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        let m = message("a@example.com", &["r@x.org"], b"x\r\n", T0);
        s.enqueue(&m).await.unwrap();
        let claimed = s.claim_due("node-a/1", T0, 1_000, 10).await.unwrap();
        let rid = claimed[0].recipients[0].id;
        assert_eq!(s.reclaim_expired(T0 + 5_000).await.unwrap(), 1, "{b}");
        let done = [outcome(rid, OutcomeKind::Delivered, "250 ok")];
        assert_eq!(
            s.record_outcomes("node-a/1", T0 + 5_100, &done)
                .await
                .unwrap(),
            1,
            "{b}: the late outcome was dropped"
        );
        assert!(
            matches!(s.queue_show(&m.id).await, Err(StoreError::NotFound(_))),
            "{b}: delivered, so finished"
        );
        assert!(
            s.claim_due("node-b/1", T0 + 6_000, 1_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{b}: nothing left to send again"
        );
    }
}

#[tokio::test]
async fn lease_expiry_lets_another_node_take_over_on_every_backend() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        let m = message("a@example.com", &["r@x.org"], b"x\r\n", T0);
        s.enqueue(&m).await.unwrap();
        let dead = s.claim_due("dead-node", T0, 1_000, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(
            s.claim_due("B", T0 + 999, 1_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{b}"
        );
        assert_eq!(s.reclaim_expired(T0 + 999).await.unwrap(), 0, "{b}");
        assert_eq!(s.reclaim_expired(T0 + 1_000).await.unwrap(), 1, "{b}");
        // The lease is gone; its last holder stays named (a late outcome of
        // its, the store having been away, still counts until a takeover).
        let shown = s.queue_show(&m.id).await.unwrap();
        assert_eq!(shown.recipients[0].lease_until, None, "{b}");
        assert_eq!(
            shown.recipients[0].lease_owner.as_deref(),
            Some("dead-node"),
            "{b}"
        );
        let taken = s.claim_due("B", T0 + 1_000, 1_000, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "{b}");
        // The dead node's late outcome is ignored; the new holder's counts.
        let rid = taken[0].recipients[0].id;
        let done = [outcome(rid, OutcomeKind::Delivered, "250 ok")];
        assert_eq!(
            s.record_outcomes("dead-node", T0 + 1_100, &done)
                .await
                .unwrap(),
            0,
            "{b}"
        );
        assert_eq!(
            s.record_outcomes("B", T0 + 1_100, &done).await.unwrap(),
            1,
            "{b}"
        );
        // All recipients delivered: the message was finished in that transaction.
        assert!(
            matches!(s.queue_show(&m.id).await, Err(StoreError::NotFound(_))),
            "{b}"
        );
        assert!(
            !s.finish_message(&m.id, T0 + 1_200, None).await.unwrap(),
            "{b}"
        );
    }
}

#[tokio::test]
async fn admin_list_show_retry_delete_on_every_backend() {
    for t in all_stores().await {
        let s: &dyn Store = &*t.store;
        let b = t.backend;
        let m1 = message("a@example.com", &["r1@x.org", "r2@x.org"], b"one\r\n", T0);
        let m2 = message("b@example.com", &["r3@x.org"], b"two\r\n", T0 + 1);
        s.enqueue(&m1).await.unwrap();
        s.enqueue(&m2).await.unwrap();
        let list = postgate::delivery::admin::list(s, 10).await.unwrap();
        let ids: Vec<&str> = list.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [m1.id.as_str(), m2.id.as_str()], "{b}");
        assert_eq!(
            (list[0].recipients, list[0].pending, list[0].size),
            (2, 2, 5)
        );
        assert_eq!(s.queue_list(1).await.unwrap().len(), 1, "{b}");

        // Defer r1 far into the future, then "retry now" makes it due again.
        let c = s.claim_due("A", T0, 60_000, 1).await.unwrap();
        let rid = c[0].recipients[0].id;
        let now = postgate::delivery::now_ms();
        let far = now + 3_600_000;
        s.record_outcomes(
            "A",
            T0,
            &[outcome(
                rid,
                OutcomeKind::Deferred {
                    next_attempt_at: far,
                    route_index: 0,
                    count_attempt: true,
                },
                "451 later",
            )],
        )
        .await
        .unwrap();
        assert_eq!(
            postgate::delivery::admin::retry(s, &m1.id).await.unwrap(),
            2,
            "{b}"
        );
        let shown = postgate::delivery::admin::show(s, &m1.id).await.unwrap();
        assert!(shown
            .recipients
            .iter()
            .all(|r| r.next_attempt_at >= now && r.next_attempt_at < far));
        assert_eq!(shown.recipients[0].attempts, 1, "{b}: retry keeps attempts");

        postgate::delivery::admin::delete(s, &m2.id).await.unwrap();
        assert!(matches!(
            postgate::delivery::admin::show(s, &m2.id).await,
            Err(StoreError::NotFound(_))
        ));
        for r in [
            postgate::delivery::admin::retry(s, "nope")
                .await
                .map(|_| ()),
            postgate::delivery::admin::delete(s, "nope").await,
            s.load_body("nope").await.map(|_| ()),
        ] {
            assert!(matches!(r, Err(StoreError::NotFound(_))), "{b}: {r:?}");
        }
        assert_eq!(s.queue_list(10).await.unwrap().len(), 1, "{b}");
    }
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_recipient_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        let store: Arc<dyn Store> = t.store.clone();
        let mut expected = HashSet::new();
        for i in 0..150 {
            let m = message(
                "a@example.com",
                &["r1@x.org", "r2@x.org"],
                format!("m{i}\r\n").as_bytes(),
                T0,
            );
            store.enqueue(&m).await.unwrap();
            expected.insert(m.id);
        }
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // (message, recipients of that message in one claim)
                let mut got: Vec<(String, Vec<i64>)> = Vec::new();
                loop {
                    // An odd limit would cut a two-recipient message in half
                    // if claims took recipients rather than messages.
                    let c = store
                        .claim_due(&format!("w{w}"), T0, 600_000, 7)
                        .await
                        .unwrap();
                    if c.is_empty() {
                        break;
                    }
                    for m in c {
                        got.push((m.id.clone(), m.recipients.iter().map(|r| r.id).collect()));
                    }
                }
                got
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        let recipients: Vec<i64> = all.iter().flat_map(|(_, r)| r.clone()).collect();
        let unique: HashSet<i64> = recipients.iter().copied().collect();
        assert_eq!(recipients.len(), 300, "{b}: every recipient claimed");
        assert_eq!(unique.len(), 300, "{b}: no recipient claimed twice");
        assert!(
            all.iter().all(|(_, r)| r.len() == 2),
            "{b}: a message's recipients come in one claim, never split"
        );
        let messages: HashSet<String> = all.into_iter().map(|(m, _)| m).collect();
        assert_eq!(messages.len(), 150, "{b}: each message claimed once");
        assert_eq!(messages, expected, "{b}");
    }
}

#[tokio::test]
async fn concurrent_enqueues_all_commit_and_a_bad_one_fails_alone_on_every_backend() {
    for t in all_stores().await {
        let b = t.backend;
        let store: Arc<dyn Store> = t.store.clone();
        let dup = message("a@example.com", &["r@x.org"], b"dup\r\n", T0);
        store.enqueue(&dup).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let store = store.clone();
            let m = if i == 50 {
                dup.clone()
            } else {
                message(
                    "a@example.com",
                    &["r@x.org"],
                    format!("m{i}\r\n").as_bytes(),
                    T0,
                )
            };
            tasks.push(tokio::spawn(async move { store.enqueue(&m).await }));
        }
        let mut ok = 0;
        let mut conflicts = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::Conflict(_)) => conflicts += 1,
                Err(e) => panic!("{b}: {e}"),
            }
        }
        assert_eq!((ok, conflicts), (99, 1), "{b}");
        assert_eq!(store.queue_list(1000).await.unwrap().len(), 100, "{b}");
        // A message without recipients is refused.
        let empty = message("a@example.com", &[], b"x", T0);
        assert!(
            matches!(store.enqueue(&empty).await, Err(StoreError::Invalid(_))),
            "{b}"
        );
    }
}

#[tokio::test]
async fn a_25_mb_message_round_trips_on_every_backend() {
    for t in all_stores().await {
        let body: Vec<u8> = (0..25 * 1024 * 1024)
            .map(|i| b"abcdefghij\r\n"[i % 12])
            .collect();
        let m = message("a@example.com", &["r@x.org"], &body, T0);
        t.store.enqueue(&m).await.unwrap();
        let loaded = t.store.load_body(&m.id).await.unwrap();
        assert_eq!(loaded.len(), body.len(), "{}", t.backend);
        assert!(loaded == body, "{}", t.backend);
    }
}

/// A claim takes whole messages: a limit smaller than a message's recipient
/// count still leases all of its due recipients (so they share one upstream
/// transaction), and recipients not yet due stay out.
#[tokio::test]
async fn a_claim_takes_every_due_recipient_of_a_message_on_every_backend() {
    for t in all_stores().await {
        let s: &dyn Store = &*t.store;
        let b = t.backend;
        let rcpts = ["a@x.org", "b@x.org", "c@x.org", "d@x.org", "e@x.org"];
        let big = message("s@example.com", &rcpts, b"five\r\n", T0);
        let next = message("s@example.com", &["z@x.org"], b"one\r\n", T0 + 1);
        s.enqueue(&big).await.unwrap();
        s.enqueue(&next).await.unwrap();
        let c = s.claim_due("A", T0 + 5, 60_000, 2).await.unwrap();
        assert_eq!(c.len(), 1, "{b}: only the oldest message: {c:?}");
        assert_eq!(c[0].id, big.id, "{b}");
        let got: Vec<&str> = c[0].recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(got, rcpts, "{b}: all five, though the limit is 2");

        // Defer two of them; the next claim of the message takes only the
        // three that are due again, still together.
        let later = T0 + 60_000;
        let deferred: Vec<RecipientOutcome> = c[0].recipients[..2]
            .iter()
            .map(|r| {
                outcome(
                    r.id,
                    OutcomeKind::Deferred {
                        next_attempt_at: later,
                        route_index: 0,
                        count_attempt: true,
                    },
                    "451 later",
                )
            })
            .collect();
        let due_again: Vec<RecipientOutcome> = c[0].recipients[2..]
            .iter()
            .map(|r| {
                outcome(
                    r.id,
                    OutcomeKind::Deferred {
                        // Due before the other message's recipient (T0 + 1).
                        next_attempt_at: T0,
                        route_index: 0,
                        count_attempt: true,
                    },
                    "451 soon",
                )
            })
            .collect();
        s.record_outcomes("A", T0 + 6, &[deferred, due_again].concat())
            .await
            .unwrap();
        let c = s.claim_due("B", T0 + 20, 60_000, 1).await.unwrap();
        let ids: Vec<&str> = c.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, [big.id.as_str()], "{b}");
        let got: Vec<&str> = c[0].recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(got, &rcpts[2..], "{b}: the due three, not the two deferred");
    }
}

/// Issue #17 item 4: a message and its journal copy are committed together
/// or not at all, and the copy (null sender) writes no events.
#[tokio::test]
async fn a_journal_copy_commits_with_its_message_or_neither_does() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        s.events_install(true).await.unwrap();
        let mut m = message(
            "a@example.com",
            &["r@dest.example"],
            b"Subject: j\r\n\r\nx\r\n",
            T0,
        );
        let copy = message("", &["archive@arch.example"], b"X-J: 1\r\n\r\nx\r\n", T0);
        let copy_id = copy.id.clone();
        m.journal = Some(Box::new(copy.clone()));
        s.enqueue(&m).await.unwrap();
        assert_eq!(
            &s.load_body(&m.id).await.unwrap()[..],
            b"Subject: j\r\n\r\nx\r\n",
            "{b}"
        );
        assert_eq!(
            &s.load_body(&copy_id).await.unwrap()[..],
            b"X-J: 1\r\n\r\nx\r\n",
            "{b}"
        );
        let events = s.events_recent(None, 100).await.unwrap();
        let accepted: Vec<_> = events
            .iter()
            .map(|e| e.recipient.clone().unwrap())
            .collect();
        assert_eq!(accepted, ["r@dest.example"], "{b}: {events:?}");

        // The copy cannot be stored (its id exists): the message is not either.
        let mut m2 = message("a@example.com", &["r@dest.example"], b"y", T0);
        m2.journal = Some(Box::new(copy));
        assert!(s.enqueue(&m2).await.is_err(), "{b}");
        assert!(
            matches!(s.load_body(&m2.id).await, Err(StoreError::NotFound(_))),
            "{b}: message stored without its journal copy"
        );
        assert_eq!(s.events_recent(None, 100).await.unwrap().len(), 1, "{b}");
    }
}

/// Enqueues are group-committed (`store/group_commit.rs`; on PostgreSQL one
/// statement carries the whole group): each message of a group keeps exactly
/// its own body and recipients (the bad-message case is
/// `concurrent_enqueues_all_commit_and_a_bad_one_fails_alone_on_every_backend`).
#[tokio::test]
async fn group_committed_messages_keep_their_own_recipients_and_bodies() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        let messages: Vec<NewMessage> = (0..64)
            .map(|i| {
                let rcpts: Vec<String> = (0..=i % 3)
                    .map(|k| format!("r{i}-{k}@dest.example"))
                    .collect();
                let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
                message("a@example.com", &rcpts, format!("body {i}").as_bytes(), T0)
            })
            .collect();
        for r in futures::future::join_all(messages.iter().map(|m| s.enqueue(m))).await {
            r.unwrap();
        }
        let claimed = s.claim_due("n1", T0 + 1, 60_000, 1_000).await.unwrap();
        assert_eq!(claimed.len(), 64, "{b}");
        for c in &claimed {
            let m = messages
                .iter()
                .find(|m| m.id == c.id)
                .expect("a message enqueued here");
            let got: Vec<&str> = c.recipients.iter().map(|r| r.address.as_str()).collect();
            let want: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
            assert_eq!(got, want, "{b}: recipients of {}, in the order given", c.id);
            assert_eq!(s.load_body(&c.id).await.unwrap(), m.body, "{b}");
        }
    }
}
