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
        let labels: Vec<&str> = rec.credentials.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["default", "printer"], "{b}: in creation order");
        assert_eq!(rec.credentials[1].password_hash, "$2b$y", "{b}");
        assert_eq!(rec.senders, ["@example.com", "ceo@other.example"], "{b}");

        // Credential overrides (set with plain SQL) come with their
        // credential only; the user's own stay apart.
        let sql = "UPDATE credentials SET max_messages_per_day = 7 WHERE label = 'printer'";
        if b == "sqlite" {
            let pool = sqlx::SqlitePool::connect(&t.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
        } else {
            let pool = sqlx::PgPool::connect(&t.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        let rec = s.login_lookup("alice").await.unwrap().unwrap();
        assert_eq!(rec.credentials[1].limits.messages_per_day, Some(7), "{b}");
        assert_eq!(rec.credentials[0].limits, LimitOverrides::default(), "{b}");
        assert_eq!(rec.limits.messages_per_day, None, "{b}");

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

async fn table_names(url: &str) -> Vec<String> {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut c)
            .await
            .unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(
            "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
        )
        .fetch_all(&mut c)
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn migrations_create_the_whole_schema_once() {
    for t in all_stores().await {
        let tables = table_names(&t.url).await;
        for want in [
            "users",
            "credentials",
            "sender_permissions",
            "dkim_keys",
            "queue_messages",
            "queue_recipients",
            "delivery_log",
            "limit_counters",
            "_sqlx_migrations",
        ] {
            assert!(
                tables.iter().any(|n| n == want),
                "{}: {want} missing from {tables:?}",
                t.backend
            );
        }
        // A second run over a migrated database is a no-op.
        postgate::store::open_and_migrate(&t.url, &Default::default())
            .await
            .unwrap();
        assert_eq!(table_names(&t.url).await, tables, "{}", t.backend);
    }
}

#[tokio::test]
async fn a_failed_migration_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("clash.db").display());
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        // A table the migration will clash with, created after some others in 0001.
        sqlx::query("CREATE TABLE queue_messages (x INTEGER)")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let err = postgate::store::open_and_migrate(&url, &Default::default())
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().starts_with("migration failed"), "{err}");
    let tables = table_names(&url).await;
    assert!(
        !tables.iter().any(|n| n == "users"),
        "0001 was rolled back as a whole: {tables:?}"
    );
}
