//! The store side of the HTTP API (migration 0014) on both backends: API
//! tokens follow their credential and user (disable, enable, revoke,
//! delete), token hashes are unique, and a submitted message's status is
//! shown to its submitter only, from the queue while queued and from the
//! delivery log after.

use postgate::store::api::TOKEN_ONLY_HASH;
use postgate::store::StoreError;

use crate::common::all_stores;
use crate::delivery_flow::new_message;

#[tokio::test]
async fn tokens_follow_their_credential_and_user() {
    for ts in all_stores().await {
        let s = &*ts.store;
        let b = ts.backend;
        s.user_add("alice", "default", "$argon2id$x").await.unwrap();
        s.user_add("bob", "default", "$argon2id$x").await.unwrap();
        s.credential_add("alice", "app", TOKEN_ONLY_HASH)
            .await
            .unwrap();
        let hash = "ab".repeat(32);
        assert!(s.token_lookup(&hash).await.unwrap().is_none(), "{b}");
        s.token_set("alice", "app", &hash).await.unwrap();
        let owner = s.token_lookup(&hash).await.unwrap().expect("found");
        assert_eq!(
            (owner.username.as_str(), owner.token_hash.as_str()),
            ("alice", hash.as_str()),
            "{b}"
        );
        // The credential is usable by login_lookup (its hash verifies nothing).
        let rec = s.login_lookup("alice").await.unwrap().unwrap();
        assert!(rec
            .credentials
            .iter()
            .any(|c| c.id == owner.credential_id && c.password_hash == TOKEN_ONLY_HASH));

        s.credential_set_enabled("alice", "app", false)
            .await
            .unwrap();
        assert!(
            s.token_lookup(&hash).await.unwrap().is_none(),
            "{b}: disabled credential"
        );
        s.credential_set_enabled("alice", "app", true)
            .await
            .unwrap();
        assert!(s.token_lookup(&hash).await.unwrap().is_some(), "{b}");
        s.user_set_enabled("alice", false).await.unwrap();
        assert!(
            s.token_lookup(&hash).await.unwrap().is_none(),
            "{b}: disabled user"
        );
        s.user_set_enabled("alice", true).await.unwrap();

        // One hash, one credential.
        s.credential_add("bob", "app", TOKEN_ONLY_HASH)
            .await
            .unwrap();
        assert!(
            matches!(
                s.token_set("bob", "app", &hash).await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        assert!(
            matches!(
                s.token_set("bob", "nope", &hash).await,
                Err(StoreError::NotFound(_))
            ),
            "{b}"
        );

        s.credential_revoke("alice", "app").await.unwrap();
        assert!(
            s.token_lookup(&hash).await.unwrap().is_none(),
            "{b}: revoked"
        );
        s.token_set("bob", "app", &hash).await.unwrap();
        s.user_delete("bob").await.unwrap();
        assert!(
            s.token_lookup(&hash).await.unwrap().is_none(),
            "{b}: deleted user"
        );
    }
}

#[tokio::test]
async fn message_status_is_for_its_submitter_only() {
    for ts in all_stores().await {
        let s = &*ts.store;
        let b = ts.backend;
        s.user_add("alice", "default", "$argon2id$x").await.unwrap();
        s.user_add("bob", "default", "$argon2id$x").await.unwrap();
        let alice = s.login_lookup("alice").await.unwrap().unwrap().user_id;
        let bob = s.login_lookup("bob").await.unwrap().unwrap().user_id;
        let m = new_message("a@example.com", &["x@dest.example", "y@dest.example"], "hi");
        s.enqueue(&m).await.unwrap();
        let rcpts = vec!["x@dest.example".to_string(), "y@dest.example".to_string()];
        s.api_message_add(&m.id, alice, &rcpts, m.received_at)
            .await
            .unwrap();

        assert!(
            s.api_message_status(&m.id, bob).await.unwrap().is_none(),
            "{b}: other user"
        );
        assert!(
            s.api_message_status("nope", alice).await.unwrap().is_none(),
            "{b}"
        );
        let st = s
            .api_message_status(&m.id, alice)
            .await
            .unwrap()
            .expect("own message");
        let states: Vec<(&str, &str)> = st
            .iter()
            .map(|r| (r.address.as_str(), r.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [("x@dest.example", "queued"), ("y@dest.example", "queued")],
            "{b}"
        );

        // Gone from the queue: the log tells.
        s.queue_delete(&m.id, m.received_at + 5).await.unwrap();
        let st = s
            .api_message_status(&m.id, alice)
            .await
            .unwrap()
            .expect("still known");
        assert!(
            st.iter()
                .all(|r| r.state == "deleted" && r.updated_at.is_some()),
            "{b}: {st:?}"
        );

        assert_eq!(s.api_message_prune(m.received_at).await.unwrap(), 0, "{b}");
        assert_eq!(
            s.api_message_prune(m.received_at + 1).await.unwrap(),
            1,
            "{b}"
        );
        assert!(
            s.api_message_status(&m.id, alice).await.unwrap().is_none(),
            "{b}: pruned"
        );
    }
}
