//! `postgate dkim ...`: DKIM signing keys.

use std::path::Path;

use clap::Subcommand;
use std::path::PathBuf;

use super::{load_config, open_store, Failure};

#[derive(Subcommand)]
pub enum DkimCommand {
    /// Create and store a key; prints the DNS TXT record to publish.
    Generate {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// rsa-sha256 or ed25519-sha256.
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// RSA key size: 2048 (default), 3072 or 4096.
        #[arg(long)]
        bits: Option<u32>,
    },
    /// Store a key from a PEM file (PKCS#8, or PKCS#1 for RSA); prints the DNS TXT record.
    Import {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// PEM file with the private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// List keys (never the private part).
    List,
    /// Stop signing with a key (its DNS record can go once signed mail has been delivered).
    Retire {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
    },
}

/// Runs one `dkim` command.
pub async fn run(config_path: Option<&Path>, cmd: &DkimCommand) -> Result<(), Failure> {
    use postgate::dkim;
    use postgate::store::DkimAlgorithm;
    let config = load_config(config_path)?;
    let store = open_store(&config).await?;
    match cmd {
        DkimCommand::Generate {
            domain,
            selector,
            algorithm,
            bits,
        } => {
            let alg = DkimAlgorithm::parse(algorithm)?;
            print!(
                "{}",
                dkim::cli_generate(&*store, domain, selector, alg, *bits).await?
            );
        }
        DkimCommand::Import {
            domain,
            selector,
            algorithm,
            key,
        } => {
            let alg = DkimAlgorithm::parse(algorithm)?;
            print!(
                "{}",
                dkim::cli_import(&*store, domain, selector, alg, key).await?
            );
        }
        DkimCommand::List => print!("{}", dkim::cli_list(&*store).await?),
        DkimCommand::Retire { domain, selector } => {
            print!("{}", dkim::cli_retire(&*store, domain, selector).await?)
        }
    }
    Ok(())
}
