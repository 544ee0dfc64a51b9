//! Shared verification helpers: every postgate signature is checked by two
//! independent verifiers, fed the DNS records exactly as `dkim generate`
//! printed them: Python dkimpy (tests/dkim/verify.py, through its DNS hook)
//! and mail-auth's own verifier (through its TXT resolver cache).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

/// `(owner name, value)` of every `NAME. IN TXT "a" "b"` line in `printed`.
pub fn zone_records(printed: &str) -> Vec<(String, String)> {
    printed
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().split_once(" IN TXT ")?;
            let parts: Vec<&str> = rest.split('"').skip(1).step_by(2).collect();
            for p in &parts {
                assert!(p.len() <= 255, "TXT string of {} bytes", p.len());
            }
            Some((name.to_string(), parts.concat()))
        })
        .collect()
}

/// What dkimpy said about one signature.
#[derive(Debug)]
pub struct PyResult {
    pub ok: bool,
    pub d: String,
    pub s: String,
    pub a: String,
    pub h: String,
    pub error: String,
}

/// Runs dkimpy on `message` with the DNS records in `printed`; returns one
/// result per DKIM-Signature, and whether the script judged all valid.
pub fn dkimpy_verify(printed: &str, message: &[u8]) -> (bool, Vec<PyResult>) {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.txt");
    let msg = dir.path().join("message.eml");
    std::fs::write(&records, printed).unwrap();
    std::fs::write(&msg, message).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dkim/verify.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&records)
        .arg(&msg)
        .output()
        .expect("run python3 tests/dkim/verify.py (pip install dkimpy pynacl)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.stderr.is_empty() || out.status.success(),
        "verify.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 6, "verify.py line {l:?}");
            PyResult {
                ok: f[0] == "pass",
                d: f[1].into(),
                s: f[2].into(),
                a: f[3].into(),
                h: f[4].into(),
                error: f[5].into(),
            }
        })
        .collect();
    (out.status.success(), results)
}

struct TxtCache(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

/// Runs mail-auth's verifier; returns the result of every signature
/// (`true` = pass) with its `a=` and `s=`.
pub async fn mail_auth_verify(printed: &str, message: &[u8]) -> Vec<(bool, String, String)> {
    let cache = TxtCache(Mutex::new(HashMap::new()));
    for (name, value) in zone_records(printed) {
        let key = DomainKey::parse(value.as_bytes()).expect("mail-auth parses the record");
        let fqdn = format!("{}.", name.trim_end_matches('.').to_lowercase());
        cache.insert(
            fqdn.into(),
            Txt::DomainKey(Arc::new(key)),
            std::time::Instant::now(),
        );
    }
    // The cache answers every lookup; the resolver itself is never used.
    let auth = MessageAuthenticator::new_cloudflare().unwrap();
    let msg = AuthenticatedMessage::parse(message).expect("mail-auth parses the message");
    let outputs = auth
        .verify_dkim(Parameters::new(&msg).with_txt_cache(&cache))
        .await;
    outputs
        .iter()
        .map(|o| {
            let sig = o.signature().expect("signature");
            let a = match sig.a {
                mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
                mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
            };
            if !matches!(o.result(), DkimResult::Pass) {
                eprintln!("mail-auth: {} {}: {:?}", a, sig.s, o.result());
            }
            (
                matches!(o.result(), DkimResult::Pass),
                a.to_string(),
                sig.s.clone(),
            )
        })
        .collect()
}
