//! The OAuth and client-certificate sections of docs/providers.md: each
//! ```toml example passes the real `postgate check-config`, with the files
//! it names created for real (an RSA certificate and its key, a Google
//! service account key JSON), so the credential checks run on them; the
//! Microsoft example also with its commented certificate credential
//! switched on instead of the client secret.

use std::path::Path;
use std::process::Command;

const DOC: &str = include_str!("../../docs/providers.md");
const PLACEHOLDER: &str = "placeholder-secret-5c1e";
const SECTIONS: &[&str] = &[
    "Microsoft 365 (OAuth app-only)",
    "Microsoft 365 certificate connector",
    "Google Workspace XOAUTH2 (service account)",
];

fn blocks_of(section: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut block: Option<String> = None;
    for line in DOC.lines() {
        match &mut block {
            Some(b) if line.trim_start().starts_with("```") => {
                if current == section {
                    out.push(std::mem::take(b));
                }
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None if line.trim_start().starts_with("```toml") => block = Some(String::new()),
            None => {
                if let Some(h) = line.strip_prefix("## ") {
                    current = h.trim().to_string();
                }
            }
        }
    }
    out
}

/// Creates the files `text` names under `root` and rewrites the paths.
fn materialize(text: &str, root: &Path) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["relay.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut out = text.to_string();
    for word in text.split('"').filter(|w| {
        w.starts_with("/etc/postgate/")
            || w.starts_with("/run/secrets/")
            || w.starts_with("/var/lib/")
    }) {
        let file = root.join(word.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_lowercase();
        let body = if name.ends_with(".json") {
            serde_json::json!({
                "type": "service_account",
                "client_email": "relay@project.iam.gserviceaccount.com",
                "private_key_id": "k1",
                "private_key": key.serialize_pem(),
            })
            .to_string()
        } else if name.ends_with(".pem") && name.contains("key") {
            key.serialize_pem()
        } else if name.ends_with(".pem") {
            cert.pem()
        } else if word.starts_with("/var/lib/") {
            continue;
        } else {
            format!("{PLACEHOLDER}\n")
        };
        std::fs::write(&file, body).unwrap();
        out = out.replace(&format!("\"{word}\""), &format!("\"{}\"", file.display()));
    }
    out.replace(
        "sqlite:///var/lib/postgate/postgate.db",
        &format!("sqlite://{}/q.db", root.display()),
    )
}

fn check_config(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postgate.toml");
    std::fs::write(&config, materialize(text, dir.path())).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_postgate"))
        .arg("-c")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "{what}: check-config failed:\n{err}\n{text}"
    );
    assert!(
        !out.contains(PLACEHOLDER),
        "{what}: a secret was printed:\n{out}"
    );
    assert!(
        !out.contains("PRIVATE KEY"),
        "{what}: a key was printed:\n{out}"
    );
    assert!(out.contains("[[upstream]]"), "{what}:\n{out}");
}

#[test]
fn oauth_and_certificate_examples_pass_check_config() {
    for section in SECTIONS {
        let blocks = blocks_of(section);
        assert!(!blocks.is_empty(), "no ```toml example under ## {section}");
        for b in &blocks {
            check_config(b, section);
        }
    }
    // The certificate credential variant of the Microsoft example.
    let ms = &blocks_of(SECTIONS[0])[0];
    let variant = ms
        .lines()
        .filter(|l| !l.starts_with("client_secret"))
        .map(|l| {
            l.strip_prefix("# client_certificate")
                .map(|r| format!("client_certificate{r}"))
                .or_else(|| {
                    l.strip_prefix("# client_key")
                        .map(|r| format!("client_key{r}"))
                })
                .unwrap_or_else(|| l.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(variant.contains("\nclient_certificate = "), "{variant}");
    check_config(&variant, "Microsoft certificate credential");
}

/// A Google example whose key file is not a service account key is refused
/// by check-config, naming the key (what the example relies on).
#[test]
fn check_config_refuses_a_service_account_file_that_is_not_json() {
    let text = &blocks_of(SECTIONS[2])[0];
    let dir = tempfile::tempdir().unwrap();
    let mut config_text = materialize(text, dir.path());
    let sa = dir.path().join("run/secrets/google-service-account.json");
    std::fs::write(&sa, "-----BEGIN PRIVATE KEY-----\nnot json\n").unwrap();
    config_text = config_text.replace("\r", "");
    let config = dir.path().join("postgate.toml");
    std::fs::write(&config, config_text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_postgate"))
        .arg("-c")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("postgate.toml"), "{err}");
    assert!(err.contains("oauth.service_account_key: not JSON"), "{err}");
    assert!(!err.contains("not json\n"), "{err}");
}
