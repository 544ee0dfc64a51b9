//! docs/providers.md: every ```toml block is a complete configuration that
//! the real `postgate check-config` accepts. Files the examples name under
//! `/etc/postgate/` and `/run/secrets/` are created by the test under a
//! temp dir, the paths rewritten to point there: `*.pem` files are a real
//! certificate, or its private key when the name contains `key` (one
//! matching pair per example); `*.json` files a Google-format service
//! account key with a fresh RSA key; others a placeholder secret;
//! `{ env = "VAR" }` secrets get a placeholder value. Any other absolute
//! path in an example fails the test, so what is checked is what is
//! printed. Also: `check-config` refuses `@example.com` route domains and
//! says how to write them.

use std::path::Path;
use std::process::{Command, Output};

const DOC: &str = include_str!("../../docs/providers.md");
const PLACEHOLDER: &str = "placeholder-secret-7f3a";
/// Where examples may put files: the test creates them.
const PREFIXES: &[&str] = &["/etc/postgate/", "/run/secrets/"];

/// `(section heading, block text)` of every ```toml block.
fn toml_blocks(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::from("(before the first section)");
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match &mut block {
            Some(b) if line.trim_start().starts_with("```") => {
                out.push((section.clone(), std::mem::take(b)));
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None if line.trim_start().starts_with("```toml") => block = Some(String::new()),
            None => {
                if let Some(h) = line.strip_prefix("## ") {
                    section = h.trim().to_string();
                }
            }
        }
    }
    assert!(block.is_none(), "providers.md: unterminated ```toml block");
    out
}

/// Every string value in `v` (recursively), and every `env = "VAR"` name.
fn strings(v: &toml::Value, out: &mut Vec<String>, env: &mut Vec<String>) {
    match v {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(a) => a.iter().for_each(|x| strings(x, out, env)),
        toml::Value::Table(t) => {
            for (k, x) in t {
                if let (true, Some(name)) = (k == "env", x.as_str()) {
                    env.push(name.to_string());
                }
                strings(x, out, env);
            }
        }
        _ => {}
    }
}

/// A service account key file in the form Google issues it, with a fresh
/// RSA key (for examples that name a `.json` key file).
fn service_account_json() -> String {
    let key =
        postgate::dkim::key::generate(postgate::store::DkimAlgorithm::RsaSha256, None).unwrap();
    serde_json::json!({
        "type": "service_account",
        "project_id": "example-project",
        "private_key_id": "0123456789abcdef",
        "private_key": key.private_key_pem,
        "client_email": "postgate@example-project.iam.gserviceaccount.com",
        "client_id": "100000000000000000000",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
    .to_string()
}

/// Writes the files `block` names into `root`, returns the block with its
/// paths rewritten and the environment variables it reads.
fn materialize(block: &str, root: &Path, section: &str) -> (String, Vec<String>) {
    let value: toml::Value = toml::from_str(block)
        .unwrap_or_else(|e| panic!("providers.md, section {section:?}: not TOML: {e}"));
    let (mut values, mut env) = (Vec::new(), Vec::new());
    strings(&value, &mut values, &mut env);
    let (cert, key) = postgate::tls::self_signed(&["relay.example.com".into()]).unwrap();
    for p in values.iter().filter(|s| s.starts_with('/')) {
        assert!(
            PREFIXES.iter().any(|pre| p.starts_with(pre)),
            "providers.md, section {section:?}: file {p:?} is outside {PREFIXES:?}"
        );
        let file = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_lowercase();
        let body = if name.ends_with(".pem") && name.contains("key") {
            key.clone()
        } else if name.ends_with(".pem") {
            cert.clone()
        } else if name.ends_with(".json") {
            service_account_json()
        } else {
            format!("{PLACEHOLDER}\n")
        };
        std::fs::write(&file, body).unwrap();
    }
    let mut text = block.to_string();
    for pre in PREFIXES {
        text = text.replace(&format!("\"{pre}"), &format!("\"{}{pre}", root.display()));
    }
    (text, env)
}

fn check_config(config: &Path, env: &[String]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgate"));
    cmd.arg("-c").arg(config).arg("check-config");
    for v in env {
        cmd.env(v, PLACEHOLDER);
    }
    cmd.output().expect("run postgate")
}

#[test]
fn every_provider_example_passes_check_config() {
    let blocks = toml_blocks(DOC);
    for provider in [
        "Amazon SES",
        "Google Workspace",
        "SendGrid",
        "Mailgun",
        "Postmark",
    ] {
        assert!(
            blocks.iter().any(|(s, _)| s.starts_with(provider)),
            "providers.md has no example under a section starting {provider:?}"
        );
    }
    // Every `## ` section carries at least one example.
    for h in DOC.lines().filter_map(|l| l.strip_prefix("## ")) {
        assert!(
            blocks.iter().any(|(s, _)| s == h.trim()),
            "providers.md section {h:?} has no ```toml example"
        );
    }
    for (i, (section, block)) in blocks.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (text, env) = materialize(block, dir.path(), section);
        let config = dir.path().join(format!("example-{i}.toml"));
        std::fs::write(&config, &text).unwrap();
        let o = check_config(&config, &env);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(
            o.status.success(),
            "providers.md, section {section:?}, example {i}: check-config failed:\n{err}\n--- example ---\n{text}"
        );
        assert!(
            !out.contains(PLACEHOLDER),
            "section {section:?}: a secret was printed:\n{out}"
        );
        assert!(
            out.contains("[[upstream]]"),
            "section {section:?}: no upstream:\n{out}"
        );
    }
}

#[test]
fn check_config_refuses_at_domains_and_says_how_to_write_them() {
    let dir = tempfile::tempdir().unwrap();
    for (key, extra) in [
        ("sender_domain", ""),
        ("recipient_domain", ""),
        (
            "dsn_from",
            "[delivery]\ndsn_from = \"<postmaster@example.com>\"\n",
        ),
    ] {
        let route = if key == "dsn_from" {
            String::new()
        } else {
            format!("[[route]]\n{key} = \"@example.com\"\nupstreams = [\"mta\"]\n")
        };
        let config = dir.path().join(format!("{key}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[smtp.listener]]\naddress = \"127.0.0.1:2587\"\nmode = \"plain\"\n\n\
                 [[upstream]]\nname = \"mta\"\nhost = \"127.0.0.1\"\n\n{route}{extra}"
            ),
        )
        .unwrap();
        let o = check_config(&config, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{key}: {err}");
        assert!(
            err.contains(&format!("{key}.toml")),
            "{key}: names the file: {err}"
        );
        if key == "dsn_from" {
            assert!(err.contains("[delivery] dsn_from"), "{err}");
            assert!(err.contains("\"postmaster@example.com\""), "{err}");
        } else {
            assert!(err.contains(&format!("[[route]] #1: {key}")), "{err}");
            assert!(err.contains("without the @"), "{err}");
            assert!(
                err.contains("\"example.com\"") && err.contains("\".example.com\""),
                "{key}: says how to write it: {err}"
            );
        }
    }
}
