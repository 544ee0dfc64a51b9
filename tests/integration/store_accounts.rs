//! Accounts in the store, on both backends: the contract of `AccountStore`.

use postgate::store::{LimitOverrides, StoreError};

use crate::common::all_stores;

#[tokio::test]
async fn user_lifecycle_on_every_backend() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        s.user_add("Alice", "default", "$argon2id$x").await.unwrap();
        // Case-insensitive uniqueness.
        assert!(
            matches!(
                s.user_add("ALICE", "default", "h").await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        s.credential_add("alice", "printer", "$2b$y").await.unwrap();
        assert!(
            matches!(
                s.credential_add("alice", "printer", "h").await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        assert!(
            matches!(
                s.credential_add("nobody", "x", "h").await,
                Err(StoreError::NotFound(_))
            ),
            "{b}"
        );
        s.sender_allow("alice", "@example.com").await.unwrap();
        s.sender_allow("alice", "ceo@other.example").await.unwrap();
        assert_eq!(
            s.sender_list("alice").await.unwrap(),
            vec!["@example.com", "ceo@other.example"],
            "{b}"
        );

        let rec = s
            .login_lookup("aLiCe")
            .await
            .unwrap()
            .expect("login record");
        assert_eq!(rec.username, "alice");
        assert_eq!(rec.credentials.len(), 2, "{b}");
        assert_eq!(rec.senders.len(), 2, "{b}");

        s.user_set_limits(
            "alice",
            &LimitOverrides {
                messages_per_hour: Some(50),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let rec = s.login_lookup("alice").await.unwrap().unwrap();
        assert_eq!(rec.limits.messages_per_hour, Some(50), "{b}");
        assert_eq!(rec.limits.messages_per_day, None, "{b}");

        s.credential_used(rec.credentials[0].id, 1234, Some("$argon2id$new"))
            .await
            .unwrap();
        let list = s.credential_list("alice").await.unwrap();
        assert_eq!(
            list.iter()
                .find(|c| c.label == "default")
                .unwrap()
                .last_used_at,
            Some(1234),
            "{b}"
        );
        let rec = s.login_lookup("alice").await.unwrap().unwrap();
        assert_eq!(rec.credentials[0].password_hash, "$argon2id$new", "{b}");

        // Disabled users are invisible to login, exactly like unknown ones.
        s.user_set_enabled("alice", false).await.unwrap();
        assert!(s.login_lookup("alice").await.unwrap().is_none(), "{b}");
        s.user_set_enabled("alice", true).await.unwrap();

        s.credential_revoke("alice", "printer").await.unwrap();
        assert!(
            matches!(
                s.credential_revoke("alice", "printer").await,
                Err(StoreError::NotFound(_))
            ),
            "{b}"
        );
        s.sender_revoke("alice", "@example.com").await.unwrap();
        assert_eq!(
            s.sender_list("alice").await.unwrap(),
            vec!["ceo@other.example"],
            "{b}"
        );

        assert_eq!(s.user_list().await.unwrap().len(), 1, "{b}");
        s.user_delete("alice").await.unwrap();
        assert!(s.user_list().await.unwrap().is_empty(), "{b}");
        assert!(
            matches!(s.user_delete("alice").await, Err(StoreError::NotFound(_))),
            "{b}"
        );
        // Cascade removed credentials and senders too.
        assert!(
            matches!(s.sender_list("alice").await, Err(StoreError::NotFound(_))),
            "{b}"
        );
    }
}

#[tokio::test]
async fn invalid_input_is_refused_with_a_reason() {
    for t in all_stores().await {
        let s = &t.store;
        let err = s.user_add("has space", "default", "h").await.unwrap_err();
        assert!(err.to_string().contains("invalid username"), "{err}");
        let err = s.user_add("bob", "bad label!", "h").await.unwrap_err();
        assert!(
            err.to_string().contains("invalid credential label"),
            "{err}"
        );
        // Nothing half-written: the failed add left no user behind.
        assert!(s.user_list().await.unwrap().is_empty());
    }
}
