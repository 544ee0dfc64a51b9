//! DKIM key material: generation, PEM import and the DNS record to publish.
//! PURE apart from the system random number generator (aws-lc-rs).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::store::DkimAlgorithm;

use super::DkimError;

const B64: base64::engine::general_purpose::GeneralPurpose =
    base64::engine::general_purpose::STANDARD;

/// RSA sizes postgate generates. RFC 8301 §3.2: at least 1024 bits, 2048
/// recommended; aws-lc-rs generates and signs with 2048 to 8192 bits only,
/// and DNS providers choke on the TXT records of anything past 4096.
pub const RSA_BITS: [u32; 3] = [2048, 3072, 4096];

/// The default RSA size for `dkim generate`.
pub const DEFAULT_RSA_BITS: u32 = 2048;

/// A checked private key in the form the store keeps it.
#[derive(Clone)]
pub struct KeyMaterial {
    pub algorithm: DkimAlgorithm,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). A secret.
    pub private_key_pem: String,
    /// Base64 public key as published in `p=`: a SubjectPublicKeyInfo for
    /// RSA (RFC 6376 §3.6.1), the raw 32-byte key for Ed25519 (RFC 8463 §4.2).
    pub public_key: String,
    /// Modulus size for RSA, 256 for Ed25519.
    pub bits: u32,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("algorithm", &self.algorithm)
            .field("bits", &self.bits)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

fn key_err(msg: impl Into<String>) -> DkimError {
    DkimError::Key(msg.into())
}

/// Generates a new key. `bits` applies to RSA only (default
/// [`DEFAULT_RSA_BITS`], one of [`RSA_BITS`]); it must be `None` for Ed25519.
/// RSA-4096 generation can take a second or more: call off async threads.
pub fn generate(algorithm: DkimAlgorithm, bits: Option<u32>) -> Result<KeyMaterial, DkimError> {
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let size = match bits.unwrap_or(DEFAULT_RSA_BITS) {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                other => {
                    return Err(key_err(format!(
                        "unsupported RSA size {other}: use 2048 (default), 3072 or 4096"
                    )))
                }
            };
            let pair =
                RsaKeyPair::generate(size).map_err(|_| key_err("RSA key generation failed"))?;
            rsa_material(&pair)
        }
        DkimAlgorithm::Ed25519Sha256 => {
            if bits.is_some() {
                return Err(key_err("--bits applies to rsa-sha256 keys only"));
            }
            let pair =
                Ed25519KeyPair::generate().map_err(|_| key_err("Ed25519 key generation failed"))?;
            ed25519_material(&pair)
        }
    }
}

/// Imports a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) for both
/// algorithms, or PKCS#1 (`BEGIN RSA PRIVATE KEY`) for RSA. The key must be
/// of `algorithm`; it is stored re-encoded as PKCS#8.
pub fn import_pem(algorithm: DkimAlgorithm, pem: &str) -> Result<KeyMaterial, DkimError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        key_err("no unencrypted PEM private key found (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)")
    })?;
    match (algorithm, der) {
        (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs1(k)) => {
            let pair = RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(|e| {
                key_err(format!(
                    "not a usable RSA key ({e}); 2048 to 8192 bits are supported"
                ))
            })?;
            rsa_material(&pair)
        }
        (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs8(k)) => {
            let pair = RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).map_err(|e| {
                key_err(format!(
                    "not a usable RSA key ({e}); 2048 to 8192 bits are supported"
                ))
            })?;
            rsa_material(&pair)
        }
        (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(k)) => {
            let pair = Ed25519KeyPair::from_pkcs8(k.secret_pkcs8_der())
                .map_err(|e| key_err(format!("not an Ed25519 key ({e})")))?;
            ed25519_material(&pair)
        }
        (DkimAlgorithm::Ed25519Sha256, _) => {
            Err(key_err("an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)"))
        }
        (DkimAlgorithm::RsaSha256, _) => Err(key_err(
            "an RSA key must be PKCS#8 (BEGIN PRIVATE KEY) or PKCS#1 (BEGIN RSA PRIVATE KEY)",
        )),
    }
}

fn rsa_material(pair: &RsaKeyPair) -> Result<KeyMaterial, DkimError> {
    let pkcs8 = pair
        .as_der()
        .map_err(|_| key_err("cannot encode the RSA key as PKCS#8"))?;
    let spki = pair
        .public_key()
        .as_der()
        .map_err(|_| key_err("cannot encode the RSA public key"))?;
    Ok(KeyMaterial {
        algorithm: DkimAlgorithm::RsaSha256,
        private_key_pem: pem_encode("PRIVATE KEY", pkcs8.as_ref()),
        public_key: B64.encode(spki.as_ref()),
        bits: (pair.public_modulus_len() * 8) as u32,
    })
}

fn ed25519_material(pair: &Ed25519KeyPair) -> Result<KeyMaterial, DkimError> {
    let pkcs8 = pair
        .to_pkcs8v1()
        .map_err(|_| key_err("cannot encode the Ed25519 key as PKCS#8"))?;
    Ok(KeyMaterial {
        algorithm: DkimAlgorithm::Ed25519Sha256,
        private_key_pem: pem_encode("PRIVATE KEY", pkcs8.as_ref()),
        public_key: B64.encode(pair.public_key().as_ref()),
        bits: 256,
    })
}

/// RFC 7468 textual encoding: base64 in lines of 64 characters.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DNS TXT record that publishes a key (RFC 6376 §3.6.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Owner name without the trailing dot: `SELECTOR._domainkey.DOMAIN`.
    pub name: String,
    /// The whole record value: `v=DKIM1; k=rsa; p=...`.
    pub value: String,
}

impl DnsRecord {
    /// The record for `public_key` (base64, as stored) of `algorithm`.
    pub fn new(domain: &str, selector: &str, algorithm: DkimAlgorithm, public_key: &str) -> Self {
        let k = match algorithm {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        };
        DnsRecord {
            name: format!("{selector}._domainkey.{domain}"),
            value: format!("v=DKIM1; k={k}; p={public_key}"),
        }
    }

    /// The value cut into character-strings of at most 255 bytes
    /// (RFC 1035 §3.3.14; verifiers concatenate them, RFC 6376 §3.6.2.2).
    pub fn strings(&self) -> Vec<&str> {
        // The value is ASCII, so any byte offset is a char boundary.
        self.value
            .as_bytes()
            .chunks(255)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect()
    }

    /// One zone-file line: `NAME. IN TXT "part1" "part2"`.
    pub fn zone_line(&self) -> String {
        let parts: Vec<String> = self.strings().iter().map(|s| format!("\"{s}\"")).collect();
        format!("{}. IN TXT {}", self.name, parts.join(" "))
    }
}

impl std::fmt::Display for DnsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.zone_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_keys_are_generated_imported_and_published() {
        let k = generate(DkimAlgorithm::RsaSha256, None).unwrap();
        assert_eq!(k.bits, 2048);
        assert!(k
            .private_key_pem
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(!format!("{k:?}").contains("BEGIN"));
        // Round trip through the PKCS#8 PEM the store keeps.
        let again = import_pem(DkimAlgorithm::RsaSha256, &k.private_key_pem).unwrap();
        assert_eq!(again.public_key, k.public_key);
        let rec = DnsRecord::new("example.com", "s1", k.algorithm, &k.public_key);
        assert_eq!(rec.name, "s1._domainkey.example.com");
        assert!(rec.value.starts_with("v=DKIM1; k=rsa; p=MII"));
        let parts = rec.strings();
        assert!(parts.len() >= 2, "a 2048-bit record needs two strings");
        assert!(parts.iter().all(|p| p.len() <= 255));
        assert_eq!(parts.concat(), rec.value);
        assert!(rec
            .zone_line()
            .starts_with("s1._domainkey.example.com. IN TXT \"v=DKIM1;"));
        assert!(generate(DkimAlgorithm::RsaSha256, Some(1024)).is_err());
        assert!(import_pem(DkimAlgorithm::Ed25519Sha256, &k.private_key_pem).is_err());
    }

    #[test]
    fn ed25519_keys_are_generated_and_imported() {
        let k = generate(DkimAlgorithm::Ed25519Sha256, None).unwrap();
        assert_eq!(B64.decode(&k.public_key).unwrap().len(), 32);
        let again = import_pem(DkimAlgorithm::Ed25519Sha256, &k.private_key_pem).unwrap();
        assert_eq!(again.public_key, k.public_key);
        let rec = DnsRecord::new("example.com", "ed", k.algorithm, &k.public_key);
        assert_eq!(rec.strings().len(), 1);
        assert!(rec.value.starts_with("v=DKIM1; k=ed25519; p="));
        assert!(generate(DkimAlgorithm::Ed25519Sha256, Some(2048)).is_err());
        assert!(import_pem(DkimAlgorithm::RsaSha256, &k.private_key_pem).is_err());
        assert!(import_pem(DkimAlgorithm::RsaSha256, "not a pem").is_err());
    }
}
