//! DKIM signing end to end: keys generated through the CLI functions and
//! stored in a real store, messages fixed up and signed by `Signer`, every
//! signature checked by dkimpy and by mail-auth's verifier.

use std::time::Duration;

use postgate::dkim::{self, DkimConfig, DkimError, Signer};
use postgate::fixups::{self, FixupContext, FixupsConfig, TlsInfo};
use postgate::store::{DkimAlgorithm, Store};

use crate::common::{all_stores, sqlite_store};
use crate::dkim_verify::{dkimpy_verify, mail_auth_verify};

/// Generates an RSA and an Ed25519 key for `domain`; returns the printed output.
async fn dual_keys(store: &dyn Store, domain: &str) -> String {
    let rsa = dkim::cli_generate(store, domain, "rsa1", DkimAlgorithm::RsaSha256, None)
        .await
        .unwrap();
    let ed = dkim::cli_generate(store, domain, "ed1", DkimAlgorithm::Ed25519Sha256, None)
        .await
        .unwrap();
    format!("{rsa}{ed}")
}

fn fixed_up(message: &[u8]) -> Vec<u8> {
    let config = FixupsConfig::default();
    let rcpts = vec!["bob@example.org".to_string()];
    let ctx = FixupContext {
        hostname: "relay.example.net",
        now_ms: 1_795_452_707_000,
        queue_id: "0193abcdef",
        authenticated: true,
        tls: Some(TlsInfo {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
        }),
        smtputf8: false,
        helo: Some("laptop"),
        client_ip: None,
        client_host: None,
        recipients: &rcpts,
        config: &config,
    };
    fixups::apply(message, &ctx).unwrap()
}

async fn sign(signer: &Signer, message: &[u8]) -> Vec<u8> {
    let sigs = signer
        .sign(bytes::Bytes::copy_from_slice(message))
        .await
        .unwrap();
    sigs.prepend_to(message)
}

/// Asserts both verifiers pass every signature and returns the algorithms seen.
async fn assert_verifies(printed: &str, signed: &[u8], what: &str) -> Vec<String> {
    let (ok, py) = dkimpy_verify(printed, signed);
    assert!(ok, "{what}: dkimpy: {py:?}");
    let ma = mail_auth_verify(printed, signed).await;
    assert_eq!(ma.len(), py.len(), "{what}: signature counts differ");
    assert!(
        ma.iter().all(|(pass, _, _)| *pass),
        "{what}: mail-auth: {ma:?}"
    );
    let mut algs: Vec<String> = py.iter().map(|r| r.a.clone()).collect();
    algs.sort();
    algs
}

const PLAIN: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: plain\r\n\r\nHello Bob.\r\n";

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut multipart = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\nThis is a multi-part message.\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attachment.\r\n--b1\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n".to_vec();
    let blob: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
    for chunk in b64.as_bytes().chunks(76) {
        multipart.extend_from_slice(chunk);
        multipart.extend_from_slice(b"\r\n");
    }
    multipart.extend_from_slice(b"--b1--\r\n");
    let long_subject = "word ".repeat(60);
    let folded = format!(
        "From: \"Alice\r\n Example\" <alice@example.com>\r\nTo: a@example.org,\r\n\tb@example.org,\r\n  c@example.org\r\nSubject: {}\r\n {}\r\nReferences: <{}@x>\r\n\t<{}@y>\r\n\r\nbody\r\n",
        long_subject.trim(),
        long_subject.trim(),
        "r".repeat(200),
        "s".repeat(200)
    );
    vec![
        ("plain text", PLAIN.to_vec()),
        (
            "8-bit UTF-8",
            "From: Jörg <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Grüße aus Köln ✓\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÄrger über Öl, 東京, emoji 🎉\r\n"
                .as_bytes()
                .to_vec(),
        ),
        ("multipart with attachment", multipart),
        ("folded long headers", folded.into_bytes()),
        (
            "trailing whitespace",
            b"From: alice@example.com  \r\nTo: bob@example.org\t\r\nSubject:   spaced   out  \r\n\r\nline with trailing spaces   \r\ntab\t\r\n\r\n\r\n\r\n".to_vec(),
        ),
        (
            "empty body",
            b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: empty\r\n\r\n".to_vec(),
        ),
        (
            "no body separator",
            b"From: alice@example.com\r\nSubject: headers only".to_vec(),
        ),
    ]
}

#[tokio::test]
async fn every_signature_verifies_independently_on_every_backend() {
    for t in all_stores().await {
        let printed = dual_keys(t.store.as_ref(), "example.com").await;
        assert!(printed.contains("rsa1._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p="));
        assert!(printed.contains("ed1._domainkey.example.com. IN TXT \"v=DKIM1; k=ed25519; p="));
        let signer = Signer::new(t.store.clone(), DkimConfig::default())
            .await
            .unwrap();
        for (what, message) in cases() {
            let what = format!("{} / {what}", t.backend);
            let message = fixed_up(&message);
            let signed = sign(&signer, &message).await;
            // Dual-signed: RFC 8463 §3 RSA + Ed25519, on top of the message.
            assert!(
                signed.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256")
                    || signed.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256"),
                "{what}"
            );
            let algs = assert_verifies(&printed, &signed, &what).await;
            assert_eq!(algs, ["ed25519-sha256", "rsa-sha256"], "{what}");
            let (_, py) = dkimpy_verify(&printed, &signed);
            for r in &py {
                assert_eq!(r.d, "example.com", "{what}");
                assert!(r.s == "rsa1" || r.s == "ed1", "{what}: {}", r.s);
                let h: Vec<String> = r.h.split(':').map(|s| s.to_ascii_lowercase()).collect();
                // From oversigned; only present fields otherwise.
                assert_eq!(
                    h.iter().filter(|n| *n == "from").count(),
                    2,
                    "{what}: {h:?}"
                );
                assert!(
                    h.contains(&"date".to_string()) && h.contains(&"message-id".to_string()),
                    "{what}: {h:?}"
                );
                assert!(!h.contains(&"received".to_string()), "{what}: {h:?}");
                assert!(
                    !h.contains(&"cc".to_string()),
                    "{what}: absent Cc signed: {h:?}"
                );
                assert!(r.error.is_empty(), "{what}: {}", r.error);
            }
        }
    }
}

#[tokio::test]
async fn tampering_breaks_the_signatures() {
    let t = sqlite_store().await;
    let printed = dual_keys(t.store.as_ref(), "example.com").await;
    let signer = Signer::new(t.store.clone(), DkimConfig::default())
        .await
        .unwrap();
    let signed = sign(&signer, &fixed_up(PLAIN)).await;
    assert_verifies(&printed, &signed, "untouched").await;

    let text = String::from_utf8(signed.clone()).unwrap();
    let body_changed = text.replace("Hello Bob.", "Hello Eve.");
    let subject_changed = text.replace("Subject: plain", "Subject: urgent");
    // Oversigning: a second From added after signing is caught.
    let from_added = text.replace("From: Alice", "From: ceo@example.com\r\nFrom: Alice");
    for (what, bad) in [
        ("body", body_changed),
        ("subject", subject_changed),
        ("second From", from_added),
    ] {
        let (ok, py) = dkimpy_verify(&printed, bad.as_bytes());
        assert!(
            !ok && py.iter().all(|r| !r.ok),
            "{what}: dkimpy accepted {py:?}"
        );
        let ma = mail_auth_verify(&printed, bad.as_bytes()).await;
        assert!(
            ma.iter().all(|(pass, _, _)| !pass),
            "{what}: mail-auth accepted"
        );
    }
    // The wrong public key does not verify either.
    let other = sqlite_store().await;
    let wrong = dual_keys(other.store.as_ref(), "example.com").await;
    assert!(!dkimpy_verify(&wrong, &signed).0);
}

#[tokio::test]
async fn keys_are_picked_by_header_from_domain_with_optional_parent_fallback() {
    let t = sqlite_store().await;
    let s = t.store.as_ref();
    let printed = dual_keys(s, "example.com").await;
    let ed_only = dkim::cli_generate(
        s,
        "other.example",
        "ed9",
        DkimAlgorithm::Ed25519Sha256,
        None,
    )
    .await
    .unwrap()
    .to_string();
    let records = format!("{printed}{ed_only}");

    let strict = Signer::new(t.store.clone(), DkimConfig::default())
        .await
        .unwrap();
    // Another domain with one key: one signature, with that domain's key.
    let m = fixed_up(b"From: x@Other.Example\r\nSubject: s\r\n\r\nhi\r\n");
    let sigs = strict.sign(m.clone().into()).await.unwrap();
    assert_eq!(sigs.domain.as_deref(), Some("other.example"));
    assert_eq!(sigs.selectors, ["ed9 (ed25519-sha256)"]);
    assert_verifies(&records, &sigs.prepend_to(&m), "other domain").await;

    // A subdomain without its own key: unsigned unless fallback is on.
    let sub = fixed_up(b"From: news@mail.example.com\r\nSubject: s\r\n\r\nhi\r\n");
    let none = strict.sign(sub.clone().into()).await.unwrap();
    assert_eq!(none.domain, None);
    assert!(none.headers.is_empty());
    let fallback = Signer::new(
        t.store.clone(),
        DkimConfig {
            parent_domain_fallback: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sigs = fallback.sign(sub.clone().into()).await.unwrap();
    assert_eq!(sigs.domain.as_deref(), Some("example.com"));
    assert_eq!(sigs.selectors.len(), 2);
    assert_verifies(&records, &sigs.prepend_to(&sub), "parent fallback").await;
    assert_eq!(fallback.signing_domain("a.b.unrelated.example"), None);

    // An internationalized domain: the key is stored under A-labels, and a
    // From in U-labels (an SMTPUTF8 message) is signed with it.
    let idn = dkim::cli_generate(
        s,
        "Bücher.example",
        "ed1",
        DkimAlgorithm::Ed25519Sha256,
        None,
    )
    .await
    .unwrap()
    .to_string();
    assert!(
        idn.contains("ed1._domainkey.xn--bcher-kva.example"),
        "{idn}"
    );
    let strict = Signer::new(t.store.clone(), DkimConfig::default())
        .await
        .unwrap();
    let m = "From: Jörg <jörg@bücher.example>\r\nSubject: s\r\n\r\nhi\r\n".as_bytes();
    let sigs = strict.sign(bytes::Bytes::copy_from_slice(m)).await.unwrap();
    assert_eq!(sigs.domain.as_deref(), Some("xn--bcher-kva.example"));
    assert_verifies(&idn, &sigs.prepend_to(m), "IDN domain").await;

    // require_signature: no key is an error naming the domain.
    let required = Signer::new(
        t.store.clone(),
        DkimConfig {
            require_signature: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let err = required.sign(sub.into()).await.unwrap_err();
    assert!(
        matches!(&err, DkimError::NoKey { domain } if domain == "mail.example.com"),
        "{err}"
    );
    // No From at all: refused when a signature is required, else unsigned.
    let no_from = bytes::Bytes::from_static(b"Subject: x\r\n\r\n");
    let err = required.sign(no_from.clone()).await.unwrap_err();
    assert!(
        matches!(err, DkimError::Header(_)) && err.is_permanent(),
        "{err}"
    );
    assert_eq!(strict.sign(no_from).await.unwrap().domain, None);
    // Signing disabled: nothing added.
    let off = Signer::new(
        t.store.clone(),
        DkimConfig {
            enabled: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(off.sign(m.into()).await.unwrap().headers.is_empty());
}

#[tokio::test]
async fn rotation_retire_and_reload() {
    let t = sqlite_store().await;
    let s = t.store.as_ref();
    let printed = dual_keys(s, "example.com").await;
    let signer = Signer::new(t.store.clone(), DkimConfig::default())
        .await
        .unwrap();
    // A new RSA key joins at the next reload: three signatures, all valid.
    let new = dkim::cli_generate(
        s,
        "example.com",
        "rsa2",
        DkimAlgorithm::RsaSha256,
        Some(3072),
    )
    .await
    .unwrap();
    assert_eq!(new.bits, 3072);
    let records = format!("{printed}{new}");
    let m = fixed_up(PLAIN);
    assert_eq!(
        signer.sign(m.clone().into()).await.unwrap().selectors.len(),
        2
    );
    assert_eq!(signer.reload().await.unwrap(), 3);
    let three = signer.sign(m.clone().into()).await.unwrap();
    assert_eq!(three.selectors.len(), 3);
    assert_verifies(&records, &three.prepend_to(&m), "three keys").await;

    let retired = dkim::cli_retire(s, "example.com", "rsa1").await.unwrap();
    assert!(retired
        .to_string()
        .contains("Keep the DNS record rsa1._domainkey.example.com"));
    signer.reload().await.unwrap();
    let two = signer.sign(m.clone().into()).await.unwrap();
    let mut sels = two.selectors.clone();
    sels.sort();
    assert_eq!(sels, ["ed1 (ed25519-sha256)", "rsa2 (rsa-sha256)"]);
    assert_verifies(&records, &two.prepend_to(&m), "after retire").await;

    let list = dkim::cli_list(s).await.unwrap();
    let text = list.to_string();
    assert!(text.contains("rsa1") && text.contains("retired") && text.contains("rsa2"));
    assert!(!text.contains("PRIVATE"), "list must not print keys");
    assert!(matches!(
        dkim::cli_retire(s, "example.com", "nope").await,
        Err(DkimError::Store(postgate::store::StoreError::NotFound(_)))
    ));
    // Selectors are never reused.
    assert!(
        dkim::cli_generate(s, "example.com", "rsa1", DkimAlgorithm::Ed25519Sha256, None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn expiry_sets_x_and_still_verifies() {
    let t = sqlite_store().await;
    let printed = dual_keys(t.store.as_ref(), "example.com").await;
    let signer = Signer::new(
        t.store.clone(),
        DkimConfig {
            expiry: Some(Duration::from_secs(7 * 86400)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let m = fixed_up(PLAIN);
    let sigs = signer.sign(m.clone().into()).await.unwrap();
    let text = String::from_utf8(sigs.headers.clone()).unwrap();
    let t_val: u64 = tag(&text, "t=");
    let x_val: u64 = tag(&text, "x=");
    assert_eq!(x_val - t_val, 7 * 86400, "{text}");
    assert_verifies(&printed, &sigs.prepend_to(&m), "expiry").await;
}

fn tag(text: &str, name: &str) -> u64 {
    let start = text.find(&format!(" {name}")).expect(name) + name.len() + 1;
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn imported_openssl_keys_sign_and_verify() {
    let t = sqlite_store().await;
    let s = t.store.as_ref();
    let dir = tempfile::tempdir().unwrap();
    let pkcs1 = dir.path().join("rsa-pkcs1.pem");
    let ed = dir.path().join("ed25519.pem");
    let run = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl {args:?}");
    };
    run(&[
        "genrsa",
        "-traditional",
        "-out",
        pkcs1.to_str().unwrap(),
        "2048",
    ]);
    run(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        ed.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));

    let a = dkim::cli_import(
        s,
        "import.example",
        "legacy",
        DkimAlgorithm::RsaSha256,
        &pkcs1,
    )
    .await
    .unwrap();
    let b = dkim::cli_import(s, "import.example", "ed", DkimAlgorithm::Ed25519Sha256, &ed)
        .await
        .unwrap();
    // The public key matches what openssl derives from the same file.
    let out = std::process::Command::new("openssl")
        .args([
            "pkey",
            "-in",
            pkcs1.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
        ])
        .output()
        .unwrap();
    use base64::Engine;
    let spki = base64::engine::general_purpose::STANDARD.encode(&out.stdout);
    assert!(a.record.value.ends_with(&format!("p={spki}")));

    let printed = format!("{a}{b}");
    let signer = Signer::new(t.store.clone(), DkimConfig::default())
        .await
        .unwrap();
    let m = fixed_up(b"From: x@import.example\r\nSubject: imported\r\n\r\nhi\r\n");
    let signed = sign(&signer, &m).await;
    let algs = assert_verifies(&printed, &signed, "imported keys").await;
    assert_eq!(algs, ["ed25519-sha256", "rsa-sha256"]);

    // Wrong algorithm or a missing file: clear errors naming the file.
    let err = dkim::cli_import(
        s,
        "import.example",
        "x",
        DkimAlgorithm::Ed25519Sha256,
        &pkcs1,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("rsa-pkcs1.pem"), "{err}");
    let err = dkim::cli_import(
        s,
        "import.example",
        "y",
        DkimAlgorithm::RsaSha256,
        &dir.path().join("missing.pem"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DkimError::Io { .. }), "{err}");
}

#[tokio::test]
async fn header_from_not_permitted_is_refused_naming_the_address() {
    let t = sqlite_store().await;
    let s = t.store.as_ref();
    s.user_add("alice", "default", "$argon2id$x").await.unwrap();
    s.sender_allow("alice", "@example.com").await.unwrap();
    s.sender_allow("alice", "ceo@other.example").await.unwrap();
    let senders = s.login_lookup("alice").await.unwrap().unwrap().senders;

    let ok =
        fixups::check_header_from(b"From: Alice <alice@Example.com>\r\n\r\nx", &senders).unwrap();
    assert_eq!(ok[0].1, "@example.com", "the permitting rule is named");
    let err = fixups::check_header_from(b"From: \"CEO\" <cfo@other.example>\r\n\r\nx", &senders)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "header From <cfo@other.example> is not permitted for this login: no sender rule (exact address or @domain) matches it"
    );
    let err = fixups::check_header_from(
        b"From: a@example.com\r\nFrom: b@example.com\r\n\r\n",
        &senders,
    )
    .unwrap_err();
    assert!(err.to_string().contains("2 From header fields"), "{err}");
}

#[tokio::test]
async fn a_broken_stored_key_fails_loading_without_leaking_it() {
    let t = sqlite_store().await;
    t.store
        .dkim_add(
            &postgate::store::NewDkimKey {
                domain: "example.com".into(),
                selector: "bad".into(),
                algorithm: DkimAlgorithm::RsaSha256,
                private_key_pem:
                    "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n".into(),
                public_key: "x".into(),
            },
            1,
        )
        .await
        .unwrap();
    let err = Signer::new(t.store.clone(), DkimConfig::default())
        .await
        .expect_err("unusable key refused");
    let text = err.to_string();
    assert!(text.contains("bad._domainkey.example.com"), "{text}");
    assert!(!text.contains("c2VjcmV0"), "{text}");
}

/// A submission from `alice@example.com` with an authenticated identity.
fn submission(body: &[u8]) -> postgate::intake::Submission {
    use postgate::auth::Identity;
    use postgate::intake::{ClientInfo, Submission};
    use postgate::smtp::ports::Recipient;
    Submission {
        session_id: "s1".into(),
        identity: Identity {
            user_id: 1,
            username: "alice".into(),
            credential_id: 1,
            credential_label: "default".into(),
            senders: vec!["@example.com".into()],
            limits: Default::default(),
            user_limits: Default::default(),
            normalize_line_endings: None,
            credential_tag: [0; 32],
        },
        client: ClientInfo {
            ip: "127.0.0.1".parse().unwrap(),
            helo: "laptop".into(),
            tls: None,
            auth_mechanism: "PLAIN".into(),
        },
        sender: "alice@example.com".into(),
        recipients: vec![Recipient {
            address: "bob@example.org".into(),
            notify: None,
            orcpt: None,
        }],
        body: bytes::Bytes::copy_from_slice(body),
        envid: None,
        ret: None,
        smtputf8: false,
        body_type: None,
    }
}

/// The value of `postgate_dkim_signatures_total` for `algorithm`, `result`.
fn signatures_metric(metrics: &postgate::metrics::Metrics, algorithm: &str) -> Option<String> {
    let series =
        format!("postgate_dkim_signatures_total{{algorithm=\"{algorithm}\",result=\"signed\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_string))
}

#[tokio::test]
async fn the_signature_metric_is_labelled_by_the_key_algorithm_not_the_selector_name() {
    use postgate::intake::{MessageProcessing, StoreIntake};
    for t in all_stores().await {
        // An RSA key whose selector names the other algorithm, and the reverse.
        dkim::cli_generate(
            &*t.store,
            "example.com",
            "ed25519-2026",
            DkimAlgorithm::RsaSha256,
            None,
        )
        .await
        .unwrap();
        dkim::cli_generate(
            &*t.store,
            "example.com",
            "rsa-new",
            DkimAlgorithm::Ed25519Sha256,
            None,
        )
        .await
        .unwrap();
        let signer = Signer::new(t.store.clone(), DkimConfig::default())
            .await
            .unwrap();
        let metrics = postgate::metrics::Metrics::detached();
        let intake = StoreIntake::new(t.store.clone(), Duration::from_secs(3600))
            .with_processing(MessageProcessing {
                hostname: "relay.example.net".into(),
                enforce_header_from: false,
                fixups: FixupsConfig::default(),
                signer: Some(std::sync::Arc::new(signer)),
            })
            .with_metrics(metrics.clone());
        let body =
            b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n";
        let signed = intake
            .final_body(&submission(body), "q1", 1_795_452_707_000)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&signed)
                .matches("DKIM-Signature:")
                .count(),
            2,
            "{}",
            t.backend
        );
        assert_eq!(
            signatures_metric(&metrics, "rsa-sha256").as_deref(),
            Some("1"),
            "{}: one RSA signature",
            t.backend
        );
        assert_eq!(
            signatures_metric(&metrics, "ed25519-sha256").as_deref(),
            Some("1"),
            "{}: one Ed25519 signature",
            t.backend
        );
    }
}

#[test]
fn a_signing_failure_names_the_algorithm_of_its_key() {
    let e = DkimError::Sign {
        algorithm: DkimAlgorithm::Ed25519Sha256,
        reason: "boom".into(),
    };
    assert_eq!(e.algorithm(), Some(DkimAlgorithm::Ed25519Sha256));
    assert_eq!(e.to_string(), "DKIM signing failed (ed25519-sha256): boom");
    assert!(!e.is_permanent());
}
