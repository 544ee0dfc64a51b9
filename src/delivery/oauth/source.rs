//! A token source: the loaded, checked credential of one upstream and the
//! token request it makes (RFC 6749 §4.4.2, RFC 7523 §2.1 and §2.2).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use serde_json::json;
use tokio_rustls::TlsConnector;

use super::endpoint::{self, AccessToken, Endpoint, TokenError};
use super::jwt::{self, Alg, RsaSigner};
use super::{OAuthConfig, Provider};
use crate::delivery::tls_client;
use crate::secret::Secret;

/// How long signed assertions are valid (RFC 7523 §3: short; Google allows one hour).
const ASSERTION_LIFETIME: u64 = 600;

enum Credential {
    Secret {
        client_id: String,
        secret: Secret,
    },
    Certificate {
        client_id: String,
        signer: RsaSigner,
        x5t: String,
    },
    ServiceAccount {
        email: String,
        key_id: Option<String>,
        signer: RsaSigner,
    },
}

/// The credential and token endpoint of one upstream, ready to request tokens.
pub struct TokenSource {
    endpoint: Endpoint,
    scope: String,
    credential: Credential,
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenSource {{ token_url: {:?}, .. }}",
            self.endpoint.url
        )
    }
}

impl TokenSource {
    /// Loads and checks `cfg`: required keys per provider, the client
    /// secret, the certificate against its key, the service account JSON,
    /// the token URL and CA file. Errors name the `oauth.` key and never
    /// contain secret material.
    pub fn new(cfg: &OAuthConfig) -> Result<TokenSource, String> {
        let need = |v: &Option<String>, key: &str| -> Result<String, String> {
            v.clone()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| format!("oauth.{key} is required for provider {:?}", cfg.provider))
        };
        let forbid = |set: bool, key: &str| -> Result<(), String> {
            if set {
                Err(format!(
                    "oauth.{key} does not apply to provider {:?}",
                    cfg.provider
                ))
            } else {
                Ok(())
            }
        };
        let (credential, default_url, default_scope) = match cfg.provider {
            Provider::Microsoft => {
                let client_id = need(&cfg.client_id, "client_id")?;
                let tenant = match (&cfg.tenant, &cfg.token_url) {
                    (Some(t), _) if !t.trim().is_empty() => t.clone(),
                    (_, Some(_)) => String::new(),
                    _ => return Err("oauth.tenant is required for provider microsoft".into()),
                };
                forbid(cfg.service_account_key.is_some(), "service_account_key")?;
                let credential =
                    match (&cfg.client_secret, &cfg.client_certificate, &cfg.client_key) {
                        (Some(secret), None, None) => Credential::Secret {
                            client_id,
                            secret: secret.clone(),
                        },
                        (None, Some(cert), Some(key)) => {
                            let id = tls_client::ClientIdentity::load(cert, key)
                                .map_err(|e| format!("oauth.client_certificate/client_key: {e}"))?;
                            let signer = RsaSigner::new(&id.key)
                                .map_err(|e| format!("oauth.client_key {}: {e}", key.display()))?;
                            Credential::Certificate {
                                client_id,
                                signer,
                                x5t: jwt::x5t_s256(id.chain[0].as_ref()),
                            }
                        }
                        _ => {
                            return Err("provider microsoft needs either oauth.client_secret or \
                                    both oauth.client_certificate and oauth.client_key"
                                .into())
                        }
                    };
                (
                    credential,
                    super::microsoft_token_url(&tenant),
                    super::MICROSOFT_SCOPE,
                )
            }
            Provider::Google => {
                for (set, key) in [
                    (cfg.client_id.is_some(), "client_id"),
                    (cfg.client_secret.is_some(), "client_secret"),
                    (cfg.client_certificate.is_some(), "client_certificate"),
                    (cfg.client_key.is_some(), "client_key"),
                    (cfg.tenant.is_some(), "tenant"),
                ] {
                    forbid(set, key)?;
                }
                let sa = cfg
                    .service_account_key
                    .as_ref()
                    .ok_or("oauth.service_account_key is required for provider google")?;
                let credential = service_account(sa.expose())
                    .map_err(|e| format!("oauth.service_account_key: {e}"))?;
                (
                    credential,
                    super::GOOGLE_TOKEN_URL.to_string(),
                    super::GOOGLE_SCOPE,
                )
            }
            Provider::Generic => {
                for (set, key) in [
                    (cfg.client_certificate.is_some(), "client_certificate"),
                    (cfg.client_key.is_some(), "client_key"),
                    (cfg.service_account_key.is_some(), "service_account_key"),
                    (cfg.tenant.is_some(), "tenant"),
                ] {
                    forbid(set, key)?;
                }
                need(&cfg.token_url, "token_url")?;
                need(&cfg.scope, "scope")?;
                let credential = Credential::Secret {
                    client_id: need(&cfg.client_id, "client_id")?,
                    secret: cfg
                        .client_secret
                        .clone()
                        .ok_or("oauth.client_secret is required for provider generic")?,
                };
                (credential, String::new(), "")
            }
        };
        let url = cfg.token_url.clone().unwrap_or(default_url);
        let endpoint = Endpoint::parse(&url).map_err(|e| format!("oauth.{e}"))?;
        let roots = tls_client::roots(cfg.ca_file.as_ref()).map_err(|e| format!("oauth.{e}"))?;
        let tls = endpoint::connector(roots).map_err(|e| format!("oauth: {e}"))?;
        if cfg.timeout.is_zero() {
            return Err("oauth.timeout must be more than 0".into());
        }
        Ok(TokenSource {
            endpoint,
            scope: cfg
                .scope
                .clone()
                .unwrap_or_else(|| default_scope.to_string()),
            credential,
            tls,
            timeout: cfg.timeout,
        })
    }

    /// Whether tokens depend on the mailbox (Google's `sub`); otherwise one
    /// application token serves every mailbox of the upstream.
    pub fn per_mailbox(&self) -> bool {
        matches!(self.credential, Credential::ServiceAccount { .. })
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> &str {
        &self.endpoint.url
    }

    /// Requests a new token for `mailbox` (used only by Google's `sub`).
    pub async fn fetch(&self, mailbox: &str) -> Result<AccessToken, TokenError> {
        let form = self.form(mailbox, unix_now())?;
        self.endpoint.request(&self.tls, form, self.timeout).await
    }

    /// The urlencoded request body at `now` (Unix seconds).
    fn form(&self, mailbox: &str, now: u64) -> Result<String, TokenError> {
        let mut f = form_urlencoded::Serializer::new(String::new());
        let aud = &self.endpoint.url;
        let sign_err = |e: String| TokenError::Credential(e);
        match &self.credential {
            Credential::Secret { client_id, secret } => {
                // RFC 6749 §4.4.2 with §2.3.1 credentials in the body.
                f.append_pair("grant_type", "client_credentials")
                    .append_pair("client_id", client_id)
                    .append_pair("client_secret", secret.expose())
                    .append_pair("scope", &self.scope);
            }
            Credential::Certificate {
                client_id,
                signer,
                x5t,
            } => {
                // RFC 7523 §2.2 and §3: iss = sub = client, aud = token endpoint.
                let claims = json!({
                    "aud": aud, "iss": client_id, "sub": client_id,
                    "jti": uuid::Uuid::new_v4().to_string(),
                    "iat": now, "nbf": now, "exp": now + ASSERTION_LIFETIME,
                });
                let assertion = signer
                    .sign(Alg::Ps256, json!({ "x5t#S256": x5t }), &claims)
                    .map_err(sign_err)?;
                f.append_pair("grant_type", "client_credentials")
                    .append_pair("client_id", client_id)
                    .append_pair(
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    )
                    .append_pair("client_assertion", &assertion)
                    .append_pair("scope", &self.scope);
            }
            Credential::ServiceAccount {
                email,
                key_id,
                signer,
            } => {
                // RFC 7523 §2.1; `sub` is the mailbox impersonated.
                let claims = json!({
                    "iss": email, "sub": mailbox, "scope": self.scope, "aud": aud,
                    "iat": now, "exp": now + ASSERTION_LIFETIME,
                });
                let header = match key_id {
                    Some(k) => json!({ "kid": k }),
                    None => json!({}),
                };
                let assertion = signer.sign(Alg::Rs256, header, &claims).map_err(sign_err)?;
                f.append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                    .append_pair("assertion", &assertion);
            }
        }
        Ok(f.finish())
    }
}

/// Parses a Google service account key JSON.
fn service_account(text: &str) -> Result<Credential, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "not JSON (line {}, column {}): expected the key file Google issues for a service account",
            e.line(),
            e.column()
        )
    })?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    if let Some(t) = field("type") {
        if t != "service_account" {
            return Err(format!("\"type\" is {t:?}, not \"service_account\""));
        }
    }
    let email = field("client_email").ok_or("no \"client_email\" in the JSON")?;
    let pem = field("private_key").ok_or("no \"private_key\" in the JSON")?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "\"private_key\" is not a PEM private key".to_string())?;
    let signer = RsaSigner::new(&key).map_err(|e| format!("\"private_key\": {e}"))?;
    Ok(Credential::ServiceAccount {
        email,
        key_id: field("private_key_id"),
        signer,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::oauth::OAuthConfig;

    fn cfg(toml_text: &str) -> OAuthConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn err(toml_text: &str) -> String {
        TokenSource::new(&cfg(toml_text)).unwrap_err()
    }

    #[test]
    fn required_keys_per_provider() {
        assert!(
            err("provider = \"microsoft\"\ntenant = \"t\"").contains("oauth.client_id is required")
        );
        assert!(
            err("provider = \"microsoft\"\nclient_id = \"c\"\nclient_secret = \"s\"")
                .contains("oauth.tenant is required")
        );
        assert!(
            err("provider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"")
                .contains("either oauth.client_secret")
        );
        assert!(err("provider = \"google\"").contains("service_account_key is required"));
        assert!(err("provider = \"google\"\nclient_id = \"c\"").contains("does not apply"));
        assert!(err(
            "provider = \"generic\"\nclient_id = \"c\"\nclient_secret = \"s\"\nscope = \"x\""
        )
        .contains("token_url is required"));
    }

    #[test]
    fn microsoft_secret_defaults_and_form() {
        let s = TokenSource::new(&cfg(
            "provider = \"microsoft\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"app\"\nclient_secret = \"p&ss=\"",
        ))
        .unwrap();
        assert_eq!(
            s.token_url(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert!(!s.per_mailbox());
        let form = s.form("x@y", 1).unwrap();
        assert!(form.contains("grant_type=client_credentials"), "{form}");
        assert!(form.contains("client_secret=p%26ss%3D"), "{form}");
        assert!(
            form.contains("scope=https%3A%2F%2Foutlook.office365.com%2F.default"),
            "{form}"
        );
        assert!(!format!("{s:?}").contains("p&ss"));
    }

    #[test]
    fn service_account_files_that_are_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            format!(
                "provider = \"google\"\nservice_account_key = {{ file = {:?} }}",
                p.display().to_string()
            )
        };
        assert!(err(&write("a", "not json at all")).contains("not JSON"));
        assert!(err(&write(
            "b",
            "{\"type\":\"service_account\",\"client_email\":\"a@b\"}"
        ))
        .contains("no \"private_key\""));
        assert!(err(&write(
            "c",
            "{\"type\":\"service_account\",\"private_key\":\"x\"}"
        ))
        .contains("no \"client_email\""));
        let e = err(&write(
            "d",
            "{\"type\":\"service_account\",\"client_email\":\"a@b\",\"private_key\":\"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"}",
        ));
        assert!(e.contains("private_key"), "{e}");
        assert!(!e.contains("AAAA"), "{e}");
    }
}
