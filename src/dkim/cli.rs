//! `postgate dkim generate|import|list|retire`: functions the CLI calls.
//! Each returns a value whose `Display` is what the command prints; none
//! ever prints a private key.

use std::fmt;
use std::path::Path;

use crate::store::{DkimAlgorithm, DkimKeyInfo, NewDkimKey, Store};

use super::key::{self, DnsRecord, KeyMaterial};
use super::{read_key_file, DkimError};

use crate::time::now_ms;

async fn store_key(
    store: &dyn Store,
    domain: &str,
    selector: &str,
    material: &KeyMaterial,
) -> Result<(String, String), DkimError> {
    let domain = crate::store::normalize_dkim_domain(domain)?;
    let selector = crate::store::normalize_dkim_selector(selector)?;
    store
        .dkim_add(
            &NewDkimKey {
                domain: domain.clone(),
                selector: selector.clone(),
                algorithm: material.algorithm,
                private_key_pem: material.private_key_pem.clone(),
                public_key: material.public_key.clone(),
            },
            now_ms(),
        )
        .await?;
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
}

impl fmt::Display for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Created DKIM key {} for {} ({}, {} bits); it signs from now on.",
            self.selector, self.domain, self.algorithm, self.bits
        )?;
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
    store: &dyn Store,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    bits: Option<u32>,
) -> Result<Generated, DkimError> {
    // Check names before spending a second on an RSA-4096 key.
    crate::store::normalize_dkim_domain(domain)?;
    crate::store::normalize_dkim_selector(selector)?;
    let material = tokio::task::spawn_blocking(move || key::generate(algorithm, bits))
        .await
        .map_err(|e| DkimError::Key(e.to_string()))??;
    let (domain, selector) = store_key(store, domain, selector, &material).await?;
    Ok(Generated {
        record: DnsRecord::new(&domain, &selector, algorithm, &material.public_key),
        domain,
        selector,
        algorithm,
        bits: material.bits,
    })
}

/// Output of `dkim import`: same as generate.
pub type Imported = Generated;

/// `dkim import`: reads the PEM private key at `key_file` (PKCS#8, or
/// PKCS#1 for RSA), stores it as active and returns the DNS record.
pub async fn cli_import(
    store: &dyn Store,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    key_file: &Path,
) -> Result<Imported, DkimError> {
    let pem = read_key_file(key_file)?;
    let material = key::import_pem(algorithm, &pem)
        .map_err(|e| DkimError::Key(format!("{}: {e}", key_file.display())))?;
    let (domain, selector) = store_key(store, domain, selector, &material).await?;
    Ok(Generated {
        record: DnsRecord::new(&domain, &selector, algorithm, &material.public_key),
        domain,
        selector,
        algorithm,
        bits: material.bits,
    })
}

/// Output of `dkim list`: one line per key, plus its DNS record name.
#[derive(Debug, Clone)]
pub struct KeyList(pub Vec<DkimKeyInfo>);

fn format_ms(ms: i64) -> String {
    crate::fixups::rfc5322_date(ms)
}

impl fmt::Display for KeyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "no DKIM keys");
        }
        writeln!(
            f,
            "{:<30} {:<20} {:<15} {:<8} CREATED",
            "DOMAIN", "SELECTOR", "ALGORITHM", "STATUS"
        )?;
        for k in &self.0 {
            let status = if k.active { "active" } else { "retired" };
            writeln!(
                f,
                "{:<30} {:<20} {:<15} {:<8} {}",
                k.domain,
                k.selector,
                k.algorithm.as_str(),
                status,
                format_ms(k.created_at)
            )?;
        }
        Ok(())
    }
}

/// `dkim list`: every key, active and retired (never the private keys).
pub async fn cli_list(store: &dyn Store) -> Result<KeyList, DkimError> {
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
    store: &dyn Store,
    domain: &str,
    selector: &str,
) -> Result<Retired, DkimError> {
    let domain = crate::store::normalize_dkim_domain(domain)?;
    let selector = crate::store::normalize_dkim_selector(selector)?;
    store.dkim_retire(&domain, &selector, now_ms()).await?;
    Ok(Retired { domain, selector })
}
