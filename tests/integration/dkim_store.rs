//! DKIM keys in the store, on both backends: the contract of `DkimStore`.

use postgate::store::{DkimAlgorithm, NewDkimKey, StoreError};

use crate::common::all_stores;

fn key(domain: &str, selector: &str, algorithm: DkimAlgorithm) -> NewDkimKey {
    NewDkimKey {
        domain: domain.into(),
        selector: selector.into(),
        algorithm,
        private_key_pem: format!(
            "-----BEGIN PRIVATE KEY-----\n{selector}\n-----END PRIVATE KEY-----\n"
        ),
        public_key: format!("pub-{selector}"),
    }
}

#[tokio::test]
async fn dkim_key_lifecycle_on_every_backend() {
    for t in all_stores().await {
        let s = &t.store;
        let b = t.backend;
        s.dkim_add(&key("Example.COM", "rsa1", DkimAlgorithm::RsaSha256), 1000)
            .await
            .unwrap();
        s.dkim_add(
            &key("example.com", "ed1", DkimAlgorithm::Ed25519Sha256),
            1001,
        )
        .await
        .unwrap();
        s.dkim_add(&key("other.example", "s1", DkimAlgorithm::RsaSha256), 1002)
            .await
            .unwrap();
        // Same domain + selector (case-insensitively) is a conflict, whatever the algorithm.
        let dup = s
            .dkim_add(
                &key("EXAMPLE.com", "RSA1", DkimAlgorithm::Ed25519Sha256),
                1003,
            )
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{b}: {dup:?}");
        for (d, sel) in [("bad domain", "s"), ("example.com", "a b"), ("", "s")] {
            let r = s.dkim_add(&key(d, sel, DkimAlgorithm::RsaSha256), 1).await;
            assert!(
                matches!(r, Err(StoreError::Invalid(_))),
                "{b}: {d:?} {sel:?}"
            );
        }

        let list = s.dkim_list().await.unwrap();
        let names: Vec<_> = list
            .iter()
            .map(|k| {
                (
                    k.domain.as_str(),
                    k.selector.as_str(),
                    k.algorithm,
                    k.active,
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("example.com", "ed1", DkimAlgorithm::Ed25519Sha256, true),
                ("example.com", "rsa1", DkimAlgorithm::RsaSha256, true),
                ("other.example", "s1", DkimAlgorithm::RsaSha256, true),
            ],
            "{b}"
        );
        assert_eq!(list[1].created_at, 1000, "{b}");
        assert_eq!(list[1].public_key, "pub-rsa1", "{b}");

        let active = s.dkim_active_keys().await.unwrap();
        assert_eq!(active.len(), 3, "{b}");
        assert!(active[0].private_key_pem.contains("ed1"), "{b}");
        // The private key never shows in Debug output.
        assert!(!format!("{:?}", active[0]).contains("BEGIN"), "{b}");

        s.dkim_retire("EXAMPLE.com", "Rsa1", 2000).await.unwrap();
        // Retiring a retired key is an error (issue #14); the first
        // retirement time is kept.
        let again = s.dkim_retire("example.com", "rsa1", 3000).await;
        assert!(
            matches!(&again, Err(StoreError::Conflict(m)) if m.contains("already retired")),
            "{b}: {again:?}"
        );
        let r = s.dkim_retire("example.com", "nope", 2000).await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{b}: {r:?}");

        let active = s.dkim_active_keys().await.unwrap();
        let sels: Vec<_> = active.iter().map(|k| k.info.selector.as_str()).collect();
        assert_eq!(sels, vec!["ed1", "s1"], "{b}");
        let retired = s
            .dkim_list()
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.selector == "rsa1")
            .unwrap();
        assert!(!retired.active, "{b}");
        assert_eq!(retired.retired_at, Some(2000), "{b}");
        // A retired selector is never reused.
        let r = s
            .dkim_add(&key("example.com", "rsa1", DkimAlgorithm::RsaSha256), 4000)
            .await;
        assert!(matches!(r, Err(StoreError::Conflict(_))), "{b}");
    }
}
