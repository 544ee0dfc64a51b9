//! `postgate dkim generate|import|list|show|activate|retire|delete`:
//! functions the CLI calls.
//! Each returns a value whose `Display` is what the command prints; none
//! ever prints a private key.

use std::fmt;
use std::path::Path;

use crate::store::{DkimAlgorithm, DkimKeyInfo, DkimStore, NewDkimKey};

use super::key::{self, DnsRecord, KeyMaterial};
use super::{read_key_file, DkimError};

use crate::time::now_ms;

async fn store_key(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
    material: &KeyMaterial,
    inactive: bool,
) -> Result<(String, String), DkimError> {
    let domain = crate::store::normalize_dkim_domain(domain)?;
    let selector = crate::store::normalize_dkim_selector(selector)?;
    let key = NewDkimKey {
        domain: domain.clone(),
        selector: selector.clone(),
        algorithm: material.algorithm,
        private_key_pem: material.private_key_pem.clone(),
        public_key: material.public_key.clone(),
    };
    if inactive {
        store.dkim_add_inactive(&key, now_ms()).await?;
    } else {
        store.dkim_add(&key, now_ms()).await?;
    }
    Ok((domain, selector))
}

/// Output of `dkim generate`: the new key and the DNS record to publish.
#[derive(Debug, Clone)]
pub struct Generated {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub bits: u32,
    pub record: DnsRecord,
    /// Stored inactive: it signs only after `postgate dkim activate`.
    pub inactive: bool,
}

impl fmt::Display for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inactive {
            writeln!(
                f,
                "Created DKIM key {} for {} ({}, {} bits), INACTIVE: it does not sign until `postgate dkim activate --domain {} --selector {}`.",
                self.selector, self.domain, self.algorithm, self.bits, self.domain, self.selector
            )?;
        } else {
            writeln!(
                f,
                "Created DKIM key {} for {} ({}, {} bits); it signs from now on.",
                self.selector, self.domain, self.algorithm, self.bits
            )?;
        }
        writeln!(f, "Publish this DNS TXT record:")?;
        writeln!(f, "{}", self.record.zone_line())?;
        writeln!(
            f,
            "(owner name {}; value in {} string(s) of at most 255 bytes)",
            self.record.name,
            self.record.strings().len()
        )
    }
}

/// `dkim generate`: creates a key of `algorithm` (`bits`: RSA only, default
/// 2048; 2048, 3072 or 4096), stores it as active and returns the DNS
/// record. `Conflict` (through [`DkimError::Store`]) if the selector exists.
pub async fn cli_generate(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    bits: Option<u32>,
) -> Result<Generated, DkimError> {
    cli_generate_key(store, domain, selector, algorithm, bits, false).await
}

/// `dkim generate [--inactive]`: as [`cli_generate`], but an `inactive`
/// key is stored so that it never signs until [`cli_activate`]: its DNS
/// record can be published (and propagate) first.
pub async fn cli_generate_key(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    bits: Option<u32>,
    inactive: bool,
) -> Result<Generated, DkimError> {
    // Check names before spending a second on an RSA-4096 key.
    crate::store::normalize_dkim_domain(domain)?;
    crate::store::normalize_dkim_selector(selector)?;
    let material = tokio::task::spawn_blocking(move || key::generate(algorithm, bits))
        .await
        .map_err(|e| DkimError::Key(e.to_string()))??;
    let (domain, selector) = store_key(store, domain, selector, &material, inactive).await?;
    Ok(Generated {
        record: DnsRecord::new(&domain, &selector, algorithm, &material.public_key),
        domain,
        selector,
        algorithm,
        bits: material.bits,
        inactive,
    })
}

/// Output of `dkim import`: same as generate.
pub type Imported = Generated;

/// `dkim import`: reads the PEM private key at `key_file` (PKCS#8, or
/// PKCS#1 for RSA), stores it as active and returns the DNS record.
pub async fn cli_import(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    key_file: &Path,
) -> Result<Imported, DkimError> {
    cli_import_key(store, domain, selector, algorithm, key_file, false).await
}

/// `dkim import [--inactive]`: as [`cli_import`]; see [`cli_generate_key`]
/// for `inactive`.
pub async fn cli_import_key(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    key_file: &Path,
    inactive: bool,
) -> Result<Imported, DkimError> {
    let pem = read_key_file(key_file)?;
    let material = key::import_pem(algorithm, &pem)
        .map_err(|e| DkimError::Key(format!("{}: {e}", key_file.display())))?;
    let (domain, selector) = store_key(store, domain, selector, &material, inactive).await?;
    Ok(Generated {
        record: DnsRecord::new(&domain, &selector, algorithm, &material.public_key),
        domain,
        selector,
        algorithm,
        bits: material.bits,
        inactive,
    })
}

/// Output of `dkim list`: one line per key, plus its DNS record name.
#[derive(Debug, Clone)]
pub struct KeyList(pub Vec<DkimKeyInfo>);

fn format_ms(ms: i64) -> String {
    crate::time::rfc3339(ms)
}

/// The status word of a key: `active` (signs), `inactive` (stored, not
/// yet activated) or `retired`.
pub fn key_status(k: &DkimKeyInfo) -> &'static str {
    match (k.active, k.inactive) {
        (false, _) => "retired",
        (true, true) => "inactive",
        (true, false) => "active",
    }
}

impl fmt::Display for KeyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "no DKIM keys");
        }
        writeln!(
            f,
            "{:<30} {:<20} {:<15} {:<8} {:<20} RETIRED",
            "DOMAIN", "SELECTOR", "ALGORITHM", "STATUS", "CREATED"
        )?;
        for k in &self.0 {
            writeln!(
                f,
                "{:<30} {:<20} {:<15} {:<8} {:<20} {}",
                k.domain,
                k.selector,
                k.algorithm.as_str(),
                key_status(k),
                format_ms(k.created_at),
                k.retired_at.map(format_ms).unwrap_or_else(|| "-".into())
            )?;
        }
        Ok(())
    }
}

/// `dkim list`: every key, active and retired (never the private keys).
pub async fn cli_list(store: &dyn DkimStore) -> Result<KeyList, DkimError> {
    Ok(KeyList(store.dkim_list().await?))
}

/// Output of `dkim retire`.
#[derive(Debug, Clone)]
pub struct Retired {
    pub domain: String,
    pub selector: String,
}

impl fmt::Display for Retired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Retired DKIM key {} of {}: it no longer signs (after the next key reload).",
            self.selector, self.domain
        )?;
        writeln!(
            f,
            "Keep the DNS record {}._domainkey.{} published until messages signed with it are delivered and read (a few days), then remove it.",
            self.selector, self.domain
        )
    }
}

/// `dkim retire`: the key stops signing. `NotFound` if there is no such key.
pub async fn cli_retire(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
) -> Result<Retired, DkimError> {
    let domain = crate::store::normalize_dkim_domain(domain)?;
    let selector = crate::store::normalize_dkim_selector(selector)?;
    store.dkim_retire(&domain, &selector, now_ms()).await?;
    Ok(Retired { domain, selector })
}

/// Output of `dkim show`: one key and the DNS record it needs.
#[derive(Debug, Clone)]
pub struct Shown {
    pub key: DkimKeyInfo,
    pub record: DnsRecord,
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        writeln!(
            f,
            "DKIM key {} of {} ({}), {}; created {}{}.",
            k.selector,
            k.domain,
            k.algorithm,
            key_status(k),
            format_ms(k.created_at),
            k.retired_at
                .map(|r| format!(", retired {}", format_ms(r)))
                .unwrap_or_default()
        )?;
        writeln!(f, "DNS TXT record:")?;
        writeln!(f, "{}", self.record.zone_line())?;
        writeln!(
            f,
            "(owner name {}; value in {} string(s) of at most 255 bytes)",
            self.record.name,
            self.record.strings().len()
        )
    }
}

/// `dkim show`: a key (never its private part) with its DNS record.
/// `NotFound` if there is no such key.
pub async fn cli_show(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
) -> Result<Shown, DkimError> {
    let domain = crate::store::normalize_dkim_domain(domain)?;
    let selector = crate::store::normalize_dkim_selector(selector)?;
    let key = store
        .dkim_list()
        .await?
        .into_iter()
        .find(|k| k.domain == domain && k.selector == selector)
        .ok_or_else(|| {
            crate::store::StoreError::NotFound(format!("DKIM key {selector}._domainkey.{domain}"))
        })?;
    Ok(Shown {
        record: DnsRecord::new(&key.domain, &key.selector, key.algorithm, &key.public_key),
        key,
    })
}

/// `dkim activate`: an inactive key signs from the next key reload on.
/// `Conflict` if it is already active or retired, `NotFound` if missing.
pub async fn cli_activate(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
) -> Result<String, DkimError> {
    let domain = crate::store::normalize_dkim_domain(domain)?;
    let selector = crate::store::normalize_dkim_selector(selector)?;
    store.dkim_activate(&domain, &selector).await?;
    Ok(format!(
        "Activated DKIM key {selector} of {domain}: it signs after the next key reload (SIGHUP, or at once on a node started later).\n"
    ))
}

/// `dkim delete`: removes a retired (or never activated) key for good.
/// `Conflict` if it still signs, `NotFound` if missing.
pub async fn cli_delete(
    store: &dyn DkimStore,
    domain: &str,
    selector: &str,
) -> Result<String, DkimError> {
    let domain = crate::store::normalize_dkim_domain(domain)?;
    let selector = crate::store::normalize_dkim_selector(selector)?;
    store.dkim_delete(&domain, &selector).await?;
    Ok(format!(
        "Deleted DKIM key {selector} of {domain}; remove the DNS record {selector}._domainkey.{domain} if it is still published.\n"
    ))
}
