//! DKIM keys in the store: names as stored (A-labels), the key types and
//! [`DkimStore`], which both backends implement.

use async_trait::async_trait;

use super::{StoreError, StoreResult};

/// A DKIM signing algorithm as stored in `dkim_keys.algorithm` (RFC 6376
/// `rsa-sha256`, RFC 8463 `ed25519-sha256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DkimAlgorithm {
    RsaSha256,
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The name used in the store, the CLI and the `a=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// Parses `rsa-sha256` or `ed25519-sha256` (also `rsa`, `ed25519`).
    pub fn parse(s: &str) -> StoreResult<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rsa-sha256" | "rsa" => Ok(DkimAlgorithm::RsaSha256),
            "ed25519-sha256" | "ed25519" => Ok(DkimAlgorithm::Ed25519Sha256),
            _ => Err(StoreError::Invalid(format!(
                "invalid DKIM algorithm {s:?}: use rsa-sha256 or ed25519-sha256"
            ))),
        }
    }
}

impl std::fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lower-cases and checks a DKIM signing domain (`d=`): a host name of
/// dot-separated labels of letters, digits and hyphens, at most 253 bytes.
/// An internationalized name is stored as A-labels (`bücher.example` ->
/// `xn--bcher-kva.example`), the form DNS and verifiers use.
pub fn normalize_dkim_domain(domain: &str) -> StoreResult<String> {
    let d = domain_to_ascii(domain.trim().trim_end_matches('.'));
    if is_dns_name(&d) {
        Ok(d)
    } else {
        Err(StoreError::Invalid(format!(
            "invalid DKIM domain {domain:?}: expected a host name like example.com"
        )))
    }
}

pub use crate::policy::domain_to_ascii;

/// Checks a DKIM selector (`s=`, RFC 6376 §3.1: sub-domain syntax, may
/// contain dots). Selectors are compared case-insensitively, stored lower-case.
pub fn normalize_dkim_selector(selector: &str) -> StoreResult<String> {
    let s = selector.trim().to_ascii_lowercase();
    if is_dns_name(&s) {
        Ok(s)
    } else {
        Err(StoreError::Invalid(format!(
            "invalid DKIM selector {selector:?}: use letters, digits, hyphens and dots"
        )))
    }
}

fn is_dns_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A key to add with [`DkimStore::dkim_add`]. The key material must already
/// be checked (the `dkim` module builds these); the store checks names only.
#[derive(Clone)]
pub struct NewDkimKey {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// PKCS#8 PEM. A secret: never logged or printed.
    pub private_key_pem: String,
    /// Base64 public key as published in DNS (`p=`).
    pub public_key: String,
}

impl std::fmt::Debug for NewDkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

/// One row of `dkim list`. Never carries the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyInfo {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// Base64 public key (`p=`).
    pub public_key: String,
    /// Status `active` (not retired). A key may be active yet `inactive`.
    pub active: bool,
    /// Generated or imported with `--inactive` and not yet activated: it
    /// never signs (its DNS record can be published first).
    pub inactive: bool,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// An active key with its private part, for signing.
#[derive(Clone)]
pub struct DkimSigningKey {
    pub info: DkimKeyInfo,
    /// PKCS#8 PEM. A secret: never logged or printed.
    pub private_key_pem: String,
}

impl std::fmt::Debug for DkimSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigningKey")
            .field("info", &self.info)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

/// DKIM keys (table `dkim_keys`). Domain and selector are normalised with
/// [`normalize_dkim_domain`] / [`normalize_dkim_selector`] by every method.
#[async_trait]
pub trait DkimStore: Send + Sync {
    /// Stores `key` as active, created at `now`. `Conflict` if a key (active
    /// or retired) with the same domain and selector exists: selectors are
    /// never reused, since verifiers may cache the old DNS record.
    /// `Invalid` for a bad domain or selector.
    async fn dkim_add(&self, key: &NewDkimKey, now: i64) -> StoreResult<()>;
    /// Like [`dkim_add`](Self::dkim_add) but the key is stored inactive:
    /// it never signs until [`dkim_activate`](Self::dkim_activate).
    async fn dkim_add_inactive(&self, key: &NewDkimKey, now: i64) -> StoreResult<()>;
    /// Lets an inactive key sign (after the next key reload). `NotFound` if
    /// no such key; `Conflict` if it is already active or retired.
    async fn dkim_activate(&self, domain: &str, selector: &str) -> StoreResult<()>;
    /// Deletes a retired (or never activated) key. `NotFound` if no such
    /// key; `Conflict` if it is active and signing (retire it first). The
    /// selector becomes free again: only reuse it once verifiers have
    /// forgotten the old DNS record.
    async fn dkim_delete(&self, domain: &str, selector: &str) -> StoreResult<()>;
    /// All keys, active and retired, ordered by domain, then selector.
    async fn dkim_list(&self) -> StoreResult<Vec<DkimKeyInfo>>;
    /// Marks the key retired at `now`: it signs no more. `NotFound` if no
    /// such key; `Conflict` if it is already retired.
    async fn dkim_retire(&self, domain: &str, selector: &str, now: i64) -> StoreResult<()>;
    /// Every active key (status active and not `inactive`) with its private key, ordered by domain, then
    /// selector. Called at start and on reload, not per message.
    async fn dkim_active_keys(&self) -> StoreResult<Vec<DkimSigningKey>>;
}
