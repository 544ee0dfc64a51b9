//! `postgate dkim ...`: DKIM signing keys.

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::{json_time, load_config, open_store, print_json, time, Failure};
use postgate::dkim;
use postgate::store::{DkimAlgorithm, DkimKeyInfo};

/// A signing algorithm, as the CLI takes it.
#[derive(Clone, Copy, ValueEnum)]
pub enum Algorithm {
    /// RSA with SHA-256 (RFC 6376), understood by every verifier.
    #[value(name = "rsa-sha256", alias = "rsa")]
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463): short keys; sign with RSA as well.
    #[value(name = "ed25519-sha256", alias = "ed25519")]
    Ed25519Sha256,
}

impl From<Algorithm> for DkimAlgorithm {
    fn from(a: Algorithm) -> Self {
        match a {
            Algorithm::RsaSha256 => DkimAlgorithm::RsaSha256,
            Algorithm::Ed25519Sha256 => DkimAlgorithm::Ed25519Sha256,
        }
    }
}

#[derive(Subcommand)]
pub enum DkimCommand {
    /// Create and store a key; prints the DNS TXT record to publish.
    Generate {
        /// Signing domain (d=), e.g. example.com.
        #[arg(long)]
        domain: String,
        /// Selector (s=): the record goes to SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// Signing algorithm.
        #[arg(long, value_enum, default_value = "rsa-sha256")]
        algorithm: Algorithm,
        /// RSA key size: 2048 (default), 3072 or 4096.
        #[arg(long)]
        bits: Option<u32>,
        /// Store the key inactive: it does not sign until `dkim activate`,
        /// so its DNS record can be published first.
        #[arg(long)]
        inactive: bool,
    },
    /// Store a key from a PEM file (PKCS#8, or PKCS#1 for RSA); prints the DNS TXT record.
    Import {
        /// Signing domain (d=).
        #[arg(long)]
        domain: String,
        /// Selector (s=).
        #[arg(long)]
        selector: String,
        /// Algorithm of the key in the file.
        #[arg(long, value_enum, default_value = "rsa-sha256")]
        algorithm: Algorithm,
        /// PEM file with the private key.
        #[arg(long)]
        key: PathBuf,
        /// Store the key inactive (see `generate --inactive`).
        #[arg(long)]
        inactive: bool,
    },
    /// List keys (never the private part).
    List {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one key and print its DNS TXT record again.
    Show {
        /// Selector (s=).
        selector: String,
        /// Signing domain (d=).
        domain: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Let an inactive key sign (after the next reload: SIGHUP).
    Activate {
        /// Signing domain (d=).
        #[arg(long)]
        domain: String,
        /// Selector (s=).
        #[arg(long)]
        selector: String,
    },
    /// Stop signing with a key (its DNS record can go once signed mail has been delivered).
    Retire {
        /// Signing domain (d=).
        #[arg(long)]
        domain: String,
        /// Selector (s=).
        #[arg(long)]
        selector: String,
    },
    /// Delete a retired (or never activated) key for good.
    Delete {
        /// Signing domain (d=).
        #[arg(long)]
        domain: String,
        /// Selector (s=).
        #[arg(long)]
        selector: String,
    },
}

fn key_json(k: &DkimKeyInfo) -> Value {
    let record = dkim::DnsRecord::new(&k.domain, &k.selector, k.algorithm, &k.public_key);
    json!({
        "domain": k.domain,
        "selector": k.selector,
        "algorithm": k.algorithm.as_str(),
        "status": dkim::key_status(k),
        "created_at": time(k.created_at),
        "retired_at": json_time(k.retired_at),
        "dns_name": record.name,
        "dns_value": record.value,
    })
}

/// Runs one `dkim` command.
pub async fn run(config_path: Option<&Path>, cmd: &DkimCommand) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let store = open_store(&config, config_path).await?;
    match cmd {
        DkimCommand::Generate {
            domain,
            selector,
            algorithm,
            bits,
            inactive,
        } => print!(
            "{}",
            dkim::cli_generate_key(
                &*store,
                domain,
                selector,
                (*algorithm).into(),
                *bits,
                *inactive
            )
            .await?
        ),
        DkimCommand::Import {
            domain,
            selector,
            algorithm,
            key,
            inactive,
        } => print!(
            "{}",
            dkim::cli_import_key(
                &*store,
                domain,
                selector,
                (*algorithm).into(),
                key,
                *inactive
            )
            .await?
        ),
        DkimCommand::List { json } => {
            let list = dkim::cli_list(&*store).await?;
            if *json {
                let keys: Vec<Value> = list.0.iter().map(key_json).collect();
                print_json(&json!({ "keys": keys }))?;
            } else {
                print!("{list}");
            }
        }
        DkimCommand::Show {
            selector,
            domain,
            json,
        } => {
            let shown = dkim::cli_show(&*store, domain, selector).await?;
            if *json {
                print_json(&key_json(&shown.key))?;
            } else {
                print!("{shown}");
            }
        }
        DkimCommand::Activate { domain, selector } => {
            print!("{}", dkim::cli_activate(&*store, domain, selector).await?)
        }
        DkimCommand::Retire { domain, selector } => {
            print!("{}", dkim::cli_retire(&*store, domain, selector).await?)
        }
        DkimCommand::Delete { domain, selector } => {
            print!("{}", dkim::cli_delete(&*store, domain, selector).await?)
        }
    }
    Ok(())
}
