//! DKIM: keys (generation, import, DNS records, CLI) and signing with
//! mail-auth at acceptance (RFC 6376, RFC 8463 dual RSA + Ed25519).
//!
//! The [`Signer`] holds every active key of the store in memory, grouped by
//! domain; [`Signer::reload`] swaps in a fresh set (call it periodically and
//! on SIGHUP). [`Signer::sign`] picks the keys by the header From domain and
//! returns the `DKIM-Signature` fields to prepend, one per active key.
//!
//! At end of DATA, intake does, in this order:
//! 1. with `header_from = "enforce"`: [`crate::fixups::check_header_from`]
//!    against the login's sender patterns (refuse 550 5.7.1 with its message);
//! 2. [`crate::fixups::apply`] (Received, Date, Message-ID, removals);
//! 3. `signer.sign(fixed.clone())` on the fixed-up bytes, then
//!    [`Signatures::prepend_to`]: the result is what the queue stores
//!    (RFC 6376 §5: sign last, after every change to the header block).
//!    Only a From the login may send as is signed, whatever `header_from`
//!    says: with `"off"` intake runs the check of step 1 itself and relays
//!    a failing message unsigned (refuses it under `require_signature`).

mod cli;
pub mod key;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::fixups::{self, FixupError};
use crate::store::{DkimAlgorithm, DkimSigningKey, DkimStore, StoreError};

pub use cli::{
    cli_activate, cli_delete, cli_generate, cli_generate_key, cli_import, cli_import_key, cli_list,
    cli_retire, cli_show, key_status, Generated, Imported, KeyList, Retired, Shown,
};
pub use key::{DnsRecord, KeyMaterial};

/// What went wrong in key management or signing. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The store failed or refused (duplicate selector, unknown key, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key could not be generated, parsed or used.
    #[error("DKIM key: {0}")]
    Key(String),
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// `require_signature` is on and no active key covers the From domain.
    #[error("no DKIM key for domain {domain:?} and dkim.require_signature is on")]
    NoKey { domain: String },
    /// The message has no usable header From to pick a key by.
    #[error("cannot pick a DKIM key: {0}")]
    Header(#[from] FixupError),
    /// mail-auth failed to sign with a key of `algorithm` (should not
    /// happen with a loaded key).
    #[error("DKIM signing failed ({}): {reason}", algorithm.as_str())]
    Sign {
        algorithm: DkimAlgorithm,
        reason: String,
    },
}

impl DkimError {
    /// Whether the message itself is at fault (reply 5xx: no key under
    /// `require_signature`, unusable header From) rather than the system
    /// (store, key or signing failure: reply 4xx, the client retries).
    pub fn is_permanent(&self) -> bool {
        matches!(self, DkimError::NoKey { .. } | DkimError::Header(_))
    }

    /// The algorithm of the key that failed to sign, for a signing failure.
    pub fn algorithm(&self) -> Option<DkimAlgorithm> {
        match self {
            DkimError::Sign { algorithm, .. } => Some(*algorithm),
            _ => None,
        }
    }
}

/// What to do with a header From the login may not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HeaderFromPolicy {
    /// Refuse the message (5.7.1) unless a sender permission of the login
    /// matches every header From address. The default.
    #[default]
    Enforce,
    /// Do not refuse for the header From; a message whose From fails the
    /// check is relayed unsigned (signing follows the login).
    Off,
}

/// The `[dkim]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimConfig {
    /// Sign at all (default true). Off: messages are relayed unsigned.
    pub enabled: bool,
    /// When no key exists for the From domain, use the key of the nearest
    /// parent domain that has one (`news.example.com` -> `example.com`);
    /// DMARC relaxed alignment accepts it. Default false.
    pub parent_domain_fallback: bool,
    /// Signature lifetime, sets `x=` (RFC 6376 §3.5), e.g. "7d". Default none.
    #[serde(with = "humantime_serde")]
    pub expiry: Option<Duration>,
    /// Refuse a message whose From domain has no active key
    /// ([`DkimError::NoKey`]) instead of relaying it unsigned. Default false.
    pub require_signature: bool,
    /// Header From policy: "enforce" (default) or "off". Either way only a
    /// From that passes the check is signed.
    pub header_from: HeaderFromPolicy,
    /// How often the serve loop should call [`Signer::reload`], e.g. "60s".
    /// Default 60 s.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
}

impl Default for DkimConfig {
    fn default() -> Self {
        DkimConfig {
            enabled: true,
            parent_domain_fallback: false,
            expiry: None,
            require_signature: false,
            header_from: HeaderFromPolicy::Enforce,
            reload_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// Header fields signed when present, RFC 6376 §5.4.1 plus the MIME and
/// threading fields. `From` is listed twice: the second instance signs the
/// absence of another From (oversigning, RFC 6376 §8.15).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Sender",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Autocrypt",
];

/// A loaded private key, shared between signing calls.
struct SharedKey(Arc<DkimKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

struct LoadedKey {
    selector: String,
    algorithm: DkimAlgorithm,
    key: Arc<DkimKey>,
}

/// Parses a stored PKCS#8 PEM into a mail-auth signing key.
fn load_key(k: &DkimSigningKey) -> Result<LoadedKey, DkimError> {
    let bad = |e: String| {
        DkimError::Key(format!(
            "stored key {}._domainkey.{} is unusable: {e}",
            k.info.selector, k.info.domain
        ))
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(k.private_key_pem.as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    let key = match k.info.algorithm {
        DkimAlgorithm::RsaSha256 => DkimKey::Rsa(
            RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der))
                .map_err(|e| bad(e.to_string()))?,
        ),
        DkimAlgorithm::Ed25519Sha256 => DkimKey::Ed25519(
            Ed25519Key::from_pkcs8_der(der.secret_pkcs8_der()).map_err(|e| bad(e.to_string()))?,
        ),
    };
    Ok(LoadedKey {
        selector: k.info.selector.clone(),
        algorithm: k.info.algorithm,
        key: Arc::new(key),
    })
}

/// The result of [`Signer::sign`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signatures {
    /// The signing domain (`d=`), `None` when the message was not signed.
    pub domain: Option<String>,
    /// `selector (algorithm)` of each signature made, for logs.
    pub selectors: Vec<String>,
    /// The algorithm of each signature made (of its key), in the same order.
    pub algorithms: Vec<DkimAlgorithm>,
    /// The `DKIM-Signature` fields, CRLF-terminated, to put before the
    /// message. Empty when unsigned.
    pub headers: Vec<u8>,
}

impl Signatures {
    /// `headers` followed by `message`: the bytes to queue.
    pub fn prepend_to(&self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.headers.len() + message.len());
        out.extend_from_slice(&self.headers);
        out.extend_from_slice(message);
        out
    }
}

/// Signs messages with the active keys of the store. Cheap to share
/// (`Arc<Signer>`); `sign` and `reload` may run concurrently.
pub struct Signer {
    store: Arc<dyn DkimStore>,
    config: DkimConfig,
    keys: RwLock<Arc<HashMap<String, Vec<Arc<LoadedKey>>>>>,
    /// RSA signings running at once on the blocking pool, at most one per
    /// CPU: a burst of submissions then queues here instead of starting a
    /// blocking thread per message, whose CPU the async threads (every
    /// session, delivery's outcome commits) would have to share.
    rsa_signings: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Signer {
    /// The signing domains only: never key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut domains: Vec<&String> = keys.keys().collect();
        domains.sort();
        f.debug_struct("Signer")
            .field("domains", &domains)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads every active key from `store`. Fails if the store fails or a
    /// stored key cannot be parsed (naming the key, never its content).
    pub async fn new(store: Arc<dyn DkimStore>, config: DkimConfig) -> Result<Self, DkimError> {
        let signer = Signer {
            store,
            config,
            keys: RwLock::new(Arc::new(HashMap::new())),
            rsa_signings: Arc::new(tokio::sync::Semaphore::new(crate::cpus())),
        };
        signer.reload().await?;
        Ok(signer)
    }

    /// Replaces the in-memory keys with the active keys now in the store and
    /// returns how many were loaded. On error the previous keys stay in use.
    pub async fn reload(&self) -> Result<usize, DkimError> {
        let rows = self.store.dkim_active_keys().await?;
        let mut map: HashMap<String, Vec<Arc<LoadedKey>>> = HashMap::new();
        for row in &rows {
            map.entry(row.info.domain.clone())
                .or_default()
                .push(Arc::new(load_key(row)?));
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(rows.len())
    }

    /// The configuration this signer was built with.
    pub fn config(&self) -> &DkimConfig {
        &self.config
    }

    /// The domain whose keys sign mail from `from_domain`, if any: the domain
    /// itself, or with `parent_domain_fallback` its nearest parent with keys.
    pub fn signing_domain(&self, from_domain: &str) -> Option<String> {
        self.pick(from_domain).map(|(d, _)| d)
    }

    /// The signing domain and its keys, from one snapshot of the key set
    /// (a concurrent reload cannot leave a domain without keys).
    fn pick(&self, from_domain: &str) -> Option<(String, Vec<Arc<LoadedKey>>)> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        // Keys are stored under A-labels: an SMTPUTF8 From domain in
        // U-labels (RFC 6532) is looked up in that form.
        let mut d = crate::store::domain_to_ascii(from_domain.trim_end_matches('.'));
        loop {
            if let Some(k) = keys.get(&d) {
                return Some((d, k.clone()));
            }
            if !self.config.parent_domain_fallback {
                return None;
            }
            // Stop at two labels: never sign with a key stored for a TLD.
            match d.split_once('.') {
                Some((_, parent)) if parent.contains('.') => d = parent.to_string(),
                _ => return None,
            }
        }
    }

    /// Signs `message` (final bytes: fixups applied) with every active key
    /// of the header From domain (the first From address if several).
    /// Unsigned result (`domain: None`) when signing is disabled, or no key
    /// matches or the header From is unusable (none, several, malformed) and
    /// `require_signature` is off; `NoKey` / `Header` when it is on.
    /// RSA signing runs on the blocking pool.
    pub async fn sign(&self, message: bytes::Bytes) -> Result<Signatures, DkimError> {
        if !self.config.enabled {
            return Ok(Signatures::default());
        }
        // No usable From: nothing to pick a key by. Refused only when a
        // signature is required (header_from = "enforce" refuses earlier).
        let from = match fixups::header_from_addresses(&message) {
            Ok(from) => from,
            Err(e) if self.config.require_signature => return Err(e.into()),
            Err(_) => return Ok(Signatures::default()),
        };
        let from_domain = from
            .first()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let Some((domain, keys)) = self.pick(&from_domain) else {
            if self.config.require_signature {
                return Err(DkimError::NoKey {
                    domain: from_domain,
                });
            }
            return Ok(Signatures::default());
        };
        let headers = headers_to_sign(&message)?;
        let expiry = self.config.expiry.map(|d| d.as_secs()).unwrap_or(0);
        let any_rsa = keys.iter().any(|k| k.algorithm == DkimAlgorithm::RsaSha256);
        let job = move || sign_with(&keys, &domain, &headers, expiry, &message);
        if any_rsa {
            // Only RSA signing is slow enough for the blocking pool. The
            // slot goes with the job, so it is held exactly while the CPU
            // works (also when this future is dropped meanwhile); the
            // semaphore is never closed.
            let slot = self.rsa_signings.clone().acquire_owned().await.ok();
            tokio::task::spawn_blocking(move || {
                let signed = job();
                drop(slot);
                signed
            })
            .await
            .map_err(|e| DkimError::Sign {
                algorithm: DkimAlgorithm::RsaSha256,
                reason: e.to_string(),
            })?
        } else {
            job()
        }
    }
}

/// The names of [`SIGNED_HEADERS`] present in `message`, plus a second
/// `From` for oversigning.
fn headers_to_sign(message: &[u8]) -> Result<Vec<String>, DkimError> {
    let block = fixups::HeaderBlock::parse(message)?;
    let mut names: Vec<String> = Vec::new();
    for wanted in SIGNED_HEADERS {
        if block.has(wanted) {
            names.push((*wanted).to_string());
        }
    }
    // mail-auth signs every instance of a listed name and lists a name it
    // cannot find as "absent": a second "From" signs the absence of a second
    // From field (RFC 6376 §5.4.2).
    names.push("From".to_string());
    Ok(names)
}

fn sign_with(
    keys: &[Arc<LoadedKey>],
    domain: &str,
    headers: &[String],
    expiry: u64,
    message: &[u8],
) -> Result<Signatures, DkimError> {
    let mut out = Signatures {
        domain: Some(domain.to_string()),
        ..Default::default()
    };
    for k in keys {
        let mut signer = DkimSigner::from_key(SharedKey(k.key.clone()))
            .domain(domain)
            .selector(k.selector.as_str())
            .headers(headers.iter().cloned())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        if expiry > 0 {
            signer = signer.expiration(expiry);
        }
        let sig = signer.sign(message).map_err(|e| DkimError::Sign {
            algorithm: k.algorithm,
            reason: e.to_string(),
        })?;
        out.headers.extend_from_slice(sig.to_header().as_bytes());
        out.selectors
            .push(format!("{} ({})", k.selector, k.algorithm.as_str()));
        out.algorithms.push(k.algorithm);
    }
    Ok(out)
}

/// Reads a PEM key file for `dkim import`.
pub(crate) fn read_key_file(path: &std::path::Path) -> Result<String, DkimError> {
    std::fs::read_to_string(path).map_err(|source| DkimError::Io {
        path: path.display().to_string(),
        source,
    })
}
