//! The delivery events outbox (issue #17) on both backends: events are
//! written with the state change they describe (enqueue, recorded
//! outcomes, deletion), never for what did not happen (an outcome of a
//! lost lease), not for postgate's own DSNs, not at all while events are
//! off; readers page in commit order and webhook cursors persist.

use postgate::store::{EventCursor, NewRejection, OutcomeKind, RecipientOutcome};

use crate::common::all_stores;
use crate::delivery_queue::message;

const T0: i64 = 1_700_000_000_000;

fn outcome(id: i64, kind: OutcomeKind, reply: &str) -> RecipientOutcome {
    RecipientOutcome {
        recipient_id: id,
        kind,
        upstream: Some("up1".into()),
        reply: Some(reply.into()),
        log: true,
    }
}

fn kinds(events: &[postgate::store::DeliveryEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.kind.clone(), e.recipient.clone().unwrap_or_default()))
        .collect()
}

fn pair(k: &str, r: &str) -> (String, String) {
    (k.to_string(), r.to_string())
}

/// The events after `cursor` once `n` are there (PostgreSQL hands them out
/// when every older transaction of the cluster, other tests' included, is
/// over), or what there is after 20 s.
async fn settled(
    s: &dyn postgate::store::Store,
    cursor: EventCursor,
    n: usize,
) -> Vec<postgate::store::DeliveryEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = s.events_after(cursor, 100).await.unwrap();
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn no_events_are_written_while_events_are_off() {
    for t in all_stores().await {
        let s = &t.store;
        assert!(!s.events_installed().await.unwrap(), "{}", t.backend);
        let m = message("a@example.com", &["r@x.org"], b"x", T0);
        s.enqueue(&m).await.unwrap();
        let c = s.claim_due("A", T0, 60_000, 10).await.unwrap();
        let o = outcome(c[0].recipients[0].id, OutcomeKind::Delivered, "250 ok");
        s.record_outcomes("A", T0, &[o]).await.unwrap();
        assert!(
            s.events_recent(None, 100).await.unwrap().is_empty(),
            "{}",
            t.backend
        );
        // Turning them on and off again is idempotent.
        s.events_install(true).await.unwrap();
        s.events_install(true).await.unwrap();
        assert!(s.events_installed().await.unwrap());
        s.events_install(false).await.unwrap();
        s.events_install(false).await.unwrap();
        let m = message("a@example.com", &["r@x.org"], b"x", T0);
        s.enqueue(&m).await.unwrap();
        assert!(
            s.events_recent(None, 100).await.unwrap().is_empty(),
            "{}",
            t.backend
        );
    }
}

#[tokio::test]
async fn each_state_change_writes_its_event_on_every_backend() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        s.events_install(true).await.unwrap();
        let m = message(
            "a@example.com",
            &["d@x.org", "f@x.org", "q@x.org", "l@x.org"],
            b"x",
            T0,
        );
        s.enqueue(&m).await.unwrap();
        let mut dsn = message("", &["a@example.com"], b"dsn", T0);
        dsn.is_dsn = true;
        s.enqueue(&dsn).await.unwrap();
        let claimed = s.claim_due("A", T0, 60_000, 10).await.unwrap();
        let ours = claimed.iter().find(|c| c.id == m.id).unwrap();
        let id_of = |a: &str| ours.recipients.iter().find(|r| r.address == a).unwrap().id;
        let later = OutcomeKind::Deferred {
            next_attempt_at: T0 + 1_000,
            route_index: 0,
            count_attempt: true,
        };
        let outcomes = [
            outcome(id_of("d@x.org"), OutcomeKind::Delivered, "250 2.0.0 ok"),
            outcome(
                id_of("f@x.org"),
                OutcomeKind::Failed,
                "550 5.1.1 no such user",
            ),
            outcome(id_of("q@x.org"), later, "451 4.3.0 try later"),
        ];
        assert_eq!(s.record_outcomes("A", T0 + 10, &outcomes).await.unwrap(), 3);
        // "l@x.org" was taken over by B: A's late outcome is not recorded,
        // so no event says it happened.
        s.reclaim_expired(T0 + 120_000).await.unwrap();
        let again = s.claim_due("B", T0 + 120_000, 60_000, 10).await.unwrap();
        assert!(again.iter().any(|c| c.id == m.id), "{b}");
        let lost = outcome(id_of("l@x.org"), OutcomeKind::Delivered, "250 late");
        assert_eq!(
            s.record_outcomes("A", T0 + 120_001, &[lost]).await.unwrap(),
            0,
            "{b}"
        );
        let exp = again
            .iter()
            .find(|c| c.id == m.id)
            .unwrap()
            .recipients
            .iter()
            .map(|r| outcome(r.id, OutcomeKind::Expired, "lifetime over"))
            .collect::<Vec<_>>();
        s.record_outcomes("B", T0 + 120_002, &exp).await.unwrap();

        let events = s.events_recent(Some(&m.id), 100).await.unwrap();
        assert_eq!(
            kinds(&events),
            [
                pair("accepted", "d@x.org"),
                pair("accepted", "f@x.org"),
                pair("accepted", "q@x.org"),
                pair("accepted", "l@x.org"),
                pair("delivered", "d@x.org"),
                pair("bounced", "f@x.org"),
                pair("deferred", "q@x.org"),
                pair("expired", "q@x.org"),
                pair("expired", "l@x.org"),
            ],
            "{b}"
        );
        for e in &events {
            assert_eq!(e.sender.as_deref(), Some("a@example.com"), "{b}");
            assert_eq!(e.username.as_deref(), Some("alice"), "{b}");
        }
        assert_eq!(
            events[5].reply.as_deref(),
            Some("550 5.1.1 no such user"),
            "{b}"
        );
        assert_eq!(events[5].upstream.as_deref(), Some("up1"), "{b}");
        assert_eq!(
            events[6].reply.as_deref(),
            Some("451 4.3.0 try later"),
            "{b}"
        );
        assert_eq!(events[6].attempt, 1, "{b}");
        // The DSN postgate generated has no events.
        assert!(
            s.events_recent(Some(&dsn.id), 10).await.unwrap().is_empty(),
            "{b}"
        );

        // An operator's deletion is an event too.
        let d = message("a@example.com", &["z@x.org"], b"x", T0);
        s.enqueue(&d).await.unwrap();
        s.queue_delete(&d.id, T0 + 5).await.unwrap();
        assert_eq!(
            kinds(&s.events_recent(Some(&d.id), 10).await.unwrap()),
            [pair("accepted", "z@x.org"), pair("deleted", "z@x.org")],
            "{b}"
        );
    }
}

#[tokio::test]
async fn rejections_cursors_and_pruning_on_every_backend() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        s.events_install(true).await.unwrap();
        s.event_rejected(&NewRejection {
            at: T0,
            sender: "a@example.com".into(),
            username: Some("alice".into()),
            recipients: vec!["x@x.org".into(), "y@x.org".into()],
            rule: "header_from".into(),
            reply: "550 5.7.1 header From not permitted".into(),
        })
        .await
        .unwrap();
        for i in 0..5 {
            let m = message("a@example.com", &["r@x.org"], b"x", T0 + i);
            s.enqueue(&m).await.unwrap();
        }
        let all = settled(&**s, EventCursor::default(), 7).await;
        assert_eq!(all.len(), 7, "{b}");
        assert_eq!(all[0].kind, "rejected", "{b}");
        assert_eq!(all[0].rule.as_deref(), Some("header_from"), "{b}");
        assert_eq!(all[0].message_id, None, "{b}");
        // Paging returns the same events in the same order.
        let mut paged = Vec::new();
        let mut cursor = EventCursor::default();
        loop {
            let page = s.events_after(cursor, 3).await.unwrap();
            let Some(last) = page.last() else { break };
            cursor = last.cursor();
            paged.extend(page);
        }
        assert_eq!(paged, all, "{b}");
        let backlog = s.events_backlog(all[1].cursor()).await.unwrap();
        assert_eq!(backlog.events, 5, "{b}");
        assert_eq!(backlog.oldest_at, Some(T0), "{b}");

        assert_eq!(s.webhook_cursor("hook").await.unwrap(), None, "{b}");
        s.webhook_cursor_set("hook", all[3].cursor(), T0)
            .await
            .unwrap();
        s.webhook_cursor_set("hook", all[4].cursor(), T0)
            .await
            .unwrap();
        assert_eq!(
            s.webhook_cursor("hook").await.unwrap(),
            Some(all[4].cursor()),
            "{b}"
        );
        // Never backwards (a node that lost its lease may still write).
        s.webhook_cursor_set("hook", all[2].cursor(), T0)
            .await
            .unwrap();
        assert_eq!(
            s.webhook_cursor("hook").await.unwrap(),
            Some(all[4].cursor()),
            "{b}"
        );
        // One sender per webhook: A holds it until its lease ends.
        assert!(
            s.webhook_lease("hook", "A", T0, 1_000).await.unwrap(),
            "{b}"
        );
        assert!(
            !s.webhook_lease("hook", "B", T0 + 500, 1_000).await.unwrap(),
            "{b}"
        );
        assert!(
            s.webhook_lease("hook", "A", T0 + 900, 1_000).await.unwrap(),
            "{b}"
        );
        assert!(
            !s.webhook_lease("hook", "B", T0 + 1_500, 1_000)
                .await
                .unwrap(),
            "{b}"
        );
        assert!(
            s.webhook_lease("hook", "B", T0 + 2_000, 1_000)
                .await
                .unwrap(),
            "{b}"
        );
        assert!(
            !s.webhook_lease("hook", "A", T0 + 2_100, 1_000)
                .await
                .unwrap(),
            "{b}"
        );
        // The lease row keeps the cursor.
        assert_eq!(
            s.webhook_cursor("hook").await.unwrap(),
            Some(all[4].cursor()),
            "{b}"
        );
        assert!(s.webhook_lease("new", "A", T0, 1_000).await.unwrap(), "{b}");
        assert_eq!(
            s.webhook_cursor("new").await.unwrap(),
            Some(EventCursor::default()),
            "{b}"
        );

        // By age: the rejections and the first message's event (at T0) go.
        assert_eq!(s.events_prune(T0 + 1, 1000).await.unwrap(), 3, "{b}");
        // By count: the newest two stay.
        assert_eq!(s.events_prune(0, 2).await.unwrap(), 2, "{b}");
        let left = s.events_recent(None, 100).await.unwrap();
        assert_eq!(left, all[5..].to_vec(), "{b}");
        // Ids are not reused after pruning: a cursor stays valid.
        s.events_prune(0, 0).await.unwrap();
        let m = message("a@example.com", &["r@x.org"], b"x", T0);
        s.enqueue(&m).await.unwrap();
        let next = settled(&**s, all[6].cursor(), 1).await;
        assert_eq!(next.len(), 1, "{b}");
    }
}

/// PostgreSQL hands out ids before commit: an event whose transaction
/// commits after a later one's must not be skipped by a reader.
#[tokio::test]
async fn a_reader_never_skips_an_event_that_commits_late_on_postgres() {
    let Some(t) = crate::common::pg_store().await else {
        return;
    };
    use sqlx::Connection;
    let s = &t.store;
    s.events_install(true).await.unwrap();
    let mut slow = sqlx::PgConnection::connect(&t.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query(
        "INSERT INTO delivery_events (tx, at, kind, sender, rule)
         VALUES (pg_current_xact_id()::text::bigint, 1, 'rejected', 'slow@x.org', 'test')",
    )
    .execute(&mut slow)
    .await
    .unwrap();
    // A later transaction commits first.
    let m = message("a@example.com", &["r@x.org"], b"x", T0);
    s.enqueue(&m).await.unwrap();
    assert!(
        s.events_after(EventCursor::default(), 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing is handed out while an earlier transaction may still add events"
    );
    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    // The horizon is the cluster's: other tests' transactions may hold it
    // back a moment longer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let got = loop {
        let got = s.events_after(EventCursor::default(), 10).await.unwrap();
        if got.len() >= 2 || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let senders: Vec<_> = got.iter().map(|e| e.sender.clone().unwrap()).collect();
    assert_eq!(senders, ["slow@x.org", "a@example.com"]);
}
