//! Server-side TLS for the submission listeners.
//!
//! Certificate chain and key come from PEM files (read with
//! rustls-pki-types' `PemObject`; rustls-pemfile is unmaintained). Only TLS
//! 1.2 and 1.3, aws-lc-rs provider. The certificate lives behind a resolver
//! so [`ServerTls::reload`] (on SIGHUP) swaps it without dropping sessions;
//! a failed reload keeps the old one and returns an error naming the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::smtp::ports::TlsInfo;

/// Why [`ServerTls::accept`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("tls handshake failed: {0}")]
    Failed(#[from] std::io::Error),
    #[error("tls handshake timed out")]
    TimedOut,
}

/// `[tls]` configuration: PEM files of the certificate chain and its key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why TLS could not be set up. Names the file; never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a certificate chain and key and checks they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, format!("cannot read certificate: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, format!("bad PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no CERTIFICATE block found"));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_err(key, format!("cannot read private key: {e}")))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| file_err(key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        file_err(
            key,
            format!("key does not match certificate {}: {e}", cert.display()),
        )
    })?;
    Ok(certified)
}

/// Serves the current certificate; replaced atomically on reload.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
    }
}

/// The server TLS configuration of all listeners.
#[derive(Debug, Clone)]
pub struct ServerTls {
    files: TlsConfig,
    resolver: Arc<CertResolver>,
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Loads the certificate and builds a TLS 1.2/1.3 server configuration.
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        let key = load_certified_key(&files.cert, &files.key)?;
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(Arc::new(key)),
        });
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(ServerTls {
            files: files.clone(),
            resolver,
            config: Arc::new(config),
        })
    }

    /// Re-reads the certificate files. On error the old certificate stays
    /// in use and the error names the failing file.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.files.cert, &self.files.key)?;
        if let Ok(mut current) = self.resolver.current.write() {
            *current = Arc::new(key);
        }
        Ok(())
    }

    /// The rustls configuration (shared by all listeners).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// An acceptor for implicit TLS and STARTTLS.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The server side of a TLS handshake on `tcp`, given up after
    /// `timeout`: the stream and what it negotiated.
    pub async fn accept(
        &self,
        tcp: tokio::net::TcpStream,
        timeout: std::time::Duration,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
            TlsInfo,
        ),
        HandshakeError,
    > {
        let stream = tokio::time::timeout(timeout, self.acceptor().accept(tcp))
            .await
            .map_err(|_| HandshakeError::TimedOut)??;
        let conn = stream.get_ref().1;
        let info = TlsInfo {
            protocol: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
        };
        Ok((stream, info))
    }

    /// DER of the leaf certificate currently served (for tests and logs).
    pub fn current_leaf(&self) -> Option<CertificateDer<'static>> {
        let key = self.resolver.current.read().ok()?.clone();
        key.cert.first().cloned()
    }
}

/// Reloads the certificate on every SIGHUP until `shutdown` is cancelled,
/// logging the outcome (a failed reload keeps the old certificate).
pub async fn reload_on_sighup(
    tls: ServerTls,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            got = hup.recv() => {
                if got.is_none() {
                    return Ok(());
                }
                match tls.reload() {
                    Ok(()) => tracing::info!(cert = %tls.files.cert.display(), "TLS certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; keeping the old one"),
                }
            }
        }
    }
}

/// A self-signed end-entity (CA:FALSE) certificate for `hostnames`, for
/// development and the quick start: `(cert_pem, key_pem)`.
pub fn self_signed(hostnames: &[String]) -> Result<(String, String), TlsError> {
    let setup = |e: rcgen::Error| TlsError::Setup(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(setup)?;
    let mut params = rcgen::CertificateParams::new(hostnames.to_vec()).map_err(setup)?;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        hostnames.first().cloned().unwrap_or_default(),
    );
    let cert = params.self_signed(&key).map_err(setup)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn loads_reloads_and_keeps_old_cert_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = self_signed(&["one.example".into()]).unwrap();
        let files = TlsConfig {
            cert: write(dir.path(), "c.pem", &c1),
            key: write(dir.path(), "k.pem", &k1),
        };
        let tls = ServerTls::load(&files).unwrap();
        let first = tls.current_leaf().unwrap();

        let (c2, k2) = self_signed(&["two.example".into()]).unwrap();
        write(dir.path(), "c.pem", &c2);
        write(dir.path(), "k.pem", &k2);
        tls.reload().unwrap();
        let second = tls.current_leaf().unwrap();
        assert_ne!(first, second);

        write(dir.path(), "k.pem", "garbage");
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("k.pem"), "{err}");
        assert_eq!(tls.current_leaf().unwrap(), second);

        // A key that does not match the certificate is refused.
        write(dir.path(), "k.pem", &k1);
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        assert_eq!(tls.current_leaf().unwrap(), second);
    }

    #[test]
    fn missing_files_are_named() {
        let files = TlsConfig {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let err = ServerTls::load(&files).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }
}
