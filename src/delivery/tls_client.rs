//! Client-side TLS material shared by upstream SMTP connections and the
//! OAuth token endpoint: the roots to verify servers with, and the client
//! certificate presented for mutual TLS (RFC 8446 §4.4.2 / RFC 5246 §7.4.6).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A client certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity { .. }")
    }
}

impl ClientIdentity {
    /// Loads the PEM chain `cert` and PEM key `key`. Errors name the file
    /// and say what is wrong (unreadable, no certificate, no key, or a
    /// key that is not the certificate's); they never contain key material.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientIdentity, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("{}: {}", cert.display(), pem_reason(e)))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {}", cert.display(), pem_reason(e)))?;
        if chain.is_empty() {
            return Err(format!("{}: no PEM certificate in it", cert.display()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("{}: {}", key.display(), pem_reason(e)))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let ck =
            CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider).map_err(|e| {
                match e {
                    rustls::Error::InconsistentKeys(_) => format!(
                        "{} does not match the certificate in {} (a different key pair)",
                        key.display(),
                        cert.display()
                    ),
                    other => format!("{}: unusable private key: {other}", key.display()),
                }
            })?;
        drop(ck);
        Ok(ClientIdentity {
            chain,
            key: Arc::new(key_der),
        })
    }
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in it".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The roots to verify a server with: the PEM CA file when given, else the
/// system roots (webpki roots when the system has none).
pub fn roots(ca_file: Option<&PathBuf>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("ca_file {}: no usable certificate", path.display()));
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    Ok(roots)
}

/// A verifying rustls client config (aws-lc-rs, TLS 1.2 and 1.3) trusting
/// `roots`, presenting `identity` when the server asks for a certificate.
pub fn client_config(
    roots: rustls::RootCertStore,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| format!("client certificate: {e}")),
    }
}
